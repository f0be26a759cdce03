"""Offline evaluation against labelled images (ROS-free): segmentation and vehicle-ahead metrics.

The numbers here answer two user questions: how good are the masks (pixel accuracy, per-class
IoU, mean IoU, the confusion matrix) and can the "vehicle ahead" flag be trusted (per-frame
decisions against a fixed ground-truth rule, TP/FP/FN/TN, precision, recall, F1, PR curve).

Nothing here re-implements the decision: predictions go through
:class:`~seg_perception.core.vehicle_ahead.VehicleAheadDetector` (the node's code, clean-up
included) and the ground truth through
:func:`~seg_perception.core.vehicle_ahead.ground_truth_vehicle_ahead`'s rule on the same corridor
rasterisation, so eval and node can never drift apart.

Conventions:

- Ground-truth pixels whose label is void (CamVid: 11 "Unlabelled") or outside the data set's
  classes are ignored everywhere.
- A model class that the mapping leaves unmapped (e.g. Cityscapes "background") becomes the
  extra prediction column ``unmapped``: it is wrong wherever the ground truth has a class.
- A ratio with a zero denominator (e.g. recall on frames without any vehicle ahead, IoU of a
  class that is neither present nor predicted) is ``None``/NaN ("undefined"), never a made-up
  0 or 1; mean IoU averages the defined classes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from seg_perception.core.labels import CAMVID, CITYSCAPES
from seg_perception.core.vehicle_ahead import (
    GROUND_TRUTH_MIN_COVERAGE,
    VehicleAheadConfig,
    VehicleAheadDetector,
    corridor_coverage,
    ground_truth_vehicle_ahead,
)

__all__ = [
    "LABEL_SETS",
    "SOURCE_LABEL_SETS",
    "ClassMapping",
    "ConfusionMatrix",
    "DecisionCounts",
    "EvaluationResult",
    "Evaluator",
    "FrameRecord",
    "LabelSet",
    "MappingError",
    "PRPoint",
    "ProgressBar",
    "Sample",
    "count_decisions",
    "default_mapping_path",
    "find_samples",
    "mappings_dir",
    "pr_curve",
    "read_image",
    "read_labels",
    "run_evaluation",
    "source_label_set",
]


class MappingError(ValueError):
    """A class-mapping file is unreadable or names classes that do not exist."""


# --------------------------------------------------------------------------------------------
# Label sets and class mappings.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSet:
    """The classes of a labelled data set, as stored in its label images.

    Ids ``0 .. len(class_names) - 1`` are evaluated; every other value (``void_ids`` and
    anything larger) is void and ignored. ``vehicle_names`` are the classes that count as a
    vehicle for the vehicle-ahead ground truth.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    vehicle_names: tuple[str, ...]
    void_ids: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def vehicle_ids(self) -> tuple[int, ...]:
        keys = {n.casefold() for n in self.vehicle_names}
        return tuple(i for i, n in enumerate(self.class_names) if n.casefold() in keys)

    def class_id(self, name: str) -> int:
        for index, known in enumerate(self.class_names):
            if known.casefold() == name.strip().casefold():
                return index
        raise MappingError(f"{self.name} has no class {name!r}; its classes: "
                           + ", ".join(self.class_names))


LABEL_SETS: dict[str, LabelSet] = {
    "camvid": LabelSet(
        name="camvid",
        class_names=CAMVID.class_names[:11],
        palette=CAMVID.palette[:11],
        vehicle_names=("Car",),
        void_ids=(11,),
    ),
}

# Known model label sets, recognised by their class names, to pick a shipped mapping file.
SOURCE_LABEL_SETS: dict[str, tuple[str, ...]] = {
    "cityscapes": CITYSCAPES.class_names,
    "camvid": CAMVID.class_names,
}


def mappings_dir() -> Path:
    """Where the shipped mapping files live: the checkout's ``config/mappings`` or the
    installed package's ``share/seg_perception/config/mappings``."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / "mappings"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("seg_perception")) / "config"
                          / "mappings")
    except Exception:  # no ROS, or the package is not installed through ament: fine
        pass
    candidates.append(Path(sys.prefix) / "share" / "seg_perception" / "config" / "mappings")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def source_label_set(class_names: Sequence[str]) -> str | None:
    """The name of the known label set a model's classes are, or None for a custom model."""
    keys = tuple(n.casefold() for n in class_names)
    for name, names in SOURCE_LABEL_SETS.items():
        if keys == tuple(n.casefold() for n in names):
            return name
    return None


def default_mapping_path(class_names: Sequence[str], dataset: str) -> Path | None:
    """The shipped mapping for (model classes, data set), if the project has one."""
    source = source_label_set(class_names)
    if source is None:
        return None
    path = mappings_dir() / f"{source}_to_{dataset}.yaml"
    return path if path.is_file() else None


@dataclass(frozen=True)
class ClassMapping:
    """Model class ids -> data-set class ids, applied to label maps through a 256-entry table.

    ``table[target] = [source names]``; model classes listed nowhere map to ``unmapped`` (the
    id ``target.num_classes``), i.e. a prediction that is wrong for every labelled pixel.
    """

    source_names: tuple[str, ...]
    target: LabelSet
    table: dict[str, tuple[str, ...]]
    path: str | None = None
    lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unmapped = self.target.num_classes
        lut = np.full(256, unmapped, dtype=np.uint8)
        by_key = {}
        for index, name in enumerate(self.source_names):
            by_key.setdefault(name.casefold(), []).append(index)
        where = f" in {self.path}" if self.path else ""
        claimed: dict[str, str] = {}
        for target_name, sources in self.table.items():
            target_id = self.target.class_id(target_name)
            for source in sources:
                key = source.strip().casefold()
                if key not in by_key:
                    raise MappingError(
                        f"unknown model class {source!r}{where}; the model's classes: "
                        + ", ".join(self.source_names))
                if key in claimed and claimed[key] != target_name:
                    raise MappingError(f"model class {source!r} is mapped to both "
                                       f"{claimed[key]!r} and {target_name!r}{where}")
                claimed[key] = target_name
                lut[by_key[key]] = target_id
        lut.setflags(write=False)
        object.__setattr__(self, "lut", lut)

    @property
    def unmapped_id(self) -> int:
        return self.target.num_classes

    @property
    def unmapped_sources(self) -> tuple[str, ...]:
        return tuple(n for i, n in enumerate(self.source_names) if self.lut[i] == self.unmapped_id)

    @classmethod
    def by_name(cls, source_names: Sequence[str], target: LabelSet) -> ClassMapping:
        """Identity by (case-insensitive) name: each data-set class from the same-named model
        class. Used when the model already speaks the data set's classes."""
        keys = {n.casefold() for n in source_names}
        missing = [n for n in target.class_names if n.casefold() not in keys]
        if missing:
            raise MappingError(f"the model lacks the {target.name} classes {missing}: give a "
                               "--mapping file")
        return cls(tuple(source_names), target, {n: (n,) for n in target.class_names})

    @classmethod
    def from_file(cls, path: str | os.PathLike, source_names: Sequence[str],
                  target: LabelSet) -> ClassMapping:
        """Read a mapping YAML (``classes: {target: [sources]}``; see config/mappings)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise MappingError(f"cannot read mapping {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise MappingError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
            raise MappingError(f"{path} needs a 'classes' mapping (target class: [model "
                               "classes])")
        declared = data.get("target")
        if declared is not None and str(declared).casefold() != target.name:
            raise MappingError(f"{path} maps onto {declared!r}, not {target.name!r}")
        table: dict[str, tuple[str, ...]] = {}
        for target_name, sources in data["classes"].items():
            if sources is None:
                sources = []
            if isinstance(sources, str):
                sources = [sources]
            if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
                raise MappingError(f"{path}: {target_name!r} must list model class names")
            table[str(target_name)] = tuple(sources)
        return cls(tuple(source_names), target, table, str(path))

    @classmethod
    def resolve(cls, source_names: Sequence[str], target: LabelSet,
                path: str | os.PathLike | None = None) -> ClassMapping:
        """The given file, else the shipped mapping for this pair, else identity by name."""
        if path is None:
            path = default_mapping_path(source_names, target.name)
        if path is not None:
            return cls.from_file(path, source_names, target)
        try:
            return cls.by_name(source_names, target)
        except MappingError:
            shipped = ", ".join(p.name for p in sorted(mappings_dir().glob("*.yaml")))
            raise MappingError(
                f"no class mapping ships for this model onto {target.name}: give --mapping "
                f"FILE (shipped: {shipped or 'none'})") from None

    def apply(self, label_map: np.ndarray | torch.Tensor) -> np.ndarray:
        """Model label map (uint8) -> data-set ids (uint8; ``unmapped_id`` where unmapped)."""
        if isinstance(label_map, torch.Tensor):
            label_map = label_map.cpu().numpy()
        if label_map.dtype != np.uint8:
            raise ValueError(f"label maps are uint8 class ids, got {label_map.dtype}")
        return self.lut[label_map]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "target": self.target.name,
            "classes": {k: list(v) for k, v in self.table.items()},
            "unmapped": list(self.unmapped_sources),
        }


# --------------------------------------------------------------------------------------------
# Segmentation metrics.
# --------------------------------------------------------------------------------------------


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
        if truth.shape != predicted.shape:
            raise ValueError(f"label image {truth.shape} and prediction {predicted.shape} "
                             "differ in size")
        k = self.num_classes
        truth = truth.astype(np.int64, copy=False).ravel()
        predicted = np.minimum(predicted.ravel(), k).astype(np.int64)
        valid = (truth >= 0) & (truth < k)
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
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan


# --------------------------------------------------------------------------------------------
# Vehicle-ahead metrics.
# --------------------------------------------------------------------------------------------


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


def _ratio(num: int, den: int) -> float | None:
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


# --------------------------------------------------------------------------------------------
# Accumulating an evaluation.
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Everything an evaluation measured; :meth:`to_json` is the tool's JSON file."""

    model: str
    dataset: LabelSet
    mapping: ClassMapping
    config: VehicleAheadConfig
    vehicle_class_names: tuple[str, ...]
    confusion: ConfusionMatrix
    frames: list[FrameRecord]
    seconds: float = 0.0
    input_size: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> DecisionCounts:
        return count_decisions([f.truth for f in self.frames], [f.predicted for f in self.frames])

    def pr_curve(self) -> list[PRPoint]:
        return pr_curve(self.frames, (*PR_GRID, self.config.min_coverage))

    def per_class_iou(self) -> dict[str, float | None]:
        return {n: _finite(v) for n, v in zip(self.dataset.class_names, self.confusion.iou,
                                               strict=True)}

    def to_json(self) -> dict[str, Any]:
        counts = self.counts
        config = self.config
        return {
            "images": len(self.frames),
            "pixel_accuracy": _finite(self.confusion.pixel_accuracy),
            "mean_iou": _finite(self.confusion.mean_iou),
            "per_class_iou": self.per_class_iou(),
            "vehicle_ahead": {
                **counts.to_json(),
                "threshold": config.min_coverage,
                "min_blob_fraction": config.min_blob_fraction,
                "ground_truth_min_coverage": GROUND_TRUTH_MIN_COVERAGE,
                "ground_truth_classes": list(self.dataset.vehicle_names),
                "predicted_classes": list(self.vehicle_class_names),
                "predicted_class_ids": list(config.vehicle_ids),
            },
            "model": self.model,
            "input_size": list(self.input_size) if self.input_size else None,
            "dataset": self.dataset.name,
            "classes": list(self.dataset.class_names),
            "corridor": [list(v) for v in config.corridor.vertices],
            "mapping": self.mapping.to_json(),
            "confusion_matrix": {
                "rows": "ground truth (void ignored)",
                "columns": [*self.dataset.class_names, "unmapped"],
                "matrix": self.confusion.matrix.tolist(),
            },
            "pr_curve": [p.to_json() for p in self.pr_curve()],
            "frames": [asdict(f) for f in self.frames],
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class Evaluator:
    """Accumulates frames: (model label map, ground-truth label image) -> metrics.

    The prediction side is the node's detector (per frame: hysteresis is for live streams,
    so only its raw decision is used); the truth side is the fixed rule on the data set's
    vehicle classes in the same corridor.
    """

    def __init__(self, mapping: ClassMapping, config: VehicleAheadConfig,
                 vehicle_class_names: Sequence[str] = ()) -> None:
        self.mapping = mapping
        self.dataset = mapping.target
        self.config = config
        self.vehicle_class_names = tuple(vehicle_class_names)
        self.truth_ids = self.dataset.vehicle_ids
        self.detector = VehicleAheadDetector(config)
        self.confusion = ConfusionMatrix(self.dataset.num_classes)
        self.frames: list[FrameRecord] = []

    def add(self, name: str, label_map: np.ndarray | torch.Tensor,
            truth: np.ndarray) -> FrameRecord:
        """One frame: ``label_map`` in the model's ids, ``truth`` in the data set's ids."""
        if tuple(label_map.shape) != truth.shape:
            raise ValueError(f"{name}: prediction {tuple(label_map.shape)} and label image "
                             f"{truth.shape} differ in size")
        self.confusion.add(truth, self.mapping.apply(label_map))
        result = self.detector.update(label_map)
        coverage_true = corridor_coverage(truth, self.truth_ids, self.config.corridor)
        record = FrameRecord(
            name=name,
            coverage_true=coverage_true,
            coverage_pred=result.coverage,
            truth=ground_truth_vehicle_ahead(truth, self.truth_ids, self.config.corridor),
            predicted=result.raw,
        )
        self.frames.append(record)
        return record

    def result(self, model: str, seconds: float = 0.0,
               input_size: tuple[int, int] | None = None) -> EvaluationResult:
        return EvaluationResult(model, self.dataset, self.mapping, self.config,
                                self.vehicle_class_names, self.confusion, list(self.frames),
                                seconds, input_size)


# --------------------------------------------------------------------------------------------
# Reading a labelled image folder and running a pipeline over it.
# --------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    labels: Path


def find_samples(images: Path, labels: Path) -> list[Sample]:
    """Image/label pairs with the same file name (CamVid layout), sorted by name.

    A label with another suffix but the same stem is accepted (photo .jpg, labels .png).
    """
    images, labels = Path(images), Path(labels)
    for folder, what in ((images, "--images"), (labels, "--labels")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {folder} is not a folder")
    by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    samples, missing = [], []
    for image in sorted(images.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = labels / image.name
        if not label.is_file():
            label = by_stem.get(image.stem)
        if label is None:
            missing.append(image.name)
        else:
            samples.append(Sample(image.name, image, label))
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no label image in {labels}, "
                                f"e.g. {missing[0]}")
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    return samples


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 BGR, as a camera driver would publish bgr8."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path}")
    return image


def read_labels(path: Path) -> np.ndarray:
    """HxW class-id image (8-bit single channel; CamVid annot layout)."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ValueError(f"cannot decode label image {path}")
    if labels.ndim != 2:
        raise ValueError(f"{path} is not a single-channel class-id image (shape "
                         f"{labels.shape}); colour-coded labels are not supported")
    return labels


Progress = Callable[[int, int], None]


def run_evaluation(pipeline, samples: Sequence[Sample], evaluator: Evaluator,
                   progress: Progress | None = None,
                   keep: Callable[[FrameRecord], bool] | None = None,
                   ) -> Iterator[tuple[FrameRecord, np.ndarray | None]]:
    """Segment each sample exactly as the node does and feed the evaluator.

    ``pipeline`` is a :class:`~seg_perception.core.pipeline.SegmentationPipeline`; images are
    decoded to BGR and segmented with ``channel_order="bgr"``. Yields each frame's record and,
    where ``keep(record)`` is true, its host label map (for the report's contact sheet).
    """
    total = len(samples)
    for index, sample in enumerate(samples):
        image = read_image(sample.image)
        truth = read_labels(sample.labels)
        label_map = pipeline.segment_to_host(image, "bgr").label_map
        record = evaluator.add(sample.name, label_map, truth)
        # A copy: the pipeline may reuse its output buffers for the next frame.
        kept = label_map.cpu().numpy().copy() if keep is not None and keep(record) else None
        if progress is not None:
            progress(index + 1, total)
        yield record, kept


class ProgressBar:
    """A small stderr progress bar (no dependency).

    On a terminal it redraws one line at most 10 times a second; in a log (not a tty) it
    writes a plain line every 10 % instead of carriage-return noise.
    """

    def __init__(self, label: str = "", stream=None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self._last = 0.0
        self._last_tenth = -1
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty())

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        tenth = 10 * done // max(total, 1)
        if self.interactive:
            if done < total and now - self._last < 0.1:
                return
        elif tenth == self._last_tenth and done < total:
            return
        self._last, self._last_tenth = now, tenth
        elapsed = now - self.start
        fill = int(self.width * done / max(total, 1))
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        line = (f"{self.label}[{'#' * fill}{'.' * (self.width - fill)}] {done}/{total} "
                f"{rate:.1f} img/s, eta {eta:.0f} s")
        if self.interactive:
            self.stream.write(f"\r{line} " + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
