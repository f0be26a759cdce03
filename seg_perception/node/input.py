"""A camera's input: its subscription, QoS that matches the publishers, stalled-input watch.

``input_qos: auto`` does what rosbag2 does: it looks at the publishers on the topic and
subscribes reliable only when every one of them is (:func:`decide_reliability`, ROS-free), and
re-subscribes when they change. :class:`StallMonitor` notices a matched publisher whose frames
never arrive (best-effort large images with Fast DDS's default transports) and
:func:`stall_hint` names the fix.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from seg_perception import topics
from seg_perception.fastdds import PROFILE_NAME, find_fastdds_profile

__all__ = ["CameraInput", "StallMonitor", "decide_reliability", "stall_hint"]


def decide_reliability(
    input_qos: str, publisher_reliabilities: Sequence[str], current: str | None = None
) -> tuple[str, str]:
    """(``"reliable"`` | ``"best_effort"``, reason) for the input subscription.

    ``auto`` follows rosbag2: reliable only when every publisher on the topic offers reliable
    (a reliable subscription cannot match a best-effort publisher, and a best-effort one gets
    fragmented large frames from a reliable publisher without repair). With no publisher yet,
    the current choice is kept (reliable at first) and revisited when one appears.
    """
    if input_qos == "reliable":
        return "reliable", "input_qos=reliable"
    if input_qos == "sensor_data":
        return "best_effort", "input_qos=sensor_data"
    if input_qos != "auto":
        raise ValueError(f"unknown input_qos {input_qos!r}")
    if not publisher_reliabilities:
        if current is None:
            return "reliable", "auto: no publisher yet"
        return current, f"auto: no publisher now, keeping {current}"
    best_effort = sum(1 for r in publisher_reliabilities if r != "reliable")
    total = len(publisher_reliabilities)
    if best_effort == 0:
        return "reliable", f"auto: all {total} publisher(s) reliable"
    return "best_effort", f"auto: {best_effort} of {total} publisher(s) best effort"


class StallMonitor:
    """Detects "a publisher is matched but no frame arrived for ``timeout`` seconds".

    The clock starts when the first publisher matches (or the subscription is re-created) and
    restarts with every frame; a stall ends with the next frame or when no publisher is left.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._matched_since: float | None = None
        self._last_frame: float | None = None

    def publishers(self, matched: int, now: float) -> None:
        if matched <= 0:
            self._matched_since = None
        elif self._matched_since is None:
            self._matched_since = now

    def frame(self, now: float) -> None:
        self._last_frame = now

    def reset(self) -> None:
        """A new subscription: forget history, start again."""
        self._matched_since = None
        self._last_frame = None

    def stalled_for(self, now: float) -> float | None:
        """Seconds without input while matched, once that exceeds the timeout; else None."""
        if self._matched_since is None:
            return None
        since = max(self._matched_since, self._last_frame or -math.inf)
        quiet = now - since
        return quiet if quiet >= self.timeout else None


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


class CameraInput:
    """The subscription of one camera's images; every frame goes to ``on_frame(msg, now)``.

    :meth:`watch` (the node's timer) re-decides the reliability when publishers come and go
    and returns a warning while the input is stalled.
    """

    def __init__(self, node: Any, topic: str, compressed: bool, input_qos: str, depth: int,
                 stall_timeout: float, on_frame: Callable[[Any, float], None]) -> None:
        from sensor_msgs.msg import CompressedImage, Image

        self.node = node
        self.topic = node.resolve_topic_name(topic)
        self.compressed = compressed
        self.msg_type = CompressedImage if compressed else Image
        self.input_qos = input_qos
        self.depth = depth
        self.stall = StallMonitor(stall_timeout)
        self.lost_in_transport = 0
        self._on_frame = on_frame
        self._known: list[tuple[bytes, str]] | None = None
        self.reliability, self.qos_reason = decide_reliability(input_qos, [], None)
        self._subscription: Any = None
        self._subscribe()

    def _subscribe(self) -> None:
        """(Re)create the subscription with the current reliability."""
        from rclpy.event_handler import SubscriptionEventCallbacks

        if self._subscription is not None:
            self.node.destroy_subscription(self._subscription)
        profile = topics.stream_profile(self.reliability, self.depth)
        events = SubscriptionEventCallbacks(message_lost=self._on_message_lost)
        try:
            self._subscription = self.node.create_subscription(
                self.msg_type, self.topic, self._receive, profile, event_callbacks=events)
        except Exception:  # noqa: BLE001 - an RMW without the message-lost event
            self._subscription = self.node.create_subscription(
                self.msg_type, self.topic, self._receive, profile)
        self.stall.reset()

    def _receive(self, msg: Any) -> None:
        now = time.monotonic()
        self.stall.frame(now)
        self._on_frame(msg, now)

    def _on_message_lost(self, info: Any) -> None:
        self.lost_in_transport = int(info.total_count)

    def watch(self) -> tuple[str | None, str | None]:
        """(a QoS change to log or None, a stalled-input warning or None)."""
        change = None
        publishers = topics.publisher_reliabilities(self.node, self.topic)
        if self.input_qos == "auto" and publishers != self._known:
            self._known = publishers
            wanted, self.qos_reason = decide_reliability(
                "auto", [r for _, r in publishers], self.reliability)
            if wanted != self.reliability:
                change = (f"input QoS: {self.reliability} -> {wanted} on {self.topic} "
                          f"({self.qos_reason})")
                self.reliability = wanted
                self._subscribe()
        now = time.monotonic()
        self.stall.publishers(self._subscription.get_publisher_count(), now)
        stalled = self.stall.stalled_for(now)
        warning = None
        if stalled is not None:
            warning = (f"input stalled: a publisher is matched on {self.topic} "
                       f"({self.reliability}) but no frame arrived for {stalled:.1f} s; likely "
                       f"fix: {stall_hint(self.reliability)}")
        return change, warning

    def destroy(self) -> None:
        if self._subscription is not None:
            self.node.destroy_subscription(self._subscription)
            self._subscription = None
