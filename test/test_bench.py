"""The benchmark: a smoke run of every part and the timing helpers. No timing asserts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seg_perception.core.stats import percentiles_ms
from seg_perception.tools.bench import OPT_IN, SKIPPABLE, _part_names, wanted
from seg_perception.tools.bench.stability import _compare, _delay, _flicker
from seg_perception.tools.bench.streams import (
    overlap_fps,
    paired_extra,
    select_topics,
    stream_result,
)
from seg_perception.tools.bench.timing import StageTimer, paired_ratio, per_window, summarize

REQUIRED_KEYS = (
    "device", "camera_size", "forward_ms", "pipeline_ms", "naive_ms", "speedup_vs_naive",
    "pipeline_over_forward", "node_e2e_ms_p50", "node_e2e_ms_p99", "transport_ms_p50", "stages",
)
CORE_STAGES = {"msg_to_array", "preprocess", "forward", "postprocess", "color_mask", "overlay",
               "vehicle", "array_to_msg"}  # and on CUDA "upload", "download"


def _bench(ros_env: dict[str, str], out: Path, *options: str, timeout: float
           ) -> tuple[subprocess.CompletedProcess, dict]:
    """``seg-perception bench`` on 320x240 frames with espnet-camvid, one torch thread (quick
    on a busy CI machine: with two, OpenMP barriers stall whenever another process holds a
    core), a few frames; its output and its JSON."""
    command = [
        sys.executable, "-m", "seg_perception.cli", "bench", "--model", "espnet-camvid",
        "--device", "cpu", "--threads", "1", "--sizes", "320x240", "--camera-size", "320x240",
        "--frames", "2", "--warmup", "1", "--domain-id", ros_env["ROS_DOMAIN_ID"],
        "--json", str(out), *options,
    ]
    done = subprocess.run(command, env=ros_env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done, json.loads(out.read_text())


@pytest.mark.slow
def test_bench_smoke_runs_every_part_and_reports_positive_figures(ros_env, tmp_path):
    done, report = _bench(ros_env, tmp_path / "bench.json", "--node-seconds", "2",
                          "--transport-seconds", "1", "--accuracy-sizes", "240x184",
                          "--accuracy-images", "2", "--accuracy-bf16", timeout=240)

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
    # the confidence map's cost, paired per frame at the camera size (a default part)
    confidence = report["confidence_overhead"]
    assert confidence["camera_size"] == "320x240" and confidence["target_max"] == 0.10
    assert confidence["with_confidence_ms_p50"] > 0 and confidence["overhead"] > -1
    assert report["sizes"]["320x240"]["with_confidence"]["n"] == 2
    assert "confidence map: the pipeline takes" in done.stdout
    # the opt-in parts stay out of a default run
    assert not {"stability", "multi_camera", "two_nodes_over_one", "contended_over_quiet"} & set(
        report)


@pytest.mark.slow
def test_bench_added_parts_report_their_figures(ros_env, tmp_path):
    """multi_camera, two_nodes, stability and --contention, briefly, on real data."""
    done, report = _bench(ros_env, tmp_path / "bench.json", "--node-seconds", "3",
                          "--skip", "naive,transport,node,accuracy,confidence", "--with", "all",
                          "--smoothing", "0.5", "--contention", "1", timeout=400)
    assert report["errors"] == {}

    cameras = report["multi_camera"]
    assert set(cameras["total_fps"]) == {"1", "2", "3"} and min(cameras["total_fps"].values()) > 0
    assert min(cameras["node_rss_mb"].values()) > 0
    for run in cameras["runs"]:
        names = [f"c{i}" for i in range(run["cameras"])]
        assert list(run["fps"]) == list(run["shares"]) == names
        assert sum(run["shares"].values()) == pytest.approx(1.0, abs=0.01)
        assert all(run["frames"][c]["out"] > 0 for c in names)
    batching = cameras["batching"]
    assert batching["device"] == "cpu" and batching["node_batches"] is False
    assert batching["batch3_over_three_batch1"] > 0

    two = report["two_nodes_over_one"]
    assert two["one_node_fps"] > 0 and len(two["ratios"]) == 2 and min(two["ratios"]) > 0
    assert two["min"] == min(two["ratios"])

    contended = report["contended_over_quiet"]
    assert contended["busy"] == 1 and contended["forward"] > 0 and contended["latency"] > 0
    assert min(contended["node_frames"].values()) > 0

    stability = report["stability"]
    assert stability["video_frames"] == 38 and stability["frame_interval_ms"] == 40
    off, smoothed = stability["settings"]
    assert (off["temporal_smoothing"], smoothed["temporal_smoothing"]) == (0.0, 0.5)
    assert 0 < smoothed["flicker"] < off["flicker"] < 1  # averaging steadies the labels
    assert 0 < smoothed["flicker_reduction"] < 1 and off["flicker_reduction"] == 0
    # without smoothing the raw decision follows the step at once; with it, never sooner
    assert off["onset_delay_frames"] == off["release_delay_frames"] == 0
    assert smoothed["extra_onset_frames"] >= 0 and smoothed["extra_release_frames"] >= 0
    for line in ("multi_camera (320x240", "two_nodes (320x240", "stability: label flicker",
                 "contention: beside 1 busy process"):
        assert line in done.stdout


def test_part_names_know_default_and_opt_in_parts():
    import argparse

    parse = _part_names(OPT_IN, "add")
    assert parse("all") == set(OPT_IN) and parse("stability, two_nodes") == {
        "stability", "two_nodes"}
    with pytest.raises(argparse.ArgumentTypeError, match="cannot add naive"):
        parse("naive")
    args = argparse.Namespace(skip={"naive"}, extra={"stability", "two_nodes"})
    assert [p for p in SKIPPABLE + OPT_IN if wanted(args, p)] == [
        "transport", "node", "accuracy", "confidence", "stability", "two_nodes"]
    args.skip.add("two_nodes")  # --skip wins
    assert not wanted(args, "two_nodes")


def test_overlap_fps_compares_streams_over_the_time_they_all_ran():
    # a: 10 fps from t=0 to 2; b: 5 fps from t=1 to 3 (started a second later)
    a = [i / 10 for i in range(21)]
    b = [1 + i / 5 for i in range(11)]
    rates = overlap_fps({"a": a, "b": b})  # both ran from t=1 to t=2
    assert rates["a"] == pytest.approx(10.0) and rates["b"] == pytest.approx(5.0)
    assert overlap_fps({"a": a, "b": []}) == {"a": pytest.approx(10.0), "b": 0.0}
    assert overlap_fps({"a": [1.0]}) == {"a": 0.0}


def test_select_topics_keeps_one_streams_records_reindexed():
    received = {"topics": ["/c0/x", "/c1/x", "/c1/y"],
                "records": [[0, 1, 10], [1, 1, 11], [2, 1, 12], [1, 2, 21]]}
    assert select_topics(received, ["/c1/x", "/c1/y"]) == {
        "topics": ["/c1/x", "/c1/y"], "records": [[0, 1, 11], [1, 1, 12], [0, 2, 21]]}


def test_stability_figures_flicker_delay_and_reduction():
    still = np.zeros((2, 5), np.uint8)
    moved = still.copy()
    moved[0, :2] = 1  # 2 of 10 pixels change
    assert _flicker([still, moved, moved]) == pytest.approx(0.1)
    raw = [False] * 8 + [False, True, True] + [True] * 5 + [True, True, False] + [False] * 5
    assert _delay(raw, 8, True) == 1 and _delay(raw, 16, False) == 2
    assert _delay([False] * 24, 8, True) is None
    rows = [{"flicker": 0.2, "onset_delay_frames": 0, "release_delay_frames": 0},
            {"flicker": 0.1, "onset_delay_frames": 1, "release_delay_frames": None}]
    _compare(rows)
    assert rows[1]["flicker_reduction"] == pytest.approx(0.5)
    assert rows[1]["extra_onset_frames"] == 1 and rows[1]["extra_release_frames"] is None


@pytest.mark.slow
def test_soak_smoke_feeds_the_node_past_its_capacity_and_accounts_for_every_frame(
        ros_env, tmp_path):
    done, report = _bench(ros_env, tmp_path / "soak.json", "--soak", "0.25",
                          "--soak-calibrate", "2", timeout=240)

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
