"""Unit tests for seg_perception.runtime (ROS-free: parameters, mailbox, statistics, QoS policy)."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import yaml

from seg_perception.runtime import (
    AUTO_VEHICLE_CLASSES,
    PARAMETER_SPECS,
    PARAMETERS,
    FrameStats,
    LatencyWindow,
    LatestFrameSlot,
    ParameterError,
    RateMeter,
    StallMonitor,
    assess_health,
    decide_reliability,
    default_values,
    settings_values,
    validate_settings,
    with_changes,
)
from seg_perception.vehicle_ahead import DEFAULT_CORRIDOR, Corridor

REPO = Path(__file__).resolve().parents[1]
CITYSCAPES = ("road", "car", "truck", "bus", "sky")
CAMVID = ("Sky", "Road", "Car", "Pedestrian")


# --- parameters ------------------------------------------------------------------------------


def test_defaults_are_valid_and_match_the_issue():
    settings = validate_settings({})
    assert settings.model == "espnet-cityscapes"
    assert settings.input_qos == "auto" and settings.output_qos == "reliable"
    assert settings.corridor == Corridor(DEFAULT_CORRIDOR)
    assert settings.wanted_vehicle_classes is None
    assert 0 <= settings.overlay_alpha <= 1


def test_shipped_yaml_lists_every_parameter_with_its_default():
    document = yaml.safe_load((REPO / "config" / "segmentation.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    assert set(values) == set(PARAMETER_SPECS)
    assert values == default_values()
    validate_settings(values)


def test_every_parameter_is_described_and_ranges_fit_defaults():
    for spec in PARAMETERS:
        assert spec.description.endswith((".", ")")), spec.name
        if spec.value_range is not None:
            low, high = spec.value_range
            assert low <= spec.default <= high, spec.name
        if spec.choices is not None:
            assert spec.default in spec.choices, spec.name


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("overlay_alpha", 1.5, "outside [0, 1]"),
        ("overlay_alpha", -0.1, "outside [0, 1]"),
        ("overlay_alpha", math.nan, "finite"),
        ("overlay_alpha", "half", "must be a number"),
        ("corridor", [], "at least 3 vertices"),
        ("corridor", [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0], "self-intersecting"),
        ("corridor", [0.1, 0.2, 0.3], "even length"),
        ("corridor", [0.0, 0.0, 2.0, 0.0, 0.0, 1.0], "outside [0, 1]"),
        ("corridor", "0.1 0.2", "flat list of numbers"),
        ("vehicle_classes", [], "must not be empty"),
        ("vehicle_classes", ["auto", "car"], "cannot be combined"),
        ("vehicle_classes", [""], "non-empty strings"),
        ("min_coverage", -0.01, "outside [0, 1]"),
        ("frames_on", 0, "outside [1, 1000]"),
        ("frames_off", 2.5, "must be an integer"),
        ("stall_timeout", 0.0, "outside"),
        ("num_threads", -1, "outside [0, 256]"),
        ("max_pixels", 0, "outside"),
        ("device", "tpu", "unknown device 'tpu'"),
        ("device", "", "must not be empty"),
        ("model", " ", "must not be empty"),
        ("input_qos", "fast", "not one of auto, sensor_data, reliable"),
        ("input_transport", "theora", "not one of raw, compressed"),
        ("output_qos", "sensor_data", "not one of reliable, best_effort"),
        ("precision", "int8", "not one of"),
        ("device_fallback", "yes", "true or false"),
        ("cuda_graph", 1, "true or false"),
        ("no_such_parameter", 1, "unknown parameter"),
    ],
)
def test_bad_values_are_rejected_with_a_reason(name, value, reason):
    with pytest.raises(ParameterError) as info:
        validate_settings({name: value})
    assert info.value.name == name
    assert reason in str(info.value)
    assert str(info.value).startswith(f"parameter '{name}': ")


def test_unavailable_cuda_is_rejected_only_without_fallback():
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert validate_settings({"device": "cuda"}).device == "cuda"
    with pytest.raises(ParameterError, match="fallback is off"):
        validate_settings({"device": "cuda", "device_fallback": False})


def test_with_changes_revalidates_and_keeps_other_values():
    settings = validate_settings({"overlay_alpha": 0.3, "model": "espnet-camvid"})
    changed = with_changes(settings, {"min_coverage": 0.2})
    assert changed.min_coverage == 0.2 and changed.overlay_alpha == 0.3
    assert changed.model == "espnet-camvid"
    with pytest.raises(ParameterError):
        with_changes(settings, {"corridor": [0.5, 0.5]})
    assert validate_settings(settings_values(settings)) == settings


def test_model_path_overrides_model():
    assert validate_settings({"model": "espnet-camvid"}).model_source == "espnet-camvid"
    assert validate_settings({"model_path": " /x/m.pt "}).model_source == "/x/m.pt"


def test_vehicle_config_resolves_names_per_model():
    auto = validate_settings({"vehicle_classes": [AUTO_VEHICLE_CLASSES]})
    assert auto.vehicle_config(CITYSCAPES).vehicle_ids == (1, 2, 3)
    assert auto.vehicle_config(CAMVID).vehicle_ids == (2,)
    explicit = validate_settings({"vehicle_classes": ["truck"], "frames_on": 4})
    config = explicit.vehicle_config(CITYSCAPES)
    assert config.vehicle_ids == (2,) and config.frames_on == 4
    with pytest.raises(ParameterError, match="unknown vehicle class name.*'truck'"):
        explicit.vehicle_config(CAMVID)


# --- QoS auto policy ---------------------------------------------------------------------------


def test_auto_qos_is_reliable_only_when_every_publisher_is():
    assert decide_reliability("auto", ["reliable", "reliable"])[0] == "reliable"
    choice, reason = decide_reliability("auto", ["reliable", "best_effort"])
    assert choice == "best_effort" and "1 of 2" in reason
    assert decide_reliability("auto", ["best_effort"])[0] == "best_effort"


def test_auto_qos_keeps_its_choice_without_publishers():
    assert decide_reliability("auto", [])[0] == "reliable"
    assert decide_reliability("auto", [], current="best_effort")[0] == "best_effort"


def test_fixed_input_qos_ignores_publishers():
    assert decide_reliability("reliable", ["best_effort"])[0] == "reliable"
    assert decide_reliability("sensor_data", ["reliable"])[0] == "best_effort"
    with pytest.raises(ValueError):
        decide_reliability("fast", [])


# --- the frame mailbox -------------------------------------------------------------------------


def test_slot_keeps_only_the_newest_and_counts_drops():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.dropped == 2
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0) is None
    assert slot.put(4) is False  # the slot was emptied: nothing dropped
    assert slot.dropped == 2


def test_slot_wakes_a_waiting_consumer_and_close_releases_it():
    slot: LatestFrameSlot[str] = LatestFrameSlot()
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    consumer.start()
    time.sleep(0.05)
    slot.put("frame")
    consumer.join(2)
    assert got == ["frame"]
    consumer = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    consumer.start()
    slot.close()
    consumer.join(2)
    assert not consumer.is_alive() and got[-1] is None and slot.closed


def test_slot_under_a_fast_producer_never_backs_up():
    """Producer much faster than consumer: every item is either consumed or counted dropped."""
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    consumed: list[int] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or not slot.closed:
            item = slot.take(timeout=0.01)
            if item is None:
                if done.is_set():
                    return
                continue
            consumed.append(item)
            time.sleep(0.002)  # "inference"

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(2000):
        slot.put(i)
    done.set()
    consumer.join(5)
    leftover = slot.take(timeout=0)
    total = len(consumed) + slot.dropped + (leftover is not None)
    assert total == 2000
    assert consumed == sorted(consumed)  # always newer frames
    assert slot.dropped > 1000


# --- statistics --------------------------------------------------------------------------------


def test_rate_meter_measures_a_steady_rate_and_decays():
    meter = RateMeter(window_s=2.0)
    for i in range(41):
        meter.tick(i * 0.1)  # 10 Hz for 4 s
    assert meter.rate(4.0) == pytest.approx(10.0, rel=0.06)
    assert meter.rate(10.0) == 0.0
    young = RateMeter(window_s=5.0)
    young.tick(0.0)
    young.tick(0.5)
    assert young.rate(0.5) == pytest.approx(2.0)


def test_latency_percentiles_nearest_rank():
    window = LatencyWindow(size=100)
    assert math.isnan(window.percentiles_ms()[50])
    for ms in range(1, 101):
        window.add(ms / 1000)
    p = window.percentiles_ms((50, 90, 99))
    assert p == {50: pytest.approx(50.0), 90: pytest.approx(90.0), 99: pytest.approx(99.0)}
    for _ in range(100):
        window.add(1.0)  # the window forgets old samples
    assert window.percentiles_ms((50,))[50] == pytest.approx(1000.0)


def test_health_goes_to_error_and_back_to_ok():
    stats = FrameStats()
    assert assess_health(stats, now=1.0).level == "OK"
    stats.on_failed(1.0, "inference failed: RuntimeError: boom")
    health = assess_health(stats, now=1.5)
    assert health.level == "ERROR" and "boom" in health.message
    stats.on_processed(2.0, 0.1)
    assert assess_health(stats, now=2.5).level == "OK"


def test_health_warns_about_rejections_stalls_and_failed_swaps():
    stats = FrameStats()
    stats.on_rejected(10.0, "unsupported image encoding '16UC1'")
    health = assess_health(stats, now=11.0)
    assert health.level == "WARN" and "16UC1" in health.message
    assert assess_health(stats, now=30.0).level == "OK"  # only recent rejections count
    stalled = assess_health(stats, now=30.0, stalled_for=4.2, stall_hint="use the profile")
    assert stalled.level == "WARN" and "4.2 s" in stalled.message
    assert "use the profile" in stalled.message
    assert assess_health(stats, 30.0, model_error="swap failed").level == "WARN"


def test_stall_monitor_needs_a_matched_publisher_and_silence():
    monitor = StallMonitor(timeout=3.0)
    assert monitor.stalled_for(100.0) is None  # nobody publishing: not a stall
    monitor.publishers(1, now=10.0)
    assert monitor.stalled_for(12.0) is None
    assert monitor.stalled_for(13.5) == pytest.approx(3.5)
    monitor.frame(13.6)
    assert monitor.stalled_for(14.0) is None
    assert monitor.stalled_for(17.0) == pytest.approx(3.4)
    monitor.publishers(0, now=17.1)
    assert monitor.stalled_for(30.0) is None
    monitor.publishers(2, now=31.0)  # a new publisher: the clock restarts
    assert monitor.stalled_for(32.0) is None
    monitor.reset()
    assert monitor.stalled_for(40.0) is None
