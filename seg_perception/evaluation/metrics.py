"""The numbers of an evaluation: pixel confusion for the masks, calibration of their
confidence, decision counts for the flag.

A ratio with a zero denominator (recall on frames without any vehicle ahead, IoU of a class
that is neither present nor predicted) is ``None``/NaN ("undefined"), never a made-up 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "CONFIDENCE_THRESHOLDS",
    "ECE_BINS",
    "PR_GRID",
    "Calibration",
    "CalibrationBin",
    "ConfidenceRetention",
    "ConfusionMatrix",
    "DecisionCounts",
    "FrameRecord",
    "PRPoint",
    "count_decisions",
    "pr_curve",
]


def _check_same_size(truth: np.ndarray, other: np.ndarray, what: str) -> None:
    if truth.shape != other.shape:
        raise ValueError(f"label image {truth.shape} and {what} {other.shape} differ in size")


def _labelled(truth: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth as flat int64 ids and the mask of its labelled pixels: every metric drops
    void (and any id outside the data set's classes) the same way."""
    truth = truth.astype(np.int64, copy=False).ravel()
    return truth, (truth >= 0) & (truth < num_classes)


class ConfusionMatrix:
    """Pixel counts ``matrix[truth, predicted]`` over the data set's K classes.

    Rows are the K labelled classes (void ground truth is dropped), columns the K classes plus
    one ``unmapped`` column for predictions the mapping sends nowhere.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        """Accumulate one frame: ``truth`` raw label ids, ``predicted`` mapped ids (0..K)."""
        _check_same_size(truth, predicted, "prediction")
        k = self.num_classes
        truth, valid = _labelled(truth, k)
        predicted = np.minimum(predicted.ravel(), k).astype(np.int64)
        pairs = truth[valid] * (k + 1) + predicted[valid]
        self.matrix += np.bincount(pairs, minlength=k * (k + 1)).reshape(k, k + 1)

    @property
    def pixels(self) -> int:
        return int(self.matrix.sum())

    @property
    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix[:, : self.num_classes]) / total) if total else math.nan

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN where the class is neither true nor
        predicted."""
        k = self.num_classes
        hits = np.diag(self.matrix[:, :k]).astype(np.float64)
        union = self.matrix.sum(1) + self.matrix[:, :k].sum(0) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / np.maximum(union, 1), np.nan)

    @property
    def mean_iou(self) -> float:
        """The mean over the classes whose IoU is defined."""
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan


@dataclass(frozen=True)
class FrameRecord:
    """One frame's vehicle-ahead outcome: ground truth and the node's per-frame decision."""

    name: str
    coverage_true: float
    coverage_pred: float
    truth: bool
    predicted: bool

    @property
    def outcome(self) -> str:
        """'tp', 'fp', 'fn' or 'tn'."""
        return ("t" if self.truth == self.predicted else "f") + ("p" if self.predicted else "n")


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class DecisionCounts:
    """Confusion counts of a binary decision and the ratios users ask for."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float | None:
        # 2TP / (2TP + FP + FN): equal to 2PR/(P+R), and defined (0) when P or R is not.
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def accuracy(self) -> float | None:
        return _ratio(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall,
                "f1": self.f1, "accuracy": self.accuracy}


def count_decisions(truth: Iterable[bool], predicted: Iterable[bool]) -> DecisionCounts:
    """TP/FP/FN/TN of paired per-frame decisions."""
    t = np.asarray(list(truth), dtype=bool)
    p = np.asarray(list(predicted), dtype=bool)
    if t.shape != p.shape:
        raise ValueError("truth and predictions differ in length")
    return DecisionCounts(tp=int((t & p).sum()), fp=int((~t & p).sum()),
                          fn=int((t & ~p).sum()), tn=int((~t & ~p).sum()))


@dataclass(frozen=True)
class PRPoint:
    """The decision at one prediction-side coverage threshold (``coverage >= threshold``)."""

    threshold: float
    counts: DecisionCounts

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, **self.counts.to_json()}


# The PR curve is sampled on this grid (plus the operating threshold): fine enough to read off,
# small enough for the JSON. Coverage above 0.5 of the corridor is always a clear vehicle.
PR_GRID = tuple(round(i * 0.0025, 4) for i in range(0, 201))


def pr_curve(records: Sequence[FrameRecord],
             thresholds: Iterable[float] | None = None) -> list[PRPoint]:
    """Decision counts over prediction-side thresholds (the ground truth stays fixed)."""
    grid = sorted(set(PR_GRID if thresholds is None else thresholds))
    truth = np.array([r.truth for r in records], dtype=bool)
    coverage = np.array([r.coverage_pred for r in records], dtype=np.float64)
    return [PRPoint(float(t), count_decisions(truth, coverage >= t)) for t in grid]


# ECE bins: 15 equal-width bins split the 255 steps of the 8-bit confidence into 17 levels each,
# so no level straddles a bin edge. Bins are (lower, upper], as in Guo et al. 2017.
ECE_BINS = 15
# The min_confidence settings a user would try; the report shows what each keeps.
CONFIDENCE_THRESHOLDS = (0.5, 0.7, 0.9)
_LEVELS = 256  # the frame path's confidence is uint8: 255 = max class probability 1


@dataclass(frozen=True)
class CalibrationBin:
    """One confidence bin: its labelled pixels, their mean confidence and their accuracy."""

    lower: float
    upper: float
    pixels: int
    confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class ConfidenceRetention:
    """What ``min_confidence = threshold`` keeps: the share of labelled pixels and their
    accuracy."""

    threshold: float
    pixels: int
    fraction: float | None
    accuracy: float | None


class Calibration:
    """Labelled pixels and correctly predicted ones per 8-bit confidence level.

    Two 256-entry histograms: constant memory and a ``bincount`` per frame, and every bin
    count, ECE and threshold follows from them exactly (levels are the frame path's own
    quantisation; a bin's mean confidence is the mean of its pixels' levels / 255).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.pixels = np.zeros(_LEVELS, dtype=np.int64)
        self.correct = np.zeros(_LEVELS, dtype=np.int64)

    def add(self, truth: np.ndarray, predicted: np.ndarray, confidence: np.ndarray) -> None:
        """One frame: ``truth`` raw label ids, ``predicted`` mapped ids (0..K, K = unmapped:
        always wrong), ``confidence`` uint8 (255 = 1), all pixel-aligned."""
        _check_same_size(truth, predicted, "prediction")
        _check_same_size(truth, confidence, "confidence")
        if confidence.dtype != np.uint8:
            raise ValueError(f"confidence maps are uint8, got {confidence.dtype}")
        truth, valid = _labelled(truth, self.num_classes)
        levels = confidence.ravel()[valid]
        hit = predicted.ravel()[valid] == truth[valid]
        self.pixels += np.bincount(levels, minlength=_LEVELS)
        self.correct += np.bincount(levels[hit], minlength=_LEVELS)

    @property
    def total(self) -> int:
        return int(self.pixels.sum())

    @property
    def accuracy(self) -> float | None:
        return _ratio(int(self.correct.sum()), self.total)

    @property
    def mean_confidence(self) -> float | None:
        return _ratio(float(self.pixels @ np.arange(_LEVELS)) / (_LEVELS - 1), self.total)

    def _binned(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bin: pixels, correct pixels, sum of confidences."""
        levels = np.arange(_LEVELS)
        # Bin b holds (b/count, (b+1)/count]: bin = ceil(level x count / 255) - 1, computed in
        # integers so that a level on an edge never lands by float rounding; level 0 -> bin 0.
        bin_of_level = np.maximum(-(-levels * count // (_LEVELS - 1)) - 1, 0)
        pixels = np.bincount(bin_of_level, weights=self.pixels, minlength=count)
        correct = np.bincount(bin_of_level, weights=self.correct, minlength=count)
        confidence = np.bincount(bin_of_level, weights=self.pixels * levels,
                                 minlength=count) / (_LEVELS - 1)
        return pixels, correct, confidence

    def bins(self, count: int = ECE_BINS) -> list[CalibrationBin]:
        """The reliability table: ``count`` equal-width bins, empty ones included."""
        pixels, correct, confidence = self._binned(count)
        return [CalibrationBin(b / count, (b + 1) / count, int(n), _ratio(c, n), _ratio(k, n))
                for b, (n, k, c) in enumerate(zip(pixels, correct, confidence, strict=True))]

    def ece(self, count: int = ECE_BINS) -> float | None:
        """Expected calibration error: sum over bins of (share of pixels) x |accuracy - mean
        confidence|; None without labelled pixels."""
        pixels, correct, confidence = self._binned(count)
        return _ratio(float(np.abs(correct - confidence).sum()), float(pixels.sum()))

    def retention(self, threshold: float) -> ConfidenceRetention:
        """The pixels ``min_confidence = threshold`` keeps: levels with level / 255 >= threshold.

        That is exactly the float rule (probability >= threshold) when 255 x threshold lies
        halfway between levels (0.5, 0.7, 0.9 do), else within half a level.
        """
        kept = np.arange(_LEVELS) >= math.ceil(threshold * (_LEVELS - 1) - 1e-9)
        pixels = int(self.pixels[kept].sum())
        return ConfidenceRetention(threshold, pixels, _ratio(pixels, self.total),
                                   _ratio(int(self.correct[kept].sum()), pixels))

    def to_json(self, bins: int = ECE_BINS,
                thresholds: Sequence[float] = CONFIDENCE_THRESHOLDS) -> dict[str, Any]:
        return {
            "confidence": "max class probability (8-bit, from the frame path)",
            "pixels": self.total,
            "accuracy": self.accuracy,
            "mean_confidence": self.mean_confidence,
            "bins": bins,
            "ece": self.ece(bins),
            "reliability": [asdict(b) for b in self.bins(bins)],
            "retention": [asdict(self.retention(t)) for t in thresholds],
        }
