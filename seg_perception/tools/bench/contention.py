"""``bench --contention N``: the headline figures on a shared computer, beside N processes
that each keep a core busy (``while True: pass``), against the same figures quiet.

Quiet and busy alternate frame by frame in the same run: the busy processes are started
once, and stopped (SIGSTOP) or resumed (SIGCONT) between frames, so the machine's drift
cancels as in the other paired figures. The network forward runs in this process; the
node's latency to the label map is measured over DDS in lockstep, the busy processes
switched in the benchmark's turn between two frames (while the node idles).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from seg_perception import topics
from seg_perception.tools.bench.dds import (
    LAST_OUTPUT,
    OUTPUT_TOPICS,
    STOP_TIMEOUT_S,
    Graph,
    wait_node_ready,
)
from seg_perception.tools.bench.frames import load_frames, size_text
from seg_perception.tools.bench.streams import stream_result
from seg_perception.tools.bench.timing import StageTimer, ratio, sig

BUSY_LOOP = "while True: pass"
RESUME_SETTLE_S = 0.05  # after SIGCONT: the busy processes are back on the cores


class BusyProcesses:
    """N processes that each spin on a core, started stopped; :meth:`busy` switches them."""

    def __init__(self, count: int) -> None:
        self.processes = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP],
                                           stdin=subprocess.DEVNULL) for _ in range(count)]
        self.running = True
        self.busy(False)

    def busy(self, on: bool) -> None:
        if on != self.running:
            for process in self.processes:
                process.send_signal(signal.SIGCONT if on else signal.SIGSTOP)
            self.running = on
            if on:
                time.sleep(RESUME_SETTLE_S)

    def close(self) -> None:
        for process in self.processes:
            process.kill()  # also ends a stopped process
            process.wait()

    def __enter__(self) -> BusyProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure_contention(graph: Graph, loaded: Any, args: argparse.Namespace, threads: int,
                       log: Callable[[str], None]) -> dict[str, Any]:
    """Forward p50 and the node's lockstep label-map latency p50 at the camera size, busy
    over quiet, with ``args.contention`` busy processes."""
    with BusyProcesses(args.contention) as busy:
        log(f"  forward at {size_text(args.camera_size)}: {args.frames} frames quiet and "
            f"beside {args.contention} busy process(es), alternating")
        quiet_ms, busy_ms = _forward(loaded, args, busy)
        log(f"  node at {size_text(args.camera_size)}: {2 * args.node_seconds:g} s in lockstep, "
            "quiet and busy frame by frame")
        latency = _node_latency(graph, args, threads, busy)
    return {
        "busy": args.contention,
        "forward": ratio(busy_ms, quiet_ms),
        "latency": ratio(latency["busy"], latency["quiet"]),
        "forward_ms_p50": {"quiet": sig(quiet_ms), "busy": sig(busy_ms)},
        "latency_ms_p50": {k: sig(v) for k, v in latency.items() if k in ("quiet", "busy")},
        "node_frames": latency["frames"],
        "threads": threads,
    }


def _forward(loaded: Any, args: argparse.Namespace, busy: BusyProcesses) -> tuple[float, float]:
    """Forward p50 (ms) quiet and busy, back to back on each frame."""
    from seg_perception.core.pipeline import SegmentationPipeline
    from seg_perception.tools.bench.core import device_sync

    pipeline = SegmentationPipeline(loaded, cuda_graph=args.cuda_graph)
    sync = device_sync(loaded)
    timers = {state: StageTimer(sync, stages=False) for state in (False, True)}
    frames = load_frames([args.camera_size], args.warmup + args.frames)[args.camera_size]
    for index, frame in enumerate(frames):
        x = pipeline.network_input(frame)
        for state, timer in timers.items():
            busy.busy(state)
            with timer.frame(keep=index >= args.warmup):
                pipeline.forward(x)
        busy.busy(False)
    return timers[False].total().p50, timers[True].total().p50


def _node_latency(graph: Graph, args: argparse.Namespace, threads: int,
                  busy: BusyProcesses) -> dict[str, Any]:
    """The node's label-map latency p50 (ms) on its quiet and its busy frames."""
    size = args.camera_size
    state: dict[int, bool] = {}  # stamp -> busy while the node had that frame

    def switch(index: int, stamp: int) -> None:
        state[stamp] = busy.running
        busy.busy(not busy.running)  # the next frame in the other state

    node = graph.start_node(args, threads)
    recording = None
    try:
        wait_node_ready(node)
        recording = graph.record(OUTPUT_TOPICS, "reliable")
        recording.wait_ready(60.0)
        sent = graph.publish(size, 0.0, 2 * args.node_seconds, topics.IMAGE,
                             lockstep=LAST_OUTPUT, between=switch)
    finally:
        busy.busy(False)
        received = recording.stop() if recording is not None else None
        node.stop(STOP_TIMEOUT_S)
    figures: dict[str, Any] = {"frames": {}}
    for name, on in (("quiet", False), ("busy", True)):
        stamps = [s for s in sent["sent"] if state.get(s) is on]
        result = stream_result(size, {**sent, "sent": stamps, "pauses": []}, received)
        label_map = result.per_output.get(topics.LABEL_MAP)
        figures[name] = label_map.p50 if label_map is not None and result.received else None
        figures["frames"][name] = result.received
    return figures


def format_contention(data: dict[str, Any]) -> str:
    forward, latency = data["forward_ms_p50"], data["latency_ms_p50"]
    return (f"contention: beside {data['busy']} busy process(es), busy / quiet: forward "
            f"{data['forward']}x ({forward['quiet']} -> {forward['busy']} ms p50), node "
            f"latency to the label map {data['latency']}x ({latency.get('quiet')} -> "
            f"{latency.get('busy')} ms p50 over {data['node_frames']['quiet']} and "
            f"{data['node_frames']['busy']} frames)")
