"""``seg-perception bench``: how fast the pipeline is, next to what bounds it and what it replaces.

One run measures, side by side on the same real dash-cam frames (the shared video, resized):

* the core pipeline, stage by stage (message to array ... array to message), exactly the
  node's hot path (:meth:`SegmentationPipeline.segment_to_host`);
* the network forward alone on the same input tensor: the floor for the pipeline;
* a naive reference pipeline, the way tutorials do it (PIL / numpy conversion, torchvision
  transforms on CPU tensors, the eager model, argmax on the CPU, a numpy palette, an
  ``addWeighted`` blend), vectorised and with the same weights and threads: the baseline;
* the raw rclpy transport of the same images with no node, then the real node over DDS
  (a publisher process at full speed, the node, a subscriber process), at the camera size
  paired frame by frame with this process's pipeline on the same frame;
* accuracy against speed: the model at several input sizes (and bf16 on the CPU) on CamVid
  val through the evaluation code.

Contenders are interleaved frame by frame so that load from other processes hits them alike.
``--soak MINUTES`` instead runs the node for a long time at twice the rate it can process and
reports memory and latency over time.

Run as ``python -m seg_perception.tools.bench publisher|subscriber ...`` this module is the
helper process of the DDS measurements (not a user command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from seg_perception.benchmarking import StageTimer, Summary, per_window, summarize
from seg_perception.core.image_codec import ImageMessageWriter, decode_image_msg, encode_image
from seg_perception.shared_data import dashcam_video, shared_path

HELP = "measure the pipeline stage by stage against the network, a naive pipeline and DDS"
EPILOG = """examples:
  seg-perception bench                                  # the full default run (< 3 min)
  seg-perception bench --json bench.json                # also write every figure as JSON
  seg-perception bench --device cuda --cuda-graph       # FP16 + CUDA graphs on a GPU
  seg-perception bench --precision bf16                 # bf16 autocast on the CPU
  seg-perception bench --sizes 1280x720 --skip node,accuracy --frames 50
  seg-perception bench --soak 10 --json soak.json       # 10 min at 2x the node's rate

what the numbers mean: medians (p50) and p90 in ms over --frames frames after --warmup;
pipeline = message in to messages out on one frame (decode, upload, preprocess, forward,
postprocess, colour mask, overlay, vehicle decision, encode); forward = the network alone
on the same input tensor; naive = the tutorial-style pipeline; e2e = input header stamp to
receipt of the node's last image output in another process.
"""

DEFAULT_SIZES = ((640, 480), (1280, 720), (1920, 1080))
DEFAULT_CAMERA = (1280, 720)
DEFAULT_ACCURACY_SIZES = ((1024, 512), (768, 384), (512, 256))
OUTPUT_TOPICS = ("segmentation/label_map", "segmentation/color_mask", "segmentation/overlay")
LABEL_MAP_OUTPUT = OUTPUT_TOPICS[0]
RAW_TOPIC = "bench/image"
SKIPPABLE = ("naive", "transport", "node", "accuracy")
DISTINCT_FRAMES = 12  # frames the DDS publisher cycles through
NODE_READY_TIMEOUT_S = 180.0
PAIRED_SETTLE_S = 0.01  # after the node's frame, before timing the in-process pipeline
SETTLE_S = 1.0  # outputs of the first second at a new size are warm-up


# --- frames ----------------------------------------------------------------------------------


def load_frames(sizes: Iterable[tuple[int, int]], count: int) -> dict[tuple[int, int], list]:
    """``count`` RGB frames of the shared dash-cam video at each (W, H), identical for all.

    The video has 38 frames; more are taken by starting over. Down-scaling uses area
    averaging, up-scaling bilinear, once, before any timing.
    """
    capture = cv2.VideoCapture(str(dashcam_video()))
    originals = []
    while len(originals) < count:
        ok, bgr = capture.read()
        if not ok:
            if not originals:
                raise ValueError(f"cannot read frames from {dashcam_video()}")
            break
        originals.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    frames = {}
    for width, height in sizes:
        resized = []
        for index in range(count):
            rgb = originals[index % len(originals)]
            if rgb.shape[:2] != (height, width):
                shrink = width * height < rgb.shape[0] * rgb.shape[1]
                rgb = cv2.resize(rgb, (width, height),
                                 interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            resized.append(rgb)
        frames[(width, height)] = resized
    return frames


def _image_type() -> Any:
    """sensor_msgs/Image when ROS messages are importable, else a stand-in with its fields."""
    try:
        from sensor_msgs.msg import Image
    except ImportError:
        return None
    return Image


def make_image(pixels: np.ndarray, encoding: str, header: Any = None) -> Any:
    """A sensor_msgs/Image with its own copy of the pixels (the benchmark's input frames, and
    the naive pipeline's outputs, built the usual way)."""
    height, width, step, data = encode_image(pixels, encoding)
    image_type = _image_type()
    if image_type is None:
        return SimpleNamespace(header=header, height=height, width=width, encoding=encoding,
                               is_bigendian=0, step=step, data=data)
    fields = dict(height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                  data=data)
    if header is not None:
        fields["header"] = header
    return image_type(**fields)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); the tools' parser, imported late (it imports torch)."""
    from seg_perception.tools.common import parse_size as parse

    return parse(text)


def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _skips(text: str) -> set[str]:
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = names - set(SKIPPABLE)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"cannot skip {', '.join(sorted(unknown))}: choose from {', '.join(SKIPPABLE)}")
    return names


# --- contenders ------------------------------------------------------------------------------


class OurPipeline:
    """The package's pipeline on one frame, exactly as the node runs it, stage by stage."""

    name = "pipeline"

    def __init__(self, loaded: Any, vehicle_config: Any, alpha: float, cuda_graph: bool):
        from seg_perception.core.pipeline import SegmentationPipeline
        from seg_perception.core.vehicle_ahead import VehicleAheadDetector

        self.pipeline = SegmentationPipeline(loaded, cuda_graph=cuda_graph)
        self.detector = VehicleAheadDetector(vehicle_config)
        self.alpha = alpha
        image_type = _image_type() or SimpleNamespace
        self.writers = [ImageMessageWriter(image_type) for _ in range(3)]

    def __call__(self, msg: Any, timer: Callable[[str], Any]) -> list[Any]:
        with timer("msg_to_array"):
            decoded = decode_image_msg(msg)
        host = self.pipeline.segment_to_host(
            decoded.pixels, decoded.channel_order, color_mask=True, overlay_alpha=self.alpha,
            timer=timer)
        with timer("vehicle"):
            self.detector.update(host.label_map)
        with timer("array_to_msg"):
            label_map, color_mask, overlay = self.writers
            return [label_map(host.label_map, "mono8", msg.header),
                    color_mask(host.color_mask, "rgb8", msg.header),
                    overlay(host.overlay, "rgb8", msg.header)]


class NaivePipeline:
    """The usual way, done competently: what a tutorial-based node would do per frame.

    PIL image from the message bytes; ``torchvision.transforms.functional`` to_tensor /
    resize (bilinear, no antialias: the same maths as ours) / normalize on CPU float
    tensors; the eager network (NCHW, fp32) under ``torch.no_grad()`` with the same weights;
    argmax on the CPU at network resolution and a nearest resize of the uint8 labels; the
    palette by numpy indexing; ``cv2.addWeighted``. Vectorised throughout, same threads.
    """

    name = "naive"

    def __init__(self, loaded: Any, vehicle_config: Any, alpha: float) -> None:
        import torch

        from seg_perception.core.vehicle_ahead import VehicleAheadDetector
        from seg_perception.models.registry import BUILTIN_MODELS

        meta = loaded.metadata
        spec = BUILTIN_MODELS.get(meta.name)
        if spec is not None:
            self.model = spec.build(pretrained=True).eval()
            self.what = f"eager {type(self.model).__name__} from the registry"
        else:  # an exported file: its TorchScript as saved (no freezing, NCHW, fp32)
            self.model = torch.jit.load(str(loaded.path), map_location="cpu").eval().float()
            self.what = "TorchScript as saved (not frozen, NCHW)"
        self.device = loaded.device
        self.model = self.model.to(self.device)
        self.meta = meta
        scale, bias = meta.affine()
        # y = v * scale + bias for v in 0..255 == normalize(v / 255, mean, std):
        self.std = [1.0 / (255.0 * s) for s in scale]
        self.mean = [-b * sd for b, sd in zip(bias, self.std, strict=True)]
        self.palette = np.zeros((max(meta.num_classes, 256), 3), np.uint8)
        self.palette[: meta.num_classes] = meta.palette
        self.detector = VehicleAheadDetector(vehicle_config)
        self.alpha = alpha

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        meta = self.meta
        if meta.input_size is not None:
            return meta.input_size[1], meta.input_size[0]
        m = meta.size_multiple
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def __call__(self, msg: Any, timer: Callable[[str], Any]) -> list[Any]:
        import torch
        import torchvision.transforms.functional as TF
        from PIL import Image as PILImage

        with timer("msg_to_array"):
            array = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            image = PILImage.fromarray(array)  # rgb8
        with timer("preprocess"):
            tensor = TF.to_tensor(image)  # 3xHxW float in 0..1
            if self.meta.channel_order == "bgr":
                tensor = tensor[[2, 1, 0]]
            size = self.network_size(msg.height, msg.width)
            tensor = TF.resize(tensor, list(size), interpolation=TF.InterpolationMode.BILINEAR,
                               antialias=False)
            tensor = TF.normalize(tensor, self.mean, self.std).unsqueeze(0).to(self.device)
        with timer("forward"), torch.no_grad():
            logits = self.model(tensor)
        with timer("postprocess"):
            labels = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
            labels = cv2.resize(labels, (msg.width, msg.height),
                                interpolation=cv2.INTER_NEAREST)
        with timer("color_mask"):
            colour = self.palette[labels]
        with timer("overlay"):
            overlay = cv2.addWeighted(array, 1.0 - self.alpha, colour, self.alpha, 0.0)
        with timer("vehicle"):
            self.detector.update(labels)
        with timer("array_to_msg"):
            return [make_image(labels, "mono8", msg.header), make_image(colour, "rgb8", msg.header),
                    make_image(overlay, "rgb8", msg.header)]


@dataclass
class SizeResult:
    """Everything measured in-process at one camera size."""

    size: tuple[int, int]
    network: tuple[int, int]  # (H, W) of the network input
    pipeline: Summary
    stages: dict[str, Summary]
    forward: Summary
    over_forward: float  # median over frames of pipeline / forward on that frame
    naive: Summary | None = None
    naive_stages: dict[str, Summary] = field(default_factory=dict)
    speedup: float | None = None  # median over frames of naive / pipeline on that frame

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "network_input": size_text((self.network[1], self.network[0])),
            "pipeline": self.pipeline.to_json(),
            "stages": {k: v.to_json() for k, v in self.stages.items()},
            "forward": self.forward.to_json(),
            "pipeline_over_forward": _sig(self.over_forward),
        }
        if self.naive is not None:
            data["naive"] = self.naive.to_json()
            data["naive_stages"] = {k: v.to_json() for k, v in self.naive_stages.items()}
            data["speedup_vs_naive"] = _sig(self.speedup)
        return data


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of per-frame ratios. The contenders run back to back on each frame, so a
    ratio per frame cancels the machine's drift over the run (20 % and more here), which a
    ratio of two medians does not."""
    return float(np.median(np.asarray(numerators) / np.asarray(denominators)))


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den > 0:
        return None
    return _sig(num / den)


def _sig(value: float | None, digits: int = 4) -> float | None:
    """Rounded to significant digits (never to 0 for a small positive figure)."""
    return None if value is None else float(f"{value:.{digits}g}")


def _header(index: int) -> Any:
    try:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header
    except ImportError:
        return SimpleNamespace(stamp=SimpleNamespace(sec=index, nanosec=0), frame_id="camera")
    return Header(stamp=Time(sec=index, nanosec=0), frame_id="camera")


def measure_core(
    loaded: Any,
    frames: dict[tuple[int, int], list[np.ndarray]],
    args: argparse.Namespace,
    vehicle_config: Any,
    log: Callable[[str], None],
) -> list[SizeResult]:
    """Ours, the naive pipeline and the network alone, interleaved frame by frame."""
    import torch

    cuda = loaded.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    ours = OurPipeline(loaded, vehicle_config, args.alpha, args.cuda_graph)
    naive = None if "naive" in args.skip else NaivePipeline(loaded, vehicle_config, args.alpha)
    results = []
    for size, size_frames in frames.items():
        width, height = size
        network = ours.pipeline.network_size(height, width)
        staged = StageTimer(sync)
        plain = StageTimer(sync, stages=False)  # CUDA: per-stage syncs would inflate the total
        naive_timer = StageTimer(sync)
        forward_timer = StageTimer(sync, stages=False)
        messages = [make_image(f, "rgb8", _header(i)) for i, f in enumerate(size_frames)]
        log(f"  {size_text(size)}: {len(messages) - args.warmup} frames after {args.warmup} "
            f"warm-up, network input {network[1]}x{network[0]}")
        for index, msg in enumerate(messages):
            keep = index >= args.warmup
            with staged.frame(keep):
                ours(msg, staged)
            if cuda:
                with plain.frame(keep):
                    ours(msg, plain)
            if naive is not None:
                with naive_timer.frame(keep):
                    naive(msg, naive_timer)
            # Measured at every size, right after the pipeline on the same frame: the same
            # input shape, but load from other processes changes over a run.
            x = _network_input(ours.pipeline, msg)
            with forward_timer.frame(keep):
                ours.pipeline.forward(x)
        whole = plain if cuda else staged
        result = SizeResult(size, network, whole.total(), staged.summary(),
                            forward_timer.total(),
                            paired_ratio(whole.totals, forward_timer.totals))
        if naive is not None:
            result.naive = naive_timer.total()
            result.naive_stages = naive_timer.summary()
            result.speedup = paired_ratio(naive_timer.totals, whole.totals)
        results.append(result)
    return results


def _frame_timer(loaded: Any, args: argparse.Namespace,
                 vehicle_config: Any) -> Callable[[int], float]:
    """A function that times the pipeline on the publisher's frame ``index``: the node's
    reference, taken right after each of the node's frames (see :func:`measure_node`)."""
    import torch

    sync = torch.cuda.synchronize if loaded.device.type == "cuda" else None
    ours = OurPipeline(loaded, vehicle_config, args.alpha, args.cuda_graph)
    frames = load_frames([args.camera_size], DISTINCT_FRAMES)[args.camera_size]  # its frames
    messages = [make_image(f, "rgb8", _header(i)) for i, f in enumerate(frames)]
    timer = StageTimer(sync, stages=False)
    with timer.frame(keep=False):
        ours(messages[0], timer)  # this pipeline's own buffers

    def time_frame(index: int) -> float:
        with timer.frame():
            ours(messages[index % len(messages)], timer)
        return timer.totals[-1]

    return time_frame


def _network_input(pipeline: Any, msg: Any) -> Any:
    """The input tensor the pipeline feeds the network for this frame."""
    decoded = decode_image_msg(msg)
    return pipeline.network_input(decoded.pixels, decoded.channel_order)


# --- DDS: helper processes -------------------------------------------------------------------


def _helper_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def _ros_env(domain_id: int) -> dict[str, str]:
    """A private ROS graph for the benchmark's processes: loopback, own domain, SHM profile."""
    from seg_perception.fastdds import use_fastdds_profile

    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    use_fastdds_profile(env)  # every process of the run publishes camera-sized images
    return env


def _ros_init() -> None:
    """rclpy without its signal handlers: SIGINT/SIGTERM end the helper via KeyboardInterrupt."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _raise_interrupt)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def publisher_main(argv: Sequence[str]) -> int:
    """Helper: publish dash-cam frames (best effort, like a camera) at a rate or full speed."""
    parser = argparse.ArgumentParser(prog="bench publisher")
    parser.add_argument("--size", type=_helper_size, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="Hz; 0 = full speed")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--topic", default="image")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wait-timeout", type=float, default=60.0)
    parser.add_argument("--lockstep", metavar="TOPIC",
                        help="send the next frame once an Image with this frame's stamp came "
                        "back on TOPIC (the node's full speed, without queueing)")
    parser.add_argument("--lockstep-timeout", type=float, default=10.0)
    parser.add_argument("--paired", action="store_true",
                        help="lockstep: after each frame came back, print 'paired INDEX STAMP' "
                        "and wait for a line on stdin (the benchmark times its own pipeline "
                        "on that frame meanwhile); --seconds excludes these pauses")
    args = parser.parse_args(argv)
    if args.paired and not args.lockstep:
        parser.error("--paired needs --lockstep")

    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from seg_perception.topics import stream_profile

    frames = load_frames([args.size], DISTINCT_FRAMES)[args.size]
    messages = [make_image(f, "rgb8", Header(frame_id="camera")) for f in frames]
    _ros_init()
    node = rclpy.create_node(f"bench_publisher_{os.getpid()}")
    publisher = node.create_publisher(Image, args.topic, stream_profile("best_effort", 1))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    echoed: list[int] = [0]
    echo = None
    if args.lockstep:
        def on_echo(msg: Any) -> None:
            echoed[0] = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

        echo = node.create_subscription(Image, args.lockstep, on_echo,
                                        stream_profile("reliable", 5))
    sent: list[int] = []
    pauses: list[float] = []  # --paired: after each frame, seconds waiting for the benchmark
    timeouts = 0
    cpu_start = time.process_time()
    started = time.monotonic()
    try:
        deadline = time.monotonic() + args.wait_timeout
        while publisher.get_subscription_count() == 0 or (
                echo is not None and echo.get_publisher_count() == 0):
            if time.monotonic() > deadline:
                raise SystemExit(f"no subscriber on {args.topic} after {args.wait_timeout} s")
            executor.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 0.5  # matching completes on both sides after discovery
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        period = 1.0 / args.rate if args.rate > 0 and echo is None else 0.0
        cpu_start = time.process_time()
        started = next_time = time.monotonic()
        index = 0
        while time.monotonic() - started - sum(pauses) < args.seconds:
            msg = messages[index % len(messages)]
            now = time.time_ns()
            msg.header.stamp = Time(sec=now // 1_000_000_000, nanosec=now % 1_000_000_000)
            publisher.publish(msg)
            sent.append(now)
            index += 1
            if echo is not None:
                give_up = time.monotonic() + args.lockstep_timeout
                while echoed[0] != now and time.monotonic() < give_up:
                    executor.spin_once(timeout_sec=0.05)
                timeouts += echoed[0] != now
                if args.paired:
                    paused = time.monotonic()
                    print(f"paired {index - 1} {now}", flush=True)
                    if not sys.stdin.readline():
                        break  # the benchmark went away
                    pauses.append(time.monotonic() - paused)
            elif period:
                next_time += period
                delay = next_time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -period:
                    next_time = time.monotonic()  # behind: no catch-up burst
        elapsed = time.monotonic() - started - sum(pauses)
        time.sleep(0.3)
    except KeyboardInterrupt:
        elapsed = time.monotonic() - started - sum(pauses)
    finally:
        cpu = time.process_time() - cpu_start
        node.destroy_node()
        rclpy.try_shutdown()
    args.out.write_text(json.dumps({"sent": sent, "seconds": elapsed, "cpu_seconds": cpu,
                                    "lockstep_timeouts": timeouts, "pauses": pauses}))
    return 0


def subscriber_main(argv: Sequence[str]) -> int:
    """Helper: record (topic, header stamp, receipt time) of every image on some topics."""
    parser = argparse.ArgumentParser(prog="bench subscriber")
    parser.add_argument("--topics", required=True, help="comma-separated")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--depth", type=int, default=10, help="keep-last queue depth")
    parser.add_argument("--ready", type=Path, help="created once every topic has a publisher")
    parser.add_argument("--diagnostics", action="store_true", help="keep the node's last status")
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from seg_perception.topics import stream_profile

    topics = [t for t in args.topics.split(",") if t]
    records: list[tuple[int, int, int]] = []
    diagnostics: dict[str, str] = {}
    _ros_init()
    node = rclpy.create_node(f"bench_subscriber_{os.getpid()}")
    subscriptions = []
    for index, topic in enumerate(topics):
        def store(msg: Any, index: int = index) -> None:
            stamp = msg.header.stamp
            records.append((index, stamp.sec * 1_000_000_000 + stamp.nanosec, time.time_ns()))

        subscriptions.append(node.create_subscription(
            Image, topic, store, stream_profile(args.reliability, args.depth)))
    if args.diagnostics:
        from diagnostic_msgs.msg import DiagnosticArray

        def keep_status(msg: Any) -> None:
            for status in msg.status:
                if status.name.startswith("segmentation"):
                    diagnostics.update({kv.key: kv.value for kv in status.values})

        node.create_subscription(DiagnosticArray, "/diagnostics", keep_status, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    ready = args.ready is None
    try:
        while True:
            executor.spin_once(timeout_sec=0.1)
            if not ready and all(s.get_publisher_count() > 0 for s in subscriptions):
                time.sleep(0.3)
                args.ready.touch()
                ready = True
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    args.out.write_text(json.dumps({"topics": topics, "records": records,
                                    "diagnostics": diagnostics}))
    return 0


class Helpers:
    """Starts and stops the benchmark's processes in one private ROS graph."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self._count = 0

    def path(self, stem: str) -> Path:
        self._count += 1
        return self.workdir / f"{self._count:02d}-{stem}"

    def start(self, command: list[str], stem: str,
              piped: bool = False) -> tuple[subprocess.Popen, Path]:
        """``piped``: stdin and stdout are pipes to this process (the log gets stderr)."""
        log = self.path(f"{stem}.log")
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=self.env, stdout=subprocess.PIPE if piped else out,
                stdin=subprocess.PIPE if piped else None,
                stderr=out if piped else subprocess.STDOUT, text=piped,
                preexec_fn=_default_sigint)
        return process, log

    def helper(self, role: str, *args: str, piped: bool = False) -> tuple[subprocess.Popen, Path]:
        command = [sys.executable, "-m", "seg_perception.tools.bench", role, *args]
        return self.start(command, role, piped)

    def publish(self, size: tuple[int, int], rate: float, seconds: float, topic: str,
                lockstep: str | None = None,
                between: Callable[[int, int], None] | None = None) -> dict:
        """Run one publisher to the end; its JSON (sent stamps, CPU seconds).

        With ``lockstep`` and ``between``, ``between(frame index, stamp)`` runs here after
        each frame came back, before the publisher sends the next one.
        """
        out = self.path(f"sent-{size_text(size)}.json")
        extra = ["--lockstep", lockstep] if lockstep else []
        if between is not None:
            extra.append("--paired")
        process, log = self.helper("publisher", "--size", size_text(size), "--rate", str(rate),
                                   "--seconds", str(seconds), "--topic", topic, "--out", str(out),
                                   *extra, piped=between is not None)
        if between is not None:
            with process.stdin, process.stdout:
                for line in process.stdout:
                    words = line.split()
                    if len(words) == 3 and words[0] == "paired":
                        between(int(words[1]), int(words[2]))
                        try:
                            process.stdin.write("go\n")
                            process.stdin.flush()
                        except BrokenPipeError:
                            break  # the publisher ended; its exit code tells why
        code = process.wait(timeout=seconds + 120)
        if code != 0 or not out.exists():
            raise RuntimeError(f"bench publisher failed ({code}): {_tail(log)}")
        return json.loads(out.read_text())

    def subscribe(self, topics: Sequence[str], reliability: str, diagnostics: bool = False,
                  depth: int = 10) -> Subscriber:
        out = self.path("received.json")
        ready = self.path("ready")
        args = ["--topics", ",".join(topics), "--reliability", reliability, "--out", str(out),
                "--ready", str(ready), "--depth", str(depth)]
        if diagnostics:
            args.append("--diagnostics")
        process, log = self.helper("subscriber", *args)
        return Subscriber(process, log, out, ready)


@dataclass
class Subscriber:
    """A running subscriber helper; :meth:`stop` returns what it received."""

    process: subprocess.Popen
    log: Path
    out: Path
    ready: Path

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench subscriber not ready: {_tail(self.log)}")
            time.sleep(0.1)

    def stop(self) -> dict:
        _stop(self.process)
        if not self.out.exists():
            raise RuntimeError(f"bench subscriber wrote nothing: {_tail(self.log)}")
        return json.loads(self.out.read_text())


def _default_sigint() -> None:
    """In a child before exec: Ctrl-C semantics even when the benchmark runs in the background
    (a non-interactive shell starts background jobs with SIGINT ignored, and children inherit
    that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGINT (what Ctrl-C sends), then SIGTERM; kill only if it still hangs."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    process.wait()


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class StreamResult:
    """Latency from header stamp to receipt, over one publisher run."""

    size: tuple[int, int]
    sent: int
    received: int  # frames with every output
    partial: int  # frames with some outputs only
    latency: Summary
    fps_in: float
    fps_out: float
    publisher_cpu: float  # fraction of one core the publisher used
    timeouts: int = 0  # lockstep: frames whose output never came back in time
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)
    per_output: dict[str, Summary] = field(default_factory=dict)  # topic -> its own latency

    @property
    def dropped(self) -> int:
        return self.sent - self.received - self.partial

    def to_json(self) -> dict[str, Any]:
        return {
            "frames_sent": self.sent, "frames_out": self.received,
            "frames_partial": self.partial, "frames_dropped": self.dropped,
            "fps_in": _sig(self.fps_in), "fps_out": _sig(self.fps_out),
            "latency_ms": self.latency.to_json(), "publisher_cpu": _sig(self.publisher_cpu),
            "lockstep_timeouts": self.timeouts,
            "latency_ms_by_output": {k: v.to_json() for k, v in self.per_output.items()},
        }


def stream_result(size: tuple[int, int], publish: dict, received: dict,
                  settle_s: float = SETTLE_S) -> StreamResult:
    """Match outputs to the inputs of one run by stamp; the latency of a frame is that of
    its last output. Frames stamped within ``settle_s`` of the start are warm-up."""
    sent = publish["sent"]
    topics = len(received["topics"])
    if not sent:
        return StreamResult(size, 0, 0, 0, summarize([]), 0.0, 0.0, 0.0)
    wanted, arrivals = _arrivals(sent, received, settle_s)
    complete = {s: max(r.values()) for s, r in arrivals.items() if len(r) == topics}
    latencies = [(r - s) / 1e9 for s, r in complete.items()]
    samples = sorted((r / 1e9, (r - s) / 1e9) for s, r in complete.items())
    per_output = {
        name: summarize([(r[index] - s) / 1e9 for s, r in arrivals.items() if s in complete])
        for index, name in enumerate(received["topics"])
    } if topics > 1 else {}
    span = (max(complete.values()) - min(complete.values())) / 1e9 if len(complete) > 1 else 0
    if span and publish.get("pauses"):  # a paired run: the benchmark's turns are not the node's
        pause_after = dict(zip(sent, publish["pauses"], strict=False))
        span -= sum(pause_after.get(s, 0.0) for s in sent
                    if min(complete) <= s < max(complete))
    seconds = max(publish["seconds"], 1e-9)
    return StreamResult(
        size=size,
        sent=len(wanted),
        received=len(complete),
        partial=len(arrivals) - len(complete),
        latency=summarize(latencies),
        fps_in=len(sent) / seconds,
        fps_out=(len(complete) - 1) / span if span > 0 else 0.0,
        publisher_cpu=publish["cpu_seconds"] / seconds,
        timeouts=publish.get("lockstep_timeouts", 0),
        samples=samples,
        per_output=per_output,
    )


def _arrivals(sent: list[int], received: dict,
              settle_s: float) -> tuple[set[int], dict[int, dict[int, int]]]:
    """The stamps sent after the warm-up, and for each, topic index -> receipt (ns)."""
    first = sent[0] + int(settle_s * 1e9)
    wanted = {s for s in sent if s >= first}
    arrivals: dict[int, dict[int, int]] = {}
    for topic, stamp, receipt in received["records"]:
        if stamp in wanted:
            arrivals.setdefault(stamp, {})[topic] = receipt
    return wanted, arrivals


def paired_extra(publish: dict, received: dict, reference: dict[int, float],
                 settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Per frame of a paired lockstep run with every output back: the in-process pipeline on
    that frame (ms), and the node's latency to the label map and to its last output minus it:
    what the node and DDS add, free of the machine's drift."""
    topics = received["topics"]
    label_map = topics.index(LABEL_MAP_OUTPUT) if LABEL_MAP_OUTPUT in topics else 0
    sent = publish["sent"]
    if not sent:
        return {"pipeline_ms": [], "label_map_extra_ms": [], "last_output_extra_ms": []}
    _, arrivals = _arrivals(sent, received, settle_s)
    frames = sorted((s, r) for s, r in arrivals.items()
                    if len(r) == len(topics) and s in reference)
    return {
        "pipeline_ms": [_sig(reference[s] * 1e3) for s, _ in frames],
        "label_map_extra_ms": [_sig((r[label_map] - s) / 1e6 - reference[s] * 1e3)
                               for s, r in frames],
        "last_output_extra_ms": [_sig((max(r.values()) - s) / 1e6 - reference[s] * 1e3)
                                 for s, r in frames],
    }


def measure_transport(helpers: Helpers, sizes: Sequence[tuple[int, int]],
                      args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """rclpy publisher -> rclpy subscriber, the same images, no node in between."""
    # Depth 1, like the node's mailbox: a subscriber that falls behind takes the newest frame.
    subscriber = helpers.subscribe([RAW_TOPIC], "best_effort", depth=1)
    runs = {}
    try:
        for size in sizes:
            log(f"  transport {size_text(size)}: {args.transport_seconds:g} s at "
                f"{_rate_text(args.transport_rate)}")
            runs[size] = helpers.publish(size, args.transport_rate, args.transport_seconds,
                                         RAW_TOPIC)
    finally:
        received = subscriber.stop()
    return {size: stream_result(size, sent, received, settle_s=0.2)
            for size, sent in runs.items()}


def _rate_text(rate: float) -> str:
    return f"{rate:g} Hz" if rate > 0 else "full speed"


class NodeProcess:
    """The real node (``python -m seg_perception.node``) in its own process."""

    def __init__(self, helpers: Helpers, args: argparse.Namespace, threads: int) -> None:
        params = {
            "model": args.model, "device": args.device, "precision": args.precision,
            "num_threads": str(threads), "overlay_alpha": str(args.alpha),
            "cuda_graph": "true" if args.cuda_graph else "false",
        }
        ros_args = [arg for k, v in params.items() for arg in ("-p", f"{k}:={v}")]
        command = [sys.executable, "-m", "seg_perception.node", "--ros-args", *ros_args]
        self.process, self.log = helpers.start(command, "node")

    def wait_ready(self, timeout: float = NODE_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while "ready:" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"the node exited with {self.process.returncode}: "
                                   f"{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node was not ready after {timeout:g} s: "
                                   f"{_tail(self.log)}")
            time.sleep(0.2)

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.process.pid).memory_info().rss)

    def stop(self) -> None:
        _stop(self.process)


def measure_node(helpers: Helpers, sizes: Sequence[tuple[int, int]], args: argparse.Namespace,
                 threads: int, log: Callable[[str], None],
                 time_frame: Callable[[int], float]) -> tuple[dict, dict, dict]:
    """Publisher -> the real node -> a subscriber of its three image outputs.

    At every size the publisher runs at the node's full speed in lockstep (the next frame as
    soon as the previous frame's overlay came back: no queueing, so the latency is the node's
    own); then, at the camera size, at a fixed camera rate faster than the node (throughput,
    frames the node drops, latency including the wait for the busy node).

    At the camera size the lockstep run is paired: after each of the node's frames,
    ``time_frame`` times the in-process pipeline on the same frame while the node idles. What
    the node adds is judged frame by frame against that, so the machine's drift (20 % and
    more within minutes here) cancels out, as in the core part's ratios.
    """
    node = NodeProcess(helpers, args, threads)
    subscriber = None
    runs: dict[tuple[str, tuple[int, int]], dict] = {}
    info: dict[str, Any] = {}
    reference: dict[int, float] = {}  # stamp -> in-process pipeline seconds on that frame
    overlay = "/" + OUTPUT_TOPICS[-1]  # the node publishes it last

    def time_reference(index: int, stamp: int) -> None:
        time.sleep(PAIRED_SETTLE_S)  # the subscriber's last receipt
        reference[stamp] = time_frame(index)

    try:
        node.wait_ready()
        subscriber = helpers.subscribe(OUTPUT_TOPICS, "reliable", diagnostics=True)
        subscriber.wait_ready(60.0)
        for size in sizes:
            paired = size == args.camera_size
            log(f"  node {size_text(size)}: {args.node_seconds:g} s in lockstep"
                + (", each frame also through the in-process pipeline" if paired else ""))
            runs["lockstep", size] = helpers.publish(
                size, 0.0, args.node_seconds, "image", lockstep=overlay,
                between=time_reference if paired else None)
        if args.node_rate is None or args.node_rate >= 0:
            rate = args.node_rate or 0.0
            log(f"  node {size_text(args.camera_size)}: {args.node_seconds:g} s at "
                f"{_rate_text(rate)}")
            runs["rate", args.camera_size] = helpers.publish(args.camera_size, rate,
                                                             args.node_seconds, "image")
            time.sleep(1.0)  # the last frame's outputs
        info["node_rss_mb"] = _sig(node.rss() / 2**20)
    finally:
        received = subscriber.stop() if subscriber is not None else None
        node.stop()
    info["diagnostics"] = received.get("diagnostics", {}) if received else {}
    results = {key: stream_result(key[1], sent, received) for key, sent in runs.items()}
    if received and ("lockstep", args.camera_size) in runs:
        info["paired"] = paired_extra(runs["lockstep", args.camera_size], received, reference)
    lockstep = {size: r for (mode, size), r in results.items() if mode == "lockstep"}
    at_rate = {size: r for (mode, size), r in results.items() if mode == "rate"}
    return lockstep, at_rate, info


# --- accuracy against speed ------------------------------------------------------------------


class _TimedSegmenter:
    """Wraps a pipeline for the evaluation loop, timing each ``segment`` call."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.seconds: list[float] = []

    def segment(self, pixels: np.ndarray, channel_order: str) -> Any:
        start = time.perf_counter()
        result = self.pipeline.segment_to_host(pixels, channel_order)
        self.seconds.append(time.perf_counter() - start)
        return result


def measure_accuracy(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict]:
    """The model at several input sizes (and bf16 on the CPU) on CamVid val: speed and quality.

    Runs the evaluation code (:mod:`seg_perception.evaluation`): same class mapping, same
    vehicle-ahead rule as ``seg-perception eval``.
    """
    from seg_perception.core.pipeline import SegmentationPipeline
    from seg_perception.core.vehicle_ahead import VehicleAheadConfig, resolve_vehicle_class_ids
    from seg_perception.evaluation import (
        LABEL_SETS,
        ClassMapping,
        Evaluator,
        find_samples,
        run_evaluation,
    )
    from seg_perception.models.loading import load_model

    camvid = shared_path("data", "camvid")
    splits = ("train", "val") if args.accuracy_split == "all" else (args.accuracy_split,)
    samples = [sample for split in splits
               for sample in find_samples(camvid / split, camvid / f"{split}annot")]
    if args.accuracy_images:
        samples = samples[: args.accuracy_images]
    runs = [(size, args.precision) for size in args.accuracy_sizes]
    if args.accuracy_bf16 and args.precision != "bf16" and args.accuracy_sizes:
        runs.append((args.accuracy_sizes[0], "bf16"))
    rows = []
    for size, precision in runs:
        loaded = load_model(args.model, device=args.device, precision=precision,
                            input_size=size)
        meta = loaded.metadata
        mapping = ClassMapping.resolve(meta.class_names, LABEL_SETS["camvid"])
        ids = resolve_vehicle_class_ids(meta.class_names)
        evaluator = Evaluator(mapping, VehicleAheadConfig(vehicle_ids=ids),
                              [meta.class_names[i] for i in ids])
        timed = _TimedSegmenter(SegmentationPipeline(loaded))
        precision_text = precision_name(loaded)
        log(f"  accuracy {size_text(size)} {precision_text}: {len(samples)} CamVid "
            f"{args.accuracy_split} images")
        for _ in run_evaluation(timed, samples, evaluator):
            pass
        result = evaluator.result(meta.name, input_size=size)
        counts = result.counts
        speed = summarize(timed.seconds[1:] or timed.seconds)  # the first call warms up
        rows.append({
            "input_size": size_text(size),
            "precision": precision_text,
            "ms_p50": _sig(speed.p50),
            "fps": _sig(1e3 / speed.p50) if speed.p50 > 0 else None,
            "mean_iou": _sig(result.confusion.mean_iou),
            "pixel_accuracy": _sig(result.confusion.pixel_accuracy),
            "vehicle_f1": _sig(counts.f1),
            "vehicle_accuracy": _sig(counts.accuracy),
            "vehicle_counts": counts.to_json(),
            "images": len(samples),
            "split": args.accuracy_split,
        })
    return rows


# --- soak ------------------------------------------------------------------------------------


def run_soak(args: argparse.Namespace, threads: int, log: Callable[[str], None]) -> dict:
    """The node for ``--soak`` minutes at twice the rate it can process: memory and latency.

    A short lockstep run first measures what the node sustains (its capacity); then frames
    are fed at twice that rate while the node's RSS is sampled every few seconds.
    """
    size = args.camera_size
    rss: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        helpers = Helpers(_ros_env(args.domain_id), Path(tmp))
        node = NodeProcess(helpers, args, threads)
        subscriber = None
        try:
            node.wait_ready()
            log(f"calibrating: {args.soak_calibrate:g} s in lockstep, {size_text(size)}")
            subscriber = helpers.subscribe(OUTPUT_TOPICS, "reliable")
            subscriber.wait_ready(60.0)
            calibration = helpers.publish(size, 0.0, args.soak_calibrate, "image",
                                          lockstep="/" + OUTPUT_TOPICS[-1])
            time.sleep(1.0)
            capacity = stream_result(size, calibration, subscriber.stop()).fps_out
            if not capacity > 0:
                raise RuntimeError("the node delivered no frame during calibration")
            rate = 2.0 * capacity
            log(f"node capacity {capacity:.2f} fps: feeding {rate:.2f} Hz for {args.soak:g} min")
            subscriber = helpers.subscribe(OUTPUT_TOPICS, "reliable", diagnostics=True)
            subscriber.wait_ready(60.0)
            rss_ready = node.rss()
            sent_file = helpers.path("soak-sent.json")
            process, publisher_log = helpers.helper(
                "publisher", "--size", size_text(size), "--rate", f"{rate:.4f}", "--seconds",
                str(args.soak * 60.0), "--topic", "image", "--out", str(sent_file))
            start = time.monotonic()
            while process.poll() is None:
                rss.append((time.monotonic() - start, node.rss()))
                time.sleep(min(5.0, max(0.5, args.soak * 60.0 / 100)))
            if process.returncode != 0 or not sent_file.exists():
                raise RuntimeError(f"soak publisher failed: {_tail(publisher_log)}")
            time.sleep(1.0)
            rss.append((time.monotonic() - start, node.rss()))
            soak_sent = json.loads(sent_file.read_text())
        finally:
            received = subscriber.stop() if subscriber is not None else None
            node.stop()
    # RSS "start": after the first minute's worth of frames (buffers for this size exist).
    warm = [v for t, v in rss if t >= min(60.0, rss[-1][0] / 2)] or [rss[-1][1]]
    rss_start, rss_end = warm[0], rss[-1][1]
    result = stream_result(size, soak_sent, received, settle_s=0.0)
    minutes = per_window(result.samples, 60.0, span_s=args.soak * 60.0)
    p99_first = minutes[0][1].p99 if minutes else None
    p99_last = minutes[-1][1].p99 if minutes else None
    return {
        "soak_minutes": args.soak,
        "camera_size": size_text(size),
        "node_capacity_fps": _sig(capacity),
        "feed_rate_hz": _sig(rate),
        "rss_mb_ready": _sig(rss_ready / 2**20),
        "rss_mb_start": _sig(rss_start / 2**20),
        "rss_mb_end": _sig(rss_end / 2**20),
        "rss_growth_pct": _sig(100.0 * (rss_end - rss_start) / rss_start),
        "rss_mb_series": [[round(t, 1), _sig(v / 2**20)] for t, v in rss],
        "latency_ms_per_minute": [
            {"minute": int(begin // 60), **summary.to_json()} for begin, summary in minutes],
        "p99_end_over_start": _ratio(p99_last, p99_first),
        **result.to_json(),
        "node_diagnostics": received.get("diagnostics", {}) if received else {},
    }


# --- report ----------------------------------------------------------------------------------

STAGE_ORDER = ("msg_to_array", "upload", "preprocess", "forward", "postprocess", "color_mask",
               "overlay", "download", "graph", "vehicle", "array_to_msg")
TARGET_PIPELINE_OVER_FORWARD = 1.15
TARGET_SPEEDUP = 2.0
TARGET_NODE_EXTRA_FORWARD_SHARE = 0.10


def precision_name(loaded: Any) -> str:
    """fp32 / fp16 / bf16 of a loaded model (bf16 on the CPU means autocast)."""
    dtype = str(loaded.autocast_dtype or loaded.dtype).removeprefix("torch.")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)


def _device_name(device: Any) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_report(
    args: argparse.Namespace,
    loaded: Any,
    threads: int,
    core: list[SizeResult],
    transport: dict,
    node: dict,
    node_rate: dict,
    node_info: dict,
    accuracy: list[dict],
    load: tuple[tuple[float, ...], tuple[float, ...]],
    seconds: float,
) -> dict[str, Any]:
    """Every figure of the run; the headline keys are those at ``--camera-size``."""
    camera = args.camera_size
    here = next(r for r in core if r.size == camera)
    node_here = node.get(camera)
    transport_here = transport.get(camera)
    pipeline_ms = here.pipeline.p50
    forward_ms = here.forward.p50
    naive_ms = here.naive.p50 if here.naive is not None else None
    e2e_p50 = node_here.latency.p50 if node_here and node_here.received else None
    e2e_p99 = node_here.latency.p99 if node_here and node_here.received else None
    transport_p50 = (transport_here.latency.p50
                     if transport_here and transport_here.received else None)
    meta = loaded.metadata
    report: dict[str, Any] = {
        "device": str(loaded.device),
        "device_name": _device_name(loaded.device),
        "camera_size": size_text(camera),
        "forward_ms": _sig(forward_ms),
        "pipeline_ms": _sig(pipeline_ms),
        "naive_ms": _sig(naive_ms),
        "speedup_vs_naive": _sig(here.speedup),
        "pipeline_over_forward": _sig(here.over_forward),
        "node_e2e_ms_p50": _sig(e2e_p50),
        "node_e2e_ms_p99": _sig(e2e_p99),
        "transport_ms_p50": _sig(transport_p50),
        "stages": {name: _sig(s.p50) for name, s in _ordered(here.stages).items()},
        "pipeline_fps": _sig(1e3 / pipeline_ms) if pipeline_ms > 0 else None,
        "model": meta.name,
        "precision": precision_name(loaded),
        "network_input": size_text((here.network[1], here.network[0])),
        "threads": threads,
        "cuda_graph": bool(args.cuda_graph and loaded.device.type == "cuda"),
        "sizes": {size_text(r.size): r.to_json() for r in core},
        "transport": {size_text(k): v.to_json() for k, v in transport.items()},
        "node": {size_text(k): v.to_json() for k, v in node.items()},
        "node_at_rate": {size_text(k): {"rate_hz": args.node_rate or "full speed",
                                        **v.to_json()} for k, v in node_rate.items()},
        "node_info": node_info,
        "accuracy": accuracy,
        "settings": {
            "frames": args.frames, "warmup": args.warmup, "alpha": args.alpha,
            "node_seconds": args.node_seconds, "node_rate_hz": args.node_rate or "full speed",
            "transport_seconds": args.transport_seconds,
            "transport_rate_hz": args.transport_rate or "full speed",
            "skipped": sorted(args.skip),
            "command": " ".join(["seg-perception", *sys.argv[1:]]),
        },
        "load_average": {"start": [round(v, 2) for v in load[0]],
                         "end": [round(v, 2) for v in load[1]]},
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "seconds": round(seconds, 1),
    }
    targets: dict[str, Any] = {
        "pipeline_over_forward_max": TARGET_PIPELINE_OVER_FORWARD,
        "pipeline_over_forward_met": _met(report["pipeline_over_forward"],
                                          TARGET_PIPELINE_OVER_FORWARD, below=True),
        "speedup_vs_naive_min": TARGET_SPEEDUP,
        "speedup_vs_naive_met": _met(report["speedup_vs_naive"], TARGET_SPEEDUP, below=False),
    }
    if e2e_p50 is not None and transport_p50 is not None:
        # Judged on the label map, the first image out (what planners consume). The last
        # output, the overlay, also waits for two more full-size images to cross DDS.
        first = node_here.per_output.get(LABEL_MAP_OUTPUT)
        first_p50 = first.p50 if first is not None else e2e_p50
        paired = node_info.get("paired") or {}
        pairs = len(paired.get("pipeline_ms", ()))
        if pairs:  # frame by frame against the pipeline on that frame
            baseline = float(np.median(paired["pipeline_ms"]))
            extra = float(np.median(paired["label_map_extra_ms"]))
            extra_all = float(np.median(paired["last_output_extra_ms"]))
        else:  # the core part's figure, taken earlier in the run
            baseline = pipeline_ms
            extra, extra_all = first_p50 - baseline, e2e_p50 - baseline
        budget = transport_p50 + TARGET_NODE_EXTRA_FORWARD_SHARE * forward_ms
        targets.update({"node_extra_ms": _sig(extra), "node_extra_budget_ms": _sig(budget),
                        "node_extra_met": extra <= budget,
                        "node_extra_all_outputs_ms": _sig(extra_all),
                        "node_extra_baseline": (
                            f"in-process pipeline on each of the node's {pairs} frames right "
                            "after it" if pairs else "core pipeline")})
        report["node_e2e_label_map_ms_p50"] = _sig(first_p50)
        report["node_reference_pipeline_ms_p50"] = _sig(baseline)
    report["targets"] = targets
    return report


def _met(value: float | None, bound: float, below: bool) -> bool | None:
    if value is None:
        return None
    return value <= bound if below else value >= bound


def _ordered(stages: dict[str, Summary]) -> dict[str, Summary]:
    known = [name for name in STAGE_ORDER if name in stages]
    return {name: stages[name] for name in [*known, *(n for n in stages if n not in known)]}


def _ms(summary: Summary | None, p90: bool = False) -> str:
    if summary is None or summary.count == 0:
        return "-"
    text = f"{summary.p50:.2f}" if summary.p50 < 10 else f"{summary.p50:.1f}"
    return f"{text} ({summary.p90:.1f})" if p90 else text


def format_report(report: dict[str, Any], core: list[SizeResult], transport: dict,
                  node: dict, node_rate: dict) -> str:
    """The terminal table."""
    lines = []
    load = report["load_average"]
    lines.append(
        f"seg-perception bench: {report['model']} on {report['device']} "
        f"({report['device_name']}, {report['threads']} threads), {report['precision']}, "
        f"network input {report['network_input']}"
        + (", CUDA graph" if report["cuda_graph"] else ""))
    lines.append(f"load average {load['start'][0]:.2f} at start, {load['end'][0]:.2f} at end; "
                 f"OMP_WAIT_POLICY {report['omp_wait_policy']}; "
                 f"{report['settings']['frames']} frames per size after "
                 f"{report['settings']['warmup']} warm-up; ms: median (p90)")
    lines.append("")
    sizes = [size_text(r.size) for r in core]
    width = max(16, *(len(s) + 12 for s in sizes))
    lines.append("core pipeline".ljust(16) + "".join(s.rjust(width) for s in sizes))
    names = list(_ordered({k: v for r in core for k, v in r.stages.items()}))
    for name in names:
        lines.append(f"  {name}".ljust(16)
                     + "".join(_ms(r.stages.get(name)).rjust(width) for r in core))
    lines.append("  total".ljust(16) + "".join(_ms(r.pipeline, True).rjust(width) for r in core))
    lines.append("network alone".ljust(16)
                 + "".join(_ms(r.forward, True).rjust(width) for r in core))
    if any(r.naive is not None for r in core):
        lines.append("naive pipeline".ljust(16)
                     + "".join(_ms(r.naive, True).rjust(width) for r in core))
        lines.append("speed-up *".ljust(16) + "".join(
            (f"{r.speedup:.2f}x" if r.speedup else "-").rjust(width) for r in core))
    lines.append("pipeline/fwd *".ljust(16)
                 + "".join(f"{r.over_forward:.3f}".rjust(width) for r in core))
    lines.append("pipeline fps".ljust(16)
                 + "".join(f"{1e3 / r.pipeline.p50:.1f}".rjust(width) for r in core))
    lines.append("  * median of per-frame ratios (the contenders run back to back on each frame)")
    here = next(r for r in core if size_text(r.size) == report["camera_size"])
    if here.naive is not None:
        lines.append("")
        lines.append(f"stages at {report['camera_size']}".ljust(16)
                     + "pipeline".rjust(14) + "naive".rjust(14))
        merged = _ordered({**here.naive_stages, **here.stages})
        for name in merged:
            lines.append(f"  {name}".ljust(16) + _ms(here.stages.get(name)).rjust(14)
                         + _ms(here.naive_stages.get(name)).rjust(14))
    if transport or node:
        lines.append("")
        lines.append("over DDS (e2e ms)".ljust(26) + "fps in".rjust(9) + "fps out".rjust(9)
                     + "dropped".rjust(9) + "p50".rjust(9) + "p90".rjust(9) + "p99".rjust(9)
                     + "  pub cpu")
        rate = report["settings"]["node_rate_hz"]
        rate = f"node {rate:g} Hz" if isinstance(rate, (int, float)) else "node flood"
        transport_rate = report["settings"]["transport_rate_hz"]
        transport_label = (f"transport {transport_rate:g} Hz"
                           if isinstance(transport_rate, (int, float)) else "transport flood")
        for label, runs in ((transport_label, transport), ("node lockstep", node),
                            (rate, node_rate)):
            for size, run in runs.items():
                lat = run.latency
                lines.append(
                    f"  {label} {size_text(size)}".ljust(26) + f"{run.fps_in:9.1f}"
                    + f"{run.fps_out:9.1f}" + f"{run.dropped:9d}"
                    + "".join(f"{v:9.1f}" if run.received else "        -"
                              for v in (lat.p50, lat.p90, lat.p99))
                    + f"  {100 * run.publisher_cpu:5.0f}%")
                if run.per_output and run.received:
                    lines.append("    p50 by output: " + ", ".join(
                        f"{name.rsplit('/', 1)[-1]} {lat.p50:.1f}"
                        for name, lat in run.per_output.items()))
    if report["accuracy"]:
        first = report["accuracy"][0]
        lines.append("")
        lines.append(f"accuracy (CamVid {first['split']}, {first['images']} images)".ljust(34)
                     + "ms".rjust(8) + "fps".rjust(7) + "mIoU".rjust(7) + "pix acc".rjust(9)
                     + "  vehicle ahead: F1, TP/FP/FN/TN")
        for row in report["accuracy"]:
            f1 = row["vehicle_f1"]
            c = row["vehicle_counts"]
            lines.append(
                f"  network input {row['input_size']} {row['precision']}".ljust(34)
                + f"{row['ms_p50']:8.1f}{row['fps']:7.1f}{row['mean_iou']:7.3f}"
                + f"{row['pixel_accuracy']:9.3f}  " + (f"{f1:.3f}" if f1 is not None else "n/a")
                + f", {c['tp']}/{c['fp']}/{c['fn']}/{c['tn']}")
        lines.append("  (ms, fps: the pipeline on CamVid's 480x360 frames at that network input)")
    lines.append("")
    targets = report["targets"]
    lines.append(
        f"{report['camera_size']}: pipeline {report['pipeline_ms']} ms, forward "
        f"{report['forward_ms']} ms, pipeline/forward {report['pipeline_over_forward']} "
        f"(target <= {TARGET_PIPELINE_OVER_FORWARD}), speed-up vs naive "
        + (f"{report['speedup_vs_naive']}x" if report["speedup_vs_naive"] else "- (skipped)")
        + f" (target >= {TARGET_SPEEDUP})")
    if "node_extra_ms" in targets:
        lines.append(
            f"node over DDS: e2e p50 {report['node_e2e_label_map_ms_p50']} ms to the label map, "
            f"{report['node_e2e_ms_p50']} ms (p99 {report['node_e2e_ms_p99']}) to the last "
            f"output; the {targets['node_extra_baseline']}: "
            f"{report['node_reference_pipeline_ms_p50']} ms")
        verdict = "met" if targets["node_extra_met"] else "MISSED"
        paired = report.get("node_info", {}).get("paired", {}).get("pipeline_ms")
        per_frame = "median per frame: " if paired else ""
        lines.append(
            f"  the node adds ({per_frame}e2e - pipeline) {targets['node_extra_ms']} ms to the "
            "label map (target <= "
            f"transport {report['transport_ms_p50']} + 10% of forward = "
            f"{targets['node_extra_budget_ms']} ms: {verdict}), "
            f"{targets['node_extra_all_outputs_ms']} ms to the last of three images")
    lines.append(f"run took {report['seconds']:.0f} s")
    return "\n".join(lines)


def format_soak(report: dict[str, Any]) -> str:
    lines = [
        f"soak: {report['soak_minutes']:g} min at {report['camera_size']}, node capacity "
        f"{report['node_capacity_fps']} fps, fed at {report['feed_rate_hz']} Hz",
        f"  frames sent {report['frames_sent']}, processed {report['frames_out']}, dropped "
        f"{report['frames_dropped']} (the node keeps only the newest frame), partial "
        f"{report['frames_partial']}",
        f"  RSS {report['rss_mb_start']} MB after warm-up -> {report['rss_mb_end']} MB at the "
        f"end: {report['rss_growth_pct']:+.2f}% (ready: {report['rss_mb_ready']} MB)",
        "  minute      n     p50     p90     p99  (e2e latency, ms)",
    ]
    for row in report["latency_ms_per_minute"]:
        lines.append(f"  {row['minute']:6d} {row['n']:6d} {row['p50']:7.1f} {row['p90']:7.1f} "
                     f"{row['p99']:7.1f}")
    lines.append(f"  p99 last minute / first minute: {report['p99_end_over_start']}")
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from seg_perception.tools.common import add_model_arguments

    add_model_arguments(parser)
    frames = parser.add_argument_group("frames")
    frames.add_argument("--sizes", type=_sizes, default=list(DEFAULT_SIZES), metavar="WxH,...",
                        help="camera sizes (default 640x480,1280x720,1920x1080)")
    frames.add_argument("--camera-size", type=parse_size, default=DEFAULT_CAMERA, metavar="WxH",
                        help="the size of the headline figures (default 1280x720)")
    frames.add_argument("--frames", type=int, default=30, help="timed frames per size (30)")
    frames.add_argument("--warmup", type=int, default=2, help="untimed frames first (2)")
    frames.add_argument("--alpha", type=float, default=0.5, help="overlay alpha (0.5)")
    frames.add_argument("--cuda-graph", action="store_true",
                        help="CUDA: replay one captured graph per frame size")
    frames.add_argument("--skip", type=_skips, default=set(), metavar="PART,...",
                        help=f"leave out parts: {', '.join(SKIPPABLE)}")
    dds = parser.add_argument_group("over DDS")
    dds.add_argument("--node-seconds", type=float, default=5.0,
                     help="seconds of publishing per run to the node (5)")
    dds.add_argument("--node-rate", type=float, default=30.0,
                     help="camera rate of the extra run at --camera-size, in Hz (default 30; "
                     "0: as fast as the publisher can, a flood; -1: no such run)")
    dds.add_argument("--transport-seconds", type=float, default=2.0,
                     help="seconds of publishing per size without a node (2)")
    dds.add_argument("--transport-rate", type=float, default=30.0,
                     help="publisher rate without a node in Hz (default 30; 0: full speed)")
    dds.add_argument("--domain-id", type=int, default=None,
                     help="ROS domain of the benchmark's processes (default: a random one)")
    acc = parser.add_argument_group("accuracy")
    acc.add_argument("--accuracy-sizes", type=_sizes, default=list(DEFAULT_ACCURACY_SIZES),
                     metavar="WxH,...", help="network input sizes (1024x512,768x384,512x256)")
    acc.add_argument("--accuracy-split", choices=("val", "train", "all"), default="val",
                     help="CamVid split (default val, 101 images; it has no frame with a "
                     "vehicle ahead, so F1 is undefined there: 'all' adds train's 367)")
    acc.add_argument("--accuracy-images", type=int, default=0,
                     help="use only the first N images (default 0: all)")
    acc.add_argument("--accuracy-bf16", action="store_true",
                     help="also bf16 autocast at the first size: its speed and accuracy cost "
                     "(CPU; off by default to keep the run under 3 minutes)")
    soak = parser.add_argument_group("soak (instead of the benchmark)")
    soak.add_argument("--soak", type=float, metavar="MINUTES",
                      help="run the node at twice its capacity for MINUTES; report RSS and "
                      "latency per minute")
    soak.add_argument("--soak-calibrate", type=float, default=15.0,
                      help="seconds in lockstep to measure the node's capacity (15)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")


_STARTED = time.monotonic()


def _log(text: str) -> None:
    """Progress on stderr, with the seconds since start (the run should stay under 3 min)."""
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from seg_perception.core.pipeline import configure_threads
    from seg_perception.core.vehicle_ahead import VehicleAheadConfig, resolve_vehicle_class_ids
    from seg_perception.models.loading import load_model
    from seg_perception.shared_data import use_shared_torch_home

    if args.frames < 1 or args.warmup < 0:
        raise ValueError("--frames must be >= 1 and --warmup >= 0")
    started = time.perf_counter()
    load_start = os.getloadavg()
    threads = args.threads or len(os.sched_getaffinity(0))
    configure_threads(threads)
    use_shared_torch_home()
    if args.domain_id is None:
        args.domain_id = random.randint(1, 101)
    if args.soak is not None:
        if not args.soak > 0:
            raise ValueError("--soak needs a positive number of minutes")
        report = run_soak(args, threads, _log)
        report["threads"] = threads
        report["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
        report["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
        print(format_soak(report))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        return 0

    cores = len(os.sched_getaffinity(0))
    if load_start[0] > 0.5 * cores:
        _log(f"note: load average {load_start[0]:.2f} on {cores} cores: other processes compete "
             "for the CPU and the figures will be noisy"
             + ("; with several torch threads OpenMP waits can inflate them a lot (try "
                "--threads 1 or OMP_WAIT_POLICY=PASSIVE)" if threads > 1 else ""))
    sizes = list(dict.fromkeys([*args.sizes, args.camera_size]))
    _log(f"loading {args.model} ({args.device}, {args.precision}, {threads} threads)")
    loaded = load_model(args.model, device=args.device, precision=args.precision)
    meta = loaded.metadata
    vehicle_config = VehicleAheadConfig(vehicle_ids=resolve_vehicle_class_ids(meta.class_names))
    frames = load_frames(sizes, args.warmup + args.frames)
    _log(f"core pipeline, network alone{'' if 'naive' in args.skip else ', naive pipeline'}:")
    core = measure_core(loaded, frames, args, vehicle_config, _log)
    transport: dict = {}
    node: dict = {}
    node_rate: dict = {}
    node_info: dict = {}
    accuracy: list[dict] = []
    errors: dict[str, str] = {}
    if not {"transport", "node"} <= args.skip:
        with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
            helpers = Helpers(_ros_env(args.domain_id), Path(tmp))
            if "transport" not in args.skip:
                _log(f"raw rclpy transport (ROS domain {args.domain_id}):")
                transport = _part("transport", errors, measure_transport, helpers, sizes, args,
                                  _log) or {}
            if "node" not in args.skip:
                _log("the node over DDS:")
                time_frame = _frame_timer(loaded, args, vehicle_config)
                node, node_rate, node_info = _part(
                    "node", errors, measure_node, helpers, sizes, args, threads, _log,
                    time_frame) or ({}, {}, {})
    if "accuracy" not in args.skip:
        _log("accuracy against speed:")
        accuracy = _part("accuracy", errors, measure_accuracy, args, _log) or []
    report = build_report(args, loaded, threads, core, transport, node, node_rate, node_info,
                          accuracy, (load_start, os.getloadavg()), time.perf_counter() - started)
    report["errors"] = errors
    print(format_report(report, core, transport, node, node_rate))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    for part, message in errors.items():
        _log(f"bench: the {part} part failed: {message}")
    return 1 if errors else 0


def _part(name: str, errors: dict[str, str], function: Callable[..., Any], *args: Any) -> Any:
    """Run one part of the benchmark; a failure is reported, and the other parts still run."""
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - keep the figures of the parts that worked
        errors[name] = f"{type(exc).__name__}: {exc}"
        return None


def helper_main(argv: Sequence[str]) -> int:
    """``python -m seg_perception.tools.bench publisher|subscriber ...``: the DDS helpers."""
    roles = {"publisher": publisher_main, "subscriber": subscriber_main}
    if not argv or argv[0] not in roles:
        print(f"usage: python -m seg_perception.tools.bench {{{','.join(roles)}}} ...",
              file=sys.stderr)
        return 2
    return roles[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(helper_main(sys.argv[1:]))
