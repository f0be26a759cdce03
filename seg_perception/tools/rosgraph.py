"""The ROS side of the tools and the tests: one way to start, feed, watch and stop a ROS graph.

``play``, ``bench``, ``demo`` and the tests all need the same few things: an environment for a
private graph (:func:`ros_env`), child processes that stop cleanly (:class:`ChildProcess`), a
node of their own that is either spun by a thread or by its waits (:class:`RosNode`), a
consumer that records what comes back (:class:`TopicRecorder`) and the node's counters from
its diagnostics (:class:`NodeCounters`); the camera stand-in that feeds the node is
:class:`~seg_perception.tools.frame_publisher.FramePublisher`. rclpy is imported inside
functions only: ``play`` must set the Fast DDS profile before rclpy loads. Helper processes
built on these live in :mod:`seg_perception.tools.graph_process`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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
