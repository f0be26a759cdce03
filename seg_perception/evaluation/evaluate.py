"""Running a model over labelled frames and gathering the results.

Nothing here re-implements the product: each frame goes through
:func:`~seg_perception.core.frame.process_frame`, the node's own frame path, and the ground
truth through :func:`~seg_perception.core.vehicle_ahead.ground_truth_vehicle_ahead` on the
same corridor rasterisation, so eval and node cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from seg_perception.core.frame import FrameResult, OutputRequest, StreamState, process_frame
from seg_perception.core.image_codec import DecodedImage
from seg_perception.core.labels import LabelSet
from seg_perception.core.pipeline import SegmentationPipeline
from seg_perception.core.vehicle_ahead import (
    GROUND_TRUTH_MIN_COVERAGE,
    VehicleAheadConfig,
    corridor_coverage,
    ground_truth_vehicle_ahead,
)
from seg_perception.evaluation.dataset import DatasetError, Sample, read_image, read_labels
from seg_perception.evaluation.mapping import ClassMapping
from seg_perception.evaluation.metrics import (
    PR_GRID,
    Calibration,
    ConfusionMatrix,
    FrameRecord,
    count_decisions,
    pr_curve,
)

if TYPE_CHECKING:
    from seg_perception.evaluation.metrics import DecisionCounts, PRPoint

__all__ = ["EvaluationResult", "Evaluator", "run_evaluation"]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: an undefined ratio is written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


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
    calibration: Calibration | None = None  # None: the frames came without confidence
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> DecisionCounts:
        return count_decisions([f.truth for f in self.frames], [f.predicted for f in self.frames])

    def pr_curve(self) -> list[PRPoint]:
        """The PR grid plus the operating threshold, so the operating point is on the curve."""
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
            "calibration": (self.calibration.to_json()
                            if self.calibration is not None else None),
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


class Evaluator:
    """Accumulates frames: (the frame path's result, ground-truth label image) -> metrics.

    The prediction side is the frame's own decision, taken raw: hysteresis is for live
    streams, and a set of unrelated stills has no "previous frame". The truth side is the
    fixed rule on the data set's vehicle classes in the same corridor.

    Calibration is measured on the frames' own confidence maps; one frame without one
    (``OutputRequest(confidence=False)``) drops it, so that it always covers the same pixels
    as the confusion matrix.
    """

    def __init__(self, mapping: ClassMapping, config: VehicleAheadConfig,
                 vehicle_class_names: Sequence[str] = ()) -> None:
        self.mapping = mapping
        self.dataset = mapping.target
        self.config = config
        self.vehicle_class_names = tuple(vehicle_class_names)
        self.truth_ids = self.dataset.vehicle_ids
        self.confusion = ConfusionMatrix(self.dataset.num_classes)
        self.calibration: Calibration | None = Calibration(self.dataset.num_classes)
        self.frames: list[FrameRecord] = []

    def add(self, name: str, frame: FrameResult, truth: np.ndarray) -> FrameRecord:
        """One frame: ``frame`` from :func:`process_frame` with a stream built on this
        evaluator's config (model ids), ``truth`` in the data set's ids."""
        if frame.vehicle is None:
            raise ValueError(f"{name}: the frame has no vehicle-ahead decision; give its "
                             "stream the evaluator's config")
        if frame.label_map.shape != truth.shape:
            raise DatasetError(f"{name}: prediction {frame.label_map.shape} and label image "
                               f"{truth.shape} differ in size")
        predicted = self.mapping.apply(frame.label_map)
        self.confusion.add(truth, predicted)
        if frame.confidence is None:
            self.calibration = None
        elif self.calibration is not None:
            self.calibration.add(truth, predicted, frame.confidence)
        corridor = self.config.corridor
        record = FrameRecord(
            name=name,
            coverage_true=corridor_coverage(truth, self.truth_ids, corridor),
            coverage_pred=frame.vehicle.coverage,
            truth=ground_truth_vehicle_ahead(truth, self.truth_ids, corridor),
            predicted=frame.vehicle.raw,
        )
        self.frames.append(record)
        return record

    def result(self, model: str, seconds: float = 0.0,
               input_size: tuple[int, int] | None = None) -> EvaluationResult:
        """The metrics so far; frames without a single labelled pixel are a
        :class:`DatasetError` (every segmentation figure would be undefined), not a NaN."""
        if self.frames and not self.confusion.pixels:
            raise DatasetError(f"no labelled pixel in the {len(self.frames)} label image(s): "
                               f"every id is void or outside {self.dataset.name}'s classes")
        return EvaluationResult(model, self.dataset, self.mapping, self.config,
                                self.vehicle_class_names, self.confusion, list(self.frames),
                                seconds, input_size, self.calibration)


def run_evaluation(pipeline: SegmentationPipeline, samples: Sequence[Sample],
                   evaluator: Evaluator, progress: tqdm | None = None,
                   keep: Callable[[FrameRecord], bool] | None = None, *,
                   confidence: bool = True,
                   ) -> Iterator[tuple[FrameRecord, np.ndarray | None]]:
    """Run each sample through the node's frame path and feed the evaluator.

    ``pipeline`` is a :class:`~seg_perception.core.pipeline.SegmentationPipeline` or anything
    with its ``segment_to_host`` (the benchmark's timing wrapper). Images are decoded to BGR as
    a camera driver publishes bgr8. ``progress`` is advanced once per frame. Yields each frame's
    record and, where ``keep(record)`` is true, a copy of its label map (the report's contact
    sheet). ``confidence``: ask the frame path for its confidence map, for the calibration
    (False: the node's default outputs only, e.g. to time them).
    """
    stream = StreamState(evaluator.config)
    request = OutputRequest(confidence=confidence)
    for sample in samples:
        image = DecodedImage(read_image(sample.image), "bgr")
        truth = read_labels(sample.labels)
        frame = process_frame(pipeline, image, stream, request)
        record = evaluator.add(sample.name, frame, truth)
        # A copy: the pipeline reuses its output buffers for the next frame.
        kept = frame.label_map.copy() if keep is not None and keep(record) else None
        if progress is not None:
            progress.update(1)
        yield record, kept
