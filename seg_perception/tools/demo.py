"""``seg-perception demo``: the package's main job, end to end, the way it runs on a robot.

The real segmentation node and the player run as separate processes and talk over DDS, while
this process subscribes to the node's outputs like any downstream consumer would. Nothing is
shortcut in-process, so the demo exercises what a user deploys: QoS matching, the Fast DDS
profile, stamps copied from input to output, and the node's own diagnostics.

Outputs are matched to inputs by header stamp: the player prints the stamp of every frame it
publishes (``--print-frames``), and the node copies input headers to its image outputs. The
decision topics (``vehicle_ahead``, ``vehicle_ahead/coverage``) carry no header; the node
publishes one of each per processed frame, so they are paired with the label maps in order.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from seg_perception.core.image_codec import decode_image_msg
from seg_perception.fastdds import use_fastdds_profile
from seg_perception.models.registry import BUILTIN_MODELS, DEFAULT_MODEL
from seg_perception.shared_data import dashcam_video, shared_path
from seg_perception.sources import open_source
from seg_perception.tools.play import (
    publisher_reliability,
    qos_profile,
    stamp_ns,
)

HELP = "the main job: the node and a player over DDS on the dash-cam stills and video"
EPILOG = """examples:
  seg-perception demo                               # default model and data, into out/demo
  seg-perception demo --model espnet-camvid --device cpu --out /tmp/demo
  seg-perception demo --only video --video drive.mp4 --max-frames 50
  seg-perception demo --rate 3                      # a camera's fixed rate instead of lockstep

pacing: by default the player sends a frame only once the node's output for the previous
one came back (--lockstep on segmentation/label_map). The demo then runs as fast as the node
can go (espnet-cityscapes needs ~150-350 ms per 720p frame on 2 CPU cores: the 38-frame video
takes about 15 s) and no frame is lost, whatever the machine. --rate HZ plays at a fixed rate
like a real camera instead: frames that arrive while the node is busy replace the waiting one
and count as 'dropped by the node' in the summary.

phase 1 (stills): one overlay PNG per still in OUT/stills/, one line per still; the node's
vehicle_ahead hysteresis (frames_on/frames_off) is set to 1 for this phase, because stills
are unrelated pictures, and restored for the video.
phase 2 (video): OUT/overlay.mp4 (the video's fps) and OUT/vehicle_ahead.csv
(frame, stamp, vehicle_ahead, coverage, latency_ms), one line per frame as results arrive;
then the summary. Logs of the child processes: OUT/node.log, OUT/player-*.log.

ROS: own random ROS_DOMAIN_ID unless set, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless
set, and the package's Fast DDS profile for every process unless
FASTDDS_DEFAULT_PROFILES_FILE is set.
"""

NODE_NAME = "segmentation"
TOPICS = {
    "label_map": "/segmentation/label_map",
    "overlay": "/segmentation/overlay",
    "vehicle_ahead": "/vehicle_ahead",
    "coverage": "/vehicle_ahead/coverage",
}
DIAGNOSTICS = "/diagnostics"
LOCKSTEP_TOPIC = "segmentation/label_map"
PARTIAL_AFTER_S = 3.0  # an output still missing parts this long after its label map: give up
SETTLE_S = 5.0  # after the player ends: how long to wait for outputs that are still due
STOP_TIMEOUT_S = 10.0  # SIGINT grace before a child process is killed


class DemoError(RuntimeError):
    """The demo cannot go on (the node did not start, died, or produced nothing)."""


# --- what comes back from the node ------------------------------------------------------------


@dataclass
class Output:
    """Everything received for one input frame (matched by its stamp)."""

    stamp_ns: int
    label_arrival: float | None = None
    car_fraction: float | None = None
    overlay: np.ndarray | None = None  # RGB
    overlay_arrival: float | None = None
    vehicle_ahead: bool | None = None
    coverage: float | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.label_arrival, self.overlay_arrival, self.vehicle_ahead,
                            self.coverage)

    @property
    def latency_ms(self) -> float | None:
        """Input stamp (publish time) to the arrival of the last image output, in ms."""
        arrivals = [t for t in (self.label_arrival, self.overlay_arrival) if t is not None]
        return (max(arrivals) - self.stamp_ns / 1e9) * 1000 if arrivals else None


class Collector:
    """The demo's subscriptions to the node's outputs, and their pairing per input frame.

    Callbacks run on the executor thread; the main thread reads through :meth:`ready`.
    """

    def __init__(self, node: Any, car_id: int | None) -> None:
        self.node = node
        self.car_id = car_id
        self.lock = threading.Lock()
        self.subscriptions: list[Any] = []
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_time = 0.0
        self.reset()

    def reset(self) -> None:
        """Forget the previous phase's outputs (the diagnostics stay: they are cumulative)."""
        with self.lock:
            self.outputs: dict[int, Output] = {}  # not handed out yet, by stamp
            self.order: list[int] = []  # stamps in label-map arrival order
            self.decisions: list[bool] = []
            self.coverages: list[float] = []
            self.handed_out = 0
            self.done: set[int] = set()  # stamps handed out: late parts of them are ignored

    def subscribe(self, timeout: float) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool, Float32

        kinds = {
            "label_map": (Image, self._on_label_map),
            "overlay": (Image, self._on_overlay),
            "vehicle_ahead": (Bool, self._on_vehicle_ahead),
            "coverage": (Float32, self._on_coverage),
        }
        for key, (msg_type, callback) in kinds.items():
            topic = TOPICS[key]
            reliability = _wait_for(lambda t=topic: publisher_reliability(self.node, t),
                                    timeout, f"the node's publisher on {topic}")
            self.subscriptions.append(
                self.node.create_subscription(msg_type, topic, callback,
                                              qos_profile(reliability, 10))
            )
        # /diagnostics is shared by every node: best effort matches any publisher.
        self.subscriptions.append(self.node.create_subscription(
            DiagnosticArray, DIAGNOSTICS, self._on_diagnostics, qos_profile("best_effort", 10)))
        for subscription in self.subscriptions[:-1]:
            _wait_for(lambda s=subscription: s.get_publisher_count() > 0, timeout,
                      f"the subscription to {subscription.topic_name} to match")
        time.sleep(0.5)  # matching completes on the node's side a moment later

    def _output(self, stamp: int) -> Output:
        output = self.outputs.get(stamp)
        if output is None:
            output = self.outputs[stamp] = Output(stamp)
        return output

    def _on_label_map(self, msg: Any) -> None:
        arrival = time.time()
        # mono8 class ids; the codec serves mono8 as grey RGB, so any channel is the id.
        labels = decode_image_msg(msg).pixels[:, :, 0]
        fraction = None
        if self.car_id is not None:
            fraction = float(np.count_nonzero(labels == self.car_id)) / labels.size
        with self.lock:
            stamp = stamp_ns(msg.header.stamp)
            if stamp in self.done:
                return
            output = self._output(stamp)
            output.label_arrival = arrival
            output.car_fraction = fraction
            self.order.append(stamp)
            self._pair(len(self.order) - 1)

    def _on_overlay(self, msg: Any) -> None:
        arrival = time.time()
        pixels = decode_image_msg(msg).to_rgb()
        with self.lock:
            stamp = stamp_ns(msg.header.stamp)
            if stamp in self.done:
                return
            output = self._output(stamp)
            output.overlay = pixels
            output.overlay_arrival = arrival

    def _on_vehicle_ahead(self, msg: Any) -> None:
        with self.lock:
            self.decisions.append(bool(msg.data))
            self._pair(len(self.decisions) - 1)

    def _on_coverage(self, msg: Any) -> None:
        with self.lock:
            self.coverages.append(float(msg.data))
            self._pair(len(self.coverages) - 1)

    def _pair(self, i: int) -> None:
        """The i-th decision and coverage belong to the i-th label map (one each per frame)."""
        if i >= len(self.order) or self.order[i] not in self.outputs:
            return
        output = self.outputs[self.order[i]]
        if i < len(self.decisions):
            output.vehicle_ahead = self.decisions[i]
        if i < len(self.coverages):
            output.coverage = self.coverages[i]

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if NODE_NAME in status.name and "frames_received" in values:
                with self.lock:
                    self.diagnostics = values
                    # when the node made it (same host, same clock): counters as of then
                    self.diagnostics_time = stamp_ns(msg.header.stamp) / 1e9

    def ready(self) -> list[Output]:
        """Outputs not handed out yet, in arrival order, once complete (or given up on)."""
        now = time.time()
        result = []
        with self.lock:
            while self.handed_out < len(self.order):
                stamp = self.order[self.handed_out]
                output = self.outputs[stamp]
                if not output.complete and now - (output.label_arrival or now) < PARTIAL_AFTER_S:
                    break
                result.append(output)
                del self.outputs[stamp]  # a long video must not pile up its overlays
                self.done.add(stamp)
                self.handed_out += 1
        return result

    def latest_diagnostics(self) -> tuple[float, dict[str, str]]:
        with self.lock:
            return self.diagnostics_time, dict(self.diagnostics)


# --- the phases -----------------------------------------------------------------------------


@dataclass
class PhaseResult:
    """Figures of one phase for the summary."""

    name: str
    published: int = 0
    outputs: int = 0
    complete: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    node_before: dict[str, str] = field(default_factory=dict)
    node_after: dict[str, str] = field(default_factory=dict)
    player_summary: str = ""

    def node_delta(self, key: str) -> str:
        try:
            return str(int(float(self.node_after[key]) - float(self.node_before.get(key, 0))))
        except (KeyError, ValueError):
            return "?"


class PlayerOutput:
    """Reads the player's stdout: 'frame INDEX stamp SEC.NANOSEC NAME' lines and its summary."""

    def __init__(self, stream: IO[str]) -> None:
        self.frames: dict[int, tuple[int, str]] = {}  # stamp -> (index, name)
        self.summary = ""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "frame" and parts[2] == "stamp":
                sec, _, nanosec = parts[3].partition(".")
                with self.lock:
                    self.frames[int(sec) * 1_000_000_000 + int(nanosec)] = (
                        int(parts[1]), " ".join(parts[4:]))
            elif line.strip():
                self.summary = line.strip()

    def lookup(self, stamp: int) -> tuple[int, str] | None:
        with self.lock:
            return self.frames.get(stamp)

    def count(self) -> int:
        with self.lock:
            return len(self.frames)


class Demo:
    """Owns the child processes and this process's ROS node; :meth:`close` always cleans up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.children: list[subprocess.Popen] = []
        self.node_process: subprocess.Popen | None = None
        self.node_log = self.out / "node.log"
        self.context = None
        self.node = None
        self.executor = None
        self.spin_thread: threading.Thread | None = None
        self.collector: Collector | None = None
        self.ready = False

    # --- processes --------------------------------------------------------------------------

    def _start(self, command: list[str], log_path: Path, stdout_pipe: bool = False
               ) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0",
                   RCUTILS_COLORIZED_OUTPUT="0")
        env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log_file,
                stderr=log_file if stdout_pipe else subprocess.STDOUT,
                text=True,
            )
        self.children.append(process)
        return process

    def start_node(self) -> None:
        ros_args = []
        if self.args.params_file:
            ros_args += ["--params-file", str(self.args.params_file)]
        if self.args.model or not self.args.params_file:
            ros_args += ["-p", f"model:={self.args.model or DEFAULT_MODEL}"]
        if self.args.device:
            ros_args += ["-p", f"device:={self.args.device}"]
        command = [sys.executable, "-m", "seg_perception.node", "--ros-args", *ros_args]
        self.node_process = self._start(command, self.node_log)

    def node_tail(self, lines: int = 25) -> str:
        try:
            text = self.node_log.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return "(no node log)"
        return "\n".join(f"  | {line}" for line in text[-lines:]) or "  | (empty)"

    def ready_line(self) -> str:
        """': <what the node said>' from its 'ready: ...' log line, if it logged one."""
        try:
            lines = self.node_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        said = [line.split("ready: ", 1)[1] for line in lines if "ready: " in line]
        return f": {said[-1]}" if said else ""

    def check_node(self) -> None:
        if self.node_process is not None and self.node_process.poll() is not None:
            what = "exited" if self.ready else "failed to start"
            raise DemoError(
                f"the node {what} (exit code {self.node_process.returncode}); the end of its "
                f"log ({self.node_log}):\n{self.node_tail()}"
            )

    # --- ROS in this process ----------------------------------------------------------------

    def start_ros(self, car_id: int | None) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("seg_perception_demo", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spin_thread = threading.Thread(target=self._spin, daemon=True)
        self.spin_thread.start()
        self.collector = Collector(self.node, car_id)

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception as exc:  # noqa: BLE001 - shown, then the demo times out on outputs
            if self.context is not None and self.context.ok():
                print(f"demo: receiving outputs failed: {exc!r}", file=sys.stderr, flush=True)

    def wait_until_ready(self) -> float:
        """Seconds until the node's input and its vehicle_ahead publisher are in the graph.

        The node creates them once its model is loaded, so this means 'ready for frames'.
        """
        start = time.monotonic()

        def ready() -> bool:
            self.check_node()
            publishers = self.node.get_publishers_info_by_topic(TOPICS["vehicle_ahead"])
            subscribers = self.node.get_subscriptions_info_by_topic("/image")
            return (any(p.node_name == NODE_NAME for p in publishers)
                    and any(s.node_name == NODE_NAME for s in subscribers))

        try:
            _wait_for(ready, self.args.startup_timeout, "the node")
        except TimeoutError:
            raise DemoError(
                f"the node was not ready after {self.args.startup_timeout:g} s "
                f"(--startup-timeout); the end of its log ({self.node_log}):\n{self.node_tail()}"
            ) from None
        self.ready = True
        self.collector.subscribe(timeout=30.0)
        return time.monotonic() - start

    def set_node_parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        """Set parameters of the node; returns their previous values (to restore later)."""
        from rcl_interfaces.srv import GetParameters, SetParameters
        from rclpy.parameter import Parameter, parameter_value_to_python

        names = list(values)
        previous = self._call(GetParameters, GetParameters.Request(names=names)).values
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        results = self._call(SetParameters, request).results
        refused = [f"{n}: {r.reason}" for n, r in zip(names, results, strict=True)
                   if not r.successful]
        if refused:
            raise DemoError(f"the node refused parameters: {'; '.join(refused)}")
        return {n: parameter_value_to_python(v) for n, v in zip(names, previous, strict=True)}

    def _call(self, srv_type: Any, request: Any) -> Any:
        name = "set_parameters" if "Set" in srv_type.__name__ else "get_parameters"
        client = self.node.create_client(srv_type, f"/{NODE_NAME}/{name}")
        try:
            if not client.wait_for_service(timeout_sec=10.0):
                raise DemoError(f"the node's /{NODE_NAME}/{name} service is not available")
            future = client.call_async(request)
            try:
                _wait_for(future.done, 10.0, f"/{NODE_NAME}/{name}")
            except TimeoutError as exc:
                raise DemoError(str(exc)) from None
            return future.result()
        finally:
            self.node.destroy_client(client)

    # --- one phase --------------------------------------------------------------------------

    def run_phase(self, name: str, source: Path, count: int | None,
                  handle: Callable[[int | None, str, Output], None]) -> PhaseResult:
        """Play ``source`` to the node and hand every output to ``handle`` as it arrives."""
        collector = self.collector
        collector.reset()
        result = PhaseResult(name, node_before=collector.latest_diagnostics()[1])
        command = [sys.executable, "-m", "seg_perception.cli", "play", str(source),
                   "--print-frames", "--wait-subscribers", "1", "--wait-timeout", "60"]
        if self.args.rate:
            command += ["--rate", str(self.args.rate)]
        else:
            command += ["--lockstep", LOCKSTEP_TOPIC, "--lockstep-timeout", "30"]
        if count:
            command += ["--count", str(count)]
        player = self._start(command, self.out / f"player-{name}.log", stdout_pipe=True)
        reader = PlayerOutput(player.stdout)
        last_activity = time.monotonic()
        player_end: float | None = None
        while True:
            self.check_node()
            for output in collector.ready():
                frame = reader.lookup(output.stamp_ns)
                if frame is None and player.poll() is None:
                    time.sleep(0.05)  # the player's line for it is on its way
                    frame = reader.lookup(output.stamp_ns)
                index, label = frame if frame else (None, "?")
                handle(index, label, output)
                result.outputs += 1
                result.complete += output.complete
                if output.latency_ms is not None:
                    result.latencies_ms.append(output.latency_ms)
                last_activity = time.monotonic()
            if player.poll() is not None:
                if player_end is None:
                    player_end = time.monotonic()
                    reader.thread.join(timeout=5.0)
                due = reader.count() - result.outputs
                idle = time.monotonic() - max(last_activity, player_end)
                if due <= 0 or idle > SETTLE_S:
                    break
            time.sleep(0.02)
        if player.returncode != 0:
            raise DemoError(f"the player failed with code {player.returncode}; see "
                            f"{self.out / f'player-{name}.log'}")
        result.published = reader.count()
        result.player_summary = reader.summary
        if reader.summary:
            print(f"  player: {reader.summary}", flush=True)
        result.node_after = self._fresh_diagnostics()
        return result

    def _fresh_diagnostics(self, timeout: float = 5.0) -> dict[str, str]:
        """The node's counters from a diagnostics message made after the phase ended."""
        asked = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received, values = self.collector.latest_diagnostics()
            if received > asked:
                return values
            time.sleep(0.05)
        return self.collector.latest_diagnostics()[1]

    # --- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the children (SIGINT, then kill) and this process's ROS; safe to call twice."""
        for process in reversed(self.children):
            _stop(process)
        self.children.clear()
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=2.0)
        if self.node is not None:
            self.node.destroy_node()
            self.node = None
        if self.context is not None:
            self.context.try_shutdown()
            self.context = None
        if self.spin_thread is not None:
            self.spin_thread.join(timeout=5.0)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


# --- model facts without loading the model --------------------------------------------------


def _model_name(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    if args.params_file:
        try:
            import yaml

            data = yaml.safe_load(args.params_file.read_text()) or {}
            for section in data.values():
                model = (section or {}).get("ros__parameters", {}).get("model")
                if model:
                    return str(model)
        except (OSError, AttributeError, ValueError):
            pass
    return DEFAULT_MODEL


def _class_names(model: str) -> tuple[str, ...] | None:
    """The model's class names: the registry's, or the metadata inside an exported file."""
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model].metadata.class_names
    path = Path(model).expanduser()
    try:
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("extra/seg_perception.json"))
            return tuple(json.loads(archive.read(member))["class_names"])
    except (OSError, StopIteration, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _car_id(model: str) -> int | None:
    names = [n.lower() for n in _class_names(model) or ()]
    return names.index("car") if "car" in names else None


# --- the command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    node = parser.add_argument_group("node")
    node.add_argument("--model", help=f"built-in name or exported .pt (default {DEFAULT_MODEL}, "
                      "or the params file's)")
    node.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the node's, auto)")
    node.add_argument("--params-file", type=Path,
                      help="node parameters (e.g. config/segmentation.yaml); --model and "
                      "--device override it")
    node.add_argument("--startup-timeout", type=float, default=180.0, metavar="S",
                      help="seconds the node may take to load (default 180: a first run "
                      "exports the model into the cache)")
    data = parser.add_argument_group("data")
    data.add_argument("--video", type=Path, help="video to play (default: the dash-cam video)")
    data.add_argument("--stills", type=Path,
                      help="folder of stills (default: the dash-cam stills)")
    data.add_argument("--max-frames", type=int, default=0, metavar="N",
                      help="play only the first N video frames (default 0 = all)")
    data.add_argument("--only", choices=("stills", "video"), help="run one phase only")
    parser.add_argument("--rate", type=float, metavar="HZ",
                        help="play at a fixed rate instead of lockstep (see 'pacing')")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="output folder (default ./out/demo)")


def _prepare_environment() -> dict[str, str]:
    """This process's and the children's ROS settings (set here, inherited by children)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    profile = use_fastdds_profile()
    return {
        "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"],
        "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"],
        "FASTDDS_DEFAULT_PROFILES_FILE": profile or "(none: default transports)",
    }


def run(args: argparse.Namespace) -> int:
    if args.rate is not None and not args.rate > 0:
        raise ValueError(f"--rate must be positive, not {args.rate}")
    if args.max_frames < 0:
        raise ValueError(f"--max-frames must be positive, not {args.max_frames}")
    video = args.video or dashcam_video()
    stills = args.stills or shared_path("data", "dashcam", "stills")
    phases = [args.only] if args.only else ["stills", "video"]
    # Open both now: a bad path fails in a second, not after the node has loaded.
    still_source = open_source(stills) if "stills" in phases else None
    video_source = open_source(video) if "video" in phases else None
    if still_source is not None and not os.path.isdir(stills):
        raise ValueError(f"--stills must be a folder of images, not {stills}")
    args.out.mkdir(parents=True, exist_ok=True)
    model = _model_name(args)
    car_id = _car_id(model)

    settings = _prepare_environment()
    print(f"demo: model {model}, output in {args.out}/; " + ", ".join(
        f"{k}={v}" for k, v in settings.items()), flush=True)
    demo = Demo(args)
    results: list[PhaseResult] = []
    try:
        demo.start_node()
        demo.start_ros(car_id)
        print(f"demo: starting the node (log: {demo.node_log}) ...", flush=True)
        seconds = demo.wait_until_ready()
        print(f"demo: node ready after {seconds:.1f} s{demo.ready_line()}", flush=True)
        if still_source is not None:
            results.append(_stills_phase(demo, stills, len(still_source), args.out))
        if video_source is not None:
            count = min(args.max_frames or video_source.length or 0, video_source.length or 0)
            results.append(_video_phase(demo, video, count or None, video_source.rate, args.out))
        _print_summary(results, demo.collector.latest_diagnostics()[1], args.out)
    except (DemoError, TimeoutError) as exc:
        print(f"seg-perception demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; stopping the node and the player", file=sys.stderr)
        raise
    finally:
        demo.close()
    empty = [r.name for r in results if r.outputs == 0]
    if empty:
        print(f"seg-perception demo: error: no output from the node in: {', '.join(empty)}",
              file=sys.stderr)
        return 1
    return 0


def _stills_phase(demo: Demo, stills: Path, count: int, out: Path) -> PhaseResult:
    print(f"\nphase 1: {count} stills from {stills} -> {out / 'stills'}/", flush=True)
    (out / "stills").mkdir(exist_ok=True)
    previous = demo.set_node_parameters({"frames_on": 1, "frames_off": 1})

    def handle(index: int | None, name: str, output: Output) -> None:
        stem = Path(name).stem if name and name != "?" else f"frame{output.stamp_ns}"
        target = out / "stills" / f"{stem}.png"
        if output.overlay is not None:
            cv2.imwrite(str(target), cv2.cvtColor(output.overlay, cv2.COLOR_RGB2BGR))
        print(f"  {name:<12} vehicle_ahead={_fmt_bool(output.vehicle_ahead):<5} "
              f"coverage={_fmt(output.coverage, '.3f')} car={_fmt(output.car_fraction, '.1%')} "
              f"-> {target if output.overlay is not None else '(no overlay received)'}",
              flush=True)

    result = demo.run_phase("stills", stills, count, handle)
    demo.set_node_parameters(previous)  # only on success: after a failure the node is gone
    return result


def _video_phase(demo: Demo, video: Path, count: int | None, fps: float,
                 out: Path) -> PhaseResult:
    frames = f"{count} frames" if count else "all frames"
    print(f"\nphase 2: {frames} of {video} -> {out / 'overlay.mp4'}, "
          f"{out / 'vehicle_ahead.csv'}", flush=True)
    writer: cv2.VideoWriter | None = None
    with (out / "vehicle_ahead.csv").open("w", newline="") as csv_file:
        table = csv.writer(csv_file)
        table.writerow(["frame", "stamp", "vehicle_ahead", "coverage", "latency_ms"])

        def handle(index: int | None, name: str, output: Output) -> None:
            nonlocal writer
            if output.overlay is not None:
                if writer is None:
                    height, width = output.overlay.shape[:2]
                    writer = cv2.VideoWriter(str(out / "overlay.mp4"),
                                             cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                writer.write(cv2.cvtColor(output.overlay, cv2.COLOR_RGB2BGR))
            sec, nanosec = divmod(output.stamp_ns, 1_000_000_000)
            stamp = f"{sec}.{nanosec:09d}"
            latency = output.latency_ms
            table.writerow([
                "" if index is None else index, stamp, _fmt_bool(output.vehicle_ahead),
                "" if output.coverage is None else f"{output.coverage:.4f}",
                "" if latency is None else f"{latency:.1f}",
            ])
            print(f"  frame {_fmt(index, '3d')} stamp {stamp} "
                  f"vehicle_ahead={_fmt_bool(output.vehicle_ahead):<5} "
                  f"coverage={_fmt(output.coverage, '.3f')} latency={_fmt(latency, '.0f')} ms",
                  flush=True)

        try:
            return demo.run_phase("video", video, count, handle)
        finally:
            if writer is not None:
                writer.release()


def _fmt(value: Any, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def _fmt_bool(value: bool | None) -> str:
    return "?" if value is None else str(value).lower()


def _print_summary(results: list[PhaseResult], diagnostics: dict[str, str], out: Path) -> None:
    print("\nsummary", flush=True)
    for result in results:
        latencies = np.asarray(result.latencies_ms)
        if latencies.size:
            p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
            latency = f"p50 {p50:.0f} / p90 {p90:.0f} / p99 {p99:.0f} ms"
        else:
            latency = "n/a"
        print(
            f"  {result.name:<6}  published {result.published}, received by the node "
            f"{result.node_delta('frames_received')}, processed "
            f"{result.node_delta('frames_processed')}, dropped "
            f"{result.node_delta('frames_dropped')}, outputs received {result.outputs} "
            f"({result.complete} complete); latency stamp->outputs {latency}",
            flush=True,
        )
    node_figures = ", ".join(f"{k} {diagnostics[k]}" for k in (
        "model", "device", "latency_ms_p50", "latency_ms_p99") if k in diagnostics)
    print(f"  node: {node_figures or '(no diagnostics received)'}", flush=True)
    print(f"  outputs in {out}/", flush=True)
