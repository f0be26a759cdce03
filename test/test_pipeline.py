"""The ROS-free core on real frames: shapes, ids, channel order, colour and overlay maths, the
frame path, and the CUDA back end against the CPU one where a GPU exists."""

from __future__ import annotations

import contextlib
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from seg_perception.core.frame import StreamState, process_frame
from seg_perception.core.image_codec import DecodedImage
from seg_perception.core.pipeline import (
    UNKNOWN_ID,
    FrameJob,
    OutputRequest,
    SegmentationPipeline,
)
from seg_perception.core.pipeline_cpu import upsample_labels
from seg_perception.core.smoothing import TemporalSmoother
from seg_perception.core.vehicle_ahead import (
    VehicleAheadConfig,
    corridor_coverage,
    resolve_vehicle_class_ids,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def pipeline(camvid_model):
    return SegmentationPipeline(camvid_model)


def labels_of(pipeline, pixels, order="rgb") -> np.ndarray:
    return pipeline.segment_to_host(pixels, order).label_map.copy()


@pytest.mark.parametrize("shape", [(720, 1280), (333, 517), (64, 48), (1080, 1920)])
def test_label_map_has_the_input_resolution(pipeline, dashcam_still, shape):
    frame = cv2.resize(dashcam_still("test1"), (shape[1], shape[0]))
    labels = labels_of(pipeline, frame)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert int(labels.max()) < pipeline.metadata.num_classes


def test_channel_order_is_honoured(pipeline, dashcam_still):
    rgb = dashcam_still("test4")
    from_rgb = labels_of(pipeline, rgb, "rgb")
    from_bgr = labels_of(pipeline, np.ascontiguousarray(rgb[..., ::-1]), "bgr")
    assert np.array_equal(from_rgb, from_bgr)
    swapped = labels_of(pipeline, rgb, "bgr")  # lying about the order changes the result
    assert not np.array_equal(from_rgb, swapped)


def test_non_contiguous_views_are_accepted(pipeline, dashcam_still):
    rgba = np.dstack([dashcam_still("test1"), np.full((720, 1280), 255, np.uint8)])
    view = rgba[..., :3]  # what a zero-copy rgba8 decode produces
    assert not view.flags.c_contiguous
    assert np.array_equal(labels_of(pipeline, view),
                          labels_of(pipeline, np.ascontiguousarray(view)))


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_colour_mask_and_overlay_follow_the_palette_and_alpha(pipeline, dashcam_still, order):
    rgb = dashcam_still("test6")
    pixels = rgb if order == "rgb" else np.ascontiguousarray(rgb[..., ::-1])
    palette = np.array(pipeline.metadata.palette, np.uint8)
    for alpha in (0.0, 0.35, 1.0):
        host = pipeline.segment_to_host(pixels, order, OutputRequest(True, alpha))
        assert np.array_equal(host.color_mask, palette[host.label_map])
        expected = (1 - alpha) * rgb + alpha * host.color_mask.astype(np.float64)
        assert np.abs(host.overlay - expected).max() <= 1.0
        if alpha == 0.0:
            assert np.array_equal(host.overlay, rgb)
    only_overlay = pipeline.segment_to_host(pixels, order, OutputRequest(overlay_alpha=0.5))
    assert only_overlay.color_mask is None and only_overlay.overlay is not None
    with pytest.raises(ValueError, match="alpha"):
        OutputRequest(overlay_alpha=1.5)


def _torch_reference(loaded, rgb: np.ndarray) -> np.ndarray:
    """The same maths written plainly in torch (float bilinear resize, eager normalisation,
    argmax, exact nearest indices): what the CPU kernels must reproduce."""
    meta = loaded.metadata
    width, height = meta.input_size
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    if meta.channel_order == "bgr":
        x = x.flip(1)
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                        align_corners=False)
    scale, bias = meta.affine()
    x = x * torch.tensor(scale).view(1, 3, 1, 1) + torch.tensor(bias).view(1, 3, 1, 1)
    with torch.inference_mode():
        small = loaded.module(x.contiguous(memory_format=torch.channels_last)).argmax(1)[0]
    small = small.to(torch.uint8).numpy()

    def exact(n_small: int, n_large: int) -> list[int]:
        return [int(Fraction(2 * i + 1, 2) * Fraction(n_small, n_large)) for i in range(n_large)]

    return small[np.ix_(exact(height, rgb.shape[0]), exact(width, rgb.shape[1]))]


def test_cpu_kernels_match_a_plain_torch_reference(pipeline, dashcam_still):
    rgb = dashcam_still("test5")
    agreement = np.mean(labels_of(pipeline, rgb) == _torch_reference(pipeline.model, rgb))
    assert agreement > 0.995  # uint8 resize rounding moves a few boundary pixels only


def test_rejects_frames_that_are_not_hxwx3_uint8(pipeline):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        pipeline.segment_to_host(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        pipeline.segment_to_host(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="channel_order"):
        pipeline.segment_to_host(np.zeros((10, 10, 3), np.uint8), "yuv")


def test_outputs_reuse_their_buffers(pipeline, dashcam_still):
    first, second = dashcam_still("test1"), dashcam_still("test2")
    a = pipeline.segment_to_host(first, "rgb", OutputRequest(True, 0.5))
    a_labels = a.label_map.copy()
    b = pipeline.segment_to_host(second, "rgb", OutputRequest(True, 0.5))
    assert np.shares_memory(a.label_map, b.label_map)  # documented: valid until the next call
    assert np.shares_memory(a.overlay, b.overlay)
    assert not np.array_equal(a_labels, b.label_map)


def test_the_timer_sees_every_stage(pipeline, dashcam_still):
    stages: list[str] = []

    def timer(name: str):
        stages.append(name)
        return contextlib.nullcontext()

    pipeline.segment_to_host(dashcam_still("test1"), "rgb", OutputRequest(True, 0.5),
                             timer=timer)
    assert stages == ["preprocess", "forward", "postprocess", "color_mask", "overlay"]


def test_network_input_and_forward_are_the_pipelines_own(pipeline, dashcam_still):
    rgb = dashcam_still("test1")
    x = pipeline.network_input(rgb)
    width, height = pipeline.metadata.input_size
    assert tuple(x.shape) == (1, 3, height, width)
    small = pipeline.forward(x).argmax(1)[0].to(torch.uint8).numpy()
    full = upsample_labels(small, np.empty((720, 1280), np.uint8),
                           np.empty((720, width), np.uint8))
    assert np.array_equal(full, labels_of(pipeline, rgb))  # the same network, the same input


# --- the frame path ---------------------------------------------------------------------------


def test_frame_path_segments_decides_and_computes_only_what_is_asked(pipeline, dashcam_still):
    rgb = dashcam_still("test1")
    names = pipeline.metadata.class_names
    config = VehicleAheadConfig(vehicle_ids=resolve_vehicle_class_ids(names), frames_on=2)
    stream = StreamState(config)
    image = DecodedImage(rgb, "rgb")
    first = process_frame(pipeline, image, stream)
    assert first.color_mask is None and first.overlay is None
    coverage = corridor_coverage(first.label_map, config.vehicle_ids, config.corridor)
    assert first.vehicle.coverage == coverage
    full = process_frame(pipeline, image, stream, OutputRequest(True, 0.5, confidence=True))
    assert full.color_mask is not None and full.overlay is not None
    assert full.confidence is not None and full.confidence.shape == full.label_map.shape
    if first.vehicle.raw:  # the stream's hysteresis carries over from frame to frame
        assert not first.vehicle.vehicle_ahead and full.vehicle.vehicle_ahead


def test_a_batch_gives_each_frame_its_own_outputs(pipeline, dashcam_still):
    frames = [dashcam_still(name) for name in ("test1", "test4", "test5")]
    alone = []
    for frame in frames:  # each result is valid until the next call: keep copies
        host = pipeline.segment_to_host(frame, "rgb", OutputRequest(True, 0.5, True))
        alone.append((host.label_map.copy(), host.confidence.copy(), host.overlay.copy()))
    jobs = [FrameJob(f, "rgb", OutputRequest(True, 0.5, True)) for f in frames]
    batch = pipeline.segment_batch(jobs)
    for (labels, confidence, overlay), host in zip(alone, batch, strict=True):
        assert np.array_equal(host.label_map, labels)
        assert np.array_equal(host.confidence, confidence)
        assert np.array_equal(host.overlay, overlay)
    assert not np.shares_memory(batch[0].label_map, batch[1].label_map)


# --- confidence, unknown pixels, temporal smoothing ------------------------------------------


def _softmax_reference(pipeline, rgb) -> np.ndarray:
    """Max class probability at network resolution, by torch.softmax on contiguous logits."""
    logits = pipeline.forward(pipeline.network_input(rgb)).contiguous()
    return torch.softmax(logits, 1).amax(1)[0].numpy()


def test_confidence_is_the_max_class_probability_pixel_aligned(pipeline, dashcam_still):
    rgb = dashcam_still("test1")
    host = pipeline.segment_to_host(rgb, "rgb", OutputRequest(confidence=True))
    labels, confidence = host.label_map.copy(), host.confidence.copy()
    assert confidence.shape == labels.shape == (720, 1280) and confidence.dtype == np.uint8
    small = _softmax_reference(pipeline, rgb)
    width, height = pipeline.metadata.input_size
    expected = upsample_labels(np.round(small * 255).astype(np.uint8),
                               np.empty((720, 1280), np.uint8), np.empty((720, width), np.uint8))
    assert np.abs(confidence.astype(int) - expected).max() <= 1  # same maths, float rounding
    assert np.array_equal(labels, labels_of(pipeline, rgb))  # asking for it changes no label
    # Aligned: pixels upsampled from one network pixel share both label and confidence.
    assert confidence.min() >= 255 // pipeline.metadata.num_classes


def test_pixels_below_min_confidence_are_unknown(pipeline, dashcam_still):
    rgb = dashcam_still("test1")
    sure = pipeline.segment_to_host(rgb, "rgb", OutputRequest(confidence=True))
    labels, confidence = sure.label_map.copy(), sure.confidence.copy()
    unsure = pipeline.segment_to_host(rgb, "rgb", OutputRequest(min_confidence=0.7)).label_map
    unknown = unsure == UNKNOWN_ID
    assert 0.001 < unknown.mean() < 0.5
    assert np.array_equal(unsure[~unknown], labels[~unknown])
    assert confidence[unknown].max() <= round(0.7 * 255)
    assert confidence[~unknown].min() >= round(0.7 * 255) - 1
    colour = pipeline.segment_to_host(rgb, "rgb", OutputRequest(True, min_confidence=0.7))
    assert (colour.color_mask[unknown] == 0).all()  # unknown is black in the colour mask


def test_smoothing_averages_probabilities_and_restarts_on_a_gap(pipeline, dashcam_still):
    first, second = dashcam_still("test1"), dashcam_still("test4")
    smoother = TemporalSmoother(weight=0.5, max_gap_s=0.5)
    request = OutputRequest(confidence=True)
    a = pipeline.segment_to_host(first, "rgb", request, smoother=smoother, stamp_s=10.0)
    assert np.array_equal(a.label_map, labels_of(pipeline, first))  # the first frame as is
    b = pipeline.segment_to_host(second, "rgb", request, smoother=smoother, stamp_s=10.1)
    blended, blended_conf = b.label_map.copy(), b.confidence.copy()
    only_second = labels_of(pipeline, second)
    assert 0.05 < np.mean(blended != only_second) < 0.6  # half of the first frame remains
    assert smoother.restarts == 1
    c = pipeline.segment_to_host(second, "rgb", request, smoother=smoother, stamp_s=20.0)
    assert smoother.restarts == 2 and np.array_equal(c.label_map, only_second)  # a gap
    assert not np.array_equal(blended_conf, c.confidence)


# --- nearest upsampling -----------------------------------------------------------------------


@pytest.mark.parametrize("small_shape", [(512, 1024), (360, 480)])
@pytest.mark.parametrize("shape", [(480, 640), (720, 1280), (1080, 1920), (333, 517), (64, 48)])
def test_label_upsampling_is_exact_nearest_with_aligned_centres(small_shape, shape):
    """Output pixel i takes source floor((i + 1/2) * small / large), computed exactly; torch's
    nearest-exact agrees except where its float scale lands just below an exact tie."""
    small = np.random.default_rng(0).integers(0, 20, small_shape, dtype=np.uint8)
    out = np.empty(shape, np.uint8)
    rows = np.empty((shape[0], small.shape[1]), np.uint8)

    def exact(n_small: int, n_large: int) -> list[int]:
        return [int(Fraction(2 * i + 1, 2) * Fraction(n_small, n_large)) for i in range(n_large)]

    expected = small[np.ix_(exact(small_shape[0], shape[0]), exact(small_shape[1], shape[1]))]
    assert np.array_equal(upsample_labels(small, out, rows), expected)
    by_torch = torch.nn.functional.interpolate(
        torch.from_numpy(small)[None, None], size=shape, mode="nearest-exact")[0, 0].numpy()
    rows_off, cols_off = np.nonzero(by_torch != expected)

    def ties(n_small: int, n_large: int) -> set[int]:
        return {i for i in range(n_large) if (2 * i + 1) * n_small % (2 * n_large) == 0}

    row_ties, col_ties = ties(small_shape[0], shape[0]), ties(small_shape[1], shape[1])
    assert all(r in row_ties or c in col_ties for r, c in zip(rows_off, cols_off, strict=True))


# --- the CUDA back end (a GPU machine only) ---------------------------------------------------


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_back_end_matches_the_cpu_one(camvid_model, dashcam_still, cuda_graph):
    from seg_perception.models.loading import load_model

    rgb = dashcam_still("test4")
    request = OutputRequest(True, 0.5, confidence=True)
    cpu = SegmentationPipeline(camvid_model).segment_to_host(rgb, "rgb", request)
    for precision in ("fp32", "fp16"):
        loaded = load_model("espnet-camvid", device="cuda", precision=precision)
        gpu = SegmentationPipeline(loaded, cuda_graph=cuda_graph)
        for order, pixels in (("rgb", rgb), ("bgr", np.ascontiguousarray(rgb[..., ::-1]))):
            host = gpu.segment_to_host(pixels, order, request)
            assert host.label_map.shape == (720, 1280)
            assert np.mean(host.label_map == cpu.label_map) > 0.99, (precision, order)
            assert np.abs(host.confidence.astype(int) - cpu.confidence).mean() < 2.0
            palette = np.array(loaded.metadata.palette, np.uint8)
            assert np.array_equal(host.color_mask, palette[host.label_map])
            expected = 0.5 * rgb + 0.5 * host.color_mask.astype(np.float64)
            assert np.abs(host.overlay - expected).max() <= 1.0


@needs_cuda
@pytest.mark.cuda
def test_cuda_batch_matches_frames_one_by_one(dashcam_still):
    from seg_perception.models.loading import load_model

    gpu = SegmentationPipeline(load_model("espnet-camvid", device="cuda", precision="fp32"))
    frames = [dashcam_still(name) for name in ("test1", "test4", "test5")]
    alone = [gpu.segment_to_host(f, "rgb").label_map.copy() for f in frames]
    batch = gpu.segment_batch([FrameJob(f, "rgb") for f in frames])
    for labels, host in zip(alone, batch, strict=True):
        assert np.mean(host.label_map == labels) > 0.999  # cuDNN may pick other kernels
