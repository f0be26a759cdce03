"""Training data: the class list, a checked scan of an image/label folder, and the dataset.

Everything that can be wrong with the data is found by :func:`scan_samples` before any
training starts (one line per problem, naming the file). The dataset feeds the network exactly
as the inference pipeline does: BGR/RGB 0..255 resized to the network input with
``INTER_LINEAR``, then the metadata's per-channel multiply-add; only the augmentation differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from seg_perception.core.labels import LABEL_SETS, LabelSet, voc_palette
from seg_perception.core.vehicle_ahead import DEFAULT_VEHICLE_CLASS_NAMES
from seg_perception.errors import SegPerceptionError
from seg_perception.evaluation import Sample, find_samples, read_image, read_labels
from seg_perception.evaluation.dataset import stray_ids
from seg_perception.models.metadata import ModelMetadata

IGNORE_INDEX = 255  # the loss ignores this target value; void label ids are mapped onto it
MAX_LISTED_PROBLEMS = 10


class TrainingDataError(SegPerceptionError, ValueError):
    """The class list or the image/label folders cannot be trained on; one line per problem."""


def problems_error(problems: Sequence[str]) -> TrainingDataError:
    """One error for many problems: each on its own line, at most ``MAX_LISTED_PROBLEMS``."""
    lines = list(problems[:MAX_LISTED_PROBLEMS])
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more problem(s)")
    return TrainingDataError("\n".join(lines))


# --------------------------------------------------------------------------------------------
# The class list.
# --------------------------------------------------------------------------------------------

CLASS_FILE_EXAMPLE = """name: my-roads
void: [255]            # label values that mean "not labelled" (ignored by loss and metrics)
classes:               # in id order: label value 0, 1, 2, ...; colour R, G, B (or null)
  road: [128, 64, 128]
  car: [0, 0, 142]
  other: [0, 0, 0]"""


def load_label_set(spec: str) -> LabelSet:
    """``--classes``: a known data set's name (camvid, cityscapes) or a class-list YAML file.

    The model is trained for every listed class; void ids must follow the classes (they are
    the ids the metrics ignore). At least one class must be a vehicle the vehicle-ahead
    decision knows (car, truck, bus, train), or the node could not use the model.
    """
    if spec in LABEL_SETS and not Path(spec).exists():
        label_set = LABEL_SETS[spec]
    else:
        label_set = _read_class_file(Path(spec))
    if not label_set.vehicle_ids:
        known = ", ".join(DEFAULT_VEHICLE_CLASS_NAMES)
        raise TrainingDataError(f"--classes {spec}: no class is a vehicle class ({known}); the "
                                "vehicle-ahead decision would have nothing to look for")
    return label_set


def _read_class_file(path: Path) -> LabelSet:
    if not path.is_file():
        raise TrainingDataError(f"--classes {path}: neither a known data set "
                                f"({', '.join(LABEL_SETS)}) nor a class-list file")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0]
        raise TrainingDataError(f"{path}: cannot read the class list: {reason}") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, dict) or not classes:
        raise TrainingDataError(f"{path}: needs a 'classes' mapping of name: [R, G, B] "
                                "(see 'seg-perception train --help')")
    names = tuple(str(name) for name in classes)
    fallback = voc_palette(len(names))
    palette = []
    for index, (name, colour) in enumerate(classes.items()):
        if colour is None:
            palette.append(fallback[index])
        elif (isinstance(colour, list) and len(colour) == 3
              and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
            palette.append(tuple(colour))
        else:
            raise TrainingDataError(f"{path}: class {name!r} colour {colour!r} is not "
                                    "[R, G, B] in 0..255")
    void = data.get("void", [])
    void = [void] if isinstance(void, int) else void
    if not isinstance(void, list) or not all(isinstance(v, int) and 0 <= v <= 255 for v in void):
        raise TrainingDataError(f"{path}: 'void' must be label values in 0..255, not {void!r}")
    inside = [v for v in void if v < len(names)]
    if inside and max((i for i in range(len(names)) if i not in void), default=-1) > min(inside):
        raise TrainingDataError(f"{path}: void ids {void} must come after the other classes")
    vehicles = tuple(n for n in names if n.casefold() in DEFAULT_VEHICLE_CLASS_NAMES)
    return LabelSet(str(data.get("name") or path.stem), names, tuple(palette), vehicles,
                    tuple(sorted(set(void))))


def target_lut(label_set: LabelSet) -> np.ndarray:
    """Label value -> training target: class ids kept, void ids -> :data:`IGNORE_INDEX`."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[: label_set.num_classes] = np.arange(label_set.num_classes)
    lut[list(label_set.void_ids)] = IGNORE_INDEX
    return lut


# --------------------------------------------------------------------------------------------
# Scanning a folder: every problem up front, plus what training needs to know.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanResult:
    """A checked folder: its samples, pixel counts per class, and its colour statistics."""

    samples: tuple[Sample, ...]
    sizes: frozenset[tuple[int, int]]  # (width, height) of the images
    class_pixels: np.ndarray  # int64 per class (void excluded)
    mean: tuple[float, float, float]  # per channel in BGR, over all pixels
    std: tuple[float, float, float]  # per channel in BGR, the per-image std averaged

    @property
    def files(self) -> set[Path]:
        return {p.resolve() for s in self.samples for p in (s.image, s.labels)}


def scan_samples(images: Path, labels: Path, label_set: LabelSet, limit: int = 0,
                 what: str = "training") -> ScanResult:
    """Pair images with labels by name and read every pair once; raise on any problem.

    Problems: an image without labels, a file that does not decode, labels that are not one
    channel, an image and its labels of different sizes, label values that are neither a class
    nor void.
    """
    found = find_samples(images, labels)  # one line for unmatched names
    if limit > 0:
        found = found[:limit]
    void = set(label_set.void_ids)
    num_classes = label_set.num_classes
    counts = np.zeros(num_classes, dtype=np.int64)
    problems: list[str] = []
    sizes: set[tuple[int, int]] = set()
    means, stds, weights = [], [], []
    for sample in found:
        try:
            image, truth = read_image(sample.image), read_labels(sample.labels)
        except ValueError as exc:
            problems.append(f"{what} data: {exc}")
            continue
        if image.shape[:2] != truth.shape:
            problems.append(f"{sample.labels}: labels are {truth.shape[1]}x{truth.shape[0]} but "
                            f"the image is {image.shape[1]}x{image.shape[0]}")
            continue
        hist = np.bincount(truth.ravel(), minlength=num_classes)
        counts += hist[:num_classes]
        bad = stray_ids(hist, label_set)
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            void_text = f", void {sorted(void)}" if void else ""
            problems.append(f"{sample.labels}: label value(s) {shown} are not a class "
                            f"(0..{num_classes - 1}{void_text})")
        sizes.add((image.shape[1], image.shape[0]))
        mean, std = cv2.meanStdDev(image)
        means.append(mean.ravel())
        stds.append(std.ravel())
        weights.append(truth.size)
    if problems:
        raise problems_error(problems)
    class_pixels = counts.copy()
    class_pixels[[v for v in void if v < num_classes]] = 0
    mean = np.average(np.array(means), axis=0, weights=np.array(weights, dtype=np.float64))
    std = np.mean(np.array(stds), axis=0)
    return ScanResult(tuple(found), frozenset(sizes),
                      class_pixels, tuple(float(v) for v in mean), tuple(float(v) for v in std))


# --------------------------------------------------------------------------------------------
# The dataset.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Road-scene augmentation: random scale, crop, horizontal flip and colour jitter.

    No vertical flips or rotations: the camera is mounted level, the sky is always up, and the
    vehicle-ahead corridor relies on that geometry.
    """

    crop: tuple[int, int]  # (width, height) of the training crop
    scale_range: tuple[float, float] = (0.75, 1.5)
    flip: bool = True
    jitter: float = 0.25  # brightness, contrast and saturation each within 1 +- jitter


class SegmentationDataset(torch.utils.data.Dataset):
    """Samples as (normalised CHW float32 tensor, HW int64 targets with void = ignore).

    With ``augmentation`` each item is drawn from an RNG seeded by (seed, epoch, index): the
    same on every run, every rank and every worker count. Without it (validation) the image is
    fed at the network size and the labels keep their own size (the pipeline's geometry).
    """

    def __init__(self, samples: Sequence[Sample], metadata: ModelMetadata, label_set: LabelSet,
                 augmentation: Augmentation | None = None, seed: int = 0) -> None:
        self.samples = tuple(samples)
        self.metadata = metadata
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self._lut = target_lut(label_set)
        scale, bias = metadata.affine()
        self._scale, self._bias = np.float32(scale), np.float32(bias)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image, truth = read_image(sample.image), read_labels(sample.labels)
        if self.metadata.channel_order == "rgb":
            image = np.ascontiguousarray(image[..., ::-1])
        width, height = self.metadata.input_size or (image.shape[1], image.shape[0])
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.augmentation is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            truth = cv2.resize(truth, (width, height), interpolation=cv2.INTER_NEAREST)
            image, truth = augment(image, truth, self.augmentation, rng)
        pixels = image.astype(np.float32) * self._scale + self._bias
        targets = self._lut[np.minimum(truth, 255)].astype(np.int64)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), torch.from_numpy(targets)


def augment(image: np.ndarray, truth: np.ndarray, aug: Augmentation,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random scale + crop (padded with ignored pixels), flip and colour jitter."""
    scale = rng.uniform(*aug.scale_range)
    height, width = truth.shape
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    truth = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
    crop_w, crop_h = aug.crop
    pad_h, pad_w = max(0, crop_h - size[1]), max(0, crop_w - size[0])
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        truth = cv2.copyMakeBorder(truth, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                   value=IGNORE_INDEX)
    top = int(rng.integers(0, truth.shape[0] - crop_h + 1))
    left = int(rng.integers(0, truth.shape[1] - crop_w + 1))
    image = image[top:top + crop_h, left:left + crop_w]
    truth = truth[top:top + crop_h, left:left + crop_w]
    if aug.flip and rng.random() < 0.5:
        image, truth = image[:, ::-1], truth[:, ::-1]
    if aug.jitter > 0:
        image = colour_jitter(image, aug.jitter, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(truth)


def colour_jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by a factor in 1 +- ``amount``."""
    brightness, contrast, saturation = rng.uniform(1 - amount, 1 + amount, size=3)
    pixels = image.astype(np.float32) * brightness
    gray = pixels.mean(axis=2, keepdims=True)
    pixels = gray + (pixels - gray) * saturation
    pixels = pixels.mean() + (pixels - pixels.mean()) * contrast
    return np.clip(pixels, 0, 255).astype(np.uint8)
