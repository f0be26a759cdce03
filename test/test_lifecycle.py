"""The managed node (``segmentation_lifecycle_node``) driven through its lifecycle over real DDS.

An independent client calls the standard lifecycle services (lifecycle_msgs), as Nav2's
lifecycle manager or ``ros2 lifecycle`` would: each transition in order, nothing published
while inactive, the model's memory given back on cleanup, a configure that fails with its
reason and leaves the node alive, and a clean shutdown.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from ros_helpers import REPO, RunningNode, publish, raw_image

from seg_perception import topics
from seg_perception.tools.rosgraph import ChildProcess

pytestmark = pytest.mark.slow

LIFECYCLE_NODE = [sys.executable, "-m", "seg_perception.node", "--managed"]


@pytest.fixture(scope="module")
def env(domain) -> dict[str, str]:
    return domain["env"]


def start_managed(env: dict[str, str], workdir: Path, namespace: str, *ros_args: str
                  ) -> RunningNode:
    process = ChildProcess([*LIFECYCLE_NODE, "--ros-args", "-r", f"__ns:=/{namespace}",
                            *ros_args], workdir / f"{namespace}.log", env, cwd=REPO)
    return RunningNode(process, namespace)


def state_of(probe, node: RunningNode, tries: int = 6) -> str:
    """The node's lifecycle state. Asked again if no answer comes: right after a restart a
    request can go to the old process's service, whose leaving is still being discovered."""
    from lifecycle_msgs.srv import GetState

    for attempt in range(tries):
        try:
            return probe.call(GetState, f"{node.fqn}/get_state", GetState.Request(),
                              5.0).current_state.label
        except TimeoutError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def change(probe, node: RunningNode, transition: int, timeout: float = 120.0) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request(transition=Transition(id=transition))
    return probe.call(ChangeState, f"{node.fqn}/change_state", request, timeout).success


def goes_to(probe, node: RunningNode, transition: int, state: str) -> None:
    """``transition`` succeeds and the node is then in ``state``."""
    assert change(probe, node, transition), node.log()
    assert state_of(probe, node) == state


def outputs_while(probe, env, workdir, node: RunningNode, frame, name: str) -> int:
    """Label maps that come back for 5 frames sent at 5 Hz (no lockstep: the node may be
    silent on purpose)."""
    from sensor_msgs.msg import Image

    topic = node.topic(topics.LABEL_MAP)
    probe.record(topic, Image)
    probe.clear(topic)
    publish(env, workdir, node, [frame], name=name, count=5, lockstep=False, rate=5.0,
            wait_subscribers=0)
    time.sleep(1.5)  # anything still on its way
    return sum(m.header.frame_id.startswith(name) for m in probe.messages(topic))


def test_transitions_in_order_with_no_output_while_inactive(env, workdir, probe,
                                                           dashcam_still):
    from lifecycle_msgs.msg import Transition

    node = start_managed(env, workdir, "managed")
    frame = raw_image(dashcam_still("test1"), "rgb8")
    try:
        assert state_of(probe, node) == "unconfigured"
        unconfigured_rss = node.process.rss()
        goes_to(probe, node, Transition.TRANSITION_CONFIGURE, "inactive")
        assert outputs_while(probe, env, workdir, node, frame, "inactive") == 0
        goes_to(probe, node, Transition.TRANSITION_ACTIVATE, "active")
        publish(env, workdir, node, [frame], name="active", count=3)  # lockstep: all 3 back
        active_rss = node.process.rss()
        goes_to(probe, node, Transition.TRANSITION_DEACTIVATE, "inactive")
        assert outputs_while(probe, env, workdir, node, frame, "paused") == 0
        pid = node.process.pid
        goes_to(probe, node, Transition.TRANSITION_CLEANUP, "unconfigured")
        # The process starts afresh in place (same pid): wait for the new node's answer.
        probe.wait_for(lambda: node.log().count("Fast DDS profile: ") >= 2, 60.0,
                       "the restarted process")
        assert state_of(probe, node) == "unconfigured" and node.process.pid == pid
        cleaned_rss = node.process.rss()
        print(f"RSS unconfigured {unconfigured_rss / 2**20:.0f} MB, active "
              f"{active_rss / 2**20:.0f} MB, after cleanup {cleaned_rss / 2**20:.0f} MB")
        assert cleaned_rss <= 0.5 * active_rss, "cleanup must give the model's memory back"

        assert change(probe, node, Transition.TRANSITION_CONFIGURE)  # again, from scratch
        assert change(probe, node, Transition.TRANSITION_ACTIVATE)
        publish(env, workdir, node, [frame], name="again", count=2)
        assert change(probe, node, Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert node.process.wait(30) == 0
        assert "Traceback" not in node.log(), node.log()
    finally:
        node.process.stop()


def test_a_bad_model_fails_configure_with_its_reason_and_the_node_stays_up(env, workdir,
                                                                          probe):
    from lifecycle_msgs.msg import Transition

    node = start_managed(env, workdir, "badmodel", "-p", "model:=/nonexistent/model.pt")
    try:
        assert state_of(probe, node) == "unconfigured"
        assert not change(probe, node, Transition.TRANSITION_CONFIGURE)
        assert state_of(probe, node) == "unconfigured"  # alive, still unconfigured
        assert "model file not found: /nonexistent/model.pt" in node.log()
        status = probe.wait_for(
            lambda: [s for a in probe.messages(topics.DIAGNOSTICS) for s in a.status
                     if s.name.endswith(node.fqn) and "configure failed" in s.message][-1:],
            10.0, "the failed configure on /diagnostics")[0]
        assert status.level == b"\x02" and "/nonexistent/model.pt" in status.message
        # Fixed by a parameter: configure works now.
        [result] = probe.set_parameters(node.fqn, {"model": "espnet-camvid"})
        assert result.successful, result.reason
        goes_to(probe, node, Transition.TRANSITION_CONFIGURE, "inactive")
    finally:
        assert node.process.stop() == 0
