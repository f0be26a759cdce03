"""The ROS-free core on real frames: shapes, ids, channel order, colour and overlay maths."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from seg_perception.benchmarking import StageTimer
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


# --- the host path: what the node and the benchmark run -------------------------------------------


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_host_path_equals_the_device_results(pipeline, dashcam_still, order):
    rgb = dashcam_still("test4")
    pixels = rgb if order == "rgb" else np.ascontiguousarray(rgb[..., ::-1])
    reference = pipeline.segment(pixels, order)
    host = pipeline.segment_to_host(pixels, order, color_mask=True, overlay_alpha=0.35)
    assert np.array_equal(host.label_map, reference.label_map.numpy())
    assert np.array_equal(host.color_mask, reference.color_mask().numpy())
    assert np.array_equal(host.overlay, reference.overlay(0.35).numpy())
    expected = 0.65 * rgb + 0.35 * host.color_mask.astype(np.float64)
    assert np.abs(host.overlay - expected).max() <= 1.0
    fetched = pipeline.fetch(reference, overlay_alpha=0.35)
    assert fetched.color_mask is None and np.array_equal(fetched.overlay, host.overlay)


def test_host_path_reuses_its_buffers_and_leaves_segment_results_alone(pipeline, dashcam_still):
    first, second = dashcam_still("test1"), dashcam_still("test2")
    kept = pipeline.segment(first)  # device results are never reused
    kept_labels = kept.label_map.clone()
    a = pipeline.segment_to_host(first, color_mask=True, overlay_alpha=0.5)
    a_labels = a.label_map.copy()
    b = pipeline.segment_to_host(second, color_mask=True, overlay_alpha=0.5)
    assert np.shares_memory(a.label_map, b.label_map)  # documented: valid until the next call
    assert np.shares_memory(a.overlay, b.overlay)
    assert not np.array_equal(a_labels, b.label_map)
    assert torch.equal(kept.label_map, kept_labels)


def test_stage_timer_sees_every_stage_of_the_host_path(pipeline, dashcam_still):
    timer = StageTimer()
    with timer.frame():
        pipeline.segment_to_host(dashcam_still("test1"), color_mask=True, overlay_alpha=0.5,
                                 timer=timer)
    assert list(timer.summary()) == ["upload", "preprocess", "forward", "postprocess",
                                     "color_mask", "overlay"]


@pytest.mark.parametrize("small_shape", [(512, 1024), (360, 480)])
@pytest.mark.parametrize("shape", [(480, 640), (720, 1280), (1080, 1920), (333, 517), (64, 48)])
def test_label_upsampling_is_exact_nearest_with_aligned_centres(small_shape, shape):
    """Output pixel i takes source floor((i + 1/2) * small / large), computed exactly; torch's
    nearest-exact agrees except where its float scale lands just below an exact tie."""
    from seg_perception.pipeline import _upsample_labels_cpu

    small = np.random.default_rng(0).integers(0, 20, small_shape, dtype=np.uint8)
    out = np.empty(shape, np.uint8)
    rows = np.empty((shape[0], small.shape[1]), np.uint8)

    def exact(n_small: int, n_large: int) -> list[int]:
        return [int(Fraction(2 * i + 1, 2) * Fraction(n_small, n_large)) for i in range(n_large)]

    expected = small[np.ix_(exact(small_shape[0], shape[0]), exact(small_shape[1], shape[1]))]
    assert np.array_equal(_upsample_labels_cpu(small, out, rows), expected)
    by_torch = torch.nn.functional.interpolate(
        torch.from_numpy(small)[None, None], size=shape, mode="nearest-exact")[0, 0].numpy()
    rows_off, cols_off = np.nonzero(by_torch != expected)

    def ties(n_small: int, n_large: int) -> set[int]:
        return {i for i in range(n_large) if (2 * i + 1) * n_small % (2 * n_large) == 0}

    row_ties, col_ties = ties(small_shape[0], shape[0]), ties(small_shape[1], shape[1])
    assert all(r in row_ties or c in col_ties for r, c in zip(rows_off, cols_off, strict=True))
