"""What a ROS user meets when starting the node by hand (``ros2 run``) and tuning it live.

The node runs as ``segmentation_node`` would under ``ros2 run``: no Fast DDS profile and no
warning filters in its environment, an empty model cache. Over real DDS it must still deliver
every best-effort 1280x720 overlay (it loads the large-data profile itself), say once that it
exports the built-in model, print no torch deprecation noise, and take the run-time parameter
changes a user makes the way ``ros2 param set`` makes them.
"""

from __future__ import annotations

import time

import pytest
from ros_helpers import REPO, RunningNode, publish, raw_image

from seg_perception import topics
from seg_perception.tools.rosgraph import ChildProcess, node_command, ros_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bare(domain, workdir):
    """The node started like ``ros2 run seg_perception segmentation_node`` on a fresh machine:
    no profile, no PYTHONWARNINGS, an empty model cache (the CamVid model: a fast export)."""
    env = ros_env(domain["id"], base=domain["env"], fastdds_profile=False)
    env.pop("PYTHONWARNINGS", None)
    env["SEG_PERCEPTION_CACHE"] = str(workdir / "fresh-cache")
    process = ChildProcess(node_command("-r", "__ns:=/bare", "-p", "model:=espnet-camvid"),
                           workdir / "bare-node.log", env, cwd=REPO)
    process.wait_for_log("ready:", 180.0)
    node = RunningNode(process, "bare")
    yield node
    assert process.stop() == 0


def test_it_loads_its_own_large_data_profile_and_every_best_effort_overlay_arrives(
        domain, workdir, probe, bare, dashcam_still):
    from sensor_msgs.msg import Image

    overlay = bare.topic(topics.OVERLAY)
    probe.record(overlay, Image, reliability="best_effort", depth=100)
    probe.wait_for(lambda: probe.node.get_publishers_info_by_topic(overlay), 20.0,
                   "the overlay publisher")
    time.sleep(1.0)
    frame = raw_image(dashcam_still("test4"), "rgb8")  # 1280x720
    publish(domain["env"], workdir, bare, [frame], name="bare", count=20)  # lockstep
    time.sleep(1.0)
    arrived = [m for m in probe.messages(overlay) if m.header.frame_id.startswith("bare")]
    assert len(arrived) == 20, f"{len(arrived)} of 20 best-effort overlays\n{bare.log()}"
    assert all((m.width, m.height) == (1280, 720) for m in arrived)
    log = bare.log()
    assert "Fast DDS profile: " in log and "fastdds_shm.xml" in log


def test_first_start_says_it_exports_and_prints_no_torch_noise(bare):
    log = bare.log()
    assert "exporting built-in model espnet-camvid" in log and "first use" in log
    assert "FutureWarning" not in log and "deprecated" not in log, log


def test_run_time_changes_as_ros2_param_set_makes_them(probe, bare):
    def values() -> dict[str, str]:
        after = time.time()
        return probe.wait_for(lambda: next((
            {kv.key: kv.value for kv in s.values} for t, a in reversed(
                probe.timed(topics.DIAGNOSTICS)) if t > after for s in a.status
            if s.name.endswith(bare.fqn) and s.values), None), 10.0, "fresh diagnostics")

    def set_value(name: str, value) -> object:
        [result] = probe.set_parameters(bare.fqn, {name: value})
        return result

    default_threads = values()["threads"]
    assert set_value("num_threads", 1).successful
    probe.wait_for(lambda: values()["threads"] == "1", 20.0, "one thread")
    assert set_value("num_threads", 0).successful  # back to the libraries' default
    probe.wait_for(lambda: values()["threads"] == default_threads, 20.0, "default threads")

    assert set_value("overlay_alpha", 1).successful  # an integer is a fine number
    assert probe.get_parameters(bare.fqn, ["overlay_alpha"]) in ([1], [1.0])
    assert set_value("overlay_alpha", 0.5).successful

    missing = set_value("model_path", "/nonexistent/mine.pt")
    assert not missing.successful
    assert missing.reason.startswith("parameter 'model_path': model file not found")

    assert set_value("device_fallback", False).successful  # no reload for that
    time.sleep(1.0)
    assert "loading model" not in bare.log()
