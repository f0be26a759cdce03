"""The ROS-free core on real frames: shapes, ids, channel order, colour and overlay maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg_perception.pipeline import SegmentationPipeline, to_numpy


@pytest.fixture(scope="module")
def pipeline(camvid_model):
    return SegmentationPipeline(camvid_model)


@pytest.mark.parametrize("shape", [(720, 1280), (333, 517), (64, 48), (1080, 1920)])
def test_label_map_has_the_input_resolution(pipeline, dashcam_still, shape):
    import cv2

    frame = cv2.resize(dashcam_still("test1"), (shape[1], shape[0]))
    result = pipeline.segment(frame)
    assert result.label_map.shape == shape
    assert result.label_map.dtype == torch.uint8
    assert int(result.label_map.max()) < pipeline.metadata.num_classes


def test_channel_order_is_honoured(pipeline, dashcam_still):
    rgb = dashcam_still("test4")
    from_rgb = pipeline.segment(rgb, "rgb").label_map
    from_bgr = pipeline.segment(np.ascontiguousarray(rgb[..., ::-1]), "bgr").label_map
    assert torch.equal(from_rgb, from_bgr)
    swapped = pipeline.segment(rgb, "bgr").label_map  # lying about the order changes the result
    assert not torch.equal(from_rgb, swapped)


def test_non_contiguous_views_are_accepted(pipeline, dashcam_still):
    rgba = np.dstack([dashcam_still("test1"), np.full((720, 1280), 255, np.uint8)])
    view = rgba[..., :3]  # what a zero-copy rgba8 decode produces
    assert not view.flags.c_contiguous
    assert torch.equal(pipeline.segment(view).label_map,
                       pipeline.segment(np.ascontiguousarray(view)).label_map)


def test_colour_mask_and_overlay_follow_the_palette_and_alpha(pipeline, dashcam_still):
    frame = dashcam_still("test6")
    result = pipeline.segment(frame)
    labels = to_numpy(result.label_map)
    palette = np.array(pipeline.metadata.palette, np.uint8)
    colour = to_numpy(result.color_mask())
    assert np.array_equal(colour, palette[labels])
    for alpha in (0.0, 0.35, 1.0):
        overlay = to_numpy(result.overlay(alpha)).astype(np.float64)
        expected = (1 - alpha) * frame + alpha * colour
        assert np.abs(overlay - expected).max() <= 1.0
    assert np.array_equal(to_numpy(result.overlay(0.0)), frame)
    with pytest.raises(ValueError, match="alpha"):
        result.overlay(1.5)


def test_upsampling_logits_and_labels_mostly_agree(camvid_model, dashcam_still):
    frame = dashcam_still("test1")
    by_labels = SegmentationPipeline(camvid_model, upsample="labels").segment(frame).label_map
    by_logits = SegmentationPipeline(camvid_model, upsample="logits").segment(frame).label_map
    agreement = (by_labels == by_logits).float().mean().item()
    assert 0.95 < agreement < 1.0  # same classes; only boundaries differ


def test_rejects_frames_that_are_not_hxwx3_uint8(pipeline):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        pipeline.segment(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        pipeline.segment(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="channel_order"):
        pipeline.segment(np.zeros((10, 10, 3), np.uint8), "yuv")
