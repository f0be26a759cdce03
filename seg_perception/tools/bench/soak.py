"""``bench --soak``: the node for minutes at twice the rate it can process: memory and
latency over time (does anything grow, does the tail latency drift)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seg_perception import topics
from seg_perception.tools.bench.dds import (
    LAST_OUTPUT,
    OUTPUT_TOPICS,
    STOP_TIMEOUT_S,
    Graph,
    wait_node_ready,
)
from seg_perception.tools.bench.frames import size_text
from seg_perception.tools.bench.streams import stream_result
from seg_perception.tools.bench.timing import per_window, ratio, sig


def run_soak(args: argparse.Namespace, threads: int, log: Callable[[str], None]) -> dict:
    """The node for ``--soak`` minutes at twice the rate it can process: memory and latency.

    A short lockstep run first measures what the node sustains (its capacity); then frames
    are fed at twice that rate while the node's RSS is sampled every few seconds.
    """
    size = args.camera_size
    rss: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        graph = Graph(args.domain_id, Path(tmp))
        node = graph.start_node(args, threads)
        recording = None
        try:
            wait_node_ready(node)
            log(f"calibrating: {args.soak_calibrate:g} s in lockstep, {size_text(size)}")
            recording = graph.record(OUTPUT_TOPICS, "reliable")
            recording.wait_ready(60.0)
            calibration = graph.publish(size, 0.0, args.soak_calibrate, topics.IMAGE,
                                        lockstep=LAST_OUTPUT)
            time.sleep(1.0)
            capacity = stream_result(size, calibration, recording.stop()).fps_out
            if not capacity > 0:
                raise RuntimeError("the node delivered no frame during calibration")
            rate = 2.0 * capacity
            log(f"node capacity {capacity:.2f} fps: feeding {rate:.2f} Hz for {args.soak:g} min")
            recording = graph.record(OUTPUT_TOPICS, "reliable", diagnostics=True)
            recording.wait_ready(60.0)
            rss_ready = node.rss()
            publisher, sent_file = graph.start_publisher(size, round(rate, 4), args.soak * 60.0,
                                                         topics.IMAGE)
            start = time.monotonic()
            while publisher.poll() is None:
                rss.append((time.monotonic() - start, node.rss()))
                time.sleep(min(5.0, max(0.5, args.soak * 60.0 / 100)))
            if publisher.poll() != 0 or not sent_file.exists():
                raise RuntimeError(f"soak publisher failed: {publisher.tail()}")
            time.sleep(1.0)
            rss.append((time.monotonic() - start, node.rss()))
            soak_sent = json.loads(sent_file.read_text())
        finally:
            received = recording.stop() if recording is not None else None
            node.stop(STOP_TIMEOUT_S)
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
        "node_capacity_fps": sig(capacity),
        "feed_rate_hz": sig(rate),
        "rss_mb_ready": sig(rss_ready / 2**20),
        "rss_mb_start": sig(rss_start / 2**20),
        "rss_mb_end": sig(rss_end / 2**20),
        "rss_growth_pct": sig(100.0 * (rss_end - rss_start) / rss_start),
        "rss_mb_series": [[round(t, 1), sig(v / 2**20)] for t, v in rss],
        "latency_ms_per_minute": [
            {"minute": int(begin // 60), **summary.to_json()} for begin, summary in minutes],
        "p99_end_over_start": ratio(p99_last, p99_first),
        **result.to_json(),
        "node_diagnostics": received.get("diagnostics", {}) if received else {},
    }


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
