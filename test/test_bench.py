"""The benchmark: a smoke run of every part and the timing helpers. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from seg_perception.core.stats import percentiles_ms
from seg_perception.tools.bench.streams import paired_extra, stream_result
from seg_perception.tools.bench.timing import StageTimer, paired_ratio, per_window, summarize

REQUIRED_KEYS = (
    "device", "camera_size", "forward_ms", "pipeline_ms", "naive_ms", "speedup_vs_naive",
    "pipeline_over_forward", "node_e2e_ms_p50", "node_e2e_ms_p99", "transport_ms_p50", "stages",
)
CORE_STAGES = {"msg_to_array", "preprocess", "forward", "postprocess", "color_mask", "overlay",
               "vehicle", "array_to_msg"}  # and on CUDA "upload", "download"


@pytest.mark.slow
def test_bench_smoke_runs_every_part_and_reports_positive_figures(ros_env, tmp_path):
    # A handful of small frames, every part briefly; one torch thread keeps it quick on a busy
    # CI machine (with two, OpenMP barriers stall whenever another process holds a core).
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "seg_perception.cli", "bench", "--model", "espnet-camvid",
        "--device", "cpu", "--threads", "1", "--sizes", "320x240", "--camera-size", "320x240",
        "--frames", "2", "--warmup", "1", "--node-seconds", "2", "--transport-seconds", "1",
        "--accuracy-sizes", "240x184", "--accuracy-images", "2", "--accuracy-bf16",
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
    assert [(r["input_size"], r["precision"]) for r in report["accuracy"]] == [
        ("240x184", "fp32"), ("240x184", "bf16")]
    assert all(0 < r["mean_iou"] <= 1 and r["fps"] > 0 for r in report["accuracy"])
    # The node is compared frame by frame with the pipeline run on the same frame right after.
    paired = report["node_info"]["paired"]
    assert len(paired["pipeline_ms"]) > 0 and min(paired["pipeline_ms"]) > 0
    assert len(paired["label_map_extra_ms"]) == len(paired["pipeline_ms"])
    assert report["node_reference_pipeline_ms_p50"] > 0
    assert report["targets"]["node_extra_baseline"].startswith("in-process pipeline on each")
    assert set(node["latency_ms_by_output"]) == {
        "segmentation/label_map", "segmentation/color_mask", "segmentation/overlay"}
    assert "core pipeline" in done.stdout and "naive pipeline" in done.stdout


@pytest.mark.slow
def test_soak_smoke_feeds_the_node_past_its_capacity_and_accounts_for_every_frame(
        ros_env, tmp_path):
    out = tmp_path / "soak.json"
    command = [
        sys.executable, "-m", "seg_perception.cli", "bench", "--model", "espnet-camvid",
        "--device", "cpu", "--threads", "1", "--camera-size", "320x240", "--soak", "0.25",
        "--soak-calibrate", "2", "--domain-id", ros_env["ROS_DOMAIN_ID"], "--json", str(out),
    ]
    done = subprocess.run(command, env=ros_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())

    assert report["camera_size"] == "320x240" and report["node_capacity_fps"] > 0
    assert report["feed_rate_hz"] == pytest.approx(2 * report["node_capacity_fps"], rel=0.01)
    assert report["frames_out"] > 0 and report["frames_partial"] == 0
    # A quarter-minute run is one window holding every frame that came back.
    [window] = report["latency_ms_per_minute"]
    assert window["minute"] == 0 and window["n"] == report["frames_out"]
    assert len(report["rss_mb_series"]) >= 2 and min(v for _, v in report["rss_mb_series"]) > 0
    diagnostics = report["node_diagnostics"]
    assert diagnostics["frames_failed"] == "0" and diagnostics["frames_rejected"] == "0"
    assert int(diagnostics["frames_processed"]) >= report["frames_out"]
    assert "RSS" in done.stdout and "p99 last minute / first minute" in done.stdout


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


def test_per_window_folds_the_runs_last_moments_into_its_last_window():
    samples = [(t, 0.010) for t in range(0, 121, 10)]  # a 2-minute run, one sample at 120 s
    windows = per_window(samples, 60.0, span_s=120.0)
    assert [start for start, _ in windows] == [0.0, 60.0]
    assert [s.count for _, s in windows] == [6, 7]


def test_paired_ratio_is_immune_to_drift_between_frames():
    forward = [0.100, 0.180, 0.120, 0.200, 0.110]  # the machine speeds up and slows down
    pipeline = [1.1 * f for f in forward]  # always 10 % more, measured on the same frame
    assert paired_ratio(pipeline, forward) == pytest.approx(1.1)
    shuffled = [pipeline[i] for i in (3, 0, 4, 1, 2)]  # ratio of unpaired samples: noise
    assert abs(paired_ratio(shuffled, forward) - 1.1) > 0.05


def _paired_run() -> tuple[dict, dict, dict[int, float]]:
    """Three frames 1 s apart (the first is warm-up); each output's receipt in ms after its
    stamp; the benchmark's own pipeline took 0.1 s on each frame, paused 0.2 s after each."""
    ms = 1_000_000
    sent = [0, 1000 * ms, 2000 * ms]
    received = {"topics": ["segmentation/label_map", "segmentation/overlay"], "records": [
        [0, 1000 * ms, 1130 * ms], [1, 1000 * ms, 1150 * ms],
        [0, 2000 * ms, 2120 * ms], [1, 2000 * ms, 2160 * ms],
    ]}
    publish = {"sent": sent, "seconds": 3.0, "cpu_seconds": 0.3, "pauses": [0.2, 0.2, 0.2]}
    return publish, received, {s: 0.1 for s in sent}


def test_paired_extra_is_per_frame_latency_minus_the_pipeline_on_that_frame():
    publish, received, reference = _paired_run()
    extra = paired_extra(publish, received, reference, settle_s=0.5)
    assert extra["pipeline_ms"] == [100.0, 100.0]
    assert extra["label_map_extra_ms"] == pytest.approx([30.0, 20.0])
    assert extra["last_output_extra_ms"] == pytest.approx([50.0, 60.0])


def test_stream_rate_leaves_out_the_pauses_of_a_paired_run():
    publish, received, _ = _paired_run()
    result = stream_result((320, 240), publish, received, settle_s=0.5)
    assert result.received == 2 and result.latency.p50 == pytest.approx(150.0)
    # last outputs 1.01 s apart, of which 0.2 s was the benchmark's turn after frame 2
    assert result.fps_out == pytest.approx(1 / 0.81)
