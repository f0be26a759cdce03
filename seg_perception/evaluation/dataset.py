"""Labelled image folders: image/label pairs in the CamVid layout and the label sets they use."""

from __future__ import annotations

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
    "find_samples",
    "read_image",
    "read_labels",
]

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
    """HxW class-id image (8-bit single channel; CamVid annot layout)."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise DatasetError(f"cannot decode label image {path}")
    if labels.ndim != 2:
        raise DatasetError(f"{path} is not a single-channel class-id image (shape "
                           f"{labels.shape}); colour-coded labels are not supported")
    return labels
