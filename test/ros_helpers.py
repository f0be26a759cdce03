"""Helpers for tests that talk to the node over real DDS, in separate processes.

* Run as a script, this is a tiny image publisher (its own process, like a camera driver):
  ``python test/ros_helpers.py --messages FILE.pkl --topic image --rate 30 ...``. It publishes
  the messages stored in FILE.pkl (see :func:`write_messages`), stamps each with the current
  time and a unique ``frame_id``, and writes one JSON line per sent message to ``--log`` so the
  test can match outputs to inputs.
* Imported, it gives the test process a :class:`RosProbe` (subscribes to the node's outputs and
  calls its parameter services) and functions that start the node and the publisher.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO / "config" / "fastdds_shm.xml"


# --- messages on disk (test process -> publisher process) ------------------------------------


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


def write_messages(path: Path, messages: Sequence[RawImage | Compressed]) -> Path:
    """Store messages for the publisher process (pickle of plain dicts: no ROS types)."""
    items = [{"kind": type(m).__name__, **vars(m)} for m in messages]
    path.write_bytes(pickle.dumps(items))
    return path


# --- the publisher process -------------------------------------------------------------------


def _build_message(item: dict[str, Any]):
    from sensor_msgs.msg import CompressedImage, Image

    if item["kind"] == "Compressed":
        return CompressedImage(format=item["format"], data=item["data"])
    return Image(
        encoding=item["encoding"],
        height=item["height"],
        width=item["width"],
        step=item["step"],
        is_bigendian=item["is_bigendian"],
        data=item["data"],  # in the constructor: the fast path
    )


def publish_main(argv: Sequence[str] | None = None) -> int:
    """Publish stored messages at a rate; exits when done (or on SIGINT/SIGTERM)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=Path, required=True)
    parser.add_argument("--topic", default="image")
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second")
    parser.add_argument("--count", type=int, default=0, help="messages in all (0: one pass)")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--wait-subscribers", type=float, default=15.0,
                        help="seconds to wait for a matched subscription before publishing")
    parser.add_argument("--linger", type=float, default=0.5,
                        help="seconds to keep the publisher alive after the last message")
    parser.add_argument("--log", type=Path, help="JSON lines: one per sent message")
    parser.add_argument("--frame-prefix", default="cam")
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Header

    items = pickle.loads(args.messages.read_bytes())
    messages = [_build_message(item) for item in items]
    count = args.count or len(messages)
    rclpy.init()
    node = rclpy.create_node("test_image_publisher")
    reliability = (ReliabilityPolicy.RELIABLE if args.reliability == "reliable"
                   else ReliabilityPolicy.BEST_EFFORT)
    qos = QoSProfile(depth=args.depth, history=HistoryPolicy.KEEP_LAST, reliability=reliability)
    publisher = node.create_publisher(type(messages[0]), args.topic, qos)
    log = args.log.open("a", buffering=1) if args.log else None
    try:
        deadline = time.monotonic() + args.wait_subscribers
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let the reliable handshake finish on both sides
        period = 1.0 / args.rate
        next_time = time.monotonic()
        for seq in range(count):
            index = seq % len(messages)
            msg = messages[index]
            stamp = node.get_clock().now().to_msg()
            msg.header = Header(stamp=stamp, frame_id=f"{args.frame_prefix}{seq}")
            publisher.publish(msg)
            if log:
                log.write(json.dumps({"seq": seq, "index": index, "frame_id": msg.header.frame_id,
                                      "sec": stamp.sec, "nanosec": stamp.nanosec}) + "\n")
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))
        time.sleep(args.linger)
    except KeyboardInterrupt:
        pass
    finally:
        if log:
            log.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# --- starting processes from a test ----------------------------------------------------------


def node_env(base: dict[str, str], fastdds_profile: bool = True) -> dict[str, str]:
    """Environment for a process of ours: the test's ROS domain, optionally the SHM profile."""
    env = dict(base)
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    if fastdds_profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_PROFILE)
    else:
        env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    return env


def start_publisher(
    env: dict[str, str],
    messages_file: Path,
    log_file: Path,
    *,
    topic: str = "image",
    rate: float = 10.0,
    count: int = 0,
    reliability: str = "reliable",
    fastdds_profile: bool = True,
    frame_prefix: str = "cam",
    wait_subscribers: float = 15.0,
) -> subprocess.Popen:
    """The publisher script in its own process."""
    command = [
        sys.executable, __file__, "--messages", str(messages_file), "--topic", topic,
        "--rate", str(rate), "--count", str(count), "--reliability", reliability,
        "--log", str(log_file), "--frame-prefix", frame_prefix,
        "--wait-subscribers", str(wait_subscribers),
    ]
    return subprocess.Popen(command, env=node_env(env, fastdds_profile), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_node(
    env: dict[str, str], log_file: Path, *ros_args: str, fastdds_profile: bool = True
) -> subprocess.Popen:
    """``python -m seg_perception.node --ros-args ...`` with its output in ``log_file``."""
    command = [sys.executable, "-m", "seg_perception.node", "--ros-args", *ros_args]
    with log_file.open("wb") as out:
        return subprocess.Popen(command, env=node_env(env, fastdds_profile), cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_for_log(process: subprocess.Popen, log_file: Path, text: str, timeout: float) -> str:
    """Wait until ``text`` is in the process's log; fail with the log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log_file.read_text(errors="replace")
        if text in content:
            return content
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}:\n{content}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log after {timeout} s:\n"
                         f"{log_file.read_text(errors='replace')}")


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> int:
    """SIGINT (what Ctrl-C sends), then wait; kill only if it hangs."""
    if process.poll() is None:
        process.send_signal(2)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("process did not stop within the timeout after SIGINT") from None
    return process.returncode


def read_sent(log_file: Path) -> dict[str, dict[str, int]]:
    """The publisher's log: frame_id -> {"seq", "index", "sec", "nanosec"}."""
    if not log_file.exists():
        return {}
    sent = {}
    for line in log_file.read_text().splitlines():
        entry = json.loads(line)
        sent[entry["frame_id"]] = entry
    return sent


# --- the test process as a ROS participant ---------------------------------------------------


class RosProbe:
    """An rclpy node in the test process, in its own context and spinning in a thread."""

    def __init__(self, domain_id: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"test_probe_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self._received: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._subscriptions: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass

    def subscribe(self, topic: str, msg_type: type, reliable: bool = True, depth: int = 50,
                  transient_local: bool = False) -> None:
        """Record every message on ``topic`` with its arrival time (time.time()); a topic
        already subscribed keeps its subscription."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        if topic in self._subscriptions:
            return

        qos = QoSProfile(
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=(DurabilityPolicy.TRANSIENT_LOCAL if transient_local
                        else DurabilityPolicy.VOLATILE),
        )

        def store(msg: Any) -> None:
            with self._lock:
                self._received[topic].append((time.time(), msg))

        self._subscriptions[topic] = self.node.create_subscription(msg_type, topic, store, qos)

    def unsubscribe(self, topic: str) -> None:
        subscription = self._subscriptions.pop(topic, None)
        if subscription is not None:
            self.node.destroy_subscription(subscription)

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return [msg for _, msg in self._received[topic]]

    def timed(self, topic: str) -> list[tuple[float, Any]]:
        with self._lock:
            return list(self._received[topic])

    def clear(self, *topics: str) -> None:
        with self._lock:
            for topic in topics or list(self._received):
                self._received[topic].clear()

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")

    def set_parameters(self, node: str, parameters: Iterable[Any],
                       timeout: float = 10.0) -> list[Any]:
        """rcl_interfaces SetParameters on ``node`` (its fully qualified name), one result each."""
        from rcl_interfaces.srv import SetParameters

        request = SetParameters.Request(parameters=[p.to_parameter_msg() for p in parameters])
        return self._call(SetParameters, f"{node}/set_parameters", request, timeout).results

    def get_parameters(self, node: str, names: Sequence[str], timeout: float = 10.0) -> list[Any]:
        """Python values of ``node``'s parameters."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        request = GetParameters.Request(names=list(names))
        response = self._call(GetParameters, f"{node}/get_parameters", request, timeout)
        return [parameter_value_to_python(value) for value in response.values]

    def _call(self, srv_type: type, service: str, request: Any, timeout: float) -> Any:
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f"service {service} not available")
            future = client.call_async(request)
            self.wait_until(future.done, timeout, service)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


def diagnostic_values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def node_statuses(probe: RosProbe, name_part: str) -> list[Any]:
    """Every DiagnosticStatus whose name contains ``name_part`` (e.g. the node's fully
    qualified name) received so far on /diagnostics, oldest first."""
    return [status for array in probe.messages("/diagnostics") for status in array.status
            if name_part in status.name]


if __name__ == "__main__":
    sys.exit(publish_main())
