"""The benchmark: a smoke run of every part and the timing helpers. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from seg_perception.benchmarking import StageTimer, per_window, percentiles_ms, summarize
from seg_perception.tools.bench import paired_ratio

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
    # The node is compared with the pipeline timed right before and after its run.
    assert len(report["node_info"]["bracket_seconds"]) == 16
    assert report["node_reference_pipeline_ms_p50"] > 0
    assert report["targets"]["node_extra_baseline"].startswith("pipeline right before")
    assert set(node["latency_ms_by_output"]) == {
        "segmentation/label_map", "segmentation/color_mask", "segmentation/overlay"}
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


def test_paired_ratio_is_immune_to_drift_between_frames():
    forward = [0.100, 0.180, 0.120, 0.200, 0.110]  # the machine speeds up and slows down
    pipeline = [1.1 * f for f in forward]  # always 10 % more, measured on the same frame
    assert paired_ratio(pipeline, forward) == pytest.approx(1.1)
    shuffled = [pipeline[i] for i in (3, 0, 4, 1, 2)]  # ratio of unpaired samples: noise
    assert abs(paired_ratio(shuffled, forward) - 1.1) > 0.05
