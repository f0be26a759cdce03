"""Offline evaluation against labelled images (ROS-free): segmentation and vehicle-ahead metrics.

The numbers answer three user questions: how good are the masks (pixel accuracy, per-class
IoU, mean IoU, the confusion matrix), can their per-pixel confidence be taken at its word
(calibration: ECE, reliability table, what a ``min_confidence`` keeps) and can the "vehicle
ahead" flag be trusted (per-frame decisions against a fixed ground-truth rule: TP/FP/FN/TN,
precision, recall, F1, PR curve).

Conventions:

- Ground-truth pixels whose label is void (CamVid: 11 "Unlabelled") or outside the data set's
  classes are ignored everywhere.
- A model class that the mapping leaves unmapped (e.g. Cityscapes "background") becomes the
  extra prediction column ``unmapped``: it is wrong wherever the ground truth has a class.
- An undefined ratio is ``None``/NaN; mean IoU averages the defined classes.

Modules: :mod:`.dataset` (image/label pairs), :mod:`.mapping` (model -> data-set classes),
:mod:`.metrics`, :mod:`.evaluate` (the run) and :mod:`.report` (figures and markdown; import it
on its own, it is the only part that needs matplotlib).
"""

from seg_perception.evaluation.dataset import (
    LABEL_SETS,
    DatasetError,
    Sample,
    check_labels,
    find_samples,
    read_image,
    read_labels,
)
from seg_perception.evaluation.evaluate import EvaluationResult, Evaluator, run_evaluation
from seg_perception.evaluation.mapping import (
    ClassMapping,
    MappingError,
    class_id,
    default_mapping_path,
    mappings_dir,
)
from seg_perception.evaluation.metrics import (
    CONFIDENCE_THRESHOLDS,
    ECE_BINS,
    Calibration,
    CalibrationBin,
    ConfidenceRetention,
    ConfusionMatrix,
    DecisionCounts,
    FrameRecord,
    PRPoint,
    count_decisions,
    pr_curve,
)

__all__ = [
    "CONFIDENCE_THRESHOLDS",
    "ECE_BINS",
    "LABEL_SETS",
    "Calibration",
    "CalibrationBin",
    "ClassMapping",
    "ConfidenceRetention",
    "ConfusionMatrix",
    "DatasetError",
    "DecisionCounts",
    "EvaluationResult",
    "Evaluator",
    "FrameRecord",
    "MappingError",
    "PRPoint",
    "Sample",
    "check_labels",
    "class_id",
    "count_decisions",
    "default_mapping_path",
    "find_samples",
    "mappings_dir",
    "pr_curve",
    "read_image",
    "read_labels",
    "run_evaluation",
]
