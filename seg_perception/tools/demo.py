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
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2

from seg_perception import topics
from seg_perception.checks import check_input_file, check_output_dir, number_type
from seg_perception.errors import UsageError
from seg_perception.models.loading import check_model_name
from seg_perception.models.registry import DEFAULT_MODEL
from seg_perception.shared_data import dashcam_video, shared_path
from seg_perception.sources import open_source
from seg_perception.tools.demo_outputs import (
    NODE,
    Collector,
    Output,
    PhaseResult,
    PlayerOutput,
    fmt,
    fmt_bool,
    print_summary,
)
from seg_perception.tools.rosgraph import ChildProcess, RosNode, node_command, ros_env

HELP = "the main job: the node and a player over DDS on the dash-cam stills and video"
EPILOG = """examples:
  seg-perception demo                               # default model and data, into out/demo
  seg-perception demo --model espnet-camvid --device cpu --out /tmp/demo
  seg-perception demo --only video --video drive.mp4 --max-frames 50
  seg-perception demo --only cameras                # three cameras into one node
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
(frame, stamp, vehicle_ahead, coverage, latency_ms), one line per frame as results arrive.
phase 3 (cameras): the node restarted with cameras [front, left, right]; one player plays
the video on front and the stills (looping) on left and right at once, each camera in
lockstep with its own label maps, 24 frames each (fewer with --max-frames); one overlay video
per camera, OUT/cameras/<name>.mp4. Then the summary, a line per phase and camera. Logs of
the child processes: OUT/node*.log, OUT/player-*.log.

ROS: own random ROS_DOMAIN_ID unless set, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless
set, and the package's Fast DDS profile for every process unless
FASTDDS_DEFAULT_PROFILES_FILE is set.
"""

SETTLE_S = 5.0  # after the player ends: how long to wait for outputs that are still due
STOP_TIMEOUT_S = 10.0  # per signal, before a child process gets the next one


class DemoError(RuntimeError):
    """The demo cannot go on (the node did not start, died, or produced nothing)."""


CAMERAS = ("front", "left", "right")  # phase 3: the video on front, the stills beside it
CAMERA_FRAMES = 24  # phase 3: frames per camera (about 1 s of the video)


# --- the phases -----------------------------------------------------------------------------


class Demo:
    """Owns the child processes and this process's ROS node; :meth:`close` always cleans up."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.out: Path = args.out
        self.node: ChildProcess | None = None
        self.players: list[ChildProcess] = []
        self.node_log = self.out / "node.log"
        self.ros: RosNode | None = None
        self.collector: Collector | None = None  # the node's own topic names
        self.collectors: dict[str, Collector] = {}  # by camera, in phase 3
        self.cameras: Sequence[str] = ("",)  # those of the running node
        self.ready = False

    # --- the node process -------------------------------------------------------------------

    def start_node(self, cameras: Sequence[str] = ("",)) -> None:
        """The node, with ``cameras`` (("",): one at the node's own topic names)."""
        self.cameras = cameras
        ros_args = []
        if self.args.params_file:
            ros_args += ["--params-file", str(self.args.params_file)]
        if self.args.model or not self.args.params_file:
            ros_args += ["-p", f"model:={self.args.model or DEFAULT_MODEL}"]
        if self.args.device:
            ros_args += ["-p", f"device:={self.args.device}"]
        if cameras != ("",):
            ros_args += ["-p", f"cameras:=[{','.join(cameras)}]"]
            self.node_log = self.out / "node-cameras.log"
        self.node = ChildProcess(node_command(*ros_args), self.node_log, self.env)

    def restart_node(self, cameras: Sequence[str]) -> float:
        """Stop the node and start it with ``cameras``; seconds until it is ready."""
        if self.node is not None:
            self.node.stop(STOP_TIMEOUT_S)
        self.ready = False
        self.start_node(cameras)
        return self.wait_until_ready()

    def node_tail(self, lines: int = 25) -> str:
        tail = self.node.log_text().rstrip().splitlines()[-lines:] if self.node else []
        return "\n".join(f"  | {line}" for line in tail) or "  | (empty)"

    def ready_line(self) -> str:
        """': <what the node said>' from its 'ready: ...' log line, if it logged one."""
        lines = self.node.log_text().splitlines() if self.node else []
        said = [line.split("ready: ", 1)[1] for line in lines if "ready: " in line]
        return f": {said[-1]}" if said else ""

    def check_node(self) -> None:
        if self.node is not None and self.node.poll() is not None:
            what = "exited" if self.ready else "failed to start"
            raise DemoError(
                f"the node {what} (exit code {self.node.poll()}); the end of its "
                f"log ({self.node_log}):\n{self.node_tail()}"
            )

    # --- ROS in this process ----------------------------------------------------------------

    def start_ros(self) -> None:
        self.ros = RosNode("seg_perception_demo", background=True)
        self.collector = Collector(self.ros)

    def wait_until_ready(self) -> float:
        """Seconds until the node's input and its vehicle_ahead publisher are in the graph.

        The node creates them once its model is loaded, so this means 'ready for frames'.
        """
        start = time.monotonic()
        graph = self.ros.node

        def serves(camera: str) -> bool:
            publishers = graph.get_publishers_info_by_topic(
                "/" + topics.camera_topic(camera, topics.VEHICLE_AHEAD))
            subscribers = graph.get_subscriptions_info_by_topic(
                "/" + topics.camera_topic(camera, topics.IMAGE))
            return (any(p.node_name == topics.NODE_NAME for p in publishers)
                    and any(s.node_name == topics.NODE_NAME for s in subscribers))

        def ready() -> bool:
            self.check_node()
            return all(serves(camera) for camera in self.cameras)

        try:
            self.ros.wait_for(ready, self.args.startup_timeout, "the node")
        except TimeoutError:
            raise DemoError(
                f"the node was not ready after {self.args.startup_timeout:g} s "
                f"(--startup-timeout); the end of its log ({self.node_log}):\n{self.node_tail()}"
            ) from None
        self.ready = True
        [names] = self.ros.get_parameters(NODE, ["class_names"])  # the running model's
        if self.cameras == ("",):
            collectors = [self.collector]
        else:
            self.collectors = {camera: Collector(self.ros, camera) for camera in self.cameras}
            collectors = list(self.collectors.values())
        for collector in collectors:
            collector.car_id = next(
                (i for i, name in enumerate(names) if name.lower() == "car"), None)
            collector.subscribe(timeout=30.0)
        return time.monotonic() - start

    def set_node_parameters(self, values: dict[str, Any]) -> dict[str, Any]:
        """Set parameters of the node; returns their previous values (to restore later)."""
        previous = self.ros.get_parameters(NODE, list(values))
        results = self.ros.set_parameters(NODE, values)
        refused = [f"{n}: {r.reason}" for n, r in zip(values, results, strict=True)
                   if not r.successful]
        if refused:
            raise DemoError(f"the node refused parameters: {'; '.join(refused)}")
        return dict(zip(values, previous, strict=True))

    # --- one phase --------------------------------------------------------------------------

    def run_phase(self, name: str, sources: list[str], count: int | None,
                  handle: Callable[[int | None, str, Output], None],
                  collectors: dict[str, Collector] | None = None) -> dict[str, PhaseResult]:
        """Play ``sources`` (the player's arguments: a source, or NAME=SOURCE per camera of
        ``collectors``) to the node and hand every output to ``handle`` as it arrives; the
        figures per camera ("": the node's own topics)."""
        collectors = collectors or {"": self.collector}
        results = {}
        for camera, collector in collectors.items():
            collector.reset()
            results[camera] = PhaseResult(f"{name}/{camera}" if camera else name,
                                          node_before=collector.counters.latest()[1])
        command = [sys.executable, "-m", "seg_perception.cli", "play", *sources,
                   "--print-frames", "--wait-subscribers", "1", "--wait-timeout", "60"]
        if self.args.rate:
            command += ["--rate", str(self.args.rate)]
        else:
            command += ["--lockstep", topics.LABEL_MAP, "--lockstep-timeout", "30"]
        if count:
            command += ["--count", str(count)]
        log = self.out / f"player-{name}.log"
        player = ChildProcess(command, log, self.env, pipe=True)
        self.players.append(player)
        reader = PlayerOutput(player.process.stdout)
        last_activity = time.monotonic()
        player_end: float | None = None
        while True:
            self.check_node()
            for output in (o for c in collectors.values() for o in c.ready()):
                frame = reader.lookup(output.stamp_ns, output.camera)
                if frame is None and player.poll() is None:
                    time.sleep(0.05)  # the player's line for it is on its way
                    frame = reader.lookup(output.stamp_ns, output.camera)
                index, label = frame if frame else (None, "?")
                handle(index, label, output)
                result = results[output.camera]
                result.outputs += 1
                result.complete += output.complete
                if output.latency_ms is not None:
                    result.latencies_ms.append(output.latency_ms)
                last_activity = time.monotonic()
            if player.poll() is not None:
                if player_end is None:
                    player_end = time.monotonic()
                    reader.thread.join(timeout=5.0)
                due = reader.count() - sum(r.outputs for r in results.values())
                idle = time.monotonic() - max(last_activity, player_end)
                if due <= 0 or idle > SETTLE_S:
                    break
            time.sleep(0.02)
        if player.poll() != 0:
            raise DemoError(f"the player failed with code {player.poll()}; see {log}")
        ended = time.time_ns()
        for camera, result in results.items():
            result.published = reader.count(camera)
            result.player_summary = reader.summaries.get(camera, "")
            if result.player_summary:
                print(f"  player: {camera + ': ' if camera else ''}{result.player_summary}",
                      flush=True)
            # The node's counters from a diagnostics message made after the phase ended.
            result.node_after = collectors[camera].counters.fresh(ended, timeout=5.0)
        return results

    def close(self) -> None:
        """Stop the children (SIGINT, SIGTERM, kill) and this process's ROS; safe twice."""
        for child in reversed([*([self.node] if self.node else []), *self.players]):
            child.stop(STOP_TIMEOUT_S)
        if self.ros is not None:
            self.ros.close()


# --- the command ----------------------------------------------------------------------------


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    node = parser.add_argument_group("node")
    node.add_argument("--model", help=f"built-in name or exported .pt (default {DEFAULT_MODEL}, "
                      "or the params file's)")
    node.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the node's, auto)")
    node.add_argument("--params-file", type=Path,
                      help="node parameters (e.g. config/segmentation.yaml); --model and "
                      "--device override it")
    node.add_argument("--startup-timeout", type=number_type(float, positive=True), default=180.0,
                      metavar="S",
                      help="seconds the node may take to load (default 180: a first run "
                      "exports the model into the cache)")
    data = parser.add_argument_group("data")
    data.add_argument("--video", type=Path, help="video to play (default: the dash-cam video)")
    data.add_argument("--stills", type=Path,
                      help="folder of stills (default: the dash-cam stills)")
    data.add_argument("--max-frames", type=int, default=0, metavar="N",
                      help="play only the first N video frames (default 0 = all; phase 3: "
                      f"{CAMERA_FRAMES})")
    data.add_argument("--only", choices=("stills", "video", "cameras"),
                      help="run one phase only")
    parser.add_argument("--rate", type=float, metavar="HZ",
                        help="play at a fixed rate instead of lockstep (see 'pacing')")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="output folder (default ./out/demo); files of an earlier run "
                        "there are replaced")


def _prepare_environment() -> dict[str, str]:
    """This process's and the children's ROS settings: a domain, discovery range and Fast
    DDS profile of their own unless set (this process's rclpy reads them when it starts)."""
    env = ros_env(discovery=os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"))
    os.environ.update(env)
    return env


def run(args: argparse.Namespace) -> int:
    if args.rate is not None and not args.rate > 0:
        raise UsageError(f"--rate must be positive, not {args.rate}")
    if args.max_frames < 0:
        raise UsageError(f"--max-frames must be positive, not {args.max_frames}")
    video = args.video or dashcam_video()
    stills = args.stills or shared_path("data", "dashcam", "stills")
    phases = [args.only] if args.only else ["stills", "video", "cameras"]
    # Open them now: a bad path fails in a second, not after the node has loaded.
    still_source = open_source(stills) if {"stills", "cameras"} & set(phases) else None
    video_source = open_source(video) if {"video", "cameras"} & set(phases) else None
    if still_source is not None and not os.path.isdir(stills):
        raise UsageError(f"--stills must be a folder of images, not {stills}")
    check_output_dir(args.out, "--out", {"--stills": stills if still_source else None})
    if args.params_file is not None:
        check_input_file(args.params_file, "--params-file")
    model = _model_name(args)
    check_model_name(model)  # a missing file fails here, not as the node's start-up log
    args.out.mkdir(parents=True, exist_ok=True)

    env = _prepare_environment()
    settings = {k: env.get(k) or "(none: default transports)" for k in (
        "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")}
    print(f"demo: model {model}, output in {args.out}/; " + ", ".join(
        f"{k}={v}" for k, v in settings.items()), flush=True)
    demo = Demo(args, env)
    results: list[PhaseResult] = []
    try:
        demo.start_node(CAMERAS if phases == ["cameras"] else ("",))
        demo.start_ros()
        print(f"demo: starting the node (log: {demo.node_log}) ...", flush=True)
        seconds = demo.wait_until_ready()
        print(f"demo: node ready after {seconds:.1f} s{demo.ready_line()}", flush=True)
        if "stills" in phases:
            results.append(_stills_phase(demo, stills, len(still_source), args.out))
        if "video" in phases:
            count = min(args.max_frames or video_source.length or 0, video_source.length or 0)
            results.append(_video_phase(demo, video, count or None, video_source.rate, args.out))
        if "cameras" in phases:
            length = video_source.length or CAMERA_FRAMES
            results += _cameras_phase(demo, {CAMERAS[0]: video, CAMERAS[1]: stills,
                                             CAMERAS[2]: stills},
                                      min(args.max_frames or CAMERA_FRAMES, length), args.out)
        newest = [c.counters.latest()[1] for c in [demo.collector, *demo.collectors.values()]]
        print_summary(results, next((d for d in reversed(newest) if d), {}), args.out)
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
        print(f"  {name:<12} vehicle_ahead={fmt_bool(output.vehicle_ahead):<5} "
              f"coverage={fmt(output.coverage, '.3f')} car={fmt(output.car_fraction, '.1%')} "
              f"-> {target if output.overlay is not None else '(no overlay received)'}",
              flush=True)

    result = demo.run_phase("stills", [str(stills)], count, handle)[""]
    demo.set_node_parameters(previous)  # only on success: after a failure the node is gone
    return result


def _video_writer(path: Path, fps: float, frame: Any) -> cv2.VideoWriter:
    """An MP4 writer for frames like ``frame`` (HxWx3)."""
    height, width = frame.shape[:2]
    return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))


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
                    writer = _video_writer(out / "overlay.mp4", fps, output.overlay)
                writer.write(cv2.cvtColor(output.overlay, cv2.COLOR_RGB2BGR))
            sec, nanosec = divmod(output.stamp_ns, 1_000_000_000)
            stamp = f"{sec}.{nanosec:09d}"
            latency = output.latency_ms
            table.writerow([
                "" if index is None else index, stamp, fmt_bool(output.vehicle_ahead),
                "" if output.coverage is None else f"{output.coverage:.4f}",
                "" if latency is None else f"{latency:.1f}",
            ])
            print(f"  frame {fmt(index, '3d')} stamp {stamp} "
                  f"vehicle_ahead={fmt_bool(output.vehicle_ahead):<5} "
                  f"coverage={fmt(output.coverage, '.3f')} latency={fmt(latency, '.0f')} ms",
                  flush=True)

        try:
            return demo.run_phase("video", [str(video)], count, handle)[""]
        finally:
            if writer is not None:
                writer.release()


def _cameras_phase(demo: Demo, sources: dict[str, Path], count: int,
                   out: Path) -> list[PhaseResult]:
    """Three cameras into one node at once (the node restarted with them): one overlay
    video per camera."""
    folder = out / "cameras"
    print(f"\nphase 3: {count} frames on each of the cameras " + ", ".join(
        f"{camera} ({path.name})" for camera, path in sources.items()) + f" -> {folder}/",
        flush=True)
    if tuple(demo.cameras) != tuple(sources):
        seconds = demo.restart_node(tuple(sources))
        print(f"demo: node restarted with cameras {list(sources)} (log: {demo.node_log}), "
              f"ready after {seconds:.1f} s", flush=True)
    folder.mkdir(exist_ok=True)
    rates = {camera: open_source(path).rate for camera, path in sources.items()}
    writers: dict[str, cv2.VideoWriter] = {}

    def handle(index: int | None, name: str, output: Output) -> None:
        if output.overlay is not None:
            if output.camera not in writers:
                writers[output.camera] = _video_writer(folder / f"{output.camera}.mp4",
                                                       rates[output.camera], output.overlay)
            writers[output.camera].write(cv2.cvtColor(output.overlay, cv2.COLOR_RGB2BGR))

    try:
        results = demo.run_phase(
            "cameras", [f"{camera}={path}" for camera, path in sources.items()] + ["--loop"],
            count, handle, demo.collectors)
    finally:
        for writer in writers.values():
            writer.release()
    for camera in sources:
        print(f"  {camera:<6} {results[camera].outputs} overlays -> {folder / camera}.mp4",
              flush=True)
    return list(results.values())

