"""``seg-perception eval``: segmentation and vehicle-ahead metrics on labelled images."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from seg_perception.checks import atomic_write, check_input_file, check_output_dir
from seg_perception.core.pipeline import SegmentationPipeline, configure_threads
from seg_perception.core.vehicle_ahead import (
    DEFAULT_CORRIDOR,
    DEFAULT_MIN_BLOB_FRACTION,
    DEFAULT_MIN_COVERAGE,
    DEFAULT_VEHICLE_CLASS_NAMES,
    GROUND_TRUTH_MIN_COVERAGE,
    Corridor,
    VehicleAheadConfig,
    resolve_vehicle_class_ids,
)
from seg_perception.errors import UsageError
from seg_perception.evaluation import (
    CONFIDENCE_THRESHOLDS,
    ECE_BINS,
    LABEL_SETS,
    ClassMapping,
    EvaluationResult,
    Evaluator,
    Sample,
    check_labels,
    find_samples,
    read_labels,
    run_evaluation,
)
from seg_perception.evaluation.report import (
    ReportFrame,
    calibration_summary,
    format_ratio,
    report_files,
    worst_frames,
    write_report,
)
from seg_perception.models.loading import check_model_name, load_model
from seg_perception.shared_data import use_shared_torch_home
from seg_perception.tools.common import add_model_arguments, parse_size

log = logging.getLogger(__name__)

HELP = ("measure segmentation quality, its confidence calibration and the vehicle-ahead "
        "decision on labelled images")
_CORRIDOR_TEXT = ", ".join(f"({x:g}, {y:g})" for x, y in DEFAULT_CORRIDOR)
EPILOG = f"""ground truth for "vehicle ahead" (fixed; part of the product definition):
  a frame has a vehicle ahead when at least {GROUND_TRUTH_MIN_COVERAGE:.0%} of the corridor's pixels
  are labelled as a vehicle class of the data set (camvid: Car). The corridor is a polygon in
  normalised image coordinates (x to the right, y down); a pixel belongs to it when its centre
  does. Default corridor: {_CORRIDOR_TEXT}, the lane in
  front of a forward camera up to near the horizon; with --corridor the ground truth follows
  your corridor. Void labels (camvid: 11 Unlabelled) are ignored in every metric.
  The prediction is the node's own per-frame decision on the model's label map (corridor
  coverage of the model's vehicle classes >= --min-coverage, after the --min-blob-fraction
  clean-up); the node's hysteresis is for live streams and is not applied here.

labels: single-channel PNGs of class ids with the same file names as the images (CamVid
  layout). To evaluate on your own data, write its classes in that layout, or convert them to
  camvid ids, and give a --mapping from your model's classes. Every label image is read before
  the model loads: 8-bit ids (a 16-bit image only if every id fits 8 bits); ids that are
  neither a class nor void are ignored like void, with a warning naming the files; no
  labelled pixel at all is an error.

mapping file (YAML): "classes:" maps each data-set class to a list of model class names,
  e.g. "Car: [car, truck, bus, train]". Model classes listed nowhere are "unmapped": a pixel
  predicted as one counts as wrong. Shipped: config/mappings/<model labels>_to_<dataset>.yaml,
  chosen automatically (cityscapes_to_camvid.yaml for espnet-cityscapes).

calibration: the frame path's per-pixel confidence (max class probability, what the node's
  min_confidence compares) against how often the pixel is right: ECE over {ECE_BINS} equal-width
  bins, the reliability table, and the share and accuracy of the pixels that min_confidence
  {' / '.join(f'{t:g}' for t in CONFIDENCE_THRESHOLDS)} would keep. Void is ignored, unmapped
  predictions are wrong.

outputs in --output: eval.json (metrics, per-frame records, confusion matrix, PR curve,
  "calibration"), report.md, confusion_matrix.png, per_class_iou.png, vehicle_ahead_pr.png
  (PR curve with the operating point), vehicle_ahead_coverage.png (predicted against labelled
  coverage per frame), worst_frames.png (worst false alarms and misses with overlays),
  reliability.png (accuracy against confidence per bin, with the pixels per bin).

examples:
  seg-perception eval --images ../shared/data/camvid/val --labels ../shared/data/camvid/valannot
  seg-perception eval --model espnet-camvid --images ../shared/data/camvid/val \\
      --labels ../shared/data/camvid/valannot -o eval-camvid
  # train + val together, the PR table printed, a cheaper network input size:
  seg-perception eval --images ../shared/data/camvid/train \\
      --labels ../shared/data/camvid/trainannot --images ../shared/data/camvid/val \\
      --labels ../shared/data/camvid/valannot --input-size 768x384 --sweep
  seg-perception eval --images my/images --labels my/labels --mapping my_to_camvid.yaml \\
      --corridor 0.3,1,0.7,1,0.52,0.6,0.48,0.6 --min-coverage 0.04
  # on a machine whose cores are busy with other work, one torch thread is much faster:
  seg-perception eval --images ../shared/data/camvid/val \\
      --labels ../shared/data/camvid/valannot --threads 1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, action="append", required=True, metavar="DIR",
                      help="folder of images; repeat with --labels for several folders")
    data.add_argument("--labels", type=Path, action="append", required=True, metavar="DIR",
                      help="folder of label PNGs with the same file names as the images")
    data.add_argument("--dataset", default="camvid", choices=sorted(LABEL_SETS),
                      help="the label set of --labels (default camvid)")
    data.add_argument("--mapping", type=Path, metavar="FILE",
                      help="model classes -> data-set classes YAML (default: the shipped one "
                      "for this model and data set, else identity by class name)")
    data.add_argument("--limit", type=int, default=0, metavar="N",
                      help="only the first N images of each folder (quick looks)")
    add_model_arguments(parser)
    model = parser.add_argument_group("model input")
    model.add_argument("--input-size", type=parse_size, metavar="WxH",
                       help="network input size override, e.g. 768x384 (default: the model's)")
    decision = parser.add_argument_group("vehicle-ahead decision (prediction side)")
    decision.add_argument("--corridor", metavar="X1,Y1,X2,Y2,...",
                          help="corridor polygon, normalised (default: the node's default)")
    decision.add_argument("--vehicle-classes", metavar="NAMES",
                          help="comma-separated model classes counted as vehicles (default: "
                          f"those of {','.join(DEFAULT_VEHICLE_CLASS_NAMES)} the model has)")
    decision.add_argument("--min-coverage", type=float, default=DEFAULT_MIN_COVERAGE,
                          metavar="F", help="predicted corridor coverage that raises the flag "
                          f"(default {DEFAULT_MIN_COVERAGE:g})")
    decision.add_argument("--min-blob-fraction", type=float, default=DEFAULT_MIN_BLOB_FRACTION,
                          metavar="F", help="ignore vehicle blobs in the corridor smaller than "
                          f"this fraction of it (default {DEFAULT_MIN_BLOB_FRACTION:g} = off)")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", type=Path, default=Path("eval-report"), metavar="DIR",
                     help="folder for eval.json, report.md and the figures (default "
                     "./eval-report); files of an earlier run there are replaced (one line "
                     "says so); never an --images or --labels folder")
    out.add_argument("--no-report", action="store_true",
                     help="write eval.json only (no markdown, no figures); an earlier "
                     "report's markdown and figures in --output are removed")
    out.add_argument("--worst", type=int, default=6, metavar="N",
                     help="false alarms and misses each on the contact sheet (default 6)")
    out.add_argument("--sweep", action="store_true",
                     help="print the vehicle-ahead decision over a range of thresholds")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _samples(args: argparse.Namespace) -> list[Sample]:
    if len(args.images) != len(args.labels):
        raise UsageError(f"{len(args.images)} --images folder(s) but {len(args.labels)} "
                         "--labels folder(s): give them in pairs")
    several = len(args.images) > 1
    samples: list[Sample] = []
    for images, labels in zip(args.images, args.labels, strict=True):
        found = find_samples(images, labels)
        if args.limit > 0:
            found = found[: args.limit]
        if several:  # keep names unique across folders
            found = [Sample(f"{images.name}/{s.name}", s.image, s.labels) for s in found]
        samples += found
    return samples


def _corridor(text: str | None) -> Corridor:
    """--corridor 'x1,y1,x2,y2,...' (checked before the model loads: fail fast)."""
    if not text:
        return Corridor(DEFAULT_CORRIDOR)
    try:
        flat = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--corridor must be comma-separated numbers, not {text!r}") from None
    return Corridor.from_flat(flat)


def _check_numbers(args: argparse.Namespace, corridor: Corridor) -> None:
    """The decision settings and counts, checked before the model loads: fail fast."""
    for option, value in (("--limit", args.limit), ("--worst", args.worst)):
        if value < 0:
            raise UsageError(f"{option} must be >= 0, not {value}")
    try:
        VehicleAheadConfig(corridor, min_coverage=args.min_coverage,
                           min_blob_fraction=args.min_blob_fraction)
    except ValueError as exc:  # e.g. "min_coverage must be in [0, 1], got 2.0"
        raise UsageError("--" + str(exc).replace("_", "-")) from None


def _config(args: argparse.Namespace, corridor: Corridor, class_names: tuple[str, ...]
            ) -> tuple[VehicleAheadConfig, tuple[str, ...]]:
    wanted = [n.strip() for n in args.vehicle_classes.split(",")] if args.vehicle_classes else None
    ids = resolve_vehicle_class_ids(class_names, wanted)
    config = VehicleAheadConfig(corridor, ids, args.min_coverage,
                                min_blob_fraction=args.min_blob_fraction)
    return config, tuple(class_names[i] for i in ids)


def _remove_old_report(folder: Path) -> None:
    """--no-report into a folder with an earlier report: delete that report's files (only
    those eval writes), so that no stale figure sits beside the new eval.json."""
    old = [path for path in report_files(folder) if path.is_file()]
    for path in old:
        path.unlink()
    if old:
        log.info("removed the earlier report from %s (--no-report): %s", folder,
                 ", ".join(path.name for path in old))


def print_sweep(result: EvaluationResult, stream=None) -> None:
    """The decision over thresholds, one line each (the tuning table)."""
    stream = stream or sys.stdout
    operating = result.config.min_coverage
    print(f"{'threshold':>9} {'TP':>4} {'FP':>4} {'FN':>4} {'TN':>5} {'precision':>9} "
          f"{'recall':>6} {'F1':>6}", file=stream)
    marks = ({round(0.01 * i, 4) for i in range(1, 11)} | {0.15, 0.2, 0.3}
             | {round(0.04 + 0.0025 * i, 4) for i in range(9)})  # fine around the default
    for point in result.pr_curve():
        if point.threshold not in marks and point.threshold != operating:
            continue
        c = point.counts
        precision, recall, f1 = (format_ratio(v) for v in (c.precision, c.recall, c.f1))
        star = "  <- operating point" if point.threshold == operating else ""
        print(f"{point.threshold:9.4f} {c.tp:4d} {c.fp:4d} {c.fn:4d} {c.tn:5d} "
              f"{precision:>9} {recall:>6} {f1:>6}{star}", file=stream)


def run(args: argparse.Namespace) -> int:
    dataset = LABEL_SETS[args.dataset]
    samples = _samples(args)
    corridor = _corridor(args.corridor)
    _check_numbers(args, corridor)
    check_output_dir(args.output, "-o/--output", {"--images": args.images,
                                                   "--labels": args.labels})
    if args.mapping is not None:
        check_input_file(args.mapping, "--mapping")
    check_model_name(args.model)
    check_labels(samples, dataset)  # every label image once: fail before the model loads
    use_shared_torch_home()
    configure_threads(args.threads)
    model = load_model(args.model, device=args.device, precision=args.precision,
                       input_size=args.input_size)
    meta = model.metadata
    log.info("%s", model.describe())
    mapping = ClassMapping.resolve(meta.class_names, dataset, args.mapping)
    config, vehicle_names = _config(args, corridor, meta.class_names)
    pipeline = SegmentationPipeline(model)
    evaluator = Evaluator(mapping, config, vehicle_names)
    keep = None if args.no_report else (lambda r: r.outcome in ("fp", "fn"))
    kept: list[ReportFrame] = []
    by_name = {s.name: s for s in samples}
    start = time.perf_counter()
    with tqdm(total=len(samples), desc="eval", unit="img", file=sys.stderr,
              disable=args.no_progress) as progress:
        for record, label_map in run_evaluation(pipeline, samples, evaluator, progress, keep):
            if label_map is None:
                continue
            sample = by_name[record.name]
            kept.append(ReportFrame(record, sample.image, read_labels(sample.labels), label_map))
            if len(kept) > 4 * max(args.worst, 1):  # bound memory: keep the worst ones only
                worst = {r.name for r in worst_frames([f.record for f in kept], args.worst)}
                kept = [f for f in kept if f.record.name in worst]
    seconds = time.perf_counter() - start
    result = evaluator.result(meta.name, seconds, meta.input_size)
    json_path = args.output / "eval.json"
    with atomic_write(json_path) as stream:
        json.dump(result.to_json(), stream, indent=1)
    if not args.no_report:
        write_report(result, args.output, kept, args.worst)
    else:
        _remove_old_report(args.output)
    counts = result.counts
    print(f"{len(result.frames)} images in {seconds:.1f} s "
          f"({seconds / len(result.frames) * 1e3:.0f} ms/image), model {meta.name}, input "
          f"{'x'.join(map(str, meta.input_size)) if meta.input_size else 'native'}")
    print(f"segmentation: pixel accuracy {format_ratio(result.confusion.pixel_accuracy)}, "
          f"mean IoU {format_ratio(result.confusion.mean_iou)}")
    if result.calibration is not None:
        print("\n".join(calibration_summary(result.calibration)))
    print(f"vehicle ahead @ {config.min_coverage:g}: TP {counts.tp} FP {counts.fp} "
          f"FN {counts.fn} TN {counts.tn}, precision {format_ratio(counts.precision)}, "
          f"recall {format_ratio(counts.recall)}, F1 {format_ratio(counts.f1)}")
    if args.sweep:
        print_sweep(result)
    print(f"wrote {json_path}" + ("" if args.no_report else f" and the report in {args.output}"))
    return 0
