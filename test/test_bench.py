"""The benchmark and what it measures: a smoke run of every part, the timing helpers, and the
pipeline's host path (the node's hot path) against the reference results. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from seg_perception.benchmarking import StageTimer, per_window, percentiles_ms, summarize
from seg_perception.pipeline import SegmentationPipeline

REQUIRED_KEYS = (
    "device", "camera_size", "forward_ms", "pipeline_ms", "naive_ms", "speedup_vs_naive",
    "pipeline_over_forward", "node_e2e_ms_p50", "node_e2e_ms_p99", "transport_ms_p50", "stages",
)
CORE_STAGES = {"msg_to_array", "upload", "preprocess", "forward", "postprocess", "color_mask",
               "overlay", "vehicle", "array_to_msg"}


def test_bench_smoke_runs_every_part_and_reports_positive_figures(ros_env, tmp_path):
    # A handful of small frames, every part briefly; one torch thread keeps it quick on a busy
    # CI machine (with two, OpenMP barriers stall whenever another process holds a core).
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "seg_perception.cli", "bench", "--model", "espnet-camvid",
        "--device", "cpu", "--threads", "1", "--sizes", "320x240", "--camera-size", "320x240",
        "--frames", "2", "--warmup", "1", "--node-seconds", "2", "--transport-seconds", "1",
        "--accuracy-sizes", "240x184", "--accuracy-images", "2", "--no-accuracy-bf16",
        "--domain-id", ros_env["ROS_DOMAIN_ID"], "--json", str(out),
    ]
    done = subprocess.run(command, env=ros_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())

    assert set(REQUIRED_KEYS) <= set(report)
    assert report["device"] == "cpu" and report["camera_size"] == "320x240"
    figures = {k: report[k] for k in REQUIRED_KEYS if k not in ("device", "camera_size", "stages")}
    figures.update({f"stages.{k}": v for k, v in report["stages"].items()})
    assert not [k for k, v in figures.items() if not isinstance(v, (int, float)) or v <= 0]
    assert CORE_STAGES <= set(report["stages"])
    node = report["node"]["320x240"]
    assert node["frames_out"] > 0 and node["frames_sent"] >= node["frames_out"]
    assert report["transport"]["320x240"]["frames_out"] > 0
    (row,) = report["accuracy"]
    assert row["input_size"] == "240x184" and 0 < row["mean_iou"] <= 1 and row["fps"] > 0
    assert "core pipeline" in done.stdout and "naive pipeline" in done.stdout


def test_percentiles_match_the_nodes_nearest_rank_definition():
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    points = percentiles_ms(values)
    assert points[50] == pytest.approx(50.0) and points[99] == pytest.approx(99.0)
    summary = summarize(values)
    assert summary.count == 100 and summary.mean == pytest.approx(50.5)
    assert np.isnan(summarize([]).p50)


def test_stage_timer_keeps_only_timed_frames_and_adds_repeated_stages():
    timer = StageTimer()
    for keep in (False, True, True):
        with timer.frame(keep):
            for name in ("a", "b", "a"):
                with timer(name):
                    pass
    assert len(timer.totals) == 2
    assert list(timer.summary()) == ["a", "b"] and timer.summary()["a"].count == 2
    untimed = StageTimer(stages=False)
    with untimed.frame():
        with untimed("a"):
            pass
    assert untimed.summary() == {} and len(untimed.totals) == 1


def test_per_window_groups_samples_by_minute():
    samples = [(100.0 + t, 0.010) for t in range(0, 150, 10)]
    windows = per_window(samples, 60.0)
    assert [start for start, _ in windows] == [0.0, 60.0, 120.0]
    assert [s.count for _, s in windows] == [6, 6, 3]


# --- the host path the benchmark (and the node) runs -------------------------------------------


@pytest.fixture(scope="module")
def pipeline(camvid_model):
    return SegmentationPipeline(camvid_model)


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
