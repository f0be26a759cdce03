"""A camera stand-in for the tools and the tests: frames out on a topic, at a rate or in
lockstep with the node (the next frame only after the previous one's output, or after the
node's counters show it was dropped or rejected), with a log of what was sent."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from seg_perception import topics
from seg_perception.tools.rosgraph import (
    MATCH_SETTLE_S,
    NodeCounters,
    RosNode,
    Stopped,
    stamp_ns,
)

__all__ = ["FramePublisher", "Outgoing", "PublishLog", "at_rate"]


@dataclass
class Outgoing:
    """One frame to publish: the message, when (s after the first frame), its stamp (None:
    the time of publishing), frame_id (None: the message's own) and the caller's ``tag``."""

    msg: Any
    at_s: float = 0.0
    stamp_ns: int | None = None
    frame_id: str | None = None
    tag: Any = None


def at_rate(messages: Sequence[Any], rate: float, count: int | None = None,
            frame_id: str | None = None) -> Iterator[Outgoing]:
    """``messages`` over and over, ``count`` in all (None: for ever), at ``rate`` Hz (0: as
    fast as possible); ``frame_id`` may use ``{seq}``."""
    for seq in range(count) if count is not None else itertools.count():
        yield Outgoing(messages[seq % len(messages)], seq / rate if rate > 0 else 0.0,
                       frame_id=None if frame_id is None else frame_id.format(seq=seq))


@dataclass
class PublishLog:
    """What a :class:`FramePublisher` did."""

    sent: list[int] = field(default_factory=list)  # header stamps (ns), in order
    frame_ids: list[str] = field(default_factory=list)
    first_s: float | None = None  # monotonic time of the first and the last publish
    last_s: float | None = None
    late: int = 0  # frames more than ``max_lag_s`` behind schedule (no catch-up burst)
    echoed: int = 0  # lockstep: frames settled in time
    timeouts: int = 0  # lockstep: frames not settled within the timeout
    pauses: list[float] = field(default_factory=list)  # time in ``between``, per frame
    seconds: float = 0.0  # publishing time without the pauses
    cpu_seconds: float = 0.0
    interrupted: bool = False

    def achieved_hz(self) -> float:
        if len(self.sent) < 2 or self.first_s is None or self.last_s is None:
            return 0.0
        span = self.last_s - self.first_s
        return (len(self.sent) - 1) / span if span > 0 else 0.0


class FramePublisher:
    """A camera stand-in on ``ros``: publishes frames on schedule, or in lockstep.

    Lockstep (:meth:`lockstep`): the next frame only once the previous one is settled: an
    Image with its stamp came back on the echo topic, or (``counters_of``) that node's
    diagnostics show it received the frame and settled everything it received, which also
    covers frames that produce no output. Nothing queues up, so a slow consumer loses nothing.
    """

    def __init__(self, ros: RosNode, topic: str, msg_type: type, reliability: str = "reliable",
                 depth: int = 5) -> None:
        self.ros = ros
        self.reliability = reliability
        self.publisher = ros.node.create_publisher(msg_type, topic,
                                                   topics.stream_profile(reliability, depth))
        self.topic = self.publisher.topic_name
        self.log = PublishLog()
        self._echo: Any = None
        self._echoed: int | None = None
        self._counters: NodeCounters | None = None
        self._base = (0, 0)

    def wait_for_subscribers(self, count: int = 1, timeout: float | None = None,
                             same_qos: bool = False) -> None:
        """Until ``count`` subscriptions match (and with ``same_qos`` every subscription on the
        topic asks for this reliability: a subscriber that adapts to its publishers has
        re-subscribed), then a moment for the other side."""
        def ready() -> bool:
            if self.publisher.get_subscription_count() < count:
                return False
            if same_qos and any(
                    topics.reliability_name(info.qos_profile.reliability) != self.reliability
                    for info in self.ros.node.get_subscriptions_info_by_topic(self.topic)):
                return False
            return self._echo is None or self._echo.get_publisher_count() > 0

        self.ros.wait_for(ready, timeout, f"{count} subscriber(s) on {self.topic}")
        self.ros.spin_for(MATCH_SETTLE_S)

    def lockstep(self, echo_topic: str, timeout: float | None = 60.0,
                 counters_of: str | None = None) -> None:
        """Settle each frame before the next (see the class); ``counters_of`` is the node's
        fully qualified name, whose diagnostics are waited for until it is idle."""
        from sensor_msgs.msg import Image

        self._echo = self.ros.subscribe_to_publishers(echo_topic, Image, self._on_echo, 5,
                                                      timeout)
        if counters_of is not None:
            self._counters = NodeCounters(self.ros, counters_of)
            self._base = self.ros.wait_for(self._counters.idle, timeout,
                                           f"diagnostics of an idle {counters_of}")

    def _on_echo(self, msg: Any) -> None:
        self._echoed = stamp_ns(msg.header.stamp)

    def _settled(self, stamp: int, sent: int) -> bool:
        if self._echoed == stamp:
            return True
        frames = self._counters.frames() if self._counters is not None else None
        if frames is None:
            return False
        received, settled = frames[0] - self._base[0], frames[1] - self._base[1]
        return received >= sent and settled >= received

    def run(self, frames: Iterable[Outgoing], *, seconds: float | None = None,
            max_lag_s: float = float("inf"), lockstep_timeout: float = 10.0,
            on_sent: Callable[[Outgoing, int], None] | None = None,
            between: Callable[[int, int, bool], bool] | None = None) -> PublishLog:
        """Publish ``frames`` at their times (for ``seconds`` at most, pauses excluded).

        ``on_sent(frame, stamp)`` runs after each publish; with lockstep, ``between(index,
        stamp, settled)`` after each frame settled or timed out: the time it takes is a pause,
        and False stops. A stop request ends the run with ``interrupted`` set.
        """
        log = self.log
        lockstep = self._echo is not None
        cpu_start, started = time.process_time(), time.monotonic()
        origin: float | None = None  # monotonic time of at_s == 0
        try:
            for index, item in enumerate(frames):
                if seconds is not None and time.monotonic() - started - sum(log.pauses) >= seconds:
                    break
                now = time.monotonic()
                origin = now - item.at_s if origin is None else origin
                delay = origin + item.at_s - now
                if delay > 0:
                    self.ros.spin_for(delay)
                elif delay < -max_lag_s:
                    origin -= delay  # behind schedule: carry on from now, no burst
                    log.late += not lockstep  # lockstep: waiting is the point
                stamp = self._publish(item)
                if on_sent is not None:
                    on_sent(item, stamp)
                if lockstep and not self._settle(index, stamp, lockstep_timeout, between):
                    break
        except Stopped:
            log.interrupted = True
        log.seconds = time.monotonic() - started - sum(log.pauses)
        log.cpu_seconds = time.process_time() - cpu_start
        return log

    def _publish(self, item: Outgoing) -> int:
        """Stamp and publish one frame; its stamp."""
        from builtin_interfaces.msg import Time

        stamp = item.stamp_ns if item.stamp_ns is not None else time.time_ns()
        sec, nanosec = divmod(stamp, 1_000_000_000)
        item.msg.header.stamp = Time(sec=sec, nanosec=nanosec)
        if item.frame_id is not None:
            item.msg.header.frame_id = item.frame_id
        self.ros.check_stop()
        self.publisher.publish(item.msg)
        log = self.log
        log.last_s = time.monotonic()
        log.first_s = log.first_s or log.last_s
        log.sent.append(stamp)
        log.frame_ids.append(item.msg.header.frame_id)
        return stamp

    def _settle(self, index: int, stamp: int, timeout: float,
                between: Callable[[int, int, bool], bool] | None) -> bool:
        """Lockstep: wait until the frame settled (or ``timeout``); False: stop the run."""
        sent = len(self.log.sent)
        try:
            self.ros.wait_for(lambda: self._settled(stamp, sent), timeout, "the frame's output")
            settled = True
        except TimeoutError:
            settled = False
        self.log.echoed += settled
        self.log.timeouts += not settled
        if between is None:
            return True
        paused = time.monotonic()
        go_on = between(index, stamp, settled)
        self.log.pauses.append(time.monotonic() - paused)
        return go_on

    def finish(self, timeout: float = 5.0) -> bool:
        """Whether reliable subscribers acknowledged every frame within ``timeout``: destroying
        the publisher earlier throws away what they have not fetched yet."""
        from rclpy.duration import Duration

        return not self.log.sent or self.publisher.wait_for_all_acked(Duration(seconds=timeout))
