"""The DDS parts: the raw rclpy transport, and the real node between a publisher process and
a recorder process, all in one private ROS graph (:mod:`seg_perception.tools.rosgraph`)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg_perception import topics
from seg_perception.tools.bench.frames import (
    DISTINCT_FRAMES,
    Size,
    image_fields,
    load_frames,
    size_text,
)
from seg_perception.tools.bench.streams import paired_extra, stream_result
from seg_perception.tools.bench.timing import sig
from seg_perception.tools.graph_process import publish_command, record_command, write_messages
from seg_perception.tools.rosgraph import ChildProcess, node_command, ros_env, wait_for

OUTPUT_TOPICS = (topics.LABEL_MAP, topics.COLOR_MASK, topics.OVERLAY)
LAST_OUTPUT = "/" + topics.OVERLAY  # the node publishes it last: lockstep waits for it
RAW_TOPIC = "bench/image"
NODE_READY_TIMEOUT_S = 180.0
PAIRED_SETTLE_S = 0.01  # after the node's frame, before timing the in-process pipeline
STOP_TIMEOUT_S = 20.0


@dataclass
class Recording:
    """A running recorder process; :meth:`stop` returns what it received."""

    process: ChildProcess
    out: Path
    ready: Path

    def wait_ready(self, timeout: float) -> None:
        wait_for(lambda: self.ready.exists() or self.process.poll() is not None, timeout,
                 "the bench recorder")
        if not self.ready.exists():
            raise RuntimeError(f"bench recorder not ready: {self.process.tail()}")

    def stop(self) -> dict:
        self.process.stop(STOP_TIMEOUT_S)
        if not self.out.exists():
            raise RuntimeError(f"bench recorder wrote nothing: {self.process.tail()}")
        return json.loads(self.out.read_text())


class Graph:
    """The benchmark's processes in one private ROS graph, their files in ``workdir``."""

    def __init__(self, domain_id: int, workdir: Path) -> None:
        self.env = ros_env(domain_id)
        self.workdir = workdir
        self._count = 0
        self._messages: dict[Size, Path] = {}

    def path(self, stem: str) -> Path:
        self._count += 1
        return self.workdir / f"{self._count:02d}-{stem}"

    def start(self, command: list[str], stem: str, pipe: bool = False) -> ChildProcess:
        return ChildProcess(command, self.path(f"{stem}.log"), self.env, pipe=pipe)

    def messages(self, size: Size) -> Path:
        """The publisher's frames at ``size``: the video's first ones, written once."""
        if size not in self._messages:
            frames = load_frames([size], DISTINCT_FRAMES)[size]
            self._messages[size] = write_messages(self.path(f"frames-{size_text(size)}.pkl"),
                                                  [image_fields(f, "rgb8") for f in frames])
        return self._messages[size]

    def start_publisher(self, size: Size, rate: float, seconds: float, topic: str,
                        lockstep: str | None = None, paired: bool = False,
                        ready: Path | None = None,
                        go: Path | None = None) -> tuple[ChildProcess, Path]:
        """A publisher of dash-cam frames, best effort like a camera; (process, its JSON).

        It publishes once every subscription asks for best effort (the node's subscription
        follows its publishers' QoS: it re-subscribes when a publisher appears), and with
        ``ready`` and ``go``, creates ``ready`` then and waits for ``go`` to exist."""
        out = self.path(f"sent-{size_text(size)}.json")
        command = publish_command(self.messages(size), topic, out, reliability="best_effort",
                                  depth=1, rate=rate, seconds=seconds, frame_id="camera",
                                  lockstep=lockstep, paired=paired, same_qos=True,
                                  ready=ready, go=go)
        return self.start(command, "publisher", pipe=paired), out

    def publish(self, size: Size, rate: float, seconds: float, topic: str,
                lockstep: str | None = None,
                between: Callable[[int, int], None] | None = None) -> dict:
        """Run one publisher to the end; its JSON (sent stamps, CPU seconds).

        With ``lockstep`` and ``between``, ``between(frame index, stamp)`` runs here after
        each frame came back, before the publisher sends the next one.
        """
        publisher, out = self.start_publisher(size, rate, seconds, topic, lockstep,
                                              paired=between is not None)
        if between is not None:
            stdin, stdout = publisher.process.stdin, publisher.process.stdout
            for line in stdout:
                words = line.split()
                if len(words) == 3 and words[0] == "paired":
                    between(int(words[1]), int(words[2]))
                    try:
                        stdin.write("go\n")
                        stdin.flush()
                    except BrokenPipeError:
                        break  # the publisher ended; its exit code tells why
        return self.finish(publisher, out, seconds)

    @staticmethod
    def finish(publisher: ChildProcess, out: Path, seconds: float) -> dict:
        """Wait for a publisher that runs for ``seconds``; its JSON."""
        code = publisher.wait(timeout=seconds + 120)
        publisher.stop()  # closes the pipes
        if code != 0 or not out.exists():
            raise RuntimeError(f"bench publisher failed ({code}): {publisher.tail()}")
        return json.loads(out.read_text())

    def publish_together(self, size: Size, seconds: float,
                         feeds: Sequence[tuple[str, float, str | None]]) -> list[dict]:
        """One publisher per (topic, rate, lockstep topic or None), all at once; their JSON.

        Each starts publishing only once every one has its subscribers: their first frames
        leave together, however long each took to start and match.
        """
        go = self.path("go")
        readies = [self.path("ready") for _ in feeds]
        started = [self.start_publisher(size, rate, seconds, topic, lockstep, ready=ready, go=go)
                   for (topic, rate, lockstep), ready in zip(feeds, readies, strict=True)]
        try:
            wait_for(lambda: all(r.exists() for r in readies)
                     or any(p.poll() is not None for p, _ in started), 120.0,
                     "the bench publishers to match")
            go.touch()
            return [self.finish(publisher, out, seconds) for publisher, out in started]
        finally:
            for publisher, _ in started:
                publisher.stop()

    def record(self, names: Sequence[str], reliability: str, diagnostics: bool = False,
               depth: int = 10) -> Recording:
        """A recorder of the images on ``names`` (and the node's diagnostics)."""
        out, ready = self.path("received.json"), self.path("ready")
        command = record_command(names, out, reliability=reliability, depth=depth, ready=ready,
                                 diagnostics=f"/{topics.NODE_NAME}" if diagnostics else None)
        return Recording(self.start(command, "recorder"), out, ready)

    def start_node(self, args: argparse.Namespace, threads: int, namespace: str = "",
                   **params: str) -> ChildProcess:
        """The real node (``python -m seg_perception.node``) with the benchmark's settings,
        in ``/namespace`` if given, ``params`` added (e.g. ``cameras="[c0,c1]"``)."""
        params = {
            "model": args.model, "device": args.device, "precision": args.precision,
            "num_threads": str(threads), "overlay_alpha": str(args.alpha),
            "cuda_graph": "true" if args.cuda_graph else "false", **params,
        }
        ros_args = [arg for k, v in params.items() for arg in ("-p", f"{k}:={v}")]
        if namespace:
            ros_args = ["-r", f"__ns:=/{namespace}", *ros_args]
        return self.start(node_command(*ros_args), f"node-{namespace}" if namespace else "node")


def wait_node_ready(node: ChildProcess) -> None:
    node.wait_for_log("ready:", NODE_READY_TIMEOUT_S)


def rate_text(rate: float) -> str:
    return f"{rate:g} Hz" if rate > 0 else "full speed"


def measure_transport(graph: Graph, sizes: Sequence[Size], args: argparse.Namespace,
                      log: Callable[[str], None]) -> dict:
    """rclpy publisher -> rclpy subscriber, the same images, no node in between."""
    # Depth 1, like the node's mailbox: a subscriber that falls behind takes the newest frame.
    recording = graph.record([RAW_TOPIC], "best_effort", depth=1)
    runs = {}
    try:
        for size in sizes:
            log(f"  transport {size_text(size)}: {args.transport_seconds:g} s at "
                f"{rate_text(args.transport_rate)}")
            runs[size] = graph.publish(size, args.transport_rate, args.transport_seconds,
                                       RAW_TOPIC)
    finally:
        received = recording.stop()
    return {size: stream_result(size, sent, received, settle_s=0.2)
            for size, sent in runs.items()}


def measure_node(graph: Graph, sizes: Sequence[Size], args: argparse.Namespace,
                 threads: int, log: Callable[[str], None],
                 time_frame: Callable[[int], float]) -> tuple[dict, dict, dict]:
    """Publisher -> the real node -> a recorder of its three image outputs.

    At every size the publisher runs at the node's full speed in lockstep (the next frame as
    soon as the previous frame's overlay came back: no queueing, so the latency is the node's
    own); then, at the camera size, at a fixed camera rate faster than the node (throughput,
    frames the node drops, latency including the wait for the busy node).

    At the camera size the lockstep run is paired: after each of the node's frames,
    ``time_frame`` times the in-process pipeline on the same frame while the node idles. What
    the node adds is judged frame by frame against that, so the machine's drift (20 % and
    more within minutes here) cancels out, as in the core part's ratios.
    """
    node = graph.start_node(args, threads)
    recording = None
    runs: dict[tuple[str, Size], dict] = {}
    info: dict[str, Any] = {}
    reference: dict[int, float] = {}  # stamp -> in-process pipeline seconds on that frame

    def time_reference(index: int, stamp: int) -> None:
        time.sleep(PAIRED_SETTLE_S)  # the recorder's last receipt
        reference[stamp] = time_frame(index)

    try:
        wait_node_ready(node)
        recording = graph.record(OUTPUT_TOPICS, "reliable", diagnostics=True)
        recording.wait_ready(60.0)
        for size in sizes:
            paired = size == args.camera_size
            log(f"  node {size_text(size)}: {args.node_seconds:g} s in lockstep"
                + (", each frame also through the in-process pipeline" if paired else ""))
            runs["lockstep", size] = graph.publish(
                size, 0.0, args.node_seconds, topics.IMAGE, lockstep=LAST_OUTPUT,
                between=time_reference if paired else None)
        if args.node_rate is None or args.node_rate >= 0:
            rate = args.node_rate or 0.0
            log(f"  node {size_text(args.camera_size)}: {args.node_seconds:g} s at "
                f"{rate_text(rate)}")
            runs["rate", args.camera_size] = graph.publish(args.camera_size, rate,
                                                           args.node_seconds, topics.IMAGE)
            time.sleep(1.0)  # the last frame's outputs
        info["node_rss_mb"] = sig(node.rss() / 2**20)
    finally:
        received = recording.stop() if recording is not None else None
        node.stop(STOP_TIMEOUT_S)
    info["diagnostics"] = received.get("diagnostics", {}) if received else {}
    results = {key: stream_result(key[1], sent, received) for key, sent in runs.items()}
    if received and ("lockstep", args.camera_size) in runs:
        info["paired"] = paired_extra(runs["lockstep", args.camera_size], received, reference)
    lockstep = {size: r for (mode, size), r in results.items() if mode == "lockstep"}
    at_rate = {size: r for (mode, size), r in results.items() if mode == "rate"}
    return lockstep, at_rate, info
