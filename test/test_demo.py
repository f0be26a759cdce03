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
VIDEO_FRAMES = 8

pytestmark = pytest.mark.slow  # every test runs the demo: the node, a player, the model


def _demo(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = graph_env(int(env["ROS_DOMAIN_ID"]), base=env,
                    fastdds_profile=False)  # the demo must find the profile itself
    return subprocess.run([sys.executable, "-m", "seg_perception.cli", "demo", *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, shared):
    """One real demo run (6 stills + 8 video frames), shared by the checks below."""
    out = tmp_path_factory.mktemp("demo")
    env = graph_env(random.randint(1, 101))  # module-wide: conftest's ros_env is per test
    result = _demo(env, "--out", str(out), "--max-frames", str(VIDEO_FRAMES), "--device", "cpu",
                   timeout=240)
    return result, out


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
    capture = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert capture.isOpened()
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    capture.release()
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


def test_demo_reports_a_node_that_cannot_start(ros_env, tmp_path):
    result = _demo(ros_env, "--out", str(tmp_path), "--model", str(tmp_path / "missing.pt"),
                   "--only", "stills", timeout=120)
    assert result.returncode == 1
    assert "seg-perception demo: error: the node failed to start" in result.stderr
    assert "missing.pt" in result.stderr  # the node's own error line, from its log
    assert "phase 1" not in result.stdout
