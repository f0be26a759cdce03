"""``seg-perception bench``: how fast the pipeline is, next to what bounds it and what it replaces.

One run measures, side by side on the same real dash-cam frames (the shared video, resized):

* the core pipeline, stage by stage (message to array ... array to message), exactly the
  node's frame path (:func:`seg_perception.core.frame.process_frame`);
* the network forward alone on the same input tensor: the floor for the pipeline;
* a naive reference pipeline, the way tutorials do it (PIL / numpy conversion, torchvision
  transforms on CPU tensors, the eager model, argmax on the CPU, a numpy palette, an
  ``addWeighted`` blend), vectorised and with the same weights and threads: the baseline;
* the raw rclpy transport of the same images with no node, then the real node over DDS
  (a publisher process at full speed, the node, a recorder process), at the camera size
  paired frame by frame with this process's pipeline on the same frame;
* accuracy against speed: the model at several input sizes (and bf16 on the CPU) on CamVid
  val through the evaluation code;
* what the confidence map costs the pipeline (``confidence``, at the camera size);
* opt-in (``--with``): label flicker against temporal smoothing and its decision delay
  (``stability``), one model serving 1-3 cameras (``multi_camera``), two nodes sharing the
  machine (``two_nodes``); and ``--contention N``: the headline figures beside N busy
  processes against quiet.

Contenders are interleaved frame by frame so that load from other processes hits them alike.
``--soak MINUTES`` instead runs the node for a long time at twice the rate it can process and
reports memory and latency over time.

Modules: :mod:`.frames` (the input), :mod:`.contenders`, :mod:`.core` (in-process),
:mod:`.dds` and :mod:`.streams` (over DDS), :mod:`.accuracy`, :mod:`.stability`,
:mod:`.scaling`, :mod:`.contention`, :mod:`.soak`, :mod:`.report`, :mod:`.timing`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seg_perception.checks import atomic_write, check_output_file, number_type
from seg_perception.errors import UsageError

HELP = "measure the pipeline stage by stage against the network, a naive pipeline and DDS"
EPILOG = """examples:
  seg-perception bench                                  # the default run (about 3 min)
  seg-perception bench --with all --contention 1        # every part, and beside a busy core
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

parts: naive, transport, node, accuracy, confidence run by default (--skip leaves them out);
stability (~35 s), multi_camera (~60 s), two_nodes (~25 s) only with --with (or --with all).
"""

DEFAULT_SIZES = ((640, 480), (1280, 720), (1920, 1080))
DEFAULT_CAMERA = (1280, 720)
DEFAULT_ACCURACY_SIZES = ((1024, 512), (768, 384), (512, 256))
MAX_DOMAIN_ID = 232  # the largest ROS_DOMAIN_ID ROS 2 allows
SKIPPABLE = ("naive", "transport", "node", "accuracy", "confidence")
OPT_IN = ("stability", "multi_camera", "two_nodes")  # each adds tens of seconds


def wanted(args: argparse.Namespace, part: str) -> bool:
    """Whether this run measures ``part`` (``--skip`` wins over ``--with``)."""
    return part not in args.skip and (part not in OPT_IN or part in args.extra)


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); the tools' parser, imported late (it imports torch)."""
    from seg_perception.tools.common import parse_size as parse

    return parse(text)


def _sizes(text: str) -> list[tuple[int, int]]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _part_names(allowed: tuple[str, ...], verb: str) -> Callable[[str], set[str]]:
    """A parser of 'PART,...' that knows ``allowed`` ('all': every one)."""
    def parse(text: str) -> set[str]:
        names = {part.strip() for part in text.split(",") if part.strip()}
        if "all" in names:
            return set(allowed)
        unknown = names - set(allowed)
        if unknown:
            raise argparse.ArgumentTypeError(
                f"cannot {verb} {', '.join(sorted(unknown))}: choose from {', '.join(allowed)}")
        return names

    return parse


def _fractions(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not all(0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"each value must be in (0, 1), got {text!r}")
    return values



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
    frames.add_argument("--alpha", type=number_type(float, 0, 1), default=0.5,
                        help="overlay alpha (0.5)")
    frames.add_argument("--cuda-graph", action="store_true",
                        help="CUDA: replay one captured graph per frame size")
    frames.add_argument("--skip", type=_part_names(SKIPPABLE + OPT_IN, "skip"), default=set(),
                        metavar="PART,...", help=f"leave out parts: {', '.join(SKIPPABLE)}")
    frames.add_argument("--with", dest="extra", type=_part_names(OPT_IN, "add"), default=set(),
                        metavar="PART,...",
                        help=f"add opt-in parts: {', '.join(OPT_IN)} or all (see 'parts')")
    frames.add_argument("--smoothing", type=_fractions, default=[0.3, 0.5, 0.7],
                        metavar="S,...", help="stability: temporal_smoothing values to compare "
                        "with off (default 0.3,0.5,0.7)")
    frames.add_argument("--contention", type=number_type(int, minimum=0), default=0, metavar="N",
                        help="also measure forward and node latency beside N busy processes "
                        "(quiet and busy alternating frame by frame; default 0: not)")
    dds = parser.add_argument_group("over DDS")
    dds.add_argument("--node-seconds", type=number_type(float, positive=True), default=5.0,
                     help="seconds of publishing per run to the node (5)")
    dds.add_argument("--node-rate", type=float, default=30.0,
                     help="camera rate of the extra run at --camera-size, in Hz (default 30; "
                     "0: as fast as the publisher can, a flood; -1: no such run)")
    dds.add_argument("--transport-seconds", type=number_type(float, positive=True), default=2.0,
                     help="seconds of publishing per size without a node (2)")
    dds.add_argument("--transport-rate", type=float, default=30.0,
                     help="publisher rate without a node in Hz (default 30; 0: full speed)")
    dds.add_argument("--domain-id", type=number_type(int, 0, MAX_DOMAIN_ID), default=None,
                     help="ROS domain of the benchmark's processes (default: a random one)")
    acc = parser.add_argument_group("accuracy")
    acc.add_argument("--accuracy-sizes", type=_sizes, default=list(DEFAULT_ACCURACY_SIZES),
                     metavar="WxH,...", help="network input sizes (1024x512,768x384,512x256)")
    acc.add_argument("--accuracy-split", choices=("val", "train", "all"), default="val",
                     help="CamVid split (default val, 101 images; it has no frame with a "
                     "vehicle ahead, so F1 is undefined there: 'all' adds train's 367)")
    acc.add_argument("--accuracy-images", type=number_type(int, minimum=0), default=0,
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
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="write every figure here (checked before the run; an existing "
                        "file is replaced, one line says so)")


_STARTED = time.monotonic()


def _log(text: str) -> None:
    """Progress on stderr, with the seconds since start (the run should stay under 3 min)."""
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from seg_perception.core.pipeline import configure_threads
    from seg_perception.core.vehicle_ahead import VehicleAheadConfig, resolve_vehicle_class_ids
    from seg_perception.models.loading import load_model
    from seg_perception.shared_data import use_shared_torch_home
    from seg_perception.tools.bench.accuracy import measure_accuracy
    from seg_perception.tools.bench.core import frame_timer, measure_core
    from seg_perception.tools.bench.dds import Graph, measure_node, measure_transport
    from seg_perception.tools.bench.frames import load_frames
    from seg_perception.tools.bench.report import build_report, format_report
    from seg_perception.tools.bench.soak import format_soak, run_soak

    if args.frames < 1 or args.warmup < 0:
        raise UsageError("--frames must be >= 1 and --warmup >= 0")
    if args.json is not None:
        check_output_file(args.json, "--json", {"--model": Path(args.model)})
    if args.contention < 0:
        raise UsageError("--contention must be >= 0")
    started = time.perf_counter()
    load_start = os.getloadavg()
    threads = args.threads or len(os.sched_getaffinity(0))
    configure_threads(threads)
    use_shared_torch_home()
    if args.domain_id is None:
        args.domain_id = random.randint(1, 101)
    if args.soak is not None:
        if not args.soak > 0:
            raise UsageError("--soak needs a positive number of minutes")
        report = run_soak(args, threads, _log)
        report["threads"] = threads
        report["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
        report["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
        print(format_soak(report))
        if args.json:
            with atomic_write(args.json) as stream:
                json.dump(report, stream, indent=1)
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
    _log(f"core pipeline, network alone{'' if 'naive' in args.skip else ', naive pipeline'}"
         f"{'' if 'confidence' in args.skip else ', with the confidence map'}:")
    core = measure_core(loaded, frames, args, vehicle_config, _log,
                        confidence=wanted(args, "confidence"))
    transport: dict = {}
    node: dict = {}
    node_rate: dict = {}
    node_info: dict = {}
    accuracy: list[dict] = []
    extras: dict[str, Any] = {}  # the JSON keys of the parts added later
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        graph = Graph(args.domain_id, Path(tmp))
        if "transport" not in args.skip:
            _log(f"raw rclpy transport (ROS domain {args.domain_id}):")
            transport = _part("transport", errors, measure_transport, graph, sizes, args,
                              _log) or {}
        if "node" not in args.skip:
            _log("the node over DDS:")
            time_frame = frame_timer(loaded, args, vehicle_config)
            node, node_rate, node_info = _part(
                "node", errors, measure_node, graph, sizes, args, threads, _log,
                time_frame) or ({}, {}, {})
        extras.update(_added_parts(graph, loaded, vehicle_config, args, threads, errors))
    if "accuracy" not in args.skip:
        _log("accuracy against speed:")
        accuracy = _part("accuracy", errors, measure_accuracy, args, _log) or []
    report = build_report(args, loaded, threads, core, transport, node, node_rate, node_info,
                          accuracy, (load_start, os.getloadavg()), time.perf_counter() - started)
    report.update(extras)
    report["errors"] = errors
    print(format_report(report, core, transport, node, node_rate))
    added = _added_lines(extras)
    if added:
        print("\n" + "\n".join(added))
    if args.json:
        with atomic_write(args.json) as stream:
            json.dump(report, stream, indent=1)
    for part, message in errors.items():
        _log(f"bench: the {part} part failed: {message}")
    return 1 if errors else 0


def _added_parts(graph: Any, loaded: Any, vehicle_config: Any, args: argparse.Namespace,
                 threads: int, errors: dict[str, str]) -> dict[str, Any]:
    """The parts beyond the headline figures that this run measures: JSON key -> figures."""
    from seg_perception.tools.bench.contention import measure_contention
    from seg_perception.tools.bench.scaling import measure_multi_camera, measure_two_nodes
    from seg_perception.tools.bench.stability import measure_stability

    parts: dict[str, tuple[str, Callable[[], Any]]] = {
        "multi_camera": ("one model, 1-3 cameras", lambda: measure_multi_camera(
            graph, args, threads, loaded, _log)),
        "two_nodes": ("two nodes at once against one", lambda: measure_two_nodes(
            graph, args, threads, _log)),
        "stability": ("temporal smoothing: flicker and decision delay", lambda: measure_stability(
            loaded, vehicle_config, args.smoothing, _log)),
    }
    keys = {"two_nodes": "two_nodes_over_one", "contention": "contended_over_quiet"}
    if args.contention:
        parts["contention"] = (f"beside {args.contention} busy process(es)", lambda: (
            measure_contention(graph, loaded, args, threads, _log)))
    results = {}
    for name, (title, measure) in parts.items():
        if name == "contention" or wanted(args, name):
            _log(f"{title}:")
            result = _part(name, errors, measure)
            if result is not None:
                results[keys.get(name, name)] = result
    return results


def _added_lines(extras: dict[str, Any]) -> list[str]:
    """The terminal lines of the parts of :func:`_added_parts` that ran."""
    from seg_perception.tools.bench.contention import format_contention
    from seg_perception.tools.bench.scaling import format_scaling
    from seg_perception.tools.bench.stability import format_stability

    lines = format_scaling(extras.get("multi_camera"), extras.get("two_nodes_over_one"))
    if "stability" in extras:
        lines += format_stability(extras["stability"])
    if "contended_over_quiet" in extras:
        lines.append(format_contention(extras["contended_over_quiet"]))
    return lines


def _part(name: str, errors: dict[str, str], function: Callable[..., Any], *args: Any) -> Any:
    """Run one part of the benchmark; a failure is reported, and the other parts still run."""
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - keep the figures of the parts that worked
        errors[name] = f"{type(exc).__name__}: {exc}"
        return None
