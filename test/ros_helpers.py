"""Helpers for tests that talk to the node over real DDS, in separate processes.

The node and the image publishers run in processes of their own (like a camera driver), built
on :mod:`seg_perception.tools.rosgraph`; the test process records the outputs with a
:class:`~seg_perception.tools.rosgraph.TopicRecorder`. Publishers run in lockstep by default:
the next frame only once the node's label map for the previous one came back (or, for frames
that produce no output, once the node's counters show it settled), so a test never depends on
how fast the node is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg_perception import topics
from seg_perception.tools.graph_process import publish_command, write_messages
from seg_perception.tools.rosgraph import ChildProcess, TopicRecorder, node_command, ros_env

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 90.0
LOCKSTEP_TIMEOUT = 60.0  # one frame through a busy node (a swapped-in Cityscapes model: s)


# --- messages (test process -> publisher process) ---------------------------------------------


@dataclass
class RawImage:
    """The fields of one sensor_msgs/Image to publish (any of them may be deliberately wrong)."""

    encoding: str
    height: int
    width: int
    step: int
    data: bytes
    is_bigendian: int = 0


@dataclass
class Compressed:
    """The fields of one sensor_msgs/CompressedImage to publish."""

    format: str
    data: bytes


def raw_image(pixels: np.ndarray, encoding: str) -> RawImage:
    """A well-formed message from an array already in ``encoding``'s layout."""
    height, width = pixels.shape[:2]
    step = width * (pixels.shape[2] if pixels.ndim == 3 else 1)
    return RawImage(encoding, height, width, step, np.ascontiguousarray(pixels).tobytes())


# --- the node and publishers in processes of their own ----------------------------------------


@dataclass
class RunningNode:
    process: ChildProcess
    namespace: str

    @property
    def fqn(self) -> str:
        return f"/{self.namespace}/{topics.NODE_NAME}"

    def topic(self, name: str) -> str:
        return f"/{self.namespace}/{name}"

    def log(self) -> str:
        return self.process.log_text()


def launch_node(env: dict[str, str], workdir: Path, namespace: str, *ros_args: str
                ) -> RunningNode:
    """``python -m seg_perception.node`` in ``/namespace``, once it is ready for frames."""
    process = ChildProcess(node_command("-r", f"__ns:=/{namespace}", *ros_args),
                           workdir / f"{namespace}.log", ros_env(base=env), cwd=REPO)
    process.wait_for_log("ready:", START_TIMEOUT)
    return RunningNode(process, namespace)


@dataclass
class Published:
    """A publisher process and what it sent (once it ended)."""

    process: ChildProcess
    out: Path

    def sent(self) -> dict[str, dict[str, int]]:
        """frame_id -> {"seq", "index" (into the messages), "sec", "nanosec"}."""
        if not self.out.exists():
            return {}
        data = json.loads(self.out.read_text())
        return {frame_id: {"seq": seq, "index": seq % data["messages"],
                           "sec": stamp // 1_000_000_000, "nanosec": stamp % 1_000_000_000}
                for seq, (stamp, frame_id) in enumerate(zip(data["sent"], data["frame_ids"],
                                                            strict=True))}


def publish(env: dict[str, str], workdir: Path, node: RunningNode, messages: list[Any], *,
            name: str, count: int | None = None, lockstep: bool = True, rate: float = 0.0,
            reliability: str = "reliable", fastdds_profile: bool = True,
            topic: str = topics.IMAGE, camera: str = "", wait: bool = True,
            **options: Any) -> Published:
    """Publish ``messages`` (``count`` in all, default one pass) to ``node`` from another
    process; frame ids are ``<name><seq>``.

    ``camera``: to that camera of a multi-camera node (its topic, label map, diagnostics).
    ``lockstep``: each frame once the previous one's label map came back, or once the node's
    diagnostics show it received and settled it (frames without output, failed frames).
    Otherwise at ``rate`` Hz (0: as fast as possible). ``options`` go to the publisher as flags
    (``same_qos``). ``wait``: until it ends, successfully.
    """
    messages_file = write_messages(workdir / f"{name}.pkl", [vars(m) for m in messages])
    out = workdir / f"{name}.json"
    out.unlink(missing_ok=True)
    command = publish_command(
        messages_file, node.topic(topics.camera_topic(camera, topic)), out,
        reliability=reliability, rate=rate, count=count, frame_id=f"{name}{{seq}}",
        wait_timeout=30,
        lockstep=node.topic(topics.camera_topic(camera, topics.LABEL_MAP)) if lockstep else None,
        counters_of=node.fqn + (f"/{camera}" if camera else "") if lockstep else None,
        lockstep_timeout=LOCKSTEP_TIMEOUT, **options)
    process = ChildProcess(command, workdir / f"{name}.log",
                           ros_env(base=env, fastdds_profile=fastdds_profile), cwd=REPO)
    published = Published(process, out)
    if wait:
        code = process.wait(240.0)
        assert code == 0 and out.exists(), process.tail()
    return published


# --- the test process as a ROS participant ---------------------------------------------------


def probe_node(domain_id: int) -> TopicRecorder:
    """The test process's node: records topics, calls parameter services, spins in a thread."""
    return TopicRecorder(f"test_probe_{os.getpid()}", domain_id=domain_id, background=True)


def diagnostic_values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def node_statuses(probe: TopicRecorder, name_part: str) -> list[Any]:
    """Every DiagnosticStatus whose name contains ``name_part`` (e.g. the node's fully
    qualified name) received so far on /diagnostics, oldest first."""
    return [status for array in probe.messages(topics.DIAGNOSTICS) for status in array.status
            if name_part in status.name]
