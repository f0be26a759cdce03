"""Accuracy against speed: the model at several network input sizes (and bf16 on the CPU)
on CamVid, through the evaluation code, timing each frame."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from seg_perception.shared_data import shared_path
from seg_perception.tools.bench.frames import size_text
from seg_perception.tools.bench.timing import sig, summarize


def precision_name(loaded: Any) -> str:
    """fp32 / fp16 / bf16 of a loaded model (bf16 on the CPU means autocast)."""
    dtype = str(loaded.autocast_dtype or loaded.dtype).removeprefix("torch.")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)


class _TimedSegmenter:
    """The pipeline for the evaluation loop, timing each call of its ``segment*`` methods
    (whichever the frame path uses: the segmentation alone, not reading files or scoring)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.pipeline, name)
        if not name.startswith("segment"):
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = attribute(*args, **kwargs)
            self.seconds.append(time.perf_counter() - start)
            return result

        return timed


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
        # The node's default outputs: its confidence map is made only for a subscriber.
        for _ in run_evaluation(timed, samples, evaluator, confidence=False):
            pass
        result = evaluator.result(meta.name, input_size=size)
        counts = result.counts
        speed = summarize(timed.seconds[1:] or timed.seconds)  # the first call warms up
        rows.append({
            "input_size": size_text(size),
            "precision": precision_text,
            "ms_p50": sig(speed.p50),
            "fps": sig(1e3 / speed.p50) if speed.p50 > 0 else None,
            "mean_iou": sig(result.confusion.mean_iou),
            "pixel_accuracy": sig(result.confusion.pixel_accuracy),
            "vehicle_f1": sig(counts.f1),
            "vehicle_accuracy": sig(counts.accuracy),
            "vehicle_counts": counts.to_json(),
            "images": len(samples),
            "split": args.accuracy_split,
        })
    return rows
