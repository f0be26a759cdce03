"""More cameras, more nodes: one model serving 1, 2 and 3 cameras (``multi_camera``), and
two nodes sharing the machine (``two_nodes``), over DDS with a publisher per stream.

Streams fed at once start and end a little apart, so each stream's rate is taken over the
time they all ran (:func:`~seg_perception.tools.bench.streams.overlap_fps`). One recorder
hears every stream of a part from its start (stamps tell the runs apart): a recorder process
takes seconds to start and match.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from seg_perception import topics
from seg_perception.tools.bench.dds import (
    OUTPUT_TOPICS,
    STOP_TIMEOUT_S,
    Graph,
    Recording,
    rate_text,
    wait_node_ready,
)
from seg_perception.tools.bench.frames import Size, load_frames, size_text
from seg_perception.tools.bench.streams import (
    StreamResult,
    overlap_fps,
    select_topics,
    stream_result,
)
from seg_perception.tools.bench.timing import StageTimer, paired_ratio, sig

CAMERA_COUNTS = (1, 2, 3)
BATCH = 3  # frames per network call in the batching figure (the largest camera count)
LINGER_S = 1.0  # after the publishers end: the last frames' outputs


def _absolute(prefix: str, name: str) -> str:
    return "/" + topics.camera_topic(prefix, name)


def _outputs(prefix: str) -> list[str]:
    """The image outputs of a stream prefix (``cameras3/c0``, ``node1``)."""
    return [_absolute(prefix, name) for name in OUTPUT_TOPICS]


def record_streams(graph: Graph, prefixes: Sequence[str]) -> Recording:
    """A recorder of every output of these streams, once it hears them all."""
    recording = graph.record([name for prefix in prefixes for name in _outputs(prefix)],
                             "reliable")
    recording.wait_ready(60.0)
    return recording


def feed_streams(graph: Graph, size: Size, seconds: float, prefixes: Sequence[str],
                 rate: float, lockstep: bool) -> dict[str, dict]:
    """A publisher per stream prefix (its ``image`` in), all at once for ``seconds``, at
    ``rate`` Hz (0: full speed) or each in lockstep with its own overlay; prefix -> what the
    publisher sent."""
    sent = graph.publish_together(size, seconds, [
        (topics.camera_topic(prefix, topics.IMAGE), rate,
         _absolute(prefix, topics.OVERLAY) if lockstep else None) for prefix in prefixes])
    return dict(zip(prefixes, sent, strict=True))


def stream_results(size: Size, sent: dict[str, dict], received: dict
                   ) -> dict[str, StreamResult]:
    """Each stream of one run, matched with what the part's recorder heard."""
    return {prefix: stream_result(size, published, select_topics(received, _outputs(prefix)))
            for prefix, published in sent.items()}


def _stop_all(recording: Recording | None, nodes: Sequence[Any]) -> dict | None:
    """Stop the recorder after the last outputs, then the nodes; what the recorder heard."""
    received = None
    if recording is not None:
        time.sleep(LINGER_S)
        received = recording.stop()
    for node in nodes:
        node.stop(STOP_TIMEOUT_S)
    return received


def _rates(results: dict[str, StreamResult]) -> dict[str, float]:
    return overlap_fps({key: [when for when, _ in result.samples]
                        for key, result in results.items()})


# --- one model, several cameras ---------------------------------------------------------------


def measure_multi_camera(graph: Graph, args: argparse.Namespace, threads: int, loaded: Any,
                         log: Callable[[str], None]) -> dict[str, Any]:
    """A node with cameras [c0], [c0, c1], [c0, c1, c2], each camera fed by its own
    publisher faster than the node (``--node-rate``, 30 Hz; <= 0: full speed): total and
    per-camera rates, the node's RSS; and what batching the cameras' frames gains.

    Not full speed by default: a publisher flooding 720p frames keeps a core busy, and three
    of them on two cores would measure the publishers more than the node.
    """
    size = args.camera_size
    rate = max(args.node_rate or 0.0, 0.0)
    counts = {f"cameras{count}": count for count in CAMERA_COUNTS}
    if loaded.device.type == "cuda":  # the node batches there: also a node that does not
        counts["cameras3_unbatched"] = CAMERA_COUNTS[-1]
    nodes = {namespace: graph.start_node(
        args, threads, namespace, cameras=f"[{','.join(_cameras(count))}]",
        batch_cameras="false" if namespace.endswith("_unbatched") else "true")
        for namespace, count in counts.items()}
    streams = {namespace: [f"{namespace}/{c}" for c in _cameras(count)]
               for namespace, count in counts.items()}
    sent, rss, recording = {}, {}, None
    try:
        for node in nodes.values():
            wait_node_ready(node)
        recording = record_streams(graph, [p for prefixes in streams.values() for p in prefixes])
        for namespace, count in counts.items():
            log(f"  {namespace}: {count} camera(s) at {rate_text(rate)} each, "
                f"{args.node_seconds:g} s")
            sent[namespace] = feed_streams(graph, size, args.node_seconds, streams[namespace],
                                           rate, False)
            rss[namespace] = nodes[namespace].rss()
    finally:
        received = _stop_all(recording, list(nodes.values()))
    runs = {namespace: _camera_run(stream_results(size, sent[namespace], received),
                                   rss[namespace]) for namespace in counts}
    batching = batching_ratio(loaded, args, log)
    unbatched = runs.pop("cameras3_unbatched", None)
    if unbatched is not None:
        batching["node_total_fps_unbatched"] = unbatched["total_fps"]
        batching["node_speedup"] = sig(runs["cameras3"]["total_fps"] / unbatched["total_fps"]
                                       if unbatched["total_fps"] else None)
    return {
        "camera_size": size_text(size), "rate_hz_per_camera": rate or "full speed",
        "seconds": args.node_seconds,
        "total_fps": {str(r["cameras"]): r["total_fps"] for r in runs.values()},
        "node_rss_mb": {str(r["cameras"]): r["node_rss_mb"] for r in runs.values()},
        "runs": list(runs.values()),
        "batching": batching,
    }


def _cameras(count: int) -> list[str]:
    return [f"c{index}" for index in range(count)]


def _camera_run(results: dict[str, StreamResult], rss: int) -> dict[str, Any]:
    """One node's figures: rates over the time every camera ran, shares, frames, latency."""
    rates = {prefix.rsplit("/", 1)[-1]: fps for prefix, fps in _rates(results).items()}
    total = sum(rates.values())
    by_camera = {prefix.rsplit("/", 1)[-1]: result for prefix, result in results.items()}
    return {
        "cameras": len(results),
        "total_fps": sig(total),
        "fps": {c: sig(v) for c, v in rates.items()},
        "shares": {c: sig(v / total) if total else None for c, v in rates.items()},
        "frames": {c: {"sent": r.sent, "out": r.received, "dropped": r.dropped}
                   for c, r in by_camera.items()},
        "latency_ms_p50": {c: sig(r.latency.p50) if r.received else None
                           for c, r in by_camera.items()},
        "publisher_cpu": {c: sig(r.publisher_cpu) for c, r in by_camera.items()},
        "node_rss_mb": sig(rss / 2**20),
    }


def batching_ratio(loaded: Any, args: argparse.Namespace,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """One forward of a batch of 3 against three forwards of one, on the same input,
    interleaved per frame (median of per-frame ratios): what batching the cameras' frames
    gains on this device. The node batches only on CUDA (``batch_cameras``)."""
    import torch

    from seg_perception.core.pipeline import SegmentationPipeline
    from seg_perception.tools.bench.core import device_sync

    pipeline = SegmentationPipeline(loaded, cuda_graph=args.cuda_graph)
    sync = device_sync(loaded)
    singles, batched = StageTimer(sync, stages=False), StageTimer(sync, stages=False)
    frames = load_frames([args.camera_size], args.warmup + args.frames)[args.camera_size]
    log(f"  batching: a batch of {BATCH} against {BATCH} single forwards, {args.frames} frames")
    for index, frame in enumerate(frames):
        keep = index >= args.warmup
        x = pipeline.network_input(frame)
        batch = torch.cat([x] * BATCH)
        with singles.frame(keep):
            for _ in range(BATCH):
                pipeline.forward(x)
        with batched.frame(keep):
            pipeline.forward(batch)
    ratio = paired_ratio(batched.totals, singles.totals)
    return {
        "device": str(loaded.device),
        "node_batches": loaded.device.type == "cuda",
        "forward_ms_p50": {"batch_1_times_3": sig(singles.total().p50),
                           f"batch_{BATCH}": sig(batched.total().p50)},
        "batch3_over_three_batch1": sig(ratio),
        "speedup": sig(1.0 / ratio),
    }


# --- two nodes on one machine -----------------------------------------------------------------


def measure_two_nodes(graph: Graph, args: argparse.Namespace, threads: int,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Two nodes (the same settings), each fed by its own publisher in lockstep at full
    speed, against one node alone: each node's rate over the single node's."""
    size = args.camera_size
    prefixes = ["node0", "node1"]
    nodes = [graph.start_node(args, threads, prefix) for prefix in prefixes]
    recording = None
    try:
        for node in nodes:
            wait_node_ready(node)
        recording = record_streams(graph, prefixes)
        log(f"  one node alone, lockstep, {args.node_seconds:g} s")
        sent_alone = feed_streams(graph, size, args.node_seconds, prefixes[:1], 0.0, True)
        log(f"  two nodes at once, lockstep each, {args.node_seconds:g} s")
        sent_both = feed_streams(graph, size, args.node_seconds, prefixes, 0.0, True)
    finally:
        received = _stop_all(recording, nodes)
    alone = stream_results(size, sent_alone, received)
    both = stream_results(size, sent_both, received)
    one = _rates(alone)["node0"]
    two = list(_rates(both).values())
    ratios = [sig(fps / one) if one else None for fps in two]
    known = [r for r in ratios if r is not None]
    return {
        "camera_size": size_text(size), "seconds": args.node_seconds,
        "one_node_fps": sig(one), "two_nodes_fps": [sig(fps) for fps in two],
        "ratios": ratios, "min": min(known) if len(known) == len(ratios) else None,
        "latency_ms_p50": {"one_node": sig(alone["node0"].latency.p50),
                           "two_nodes": [sig(r.latency.p50) for r in both.values()]},
    }


def format_scaling(multi_camera: dict[str, Any] | None,
                   two_nodes: dict[str, Any] | None) -> list[str]:
    """The lines of these parts in the terminal table."""
    lines = []
    if multi_camera:
        lines.append(f"multi_camera ({multi_camera['camera_size']}, each camera at "
                     f"{multi_camera['rate_hz_per_camera']} Hz)"
                     "   total fps   per camera (share)   node RSS MB")
        for run in multi_camera["runs"]:
            shares = ", ".join(f"{c} {fps:.2f} ({100 * (run['shares'][c] or 0):.0f}%)"
                               for c, fps in run["fps"].items())
            lines.append(f"  {run['cameras']} camera(s)".ljust(20) + f"{run['total_fps']:10.2f}"
                         f"   {shares}   {run['node_rss_mb']:.0f}")
        batching = multi_camera["batching"]
        lines.append(
            f"  batching on {batching['device']}: one batch of {BATCH} / {BATCH} single forwards "
            f"= {batching['batch3_over_three_batch1']} (speed-up {batching['speedup']}x); the "
            f"node batches: {'yes' if batching['node_batches'] else 'no (CPU)'}"
            + (f", node 3 cameras batched / unbatched = {batching['node_speedup']}x"
               if "node_speedup" in batching else ""))
    if two_nodes:
        lines.append(
            f"two_nodes ({two_nodes['camera_size']}, lockstep each): one node alone "
            f"{two_nodes['one_node_fps']} fps; two at once {two_nodes['two_nodes_fps']} fps: "
            f"over one {two_nodes['ratios']}, min {two_nodes['min']}")
    return lines
