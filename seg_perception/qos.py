"""QoS for the segmentation node: profiles, publisher discovery and the stalled-input hint.

The decision itself (which reliability ``input_qos: auto`` picks) is ROS-free and lives in
:func:`seg_perception.runtime.decide_reliability`; this module only talks to rclpy.
"""

from __future__ import annotations

import os

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from seg_perception.fastdds import PROFILE_NAME, find_fastdds_profile


def reliability_policy(name: str) -> ReliabilityPolicy:
    """``"reliable"`` / ``"best_effort"`` -> the rclpy policy."""
    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT


def reliability_name(policy: ReliabilityPolicy) -> str:
    return "reliable" if policy == ReliabilityPolicy.RELIABLE else "best_effort"


def stream_profile(reliability: str, depth: int) -> QoSProfile:
    """Keep-last, volatile: for camera input and per-frame outputs (a volatile subscription
    matches both volatile and transient-local publishers)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=reliability_policy(reliability),
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_profile() -> QoSProfile:
    """Reliable + transient local, depth 1: late subscribers get the last message (LabelInfo)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def publisher_reliabilities(node: Node, topic: str) -> list[tuple[bytes, str]]:
    """(gid, reliability) of every publisher on ``topic`` (a fully resolved name)."""
    return sorted(
        (bytes(info.endpoint_gid), reliability_name(info.qos_profile.reliability))
        for info in node.get_publishers_info_by_topic(topic)
    )


def fastdds_profile_path() -> str:
    """Where the shipped Fast DDS profile is, for hints (a placeholder when not found)."""
    found = find_fastdds_profile()
    return str(found) if found else f"<share>/seg_perception/config/{PROFILE_NAME}"


def stall_hint(reliability: str) -> str:
    """The likely fix for "publisher matched, no frame arrives", for the log and diagnostics."""
    if reliability == "best_effort":
        loaded = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
        here = f" (this node has {loaded})" if loaded else ""
        return (
            "best-effort images of 640x480 and larger from another process are lost with Fast "
            "DDS's default transports: start the PUBLISHER with FASTDDS_DEFAULT_PROFILES_FILE="
            f"{fastdds_profile_path()}{here}, or make it publish reliable; otherwise the "
            "publisher is not publishing"
        )
    return "the publisher is matched but not publishing (or its frames are too slow to arrive)"
