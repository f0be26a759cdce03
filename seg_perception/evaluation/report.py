"""The human side of an evaluation: a markdown summary and PNG figures.

Figures are drawn with matplotlib's Agg backend (no display needed, safe in CI and on robots);
the contact sheet is composed with OpenCV from the frames the evaluation kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_perception.checks import atomic_path, atomic_write
from seg_perception.core.vehicle_ahead import GROUND_TRUTH_MIN_COVERAGE, Corridor
from seg_perception.evaluation.dataset import read_image
from seg_perception.evaluation.evaluate import EvaluationResult
from seg_perception.evaluation.metrics import (
    CONFIDENCE_THRESHOLDS,
    ECE_BINS,
    Calibration,
    FrameRecord,
)

__all__ = [
    "FIGURE_NAMES",
    "MARKDOWN_NAME",
    "ReportFrame",
    "calibration_summary",
    "contact_sheet",
    "format_ratio",
    "plot_confusion",
    "plot_coverage",
    "plot_iou",
    "plot_pr_curve",
    "plot_reliability",
    "report_files",
    "worst_frames",
    "write_markdown",
    "write_report",
]

MARKDOWN_NAME = "report.md"
FIGURE_NAMES = {
    "confusion": "confusion_matrix.png",
    "iou": "per_class_iou.png",
    "pr": "vehicle_ahead_pr.png",
    "coverage": "vehicle_ahead_coverage.png",
    "sheet": "worst_frames.png",
    "reliability": "reliability.png",
}

_PRED_COLOUR = (0, 0, 255)  # BGR red: predicted vehicle pixels
_TRUTH_COLOUR = (0, 255, 0)  # green outline: labelled vehicle pixels
_CORRIDOR_COLOUR = (0, 255, 255)  # yellow outline: the corridor


def _save_figure(fig, path: Path) -> None:
    """Through a temporary file: a failed run never leaves half a PNG."""
    with atomic_path(path, announce=False) as temporary:
        fig.savefig(temporary, dpi=110)


def report_files(out_dir: Path) -> list[Path]:
    """The files :func:`write_report` writes into ``out_dir`` (eval.json is not one)."""
    return [out_dir / MARKDOWN_NAME, *(out_dir / name for name in FIGURE_NAMES.values())]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def format_ratio(value: float | None, digits: int = 3) -> str:
    """A metric for people: fixed digits, and "n/a" where it is undefined (None or NaN)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def calibration_summary(calibration: Calibration) -> list[str]:
    """Two lines for people (the tool's summary, the report): ECE, and what thresholds keep."""
    kept = [calibration.retention(t) for t in CONFIDENCE_THRESHOLDS]
    return [
        f"calibration: ECE {format_ratio(calibration.ece())} ({ECE_BINS} bins), mean "
        f"confidence {format_ratio(calibration.mean_confidence)} against accuracy "
        f"{format_ratio(calibration.accuracy)} on {calibration.total} labelled pixels",
        f"min_confidence {' / '.join(f'{k.threshold:g}' for k in kept)} keeps "
        f"{' / '.join(_percent(k.fraction) for k in kept)} of them at accuracy "
        f"{' / '.join(format_ratio(k.accuracy) for k in kept)}",
    ]


# --------------------------------------------------------------------------------------------
# Plots.
# --------------------------------------------------------------------------------------------


def plot_confusion(result: EvaluationResult, path: Path) -> Path:
    """Row-normalised confusion matrix (each row: where that class's pixels went)."""
    plt = _pyplot()
    matrix = result.confusion.matrix.astype(np.float64)
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    truth_names = list(result.dataset.class_names)
    pred_names = [*truth_names, "unmapped"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * len(pred_names), 1.2 + 0.55 * len(truth_names)))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), value in np.ndenumerate(norm):
        if value >= 0.005:
            ax.text(j, i, f"{value * 100:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 0.5 else "black")
    ax.set_xticks(range(len(pred_names)), pred_names, rotation=45, ha="right")
    ax.set_yticks(range(len(truth_names)), truth_names)
    ax.set_xlabel("predicted (mapped)")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{result.model} on {result.dataset.name}: confusion, % of each true class")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def plot_iou(result: EvaluationResult, path: Path) -> Path:
    """Per-class IoU bars with the mean IoU line."""
    plt = _pyplot()
    iou = result.per_class_iou()
    names = list(iou)
    values = [v if v is not None else 0.0 for v in iou.values()]
    colours = [np.array(c) / 255 for c in result.dataset.palette[: len(names)]]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(names, values, color=colours, edgecolor="black", linewidth=0.5)
    for bar, value in zip(bars, iou.values(), strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, format_ratio(value, 2),
                ha="center", va="bottom", fontsize=8)
    mean = result.confusion.mean_iou
    if math.isfinite(mean):
        ax.axhline(mean, color="crimson", linestyle="--", label=f"mean IoU {mean:.3f}")
        ax.legend(loc="upper right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("IoU")
    ax.set_title(f"{result.model} on {result.dataset.name} ({len(result.frames)} images): "
                 f"per-class IoU")
    ax.tick_params(axis="x", rotation=40)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def plot_pr_curve(result: EvaluationResult, path: Path) -> Path:
    """Left: precision-recall over the prediction-side threshold, operating point marked.
    Right: precision, recall and F1 against the threshold (why the default is where it is)."""
    plt = _pyplot()
    points = result.pr_curve()
    thresholds = np.array([p.threshold for p in points])
    precision = np.array([_nan(p.counts.precision) for p in points])
    recall = np.array([_nan(p.counts.recall) for p in points])
    f1 = np.array([_nan(p.counts.f1) for p in points])
    operating = result.counts
    threshold = result.config.min_coverage
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    left.plot(recall, precision, "-", color="tab:blue", marker=".", markersize=3)
    labelled = set()
    for p in points:  # label a few thresholds along the curve (once per distinct point)
        where = (p.counts.recall, p.counts.precision)
        if p.threshold in (0.01, 0.02, 0.05, 0.1, 0.2) and None not in where \
                and where not in labelled:
            labelled.add(where)
            left.annotate(f"{p.threshold:g}", (p.counts.recall, _nan(p.counts.precision)),
                          textcoords="offset points", xytext=(4, -10), fontsize=7)
    if operating.recall is not None and operating.precision is not None:
        left.plot([operating.recall], [operating.precision], "o", color="crimson",
                  markersize=8, label=f"operating point (threshold {threshold:g}): "
                  f"F1 {format_ratio(operating.f1)}")
        left.legend(loc="lower left", fontsize=8)
    left.set_xlabel("recall")
    left.set_ylabel("precision")
    left.set_xlim(-0.02, 1.02)
    left.set_ylim(-0.02, 1.02)
    left.grid(alpha=0.3)
    left.set_title("vehicle ahead: precision-recall")
    right.plot(thresholds, precision, label="precision")
    right.plot(thresholds, recall, label="recall")
    right.plot(thresholds, f1, label="F1", linewidth=2)
    right.axvline(threshold, color="crimson", linestyle="--", label=f"threshold {threshold:g}")
    right.axvline(GROUND_TRUTH_MIN_COVERAGE, color="grey", linestyle=":",
                  label=f"ground-truth rule {GROUND_TRUTH_MIN_COVERAGE:g}")
    right.set_xlim(0, min(0.3, thresholds.max()))
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("predicted corridor coverage threshold")
    right.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    counts = operating
    right.set_title(f"TP {counts.tp}  FP {counts.fp}  FN {counts.fn}  TN {counts.tn}")
    fig.suptitle(f"{result.model} on {result.dataset.name} ({len(result.frames)} frames)")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def plot_coverage(result: EvaluationResult, path: Path) -> Path:
    """Predicted against labelled corridor coverage per frame, with both thresholds: shows
    how closely the prediction tracks the ground-truth measure and where the errors sit."""
    plt = _pyplot()
    true = np.array([f.coverage_true for f in result.frames])
    pred = np.array([f.coverage_pred for f in result.frames])
    outcome = np.array([f.outcome for f in result.frames])
    fig, ax = plt.subplots(figsize=(6, 5.4))
    styles = {"tp": ("tab:green", "o", "TP"), "tn": ("tab:grey", ".", "TN"),
              "fp": ("crimson", "X", "FP"), "fn": ("darkorange", "X", "FN")}
    top = max(0.12, float(max(true.max(initial=0), pred.max(initial=0))) * 1.05)
    ax.plot([0, top], [0, top], color="black", linewidth=0.5)
    for key, (colour, marker, label) in styles.items():
        sel = outcome == key
        if sel.any():
            ax.scatter(true[sel], pred[sel], c=colour, marker=marker, s=22,
                       label=f"{label} ({int(sel.sum())})", alpha=0.8)
    ax.axvline(GROUND_TRUTH_MIN_COVERAGE, color="grey", linestyle=":",
               label=f"ground-truth rule {GROUND_TRUTH_MIN_COVERAGE:g}")
    ax.axhline(result.config.min_coverage, color="crimson", linestyle="--",
               label=f"prediction threshold {result.config.min_coverage:g}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("labelled vehicle coverage of the corridor")
    ax.set_ylabel("predicted vehicle coverage of the corridor")
    ax.set_title(f"{result.model}: coverage per frame ({len(result.frames)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def plot_reliability(result: EvaluationResult, path: Path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal (a calibrated
    model's bars end on it; below it = over-confident), and the pixels per bin under it."""
    plt = _pyplot()
    calibration = result.calibration
    if calibration is None:
        raise ValueError("the evaluation has no calibration (frames without confidence)")
    bins = calibration.bins()
    lower = np.array([b.lower for b in bins])
    width = bins[0].upper - bins[0].lower
    accuracy = np.array([_nan(b.accuracy) for b in bins])
    confidence = np.array([_nan(b.confidence) for b in bins])
    pixels = np.array([b.pixels for b in bins])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7), sharex=True,
                                      gridspec_kw={"height_ratios": (3, 1)})
    top.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1,
             label="perfect calibration")
    top.bar(lower, np.nan_to_num(accuracy), width=width, align="edge", color="tab:blue",
            edgecolor="black", linewidth=0.5, label="accuracy")
    gap_low = np.fmin(accuracy, confidence)
    top.bar(lower, np.nan_to_num(np.abs(confidence - accuracy)), bottom=np.nan_to_num(gap_low),
            width=width, align="edge", color="crimson", alpha=0.3, edgecolor="crimson",
            linewidth=0.5, label="gap to the mean confidence")
    top.plot(confidence, accuracy, "o", color="black", markersize=3,
             label="(mean confidence, accuracy)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy of the bin's pixels")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    top.set_title(f"{result.model} on {result.dataset.name}: ECE "
                  f"{format_ratio(calibration.ece())} ({len(bins)} bins)")
    bottom.bar(lower, pixels, width=width, align="edge", color="tab:grey", edgecolor="black",
               linewidth=0.5)
    if pixels.any():
        bottom.set_yscale("log")
    for threshold in CONFIDENCE_THRESHOLDS:
        kept = calibration.retention(threshold)
        bottom.axvline(threshold, color="crimson", linestyle=":", linewidth=1)
        bottom.annotate(f"≥{threshold:g}: {_percent(kept.fraction)}", (threshold, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(-2, -10),
                        textcoords="offset points", ha="right", fontsize=7, color="crimson")
    bottom.set_xlabel("confidence (max class probability)")
    bottom.set_ylabel("pixels")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


# --------------------------------------------------------------------------------------------
# Contact sheet of the worst decisions.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFrame:
    """A frame for the contact sheet: its record, image file, labels and model label map."""

    record: FrameRecord
    image: Path
    truth: np.ndarray  # data-set label ids
    label_map: np.ndarray  # model label ids


def worst_frames(records: Sequence[FrameRecord], count: int) -> list[FrameRecord]:
    """The most confident false alarms (highest predicted coverage) and the clearest misses
    (highest true coverage), ``count`` of each at most."""
    fps = sorted((r for r in records if r.outcome == "fp"), key=lambda r: -r.coverage_pred)
    fns = sorted((r for r in records if r.outcome == "fn"), key=lambda r: -r.coverage_true)
    return fps[:count] + fns[:count]


def _tile(frame: ReportFrame, corridor: Corridor, truth_ids: Sequence[int],
          vehicle_ids: Sequence[int], width: int) -> np.ndarray:
    image = read_image(frame.image)
    height = image.shape[0]
    predicted = np.isin(frame.label_map, vehicle_ids)
    tinted = image.copy()
    tinted[predicted] = (0.45 * image[predicted] + 0.55 * np.array(_PRED_COLOUR)).astype(np.uint8)
    truth = np.isin(frame.truth, truth_ids).astype(np.uint8)
    contours, _ = cv2.findContours(truth, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tinted, contours, -1, _TRUTH_COLOUR, 2)
    mask = corridor.mask_numpy(height, image.shape[1]).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tinted, contours, -1, _CORRIDOR_COLOUR, 1)
    scale = width / image.shape[1]
    tile = cv2.resize(tinted, (width, max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    record = frame.record
    banner = np.full((38, width, 3), 32, np.uint8)
    kind = "FALSE ALARM" if record.outcome == "fp" else "MISSED"
    cv2.putText(banner, f"{kind}  {record.name}"[:60], (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(banner, f"true {record.coverage_true:.3f}  predicted {record.coverage_pred:.3f}",
                (5, 32), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 200, 255), 1, cv2.LINE_AA)
    return np.vstack([banner, tile])


def contact_sheet(frames: Sequence[ReportFrame], corridor: Corridor, truth_ids: Sequence[int],
                  vehicle_ids: Sequence[int], path: Path, columns: int = 3,
                  tile_width: int = 400) -> Path:
    """A grid of overlays: red = predicted vehicle pixels, green = labelled vehicles,
    yellow = corridor. An empty list gives a one-line 'no wrong decisions' image."""
    if not frames:
        sheet = np.full((60, 2 * tile_width, 3), 255, np.uint8)
        cv2.putText(sheet, "no false alarms and no misses", (10, 38),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 128, 0), 2, cv2.LINE_AA)
    else:
        tiles = [_tile(f, corridor, truth_ids, vehicle_ids, tile_width) for f in frames]
        tile_h = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, tile_h - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        blank = np.zeros_like(tiles[0])
        cols = min(columns, len(tiles))
        rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
        rows[-1] = rows[-1] + [blank] * (cols - len(rows[-1]))
        sheet = np.vstack([np.hstack(r) for r in rows])
        legend = np.full((26, sheet.shape[1], 3), 255, np.uint8)
        cv2.putText(legend, "red: predicted vehicle   green: labelled vehicle   yellow: corridor",
                    (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        sheet = np.vstack([legend, sheet])
    with atomic_path(path, announce=False) as temporary:
        if not cv2.imwrite(str(temporary), sheet):
            raise OSError(f"cannot write {path}")
    return path


# --------------------------------------------------------------------------------------------
# Markdown.
# --------------------------------------------------------------------------------------------


def write_markdown(result: EvaluationResult, path: Path, figures: Mapping[str, Path],
                   worst: Sequence[FrameRecord] = ()) -> Path:
    """A summary a person reads first; numbers match the JSON file."""
    conf = result.confusion
    counts = result.counts
    config = result.config
    size = "x".join(map(str, result.input_size)) if result.input_size else "model default"
    per_image = result.seconds / max(len(result.frames), 1) * 1e3
    lines = [
        f"# Evaluation: {result.model} on {result.dataset.name}",
        "",
        f"{len(result.frames)} images, network input {size}, {result.seconds:.1f} s "
        f"({per_image:.0f} ms per image, decode and metrics included).",
        "",
        "## Segmentation",
        "",
        f"- pixel accuracy: **{format_ratio(conf.pixel_accuracy)}** (void ground truth ignored)",
        f"- mean IoU over {result.dataset.num_classes} classes: **{format_ratio(conf.mean_iou)}**",
        f"- class mapping: {result.mapping.path or 'identity by class name'}"
        + (f"; unmapped model classes ({', '.join(result.mapping.unmapped_sources)}) count "
           "as wrong" if result.mapping.unmapped_sources else ""),
        "",
        "| class | IoU |",
        "|---|---|",
        *(f"| {name} | {format_ratio(value)} |" for name, value in result.per_class_iou().items()),
        "",
        "## Vehicle ahead (per frame, no hysteresis)",
        "",
        f"Ground truth: at least {GROUND_TRUTH_MIN_COVERAGE:.0%} of the corridor's pixels are "
        f"labelled {'/'.join(result.dataset.vehicle_names)}. Corridor (normalised x right, "
        f"y down): {', '.join(f'({x:g}, {y:g})' for x, y in config.corridor.vertices)}.",
        "",
        f"Prediction: the node's decision on the model's label map: classes "
        f"{', '.join(result.vehicle_class_names) or list(config.vehicle_ids)}, coverage >= "
        f"{config.min_coverage:g}, "
        + (f"vehicle blobs under {config.min_blob_fraction:g} of the corridor ignored."
           if config.min_blob_fraction > 0 else "no blob clean-up."),
        "",
        "| TP | FP | FN | TN | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|",
        f"| {counts.tp} | {counts.fp} | {counts.fn} | {counts.tn} | "
        f"{format_ratio(counts.precision)} | {format_ratio(counts.recall)} | "
        f"{format_ratio(counts.f1)} |",
        "",
        "n/a: undefined (e.g. recall with no vehicle-ahead frames in the set).",
        "",
    ]
    if worst:
        lines += ["Worst decisions (see the contact sheet):", "",
                  "| frame | outcome | true coverage | predicted coverage |", "|---|---|---|---|"]
        lines += [f"| {r.name} | {r.outcome.upper()} | {r.coverage_true:.3f} | "
                  f"{r.coverage_pred:.3f} |" for r in worst]
        lines.append("")
    if result.calibration is not None:
        lines += _calibration_markdown(result.calibration)
    if figures:
        lines += ["## Figures", ""]
        titles = {"confusion": "Confusion matrix", "iou": "Per-class IoU",
                  "pr": "Vehicle ahead: precision-recall",
                  "coverage": "Vehicle ahead: predicted against labelled coverage",
                  "sheet": "Worst false alarms and misses",
                  "reliability": "Confidence calibration: reliability diagram"}
        for key, figure in figures.items():
            lines += [f"### {titles.get(key, key)}", "", f"![{key}]({Path(figure).name})", ""]
    with atomic_write(path, announce=False) as stream:
        stream.write("\n".join(lines))
    return path


def _calibration_markdown(calibration: Calibration) -> list[str]:
    """The calibration section: summary, what thresholds keep, the non-empty bins."""
    lines = [
        "## Confidence calibration",
        "",
        "Confidence: the frame path's per-pixel max class probability (8-bit). A pixel is "
        "correct when its model class, mapped onto the data set, equals its label (unmapped "
        "classes are wrong); void is ignored. ECE: the pixel-weighted mean of |accuracy - mean "
        "confidence| over equal-width confidence bins (0: calibrated).",
        "",
        f"- {calibration_summary(calibration)[0]}",
        "",
        "| min_confidence | pixels kept | accuracy of the kept pixels |",
        "|---|---|---|",
    ]
    for threshold in CONFIDENCE_THRESHOLDS:
        kept = calibration.retention(threshold)
        lines.append(f"| {threshold:g} | {_percent(kept.fraction)} | "
                     f"{format_ratio(kept.accuracy)} |")
    lines += ["", "| confidence | pixels | mean confidence | accuracy |", "|---|---|---|---|"]
    lines += [f"| ({b.lower:.3f}, {b.upper:.3f}] | {b.pixels} | {format_ratio(b.confidence)} | "
              f"{format_ratio(b.accuracy)} |" for b in calibration.bins() if b.pixels]
    return [*lines, ""]


def write_report(result: EvaluationResult, out_dir: Path,
                 kept: Sequence[ReportFrame] = (), worst_count: int = 6) -> dict[str, Path]:
    """All figures and the markdown summary into ``out_dir``; returns name -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "confusion": plot_confusion(result, out_dir / FIGURE_NAMES["confusion"]),
        "iou": plot_iou(result, out_dir / FIGURE_NAMES["iou"]),
        "pr": plot_pr_curve(result, out_dir / FIGURE_NAMES["pr"]),
        "coverage": plot_coverage(result, out_dir / FIGURE_NAMES["coverage"]),
    }
    if result.calibration is not None:
        figures["reliability"] = plot_reliability(result, out_dir / FIGURE_NAMES["reliability"])
    worst = worst_frames(result.frames, worst_count)
    by_name = {f.record.name: f for f in kept}
    sheet_frames = [by_name[r.name] for r in worst if r.name in by_name]
    figures["sheet"] = contact_sheet(sheet_frames, result.config.corridor,
                                     result.dataset.vehicle_ids, result.config.vehicle_ids,
                                     out_dir / FIGURE_NAMES["sheet"])
    markdown = write_markdown(result, out_dir / MARKDOWN_NAME, figures, worst)
    return {**figures, "markdown": markdown}
