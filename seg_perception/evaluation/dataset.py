"""Labelled image folders: image/label pairs in the CamVid layout and the label sets they use."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from seg_perception.core.labels import CAMVID, LabelSet
from seg_perception.errors import SegPerceptionError

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SETS",
    "DatasetError",
    "Sample",
    "check_labels",
    "find_samples",
    "read_image",
    "read_labels",
    "stray_ids",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")

# The data sets ``--labels`` may use, by ``--dataset`` name: only the evaluated classes (void
# ids such as CamVid's 11 "Unlabelled" fall outside them and are ignored by every metric).
LABEL_SETS: dict[str, LabelSet] = {"camvid": CAMVID.labelled}


class DatasetError(SegPerceptionError, ValueError):
    """An image or label file cannot be used (undecodable, wrong layout or size)."""


@dataclass(frozen=True)
class Sample:
    """One labelled frame: a unique name, its image file and its label image file."""

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
        raise DatasetError(f"cannot decode image {path}")
    return image


def read_labels(path: Path) -> np.ndarray:
    """HxW uint8 class ids (CamVid annot layout: an 8-bit single-channel image).

    A 16-bit image is accepted when every id fits 8 bits (some tools save ids that way), and
    refused otherwise: ids such as 2827 = 11 * 257 are 8-bit ids stretched to 16 bits, not
    classes. Any other layout or type is refused; every message names the file.
    """
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise DatasetError(f"cannot decode label image {path}")
    if labels.ndim != 2:
        raise DatasetError(f"{path} is not a single-channel class-id image (shape "
                           f"{labels.shape}); colour-coded labels are not supported")
    if labels.dtype == np.uint16:
        top = int(labels.max(initial=0))
        if top > 255:
            raise DatasetError(f"{path}: 16-bit label image with ids up to {top}; class ids "
                               "must fit 8 bits (was the image scaled or converted?)")
        return labels.astype(np.uint8)
    if labels.dtype != np.uint8:
        raise DatasetError(f"{path}: label image of {labels.dtype} values; class ids must be "
                           "8-bit integers (a single-channel PNG)")
    return labels


def stray_ids(histogram: np.ndarray, label_set: LabelSet) -> list[int]:
    """Label ids counted in ``histogram`` (pixels per id) that are neither a class of
    ``label_set`` nor one of its void ids."""
    void = set(label_set.void_ids)
    return [int(v) for v in np.flatnonzero(histogram)
            if v >= label_set.num_classes and v not in void]


def check_labels(samples: Sequence[Sample], label_set: LabelSet) -> int:
    """Read every label image once, before a model loads: each must decode as 8-bit ids.

    Ids that are neither a class nor void are ignored like void, with one warning that names
    the files. Returns the number of labelled pixels; none at all is a :class:`DatasetError`
    (every metric would be undefined), not a NaN.
    """
    labelled = 0
    strays: list[str] = []
    for sample in samples:
        histogram = np.bincount(read_labels(sample.labels).ravel(), minlength=256)
        labelled += int(histogram[: label_set.num_classes].sum())
        found = stray_ids(histogram, label_set)
        if found:
            strays.append(f"{sample.labels} ({', '.join(map(str, found[:5]))})")
    void = f", void {', '.join(map(str, label_set.void_ids))}" if label_set.void_ids else ""
    classes = f"{label_set.name}'s classes 0..{label_set.num_classes - 1}{void}"
    if strays:
        log.warning("%d label image(s) hold ids outside %s, ignored like void: %s",
                    len(strays), classes, "; ".join(strays[:5]) + ("; ..." if len(strays) > 5
                                                                  else ""))
    if not labelled:
        raise DatasetError(f"no labelled pixel in the {len(samples)} label image(s): every id "
                           f"is void or outside {classes} (is --dataset right?)")
    return labelled
