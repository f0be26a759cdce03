"""The ROS side of the tools and the tests: one way to start, feed, watch and stop a ROS graph.

``play``, ``bench``, ``demo`` and the tests all need the same few things: an environment for a
private graph (:func:`ros_env`), child processes that stop cleanly (:class:`ChildProcess`), a
node of their own that is either spun by a thread or by its waits (:class:`RosNode`), a camera
stand-in (:class:`FramePublisher`) and a consumer that records what comes back
(:class:`TopicRecorder`). rclpy is imported inside functions only: ``play`` must set the Fast
DDS profile before rclpy loads. Helper processes built on these live in
:mod:`seg_perception.tools.graph_process`.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_perception import topics
from seg_perception.fastdds import PROFILE_ENV, use_fastdds_profile

POLL_S = 0.05  # granularity of every wait
MATCH_SETTLE_S = 0.5  # after discovery: matching completes on the other side a moment later
STOP_TIMEOUT_S = 15.0  # per signal, before the next one
_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execvp(sys.argv[1], sys.argv[1:])")


def ros_env(domain_id: int | None = None, *, base: Mapping[str, str] | None = None,
            discovery: str = "LOCALHOST", fastdds_profile: bool = True) -> dict[str, str]:
    """Environment for processes of one private graph: its own domain (random unless given
    or set in ``base``), ``discovery`` range, and the shipped Fast DDS profile (large images
    from a publisher) unless one is set; ``fastdds_profile=False`` removes any."""
    env = dict(os.environ if base is None else base)
    if domain_id is not None or not env.get("ROS_DOMAIN_ID"):
        env["ROS_DOMAIN_ID"] = str(random.randint(1, 101) if domain_id is None else domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    env.update(PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0",
               RCUTILS_COLORIZED_OUTPUT="0")
    if fastdds_profile:
        use_fastdds_profile(env)
    else:
        env.pop(PROFILE_ENV, None)
    return env


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (exact, hashable)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def wait_for(condition: Callable[[], Any], timeout: float | None, what: str,
             step: Callable[[float], None] = time.sleep) -> Any:
    """``condition()``'s first true value; TimeoutError naming ``what`` after ``timeout`` s.
    ``step(seconds)`` passes the time between tries (a sleep, or spinning a node)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (value := condition()):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        step(POLL_S)
    return value


class ChildProcess:
    """A process of the graph with its output in a log file; :meth:`stop` ends it the way
    Ctrl-C would. ``pipe``: text stdin and stdout are pipes to this process (the log gets
    stderr)."""

    def __init__(self, command: Sequence[str], log: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, pipe: bool = False) -> None:
        command = list(command)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # A non-interactive shell starts background jobs with SIGINT ignored, and that is
            # inherited through exec: restore it, or SIGINT could not stop the child.
            command = [sys.executable, "-c", _DEFAULT_SIGINT, *command]
        self.log = log
        self.stopped_by: str | None = None  # the signal that ended it, once stopped
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, env=None if env is None else dict(env), cwd=cwd, text=pipe,
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else out, stderr=out if pipe else subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def wait_for_log(self, text: str, timeout: float) -> str:
        """The log once it contains ``text``; RuntimeError with its end if the process exits
        first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while text not in (content := self.log_text()):
            if self.poll() is not None:
                raise RuntimeError(f"{self.log.stem} exited with {self.process.returncode} "
                                   f"before logging {text!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{text!r} not in the log of {self.log.stem} after "
                                   f"{timeout:g} s:\n{self.tail()}")
            time.sleep(0.1)
        return content

    def rss(self) -> int:
        """Resident memory of the process in bytes."""
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGINT (what Ctrl-C sends), then SIGTERM, then kill; the exit code. Safe twice."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if self.poll() is not None:
                break
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
                self.stopped_by = sig.name
            except subprocess.TimeoutExpired:
                continue
        if self.poll() is None:
            self.process.kill()
            self.process.wait()
            self.stopped_by = "SIGKILL"
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        return self.process.returncode


def node_command(*ros_args: str) -> list[str]:
    """The segmentation node as a process, with ``--ros-args ros_args``."""
    return [sys.executable, "-m", "seg_perception.node", "--ros-args", *ros_args]


class Stopped(Exception):
    """SIGINT or SIGTERM asked a :class:`RosNode` to stop (raised by its next wait)."""


class RosNode:
    """An rclpy node in its own context: a thread spins it (``background``), or its waits do.

    ``handle_signals``: SIGINT and SIGTERM only set :attr:`stop_requested` (every wait then
    raises :class:`Stopped`), so a stop never lands inside rclpy.
    """

    def __init__(self, name: str, *, domain_id: int | None = None, background: bool = False,
                 handle_signals: bool = False) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.stop_requested = threading.Event()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._previous: dict[int, Any] = {}
        if handle_signals:
            self._previous = {sig: signal.signal(sig, lambda *_: self.stop_requested.set())
                              for sig in (signal.SIGINT, signal.SIGTERM)}
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception as exc:  # noqa: BLE001 - shown; the waits for its callbacks time out
            if self.context.ok():
                print(f"{self.node.get_name()}: spinning failed: {exc!r}", file=sys.stderr)

    def check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise Stopped

    def step(self, seconds: float) -> None:
        """Let ``seconds`` pass, serving callbacks unless a thread spins the node."""
        self.check_stop()
        if self._thread is not None:
            self.stop_requested.wait(seconds)
        else:
            self.executor.spin_once(timeout_sec=seconds)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (remaining := end - time.monotonic()) > 0:
            self.step(min(remaining, POLL_S))
        self.check_stop()

    def wait_for(self, condition: Callable[[], Any], timeout: float | None, what: str) -> Any:
        """:func:`wait_for` that serves this node's callbacks meanwhile and honours stops."""
        return wait_for(lambda: self.check_stop() or condition(), timeout, what, self.step)

    def subscribe_to_publishers(self, topic: str, msg_type: type, callback: Callable[[Any], None],
                                depth: int = 10, timeout: float | None = 30.0) -> Any:
        """A subscription to ``topic`` that asks for the reliability its publishers offer,
        once there is one, and matched (so nothing published from now on is missed)."""
        resolved = self.node.resolve_topic_name(topic)
        reliability = self.wait_for(lambda: topics.offered_reliability(self.node, resolved),
                                    timeout, f"a publisher of {resolved}")
        subscription = self.node.create_subscription(
            msg_type, resolved, callback, topics.stream_profile(reliability, depth))
        self.wait_for(lambda: subscription.get_publisher_count() > 0, timeout,
                      f"the subscription to {resolved} to match")
        return subscription

    def call(self, srv_type: type, service: str, request: Any, timeout: float = 10.0) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            self.wait_for(lambda: client.service_is_ready(), timeout, f"service {service}")
            future = client.call_async(request)
            self.wait_for(future.done, timeout, f"an answer from {service}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, target: str, values: Mapping[str, Any],
                       timeout: float = 10.0) -> list[Any]:
        """SetParameters on node ``target`` (fully qualified): one result per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.call(SetParameters, f"{target}/set_parameters", request, timeout).results

    def get_parameters(self, target: str, names: Sequence[str], timeout: float = 10.0) -> list:
        """The Python values of ``target``'s parameters ``names``."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        response = self.call(GetParameters, f"{target}/get_parameters",
                             GetParameters.Request(names=list(names)), timeout)
        return [parameter_value_to_python(value) for value in response.values]

    def close(self) -> None:
        """Stop spinning, destroy the node, shut the context down; safe twice."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self.context.ok():
            self.executor.shutdown(timeout_sec=2.0)
            self.node.destroy_node()
            self.context.try_shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


class TopicRecorder(RosNode):
    """A node that records what arrives on its topics: (receipt ns, message), or with
    ``stamps_only`` (header stamp ns, receipt ns), which a latency measurement needs without
    keeping every image."""

    def __init__(self, name: str, **options: Any) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, list[tuple[int, Any]]] = {}
        self.subscriptions: dict[str, Any] = {}
        super().__init__(name, **options)

    def record(self, topic: str, msg_type: type, *, reliability: str = "reliable",
               depth: int = 50, transient_local: bool = False, stamps_only: bool = False) -> None:
        """Record ``topic`` from now on (a topic already recorded keeps its subscription)."""
        if topic in self.subscriptions:
            return
        profile = topics.latched_profile() if transient_local else topics.stream_profile(
            reliability, depth)
        with self._lock:
            records = self._records.setdefault(topic, [])

        def store(msg: Any) -> None:
            receipt = time.time_ns()
            with self._lock:
                records.append((stamp_ns(msg.header.stamp), receipt) if stamps_only
                               else (receipt, msg))

        self.subscriptions[topic] = self.node.create_subscription(msg_type, topic, store, profile)

    def unsubscribe(self, topic: str) -> None:
        subscription = self.subscriptions.pop(topic, None)
        if subscription is not None:
            self.node.destroy_subscription(subscription)

    def records(self, topic: str) -> list[tuple[int, Any]]:
        """(receipt ns, message) or, for a ``stamps_only`` topic, (stamp ns, receipt ns)."""
        with self._lock:
            return list(self._records.get(topic, ()))

    def messages(self, topic: str) -> list[Any]:
        return [msg for _, msg in self.records(topic)]

    def timed(self, topic: str) -> list[tuple[float, Any]]:
        """(receipt time in s since the epoch, message): comparable with header stamps."""
        return [(receipt / 1e9, msg) for receipt, msg in self.records(topic)]

    def wait_count(self, topic: str, count: int, timeout: float) -> list[Any]:
        """The messages on ``topic`` once ``count`` arrived, or what arrived by ``timeout``."""
        try:
            self.wait_for(lambda: len(self.records(topic)) >= count, timeout, topic)
        except TimeoutError:
            pass
        return self.messages(topic)

    def clear(self, *topics_: str) -> None:
        with self._lock:
            for topic in topics_ or list(self._records):
                self._records.get(topic, []).clear()

    def all_matched(self) -> bool:
        return all(s.get_publisher_count() > 0 for s in self.subscriptions.values())


class NodeCounters:
    """The newest status of one node on /diagnostics: its values and when it was made."""

    def __init__(self, ros: RosNode, node_name: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.ros = ros
        self.node_name = node_name  # the status name ends with it (e.g. "/segmentation")
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._stamp_ns = 0
        self._subscription = ros.node.create_subscription(
            DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics,
            topics.stream_profile("best_effort", 10))  # matches any publisher

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.endswith(self.node_name) and "frames_received" in values:
                with self._lock:
                    self._values, self._stamp_ns = values, stamp_ns(msg.header.stamp)

    def latest(self) -> tuple[int, dict[str, str]]:
        """(stamp ns of the status, its values); (0, {}) before the first."""
        with self._lock:
            return self._stamp_ns, dict(self._values)

    def fresh(self, after_ns: int, timeout: float) -> dict[str, str]:
        """Values of a status made after ``after_ns``; the newest ones after ``timeout``."""
        def made_after() -> dict[str, str] | None:
            stamp, values = self.latest()
            return values if stamp > after_ns else None

        try:
            return self.ros.wait_for(made_after, timeout, "fresh diagnostics")
        except TimeoutError:
            return self.latest()[1]

    def idle(self) -> tuple[int, int] | None:
        """:meth:`frames` once the node has settled every frame it received."""
        frames = self.frames()
        return frames if frames is not None and frames[0] == frames[1] else None

    def frames(self) -> tuple[int, int] | None:
        """(received, settled): settled = processed + rejected + dropped + failed."""
        values = self.latest()[1]
        if not values:
            return None
        settled = sum(int(values[f"frames_{k}"])
                      for k in ("processed", "rejected", "dropped", "failed"))
        return int(values["frames_received"]), settled


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
