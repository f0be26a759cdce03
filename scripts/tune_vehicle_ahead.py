#!/usr/bin/env python3
"""Reproduce the tuning of the vehicle-ahead defaults on CamVid train + val.

The ground truth is fixed (>= 5 % of the corridor labelled Car); this sweeps the prediction
side: network input size, vehicle class set, blob clean-up and coverage threshold. It runs the
network once per input size and caches the label maps (``--cache``), so every other variant is
cheap. All measurement goes through the package's own code (SegmentationPipeline,
corridor_coverage with the node's clean-up, the ground-truth rule, the eval metrics).

    .venv/bin/python scripts/tune_vehicle_ahead.py --out tune-out
    # table on stdout, tune-out/tuning.json + vehicle_ahead_f1.png; about 15 min on 2 CPU
    # cores for the six default input sizes, seconds once the label maps are cached

CamVid has no held-out split for this question (val has no frame with a vehicle ahead), so
the defaults are chosen where the input sizes agree and where a reason beyond the numbers
supports them, never for the single best cell of this table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seg_perception.checks import atomic_write, check_output_dir  # noqa: E402
from seg_perception.core.vehicle_ahead import (  # noqa: E402
    DEFAULT_CORRIDOR,
    DEFAULT_MIN_COVERAGE,
    Corridor,
    corridor_coverage,
    ground_truth_vehicle_ahead,
    resolve_vehicle_class_ids,
)
from seg_perception.errors import UsageError  # noqa: E402
from seg_perception.evaluation import (  # noqa: E402
    LABEL_SETS,
    ClassMapping,
    ConfusionMatrix,
    FrameRecord,
    Sample,
    find_samples,
    pr_curve,
    read_image,
    read_labels,
)
from seg_perception.shared_data import shared_path, use_shared_torch_home  # noqa: E402
from seg_perception.tools.common import parse_size  # noqa: E402

VEHICLE_SETS = {
    "car,truck,bus,train": ("car", "truck", "bus", "train"),
    "+motorcycle,bicycle": ("car", "truck", "bus", "train", "motorcycle", "bicycle"),
    "car only": ("car",),
}
BLOB_FRACTIONS = (0.0, 0.002, 0.005, 0.01, 0.02)
THRESHOLDS = tuple(round(0.02 + 0.0025 * i, 4) for i in range(25))  # 0.02 .. 0.08


def label_maps(model_name: str, size: tuple[int, int], samples, cache: Path) -> dict:
    """Model label maps for every sample, from the cache or by running the node's pipeline."""
    path = cache / f"{model_name}_{size[0]}x{size[1]}.npz"
    if path.exists():
        with np.load(path) as data:
            if set(data.files) >= {s.name for s in samples}:
                return {s.name: data[s.name] for s in samples}
    from seg_perception.core.pipeline import SegmentationPipeline
    from seg_perception.models import load_model

    model = load_model(model_name, device=os.environ.get("TUNE_DEVICE", "cpu"), input_size=size)
    pipeline = SegmentationPipeline(model)
    maps, start = {}, time.perf_counter()
    for sample in tqdm(samples, desc=f"{model_name} {size[0]}x{size[1]}", unit="img"):
        # A copy: the pipeline reuses its output buffers for the next frame.
        maps[sample.name] = pipeline.segment_to_host(read_image(sample.image), "bgr"
                                                     ).label_map.copy()
    seconds = (time.perf_counter() - start) / len(samples)
    print(f"  {seconds * 1e3:.0f} ms per image", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **maps)
    return maps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="espnet-cityscapes")
    parser.add_argument("--sizes", default="1280x640,1024x768,1024x512,768x384,640x480,480x360",
                        help="comma-separated network input sizes WxH")
    parser.add_argument("--camvid", type=Path, help="CamVid folder (default: shared data)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/seg_perception_tune"),
                        help="where label maps are cached between runs")
    parser.add_argument("--out", type=Path, help="write tuning.json and a figure here")
    args = parser.parse_args()
    try:  # before minutes of inference, not after
        for folder, option in ((args.out, "--out"), (args.cache, "--cache")):
            if folder is not None:
                check_output_dir(folder, option)
    except UsageError as exc:
        parser.error(str(exc))
    use_shared_torch_home()
    camvid = args.camvid or shared_path("data", "camvid")
    samples = []
    for split in ("train", "val"):
        samples += [Sample(f"{split}/{s.name}", s.image, s.labels)
                    for s in find_samples(camvid / split, camvid / f"{split}annot")]
    dataset = LABEL_SETS["camvid"]
    corridor = Corridor(DEFAULT_CORRIDOR)
    truths = {s.name: read_labels(s.labels) for s in samples}
    truth_ids = dataset.vehicle_ids
    coverage_true = {n: corridor_coverage(t, truth_ids, corridor) for n, t in truths.items()}
    truth = {n: ground_truth_vehicle_ahead(t, truth_ids, corridor) for n, t in truths.items()}
    print(f"{len(samples)} frames, {sum(truth.values())} with a vehicle ahead "
          f"(ground truth: >= 5 % of the corridor labelled Car)")

    from seg_perception.models.registry import BUILTIN_MODELS

    class_names = BUILTIN_MODELS[args.model].metadata.class_names
    mapping = ClassMapping.resolve(class_names, dataset)
    rows, curves = [], {}
    header = (f"{'input':>9} {'vehicles':>20} {'blob':>6} {'mIoU':>6} {'TP':>3} {'FP':>3} "
              f"{'FN':>3} {'F1@' + format(DEFAULT_MIN_COVERAGE, 'g'):>7} {'best F1':>8} "
              f"{'at':>6} {'F1 plateau (>= best - 0.01)':>28}")
    print(header)
    for text in args.sizes.split(","):
        size = parse_size(text)
        maps = label_maps(args.model, size, samples, args.cache)
        confusion = ConfusionMatrix(dataset.num_classes)
        for name, labels in maps.items():
            confusion.add(truths[name], mapping.apply(labels))
        for set_name, names in VEHICLE_SETS.items():
            ids = resolve_vehicle_class_ids(class_names, names)
            for blob in BLOB_FRACTIONS:
                records = [
                    FrameRecord(n, coverage_true[n],
                                corridor_coverage(maps[n], ids, corridor, blob), truth[n], False)
                    for n in maps
                ]
                points = pr_curve(records, (*THRESHOLDS, DEFAULT_MIN_COVERAGE))
                f1 = {p.threshold: p.counts.f1 or 0.0 for p in points}
                best_t = max(f1, key=lambda t: (f1[t], -abs(t - DEFAULT_MIN_COVERAGE)))
                plateau = [t for t in THRESHOLDS if f1[t] >= f1[best_t] - 0.01]
                at = next(p.counts for p in points if p.threshold == DEFAULT_MIN_COVERAGE)
                row = {
                    "input_size": text, "vehicles": set_name, "min_blob_fraction": blob,
                    "mean_iou": confusion.mean_iou, "pixel_accuracy": confusion.pixel_accuracy,
                    "tp": at.tp, "fp": at.fp, "fn": at.fn, "tn": at.tn, "f1": at.f1,
                    "best_f1": f1[best_t], "best_threshold": best_t,
                    "plateau": [min(plateau), max(plateau)],
                }
                rows.append(row)
                if blob == 0.0 and set_name == "car,truck,bus,train":
                    curves[text] = [(p.threshold, p.counts.f1 or 0.0) for p in points]
                print(f"{text:>9} {set_name:>20} {blob:6g} {confusion.mean_iou:6.3f} "
                      f"{at.tp:3d} {at.fp:3d} {at.fn:3d} {at.f1:7.3f} {f1[best_t]:8.3f} "
                      f"{best_t:6.4f} {min(plateau):>14.4f} .. {max(plateau):.4f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out / "tuning.json") as stream:
            json.dump(rows, stream, indent=1)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        for text, curve in curves.items():
            xs, ys = zip(*sorted(curve), strict=True)
            ax.plot(xs, ys, marker=".", label=f"input {text}")
        ax.axvline(DEFAULT_MIN_COVERAGE, color="crimson", linestyle="--",
                   label=f"default threshold {DEFAULT_MIN_COVERAGE:g}")
        ax.set_xlabel("predicted corridor coverage threshold")
        ax.set_ylabel("vehicle-ahead F1")
        ax.set_title(f"{args.model}, car/truck/bus/train, CamVid train + val "
                     f"({len(samples)} frames)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(args.out / "vehicle_ahead_f1.png", dpi=110)
        print(f"wrote {args.out / 'tuning.json'} and {args.out / 'vehicle_ahead_f1.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
