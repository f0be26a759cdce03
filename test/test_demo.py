"""``seg-perception demo`` end to end: the real node, player and model over DDS, kept short."""

from __future__ import annotations

import csv
import random
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_perception.tools.rosgraph import ros_env as graph_env

REPO = Path(__file__).resolve().parents[1]
VIDEO_FRAMES = 8  # also the frames per camera of phase 3
CAMERAS = ("front", "left", "right")

pytestmark = pytest.mark.slow  # every test runs the demo: the node, a player, the model


def _demo(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = graph_env(int(env["ROS_DOMAIN_ID"]), base=env,
                    fastdds_profile=False)  # the demo must find the profile itself
    return subprocess.run([sys.executable, "-m", "seg_perception.cli", "demo", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, shared):
    """One real demo run (6 stills, 8 video frames, 8 frames on each of three cameras),
    shared by the checks below."""
    out = tmp_path_factory.mktemp("demo")
    env = graph_env(random.randint(1, 101))  # module-wide: conftest's ros_env is per test
    result = _demo(env, "--out", str(out), "--max-frames", str(VIDEO_FRAMES), "--device", "cpu",
                   timeout=300)
    return result, out


def _frames(path: Path) -> tuple[list[np.ndarray], float]:
    """The frames of a video file and its fps."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_demo_succeeds_and_prints_a_summary(demo_run):
    result, out = demo_run
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    summary = result.stdout.split("\nsummary\n", 1)[1]
    assert re.search(r"stills\s+published 6, received by the node 6, processed 6, dropped 0, "
                     r"outputs received 6 \(6 complete\)", summary), summary
    assert re.search(rf"video\s+published {VIDEO_FRAMES}, received by the node {VIDEO_FRAMES}, "
                     rf"processed {VIDEO_FRAMES}, dropped 0, outputs received {VIDEO_FRAMES} "
                     rf"\({VIDEO_FRAMES} complete\)", summary), summary
    assert re.search(r"latency stamp->outputs p50 \d+ / p90 \d+ / p99 \d+ ms", summary)
    assert "model espnet-cityscapes, device cpu" in summary
    assert "FASTDDS_DEFAULT_PROFILES_FILE=" + str(REPO / "config" / "fastdds_shm.xml") \
        in result.stdout
    assert "node ready after" in result.stdout


def test_demo_writes_one_overlay_per_still_at_the_input_size(demo_run, shared):
    result, out = demo_run
    stills = sorted((shared / "data" / "dashcam" / "stills").glob("*.jpg"))
    written = sorted((out / "stills").glob("*.png"))
    assert [p.stem for p in written] == [p.stem for p in stills]
    for overlay_path, still_path in zip(written, stills, strict=True):
        overlay = cv2.imread(str(overlay_path))
        still = cv2.imread(str(still_path))
        assert overlay.shape == still.shape == (720, 1280, 3)
        # a blend of the still and class colours: related to the still, but not the still
        difference = np.abs(overlay.astype(int) - still).mean()
        assert 1.0 < difference < 100.0, (overlay_path.name, difference)


def test_demo_prints_a_line_per_still_and_sees_no_car_in_test2(demo_run):
    result, _ = demo_run
    pattern = re.compile(r"^\s+(test\d)\.jpg\s+vehicle_ahead=(true|false)\s+"
                         r"coverage=([\d.]+) car=([\d.]+)%", re.M)
    lines = {m[1]: (m[2], float(m[3]), float(m[4])) for m in pattern.finditer(result.stdout)}
    assert sorted(lines) == [f"test{i}" for i in range(1, 7)]
    assert all(0.0 <= coverage <= 1.0 for _, coverage, _ in lines.values())
    car = {name: fraction for name, (_, _, fraction) in lines.items()}
    # test2 is the one still without any vehicle (shared/README.md)
    assert min(car, key=car.get) == "test2"
    assert max(car.values()) > 1.0


def test_demo_video_and_csv_have_every_frame(demo_run):
    result, out = demo_run
    frames, fps = _frames(out / "overlay.mp4")
    assert fps == pytest.approx(25.0)
    assert len(frames) == VIDEO_FRAMES
    assert {f.shape for f in frames} == {(720, 1280, 3)}

    with (out / "vehicle_ahead.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["frame", "stamp", "vehicle_ahead", "coverage", "latency_ms"]
    assert [int(r["frame"]) for r in rows] == list(range(VIDEO_FRAMES))
    stamps = [float(r["stamp"]) for r in rows]
    assert stamps == sorted(stamps) and len(set(stamps)) == VIDEO_FRAMES
    assert {r["vehicle_ahead"] for r in rows} <= {"true", "false"}
    assert all(0.0 <= float(r["coverage"]) <= 1.0 for r in rows)
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    # and the same per-frame lines were printed as the results arrived
    assert len(re.findall(r"^\s+frame\s+\d+ stamp \d+\.\d{9} vehicle_ahead=", result.stdout,
                          re.M)) == VIDEO_FRAMES


def test_demo_cameras_phase_feeds_three_cameras_into_one_node(demo_run):
    result, out = demo_run
    assert "demo: node restarted with cameras ['front', 'left', 'right']" in result.stdout
    summary = result.stdout.split("\nsummary\n", 1)[1]
    for camera in CAMERAS:  # lockstep per camera: every frame of every camera, none dropped
        assert re.search(
            rf"cameras/{camera}\s+published {VIDEO_FRAMES}, received by the node {VIDEO_FRAMES}, "
            rf"processed {VIDEO_FRAMES}, dropped 0, outputs received {VIDEO_FRAMES} "
            rf"\({VIDEO_FRAMES} complete\); latency stamp->outputs p50 \d+", summary), summary
        assert re.search(rf"player: {camera}: published {VIDEO_FRAMES} frames on /{camera}/image",
                         result.stdout)
    # one overlay video per camera, at its source's rate: the video's, the stills' 10 Hz
    written = {}
    for camera in CAMERAS:
        frames, fps = _frames(out / "cameras" / f"{camera}.mp4")
        assert len(frames) == VIDEO_FRAMES and {f.shape for f in frames} == {(720, 1280, 3)}
        written[camera] = (frames, fps)
    assert [fps for _, fps in written.values()] == pytest.approx([25.0, 10.0, 10.0])
    # left and right play the same stills: the same overlays; front plays the video
    left, right, front = (written[c][0] for c in ("left", "right", "front"))
    assert np.abs(left[0].astype(int) - right[0]).mean() < 2.0
    assert np.abs(left[0].astype(int) - front[0]).mean() > 10.0
    assert (out / "node-cameras.log").exists()


def test_demo_only_cameras_starts_the_node_with_its_cameras(tmp_path):
    env = graph_env(random.randint(1, 101))
    result = _demo(env, "--out", str(tmp_path), "--only", "cameras", "--max-frames", "2",
                   "--device", "cpu", timeout=180)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "input /front/image, /left/image, /right/image" in result.stdout
    assert "restarted" not in result.stdout and "phase 1" not in result.stdout
    summary = result.stdout.split("\nsummary\n", 1)[1]
    assert len(re.findall(r"cameras/\w+\s+published 2, received by the node 2, processed 2, "
                          r"dropped 0, outputs received 2 \(2 complete\)", summary)) == 3
    assert sorted(p.name for p in (tmp_path / "cameras").iterdir()) == [
        "front.mp4", "left.mp4", "right.mp4"]


def test_demo_reports_a_node_that_cannot_start(ros_env, tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text("segmentation:\n  ros__parameters:\n    overlay_alpha: 5.0\n")
    result = _demo(ros_env, "--out", str(tmp_path / "out"), "--params-file", str(params),
                   "--only", "stills", timeout=120)
    assert result.returncode == 1
    assert "seg-perception demo: error: the node failed to start" in result.stderr
    # the node's own error line, from its log
    assert "parameter 'overlay_alpha': 5.0 is outside [0, 1]" in result.stderr
    assert "phase 1" not in result.stdout


def test_demo_refuses_a_missing_model_file_before_starting_anything(ros_env, tmp_path):
    result = _demo(ros_env, "--out", str(tmp_path), "--model", str(tmp_path / "missing.pt"),
                   "--only", "stills", timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"seg-perception demo: error: model file not found: {tmp_path / 'missing.pt'}")
    assert "starting the node" not in result.stdout
