"""Unit tests of the node's parts that need no running ROS graph: the parameter schema, the
frame mailbox, the statistics, the health verdict and the QoS policy."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import yaml

from seg_perception.core.corridor import DEFAULT_CORRIDOR, Corridor
from seg_perception.core.stats import (
    FrameStats,
    LatencyWindow,
    RateMeter,
    StageClock,
    StarvationMonitor,
)
from seg_perception.node.diagnostics import assess_health
from seg_perception.node.input import StallMonitor, decide_reliability
from seg_perception.node.params import (
    AUTO_VEHICLE_CLASSES,
    PARAMETERS,
    ParameterError,
    parameter_defaults,
    parameter_values,
    settings_from,
)
from seg_perception.node.worker import FrameMailbox

REPO = Path(__file__).resolve().parents[1]
CITYSCAPES = ("road", "car", "truck", "bus", "sky")
CAMVID = ("Sky", "Road", "Car", "Pedestrian")


# --- parameters ------------------------------------------------------------------------------


def test_defaults_are_valid_and_match_the_issue():
    settings = settings_from({})
    assert settings.model == "espnet-cityscapes"
    assert settings.input_qos == "auto" and settings.output_qos == "reliable"
    assert settings.corridor == Corridor(DEFAULT_CORRIDOR)
    assert settings.wanted_vehicle_classes is None
    assert 0 <= settings.overlay_alpha <= 1


def test_shipped_yaml_lists_every_parameter_with_its_default():
    document = yaml.safe_load((REPO / "config" / "segmentation.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    assert set(values) == set(PARAMETERS)
    assert values == parameter_defaults()
    settings_from(values)


def _readme_parameter_table() -> dict[str, str]:
    """parameter name -> default column of the README's node parameter table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| parameter | default |"):].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def test_readme_documents_every_parameter_with_its_default():
    rows = _readme_parameter_table()
    assert set(rows) == set(PARAMETERS) | {"class_names"}
    for name, default in parameter_defaults().items():
        shown = yaml.safe_load(rows[name]) if rows[name] else ""
        assert shown == default, (name, rows[name], default)


def test_every_parameter_is_described_and_ranges_fit_defaults():
    defaults = parameter_defaults()
    for name, info in PARAMETERS.items():
        assert info.description.endswith((".", ")")), name
        if info.value_range is not None:
            low, high = info.value_range
            assert low <= defaults[name] <= high, name
        if info.choices is not None:
            assert defaults[name] in info.choices, name


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
        ("corridor", "0.1 0.2", "must be a list"),
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
        settings_from({name: value})
    assert info.value.name == name
    assert reason in str(info.value)
    assert str(info.value).startswith(f"parameter '{name}': ")


def test_unavailable_cuda_is_rejected_only_without_fallback():
    import torch

    from seg_perception.node.model_manager import check_device

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert settings_from({"device": "cuda"}).device == "cuda"  # the form is fine
    check_device(settings_from({"device": "cuda"}))  # falls back to the CPU
    with pytest.raises(ParameterError, match="fallback is off"):
        check_device(settings_from({"device": "cuda", "device_fallback": False}))


def test_changes_are_validated_and_keep_other_values():
    settings = settings_from({"overlay_alpha": 0.3, "model": "espnet-camvid"})
    changed = settings_from({"min_coverage": 0.2}, base=settings)
    assert changed.min_coverage == 0.2 and changed.overlay_alpha == 0.3
    assert changed.model == "espnet-camvid"
    with pytest.raises(ParameterError):
        settings_from({"corridor": [0.5, 0.5]}, base=settings)
    assert settings_from(parameter_values(settings)) == settings
    assert changed.changed(settings, "decision") and not changed.changed(settings, "reload")
    assert settings_from({"device": "cpu"}).changed(settings, "reload")


def test_a_float_parameter_takes_an_integer():
    assert settings_from({"overlay_alpha": 1}).overlay_alpha == 1.0
    assert isinstance(settings_from({"stall_timeout": 2}).stall_timeout, float)
    assert settings_from({"corridor": [0, 1, 1, 1, 0.5, 0]}).corridor.vertices[0] == (0.0, 1.0)


def test_model_path_overrides_model():
    assert settings_from({"model": "espnet-camvid"}).model_source == "espnet-camvid"
    assert settings_from({"model_path": " /x/m.pt "}).model_source == "/x/m.pt"


def test_vehicle_config_resolves_names_per_model():
    auto = settings_from({"vehicle_classes": [AUTO_VEHICLE_CLASSES]})
    assert auto.vehicle_config(CITYSCAPES).vehicle_ids == (1, 2, 3)
    assert auto.vehicle_config(CAMVID).vehicle_ids == (2,)
    explicit = settings_from({"vehicle_classes": ["truck"], "frames_on": 4})
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


def test_mailbox_keeps_only_the_newest_and_counts_drops():
    box: FrameMailbox[int] = FrameMailbox()
    assert box.put("cam", 1) is False
    assert box.put("cam", 2) is True
    assert box.put("cam", 3) is True
    assert box.dropped("cam") == 2
    assert box.take(timeout=0) == ("cam", 3)
    assert box.take(timeout=0) is None
    assert box.put("cam", 4) is False  # the slot was emptied: nothing dropped
    assert box.dropped() == 2


def test_mailbox_wakes_a_waiting_consumer_and_close_releases_it():
    box: FrameMailbox[str] = FrameMailbox()
    got = []
    consumer = threading.Thread(target=lambda: got.append(box.take(timeout=5)))
    consumer.start()
    time.sleep(0.05)
    box.put("cam", "frame")
    consumer.join(2)
    assert got == [("cam", "frame")]
    consumer = threading.Thread(target=lambda: got.append(box.take(timeout=5)))
    consumer.start()
    assert box.close() == []
    consumer.join(2)
    assert not consumer.is_alive() and got[-1] is None and box.closed


def test_mailbox_close_counts_the_waiting_frames_as_dropped():
    box: FrameMailbox[int] = FrameMailbox()
    box.put("a", 1)
    box.put("b", 2)
    assert sorted(box.close()) == ["a", "b"]
    assert box.dropped("a") == box.dropped("b") == 1 and box.take(timeout=0) is None


def test_mailbox_serves_streams_round_robin_so_none_starves():
    box: FrameMailbox[int] = FrameMailbox()
    served = []
    for frame in range(30):  # three cameras, each always with a frame waiting
        for camera in ("front", "left", "right"):
            box.put(camera, frame)
        served.append(box.take(timeout=0)[0])
    assert served[:6] == ["front", "left", "right", "front", "left", "right"]
    assert {camera: served.count(camera) for camera in set(served)} == \
        {"front": 10, "left": 10, "right": 10}


def test_mailbox_under_a_fast_producer_never_backs_up():
    """Producer much faster than consumer: every item is either consumed or counted dropped."""
    box: FrameMailbox[int] = FrameMailbox()
    consumed: list[int] = []
    done = threading.Event()

    def consume() -> None:
        while True:
            item = box.take(timeout=0.01)
            if item is None:
                if done.is_set():
                    return
                continue
            consumed.append(item[1])
            time.sleep(0.002)  # "inference"

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(2000):
        box.put("cam", i)
    done.set()
    consumer.join(5)
    leftover = box.take(timeout=0)
    total = len(consumed) + box.dropped("cam") + (leftover is not None)
    assert total == 2000
    assert consumed == sorted(consumed)  # always newer frames
    assert box.dropped("cam") > 1000


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


def test_starvation_is_the_recent_median_far_above_the_best():
    monitor = StarvationMonitor(window=10, factor=2.0)
    assert monitor.starved() is None and monitor.figures_ms() is None
    for _ in range(10):
        monitor.add(0.130)
    assert monitor.figures_ms() == pytest.approx((130.0, 130.0)) and monitor.starved() is None
    for _ in range(4):
        monitor.add(2.0)  # a few slow frames: the median still says fine
    assert monitor.starved() is None
    for _ in range(3):
        monitor.add(2.0)
    assert monitor.starved() == pytest.approx((2000.0, 130.0))
    health = assess_health(FrameStats(), 1.0, starved=monitor.starved())
    assert health.level == "WARN" and "CPU-starved" in health.message and "15.4x" in health.message
    monitor.reset()
    assert monitor.figures_ms() is None


def test_stage_clock_adds_up_each_stage():
    clock = StageClock()
    for _ in range(2):
        with clock("forward"):
            time.sleep(0.01)
    assert clock.seconds["forward"] >= 0.02 and list(clock.seconds) == ["forward"]
