"""Real pretrained ESPNet weights through the project's own code, on real images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from seg_perception.core.labels import VOC
from seg_perception.core.pipeline import SegmentationPipeline
from seg_perception.models.registry import (
    BUILTIN_MODELS,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    TORCHVISION_MODELS,
    EspNetWeights,
)


@pytest.mark.parametrize("name", ["espnet-cityscapes", "espnet-camvid"])
def test_published_checkpoints_load_strictly(name):
    spec = BUILTIN_MODELS[name]
    model = spec.build(pretrained=True)  # load_state_dict(strict=True) inside
    state = EspNetWeights.CAMVID if name == "espnet-camvid" else EspNetWeights.CITYSCAPES
    reference = state.value.load_state_dict()
    # Old checkpoints predate BatchNorm's num_batches_tracked buffer; every other tensor fits.
    loaded = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, spec.metadata.num_classes, 64, 96)


def _confusion(pipeline: SegmentationPipeline, image_dir, label_dir, num_classes: int):
    """Straightforward reference metric code, independent of the eval tool."""
    confusion = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for image_path in sorted(image_dir.glob("*.png")):
        bgr = cv2.imread(str(image_path))
        truth = cv2.imread(str(label_dir / image_path.name), cv2.IMREAD_UNCHANGED)
        labels = pipeline.segment_to_host(bgr, "bgr").label_map
        assert labels.shape == truth.shape
        pairs = truth.astype(np.int64) * (num_classes + 1) + labels
        confusion += np.bincount(pairs.ravel(), minlength=(num_classes + 1) ** 2).reshape(
            num_classes + 1, num_classes + 1
        )
    return confusion


def test_camvid_checkpoint_reaches_reference_accuracy_on_val(camvid_model, shared):
    camvid = shared / "data" / "camvid"
    pipeline = SegmentationPipeline(camvid_model)
    confusion = _confusion(pipeline, camvid / "val", camvid / "valannot", 11)
    valid = confusion[:11]  # ground-truth void (11) ignored; predicting void counts as wrong
    hits = np.diag(confusion)[:11]
    pixel_accuracy = hits.sum() / valid.sum()
    iou = hits / (valid.sum(1) + confusion[:11, :11].sum(0) - hits)
    # Reference of a correct implementation (shared/README.md): 0.927 / 0.701 / Car 0.813.
    assert pixel_accuracy == pytest.approx(0.927, abs=0.01)
    assert iou.mean() == pytest.approx(0.701, abs=0.01)
    assert iou[8] >= 0.80  # Car


CAR = 13  # Cityscapes train id


@pytest.mark.parametrize("still", ["test1", "test4", "test5", "test6"])
def test_cityscapes_model_labels_cars_on_dashcam_stills(cityscapes_model, dashcam_still, still):
    labels = SegmentationPipeline(cityscapes_model).segment_to_host(dashcam_still(still)).label_map
    assert labels.shape == (720, 1280)
    assert np.mean(labels == CAR) > 0.01


def test_cityscapes_model_finds_no_car_where_there_is_none(cityscapes_model, dashcam_still):
    labels = SegmentationPipeline(cityscapes_model).segment_to_host(dashcam_still("test2"))
    assert np.mean(labels.label_map == CAR) < 0.001


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_metadata_is_torchvisions_own(name):
    """The registry's VOC classes and normalisation are what torchvision's weights declare."""
    from torchvision.models import get_model_weights, segmentation

    weights = get_model_weights(getattr(segmentation, name)).DEFAULT
    assert tuple(weights.meta["categories"]) == VOC.class_names
    transforms = weights.transforms()
    assert tuple(transforms.mean) == IMAGENET_MEAN_RGB and tuple(transforms.std) == IMAGENET_STD_RGB
    meta = BUILTIN_MODELS[name].metadata
    assert min(meta.input_size) == transforms.resize_size[0]
