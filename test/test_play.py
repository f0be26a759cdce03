"""``seg-perception play`` as its own process, received over DDS by the test process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seg_perception.core.image_codec import decode_image_msg
from seg_perception.errors import UsageError
from seg_perception.fastdds import PROFILE_ENV, find_fastdds_profile, use_fastdds_profile
from seg_perception.tools.play import camera_sources
from seg_perception.tools.rosgraph import TopicRecorder, ros_env, stamp_ns

REPO = Path(__file__).resolve().parents[1]


def _play_command(*args: str, verbose: bool = False) -> list[str]:
    return [sys.executable, "-m", "seg_perception.cli", *(["-v"] if verbose else []), "play",
            *args]


def _player_env(env: dict[str, str]) -> dict[str, str]:
    """The test's ROS domain, and no profile preset: the player must find its own."""
    return ros_env(int(env["ROS_DOMAIN_ID"]), base=env, fastdds_profile=False)


def _run_player(env: dict[str, str], *args: str, verbose: bool = False
                ) -> subprocess.CompletedProcess:
    command = _play_command(*args, "--wait-subscribers", "1", "--wait-timeout", "30",
                            verbose=verbose)
    return subprocess.run(command, env=_player_env(env), cwd=REPO, capture_output=True,
                          text=True, timeout=90)


@pytest.fixture
def probe(ros_env):
    """A node of the test process that records what the player publishes."""
    probe = TopicRecorder("test_play_receiver", domain_id=int(ros_env["ROS_DOMAIN_ID"]),
                          background=True)
    yield probe
    probe.close()


def _stamps(messages) -> list[int]:
    return [stamp_ns(m.header.stamp) for m in messages]


@pytest.mark.slow
def test_folder_frames_arrive_with_size_encoding_frame_id_and_rising_stamps(
    ros_env, probe, shared, dashcam_still
):
    from sensor_msgs.msg import Image

    probe.record("/image", Image)
    stills = shared / "data" / "dashcam" / "stills"
    result = _run_player(ros_env, str(stills), "--count", "4", "--rate", "8",
                         "--frame-id", "dashcam", "--encoding", "bgr8", "--print-frames")
    assert result.returncode == 0, result.stderr
    messages = probe.wait_count("/image", 4, timeout=10)
    assert len(messages) == 4
    assert {(m.width, m.height, m.encoding, m.header.frame_id) for m in messages} == {
        (1280, 720, "bgr8", "dashcam")
    }
    stamps = _stamps(messages)
    assert stamps == sorted(stamps) and len(set(stamps)) == 4
    # the pixels survive the trip: bgr8 decoded back to RGB is the still itself
    decoded = decode_image_msg(messages[1]).to_rgb()
    np.testing.assert_array_equal(decoded, dashcam_still("test2"))
    # --print-frames names each frame with the stamp it was published with
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("frame ")]
    assert [line[4] for line in lines] == ["test1.jpg", "test2.jpg", "test3.jpg", "test4.jpg"]
    printed = [int(line[3].replace(".", "")) for line in lines]
    assert printed == stamps
    assert "published 4 frames on /image (1280x720 bgr8, reliable)" in result.stdout


@pytest.mark.slow
def test_video_resized_with_count_default_frame_id(ros_env, probe, shared):
    from sensor_msgs.msg import Image

    probe.record("/image", Image)
    video = shared / "data" / "dashcam" / "highway_720p.mp4"
    result = _run_player(ros_env, str(video), "--count", "10", "--resize", "640x360")
    assert result.returncode == 0, result.stderr
    messages = probe.wait_count("/image", 10, timeout=10)
    assert len(messages) == 10
    assert {(m.width, m.height, m.step, m.encoding, m.header.frame_id) for m in messages} == {
        (640, 360, 640 * 3, "rgb8", "camera")
    }
    assert _stamps(messages) == sorted(_stamps(messages))
    assert "published 10 frames" in result.stdout


@pytest.mark.slow
def test_bag_plays_with_its_recorded_stamps_and_frame_id(ros_env, probe, shared, tmp_path):
    from sensor_msgs.msg import Image
    from test_sources import BAG_STAMPS, _write_bag

    from seg_perception.sources import open_source

    pixels = [f.pixels_rgb for f in open_source(shared / "data" / "dashcam" / "stills")][:3]
    bag = _write_bag(tmp_path / "bag", pixels, "mcap")
    probe.record("/image", Image)
    result = _run_player(ros_env, str(bag), "--keep-stamps")
    assert result.returncode == 0, result.stderr
    messages = probe.wait_count("/image", 3, timeout=10)
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in messages] == BAG_STAMPS
    assert {m.header.frame_id for m in messages} == {"dashcam"}
    np.testing.assert_array_equal(decode_image_msg(messages[2]).to_rgb(), pixels[2])


def test_profile_is_found_and_a_preset_one_wins(tmp_path):
    profile = find_fastdds_profile()
    assert profile == REPO / "config" / "fastdds_shm.xml"
    env: dict[str, str] = {}
    assert use_fastdds_profile(env) == str(profile)
    assert env[PROFILE_ENV] == str(profile)
    mine = str(tmp_path / "mine.xml")
    env = {PROFILE_ENV: mine}
    assert use_fastdds_profile(env) == mine and env[PROFILE_ENV] == mine


@pytest.mark.slow
def test_best_effort_720p_arrives_with_the_profile(ros_env, probe, shared):
    from sensor_msgs.msg import Image

    probe.record("/image", Image, reliability="best_effort", depth=10)
    video = shared / "data" / "dashcam" / "highway_720p.mp4"
    result = _run_player(ros_env, str(video), "--reliability", "best_effort",
                         "--count", "30", "--rate", "30", verbose=True)
    assert result.returncode == 0, result.stderr
    assert f"Fast DDS profile: {REPO / 'config' / 'fastdds_shm.xml'}" in result.stderr
    messages = probe.wait_count("/image", 30, timeout=5)
    assert len(messages) == 30
    assert {(m.width, m.height) for m in messages} == {(1280, 720)}
    assert "best_effort" in result.stdout


@pytest.mark.slow
def test_lockstep_waits_for_each_output_and_counts_missing_ones(ros_env, probe, shared):
    """The test process plays the node: it echoes every frame's header except the third."""
    from sensor_msgs.msg import Image

    echo = probe.node.create_publisher(Image, "/echo", 10)
    seen: list[int] = []

    def on_image(msg: Image) -> None:
        seen.append(len(seen))
        if len(seen) != 3:
            echo.publish(Image(header=msg.header))

    probe.node.create_subscription(Image, "/image", on_image, 10)
    stills = shared / "data" / "dashcam" / "stills"
    result = _run_player(ros_env, str(stills), "--count", "5", "--rate", "50", "--resize",
                         "320x180", "--lockstep", "echo", "--lockstep-timeout", "2")
    assert result.returncode == 0, result.stderr
    assert len(seen) == 5
    assert "4/5 outputs came back" in result.stdout
    assert "no output for frame 2" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_summary(ros_env, probe, shared):
    from sensor_msgs.msg import Image

    probe.record("/image", Image)
    still = shared / "data" / "dashcam" / "stills" / "test1.jpg"
    player = subprocess.Popen(
        _play_command(str(still), "--loop", "--rate", "20", "--wait-subscribers", "1"),
        env=_player_env(ros_env), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        received = probe.wait_count("/image", 5, timeout=60)
        assert len(received) >= 5  # looping a single image keeps publishing
        # a name of its own: two players never register the same node name
        assert f"seg_perception_player_{player.pid}" in probe.node.get_node_names()
    finally:
        player.send_signal(signal.SIGINT)
        out, err = player.communicate(timeout=30)
    assert player.returncode == 0, err
    assert "Traceback" not in err
    assert "interrupted" in out and "published" in out


def test_missing_source_is_a_one_line_error(ros_env):
    result = subprocess.run(_play_command("/nonexistent/clip.mp4"), env=_player_env(ros_env),
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "seg-perception play: error: no such file or folder: /nonexistent/clip.mp4"
    ]


def test_module_does_not_import_rclpy():
    """The profile must be set before rclpy loads, so the tool module itself must not load it."""
    code = "import sys, seg_perception.tools.play; print('rclpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, cwd=Path(REPO))
    assert out.stdout.strip() == "False", out.stderr


def test_help_does_not_import_torch():
    """``play --help`` loads only the play tool, and play needs no torch: it answers at once."""
    code = ("import sys\nfrom seg_perception.cli import main\ntry:\n    main(['play', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'rclpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr


# --- several cameras from one player ---------------------------------------------------------


@pytest.mark.slow
def test_several_sources_publish_one_camera_each_at_their_own_pace(ros_env, probe, shared):
    from sensor_msgs.msg import Image

    for camera in ("front", "left"):
        probe.record(f"/{camera}/image", Image)
    data = shared / "data" / "dashcam"
    result = subprocess.run(
        _play_command(f"front={data / 'highway_720p.mp4'}", f"left={data / 'stills'}",
                      "--count", "6", "--resize", "320x180", "--print-frames",
                      "--wait-subscribers", "1", "--wait-timeout", "30"),
        env=_player_env(ros_env), cwd=REPO, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    front = probe.wait_count("/front/image", 6, timeout=10)
    left = probe.wait_count("/left/image", 6, timeout=10)
    assert len(front) == len(left) == 6
    # each camera's frame_id is its name; one node publishes both
    assert {m.header.frame_id for m in front} == {"front"}
    assert {m.header.frame_id for m in left} == {"left"}
    assert {(m.width, m.height) for m in front + left} == {(320, 180)}
    # Each at its own source's pacing: never faster than its schedule (stills 10 Hz: 6 frames
    # take at least 0.5 s; the video's 25 Hz would take 0.2 s), however busy the machine.
    left_span = (stamp_ns(left[-1].header.stamp) - stamp_ns(left[0].header.stamp)) / 1e9
    assert left_span >= 0.45
    lines = result.stdout.splitlines()
    assert "front: published 6 frames on /front/image (320x180 rgb8, reliable)" in result.stdout
    assert "left: published 6 frames on /left/image (320x180 rgb8, reliable)" in result.stdout
    left_frames = [line.split() for line in lines if line.startswith("left: frame ")]
    assert [words[5] for words in left_frames] == [f"test{i}.jpg" for i in range(1, 7)]
    assert [int(words[4].replace(".", "")) for words in left_frames] == [
        stamp_ns(m.header.stamp) for m in left]
    assert len([line for line in lines if line.startswith("front: frame ")]) == 6


@pytest.mark.slow
def test_lockstep_waits_per_camera_for_its_own_outputs(ros_env, probe, shared):
    """The test process echoes every camera's frames on its own echo topic, except the
    second frame of 'rear': only that camera waits in vain."""
    from sensor_msgs.msg import Image

    seen: dict[str, int] = {"front": 0, "rear": 0}
    for camera in seen:
        echo = probe.node.create_publisher(Image, f"/{camera}/echo", 10)

        def on_image(msg: Image, camera: str = camera, echo=echo) -> None:
            seen[camera] += 1
            if (camera, seen[camera]) != ("rear", 2):
                echo.publish(Image(header=msg.header))

        probe.node.create_subscription(Image, f"/{camera}/image", on_image, 10)
    stills = shared / "data" / "dashcam" / "stills"
    result = _run_player(ros_env, f"front={stills}", f"rear={stills}", "--count", "3",
                         "--rate", "50", "--resize", "320x180", "--lockstep", "echo",
                         "--lockstep-timeout", "2")
    assert result.returncode == 0, result.stderr
    assert seen == {"front": 3, "rear": 3}
    assert "front: published 3 frames on /front/image" in result.stdout
    assert re.search(r"^front: .*: 3/3 outputs came back$", result.stdout, re.M)
    assert re.search(r"^rear: .*: 2/3 outputs came back$", result.stdout, re.M)
    assert "camera rear: no output for frame 1" in result.stderr
    assert "camera front" not in result.stderr


def test_sources_are_one_plain_source_or_named_cameras(tmp_path):
    odd = tmp_path / "a=b.mp4"  # an existing path is never NAME=SOURCE
    odd.touch()
    assert camera_sources([str(odd)]) == [("", str(odd))]
    assert camera_sources(["video.mp4"]) == [("", "video.mp4")]
    assert camera_sources(["front=video.mp4"]) == [("front", "video.mp4")]
    assert camera_sources(["front=a.mp4", "left=stills/", "rear_2=bag/"]) == [
        ("front", "a.mp4"), ("left", "stills/"), ("rear_2", "bag/")]
    with pytest.raises(UsageError, match="a camera name each"):
        camera_sources(["front=a.mp4", "stills/"])
    with pytest.raises(UsageError, match="a camera name each"):
        camera_sources(["front=a.mp4", "2nd=b.mp4"])
    with pytest.raises(UsageError, match="unique, got front, front"):
        camera_sources(["front=a.mp4", "front=b.mp4"])


def test_a_missing_camera_source_is_a_one_line_error(ros_env):
    result = subprocess.run(_play_command("front=/nonexistent/clip.mp4", "left=/nonexistent/"),
                            env=_player_env(ros_env), cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "seg-perception play: error: no such file or folder: /nonexistent/clip.mp4"
    ]
