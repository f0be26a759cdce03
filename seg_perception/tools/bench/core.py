"""The in-process part: our frame path, the naive pipeline and the network alone on the same
frames, interleaved frame by frame so that load from other processes hits them alike."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seg_perception.tools.bench.contenders import NaivePipeline, OurPipeline
from seg_perception.tools.bench.frames import (
    DISTINCT_FRAMES,
    Size,
    header,
    load_frames,
    make_image,
    size_text,
)
from seg_perception.tools.bench.timing import StageTimer, Summary, paired_ratio, sig


@dataclass
class SizeResult:
    """Everything measured in-process at one camera size."""

    size: Size
    network: tuple[int, int]  # (H, W) of the network input
    pipeline: Summary
    stages: dict[str, Summary]
    forward: Summary
    over_forward: float  # median over frames of pipeline / forward on that frame
    naive: Summary | None = None
    naive_stages: dict[str, Summary] = field(default_factory=dict)
    speedup: float | None = None  # median over frames of naive / pipeline on that frame
    confidence: Summary | None = None  # the pipeline also making the confidence map
    confidence_stages: dict[str, Summary] = field(default_factory=dict)
    confidence_overhead: float | None = None  # median over frames of with / without, minus 1

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "network_input": size_text((self.network[1], self.network[0])),
            "pipeline": self.pipeline.to_json(),
            "stages": {k: v.to_json() for k, v in self.stages.items()},
            "forward": self.forward.to_json(),
            "pipeline_over_forward": sig(self.over_forward),
        }
        if self.naive is not None:
            data["naive"] = self.naive.to_json()
            data["naive_stages"] = {k: v.to_json() for k, v in self.naive_stages.items()}
            data["speedup_vs_naive"] = sig(self.speedup)
        if self.confidence is not None:
            data["with_confidence"] = self.confidence.to_json()
            data["with_confidence_stages"] = {k: v.to_json()
                                              for k, v in self.confidence_stages.items()}
            data["confidence_overhead"] = sig(self.confidence_overhead)
        return data


def device_sync(loaded: Any) -> Callable[[], object] | None:
    """What makes asynchronous device work visible to a timer (None on the CPU)."""
    import torch

    return torch.cuda.synchronize if loaded.device.type == "cuda" else None


def measure_core(
    loaded: Any,
    frames: dict[Size, list[np.ndarray]],
    args: argparse.Namespace,
    vehicle_config: Any,
    log: Callable[[str], None],
    confidence: bool = False,
) -> list[SizeResult]:
    """Ours, the naive pipeline and the network alone, interleaved frame by frame; with
    ``confidence``, at the camera size also ours making the confidence map (its cost)."""
    sync = device_sync(loaded)
    cuda = sync is not None
    ours = OurPipeline(loaded, vehicle_config, args.alpha, args.cuda_graph)
    naive = None if "naive" in args.skip else NaivePipeline(
        loaded, vehicle_config, args.alpha, ours.pipeline.network_size)
    confident = OurPipeline(loaded, vehicle_config, args.alpha, args.cuda_graph,
                            confidence=True) if confidence else None
    results = []
    for size, size_frames in frames.items():
        width, height = size
        network = ours.pipeline.network_size(height, width)
        staged = StageTimer(sync)
        plain = StageTimer(sync, stages=False)  # CUDA: per-stage syncs would inflate the total
        naive_timer = StageTimer(sync)
        forward_timer = StageTimer(sync, stages=False)
        confidence_timer = StageTimer(sync, stages=not cuda)  # as ``whole`` below
        with_confidence = confident if size == args.camera_size else None
        messages = [make_image(f, "rgb8", header(i)) for i, f in enumerate(size_frames)]
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
            if with_confidence is not None:
                with confidence_timer.frame(keep):
                    with_confidence(msg, confidence_timer)
            # Measured at every size, right after the pipeline on the same frame: the same
            # input shape, but load from other processes changes over a run.
            x = ours.network_input(msg)
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
        if with_confidence is not None:
            result.confidence = confidence_timer.total()
            result.confidence_stages = confidence_timer.summary()
            result.confidence_overhead = paired_ratio(confidence_timer.totals, whole.totals) - 1
        results.append(result)
    return results


def frame_timer(loaded: Any, args: argparse.Namespace,
                vehicle_config: Any) -> Callable[[int], float]:
    """A function that times the pipeline on the publisher's frame ``index``: the node's
    reference, taken right after each of the node's frames (see
    :func:`~seg_perception.tools.bench.dds.measure_node`)."""
    ours = OurPipeline(loaded, vehicle_config, args.alpha, args.cuda_graph)
    frames = load_frames([args.camera_size], DISTINCT_FRAMES)[args.camera_size]  # its frames
    messages = [make_image(f, "rgb8", header(i)) for i, f in enumerate(frames)]
    timer = StageTimer(device_sync(loaded), stages=False)
    with timer.frame(keep=False):
        ours(messages[0], timer)  # this pipeline's own buffers

    def time_frame(index: int) -> float:
        with timer.frame():
            ours(messages[index % len(messages)], timer)
        return timer.totals[-1]

    return time_frame
