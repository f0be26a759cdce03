"""Integration tests of the segmentation node over real DDS (loopback, a random domain).

The node and the image publishers run in their own processes, as in a robot; this test process
subscribes to the outputs and calls the parameter services. Real ESPNet weights and real
dash-cam frames throughout. Three node processes serve the whole module (start-up costs
seconds): ``/city`` (the default model and config file), ``/camvid`` (the fast model, for the
many-message tests) and ``/jpeg`` (compressed input). Publishers run in lockstep with the node
(see ``ros_helpers.publish``), so the checks hold however slow a loaded machine makes it;
only the flooding and stalled-input tests publish at a rate, on purpose. The last section runs
a node in this process to inject faults into its inference.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from ros_helpers import (
    Compressed,
    Published,
    RawImage,
    RunningNode,
    diagnostic_values,
    launch_node,
    node_statuses,
    raw_image,
)
from ros_helpers import publish as publish_to

from seg_perception import topics
from seg_perception.core.compressed_codec import encode_compressed
from seg_perception.core.corridor import Corridor
from seg_perception.core.labels import CAMVID, CITYSCAPES
from seg_perception.core.vehicle_ahead import corridor_coverage, resolve_vehicle_class_ids
from seg_perception.tools.rosgraph import TopicRecorder, node_command

CAMVID_CLASSES, CITYSCAPES_CLASSES = CAMVID.class_names, CITYSCAPES.class_names

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "segmentation.yaml"

pytestmark = pytest.mark.slow  # node processes, or a node in this process


# --- fixtures ----------------------------------------------------------------------------------


def _launch(domain: dict, workdir: Path, namespace: str, *params: str) -> RunningNode:
    return launch_node(domain["env"], workdir, namespace, "--params-file", str(PARAMS_FILE),
                       *params)


@pytest.fixture(scope="module")
def city(domain, workdir):
    """The default model with the shipped parameter file."""
    node = _launch(domain, workdir, "city")
    yield node
    node.process.stop()


@pytest.fixture(scope="module")
def camvid(domain, workdir):
    # On the CPU whatever the machine: the flood test needs inference slower than 60 Hz.
    node = _launch(domain, workdir, "camvid", "-p", "model:=espnet-camvid", "-p", "device:=cpu")
    yield node
    node.process.stop()


@pytest.fixture(scope="module")
def jpeg(domain, workdir):
    node = _launch(domain, workdir, "jpeg", "-p", "model:=espnet-camvid",
                   "-p", "input_transport:=compressed")
    yield node
    node.process.stop()


@pytest.fixture(scope="module")
def stills(dashcam_still) -> dict[str, np.ndarray]:
    return {name: dashcam_still(name) for name in ("test1", "test4", "test5")}


# --- helpers -----------------------------------------------------------------------------------

OUTPUTS = (topics.LABEL_MAP, topics.COLOR_MASK, topics.OVERLAY, topics.VEHICLE_AHEAD,
           topics.COVERAGE)


def subscribe_outputs(probe: TopicRecorder, node: RunningNode, names=OUTPUTS) -> None:
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool, Float32

    types = {topics.VEHICLE_AHEAD: Bool, topics.COVERAGE: Float32}
    for name in names:
        probe.record(node.topic(name), types.get(name, Image))
    probe.wait_for(lambda: all(probe.subscriptions[node.topic(n)].get_publisher_count()
                               for n in names), 10.0, "the node's publishers")
    time.sleep(1.0)  # the node sees the subscriptions (it publishes images only to them)


def publish(domain: dict, workdir: Path, node: RunningNode, messages, **options) -> Published:
    """Publish from another process, in lockstep unless told (``ros_helpers.publish``)."""
    return publish_to(domain["env"], workdir, node, messages, **options)


def wait_quiet(probe: TopicRecorder, topic: str, quiet_s: float = 1.5,
               timeout: float = 60.0) -> list:
    """Wait until nothing new arrived on ``topic`` for ``quiet_s`` (stragglers are in)."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = len(probe.messages(topic))
        if now_count != count:
            count, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.1)
    return probe.messages(topic)


def of_batch(messages: list, name: str) -> list:
    """Messages whose header frame_id came from publisher batch ``name``."""
    return [m for m in messages if m.header.frame_id.startswith(name)
            and m.header.frame_id[len(name):].isdigit()]


def pixels(msg) -> np.ndarray:
    channels = {"mono8": 1, "rgb8": 3}[msg.encoding]
    assert msg.step == msg.width * channels
    assert len(msg.data) == msg.step * msg.height
    array = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, channels)
    return array[:, :, 0] if channels == 1 else array


def latest_status(probe: TopicRecorder, node: RunningNode, after: float = 0.0):
    """The newest diagnostics of ``node``, waiting for one received after ``after``."""
    def fresh():
        statuses = [(t, s) for t, array in probe.timed(topics.DIAGNOSTICS)
                    for s in array.status if s.name.endswith(node.fqn) and t > after]
        return statuses[-1][1] if statuses else None

    return probe.wait_for(fresh, 10.0, f"diagnostics of {node.fqn}")


def counters(probe: TopicRecorder, node: RunningNode) -> dict[str, int]:
    values = diagnostic_values(latest_status(probe, node, after=time.time()))
    return {k: int(v) for k, v in values.items() if k.startswith("frames_")}


def assert_every_frame_accounted_for(delta: dict[str, int]) -> None:
    """Every frame received is processed, rejected, dropped (replaced unseen) or failed."""
    assert delta["frames_received"] == (delta["frames_processed"] + delta["frames_rejected"]
                                        + delta["frames_dropped"] + delta["frames_failed"]), delta


def assert_header_sent(msg, sent: dict) -> dict:
    entry = sent.get(msg.header.frame_id)
    assert entry is not None, f"unknown frame_id {msg.header.frame_id!r}"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (entry["sec"], entry["nanosec"])
    return entry


def set_ok(probe: TopicRecorder, node: RunningNode, name: str, value) -> None:
    [result] = probe.set_parameters(node.fqn, {name: value})
    assert result.successful, result.reason


def set_rejected(probe: TopicRecorder, node: RunningNode, name: str, value) -> str:
    [result] = probe.set_parameters(node.fqn, {name: value})
    assert not result.successful, f"{name}={value!r} was accepted"
    return result.reason


# --- the default node on real frames -----------------------------------------------------------


def test_every_output_matches_its_input_frame(domain, workdir, probe, city, stills):
    subscribe_outputs(probe, city)
    frames = list(stills.values())
    published = publish(domain, workdir, city, [raw_image(f, "rgb8") for f in frames],
                        name="real", count=6)
    label_maps = of_batch(wait_quiet(probe, city.topic("segmentation/label_map")), "real")
    sent = published.sent()
    assert len(sent) == 6
    assert len(label_maps) >= 2, city.log()

    by_id = {name: {m.header.frame_id: m for m in probe.messages(city.topic(f"segmentation/"
                                                                            f"{name}"))}
             for name in ("color_mask", "overlay")}
    palette = np.array(CITYSCAPES.palette, np.uint8)
    vehicle_ids = resolve_vehicle_class_ids(CITYSCAPES_CLASSES)
    coverages = [m.data for m in probe.messages(city.topic("vehicle_ahead/coverage"))]
    checked_images = 0
    for label_msg in label_maps:
        entry = assert_header_sent(label_msg, sent)
        frame = frames[entry["index"]]
        assert (label_msg.encoding, label_msg.height, label_msg.width) == ("mono8", 720, 1280)
        labels = pixels(label_msg)
        assert labels.max() < len(CITYSCAPES_CLASSES)
        assert len(np.unique(labels)) >= 4  # a real street scene, not a constant map
        expected_coverage = corridor_coverage(labels, vehicle_ids, Corridor())
        assert min(abs(c - expected_coverage) for c in coverages) < 1e-6
        mask_msg = by_id["color_mask"].get(label_msg.header.frame_id)
        overlay_msg = by_id["overlay"].get(label_msg.header.frame_id)
        if mask_msg is None or overlay_msg is None:
            continue
        for msg in (mask_msg, overlay_msg):
            assert (msg.encoding, msg.height, msg.width) == ("rgb8", 720, 1280)
            assert_header_sent(msg, sent)
            assert msg.header.stamp == label_msg.header.stamp
        mask = pixels(mask_msg)
        np.testing.assert_array_equal(mask, palette[labels])
        alpha = 0.5  # config/segmentation.yaml
        expected = (1 - alpha) * frame.astype(np.float64) + alpha * mask
        blended = np.abs(pixels(overlay_msg) - expected).max(axis=2) <= 1.0
        # Everything is the blend except the drawn corridor outline and decision text.
        assert 0.97 < blended.mean() < 1.0
        drawn = pixels(overlay_msg)[~blended]
        assert np.isin(drawn, (0, 32, 230, 255)).all(axis=1).mean() > 0.5  # its colours
        checked_images += 1
    assert checked_images >= 1

    decisions = probe.messages(city.topic("vehicle_ahead"))
    assert len(decisions) >= len(label_maps)
    assert all(isinstance(d.data, bool) for d in decisions)

    [class_names] = probe.get_parameters(city.fqn, ["class_names"])
    assert tuple(class_names) == CITYSCAPES_CLASSES
    values = diagnostic_values(latest_status(probe, city, after=time.time()))
    assert values["model"] == "espnet-cityscapes" and values["device"] == "cpu"
    assert int(values["frames_processed"]) >= len(label_maps)
    assert values["input_qos"].startswith("reliable")
    for key in ("input_hz", "output_hz", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99"):
        assert float(values[key]) >= 0.0, key
    assert float(values["latency_ms_p50"]) > 0.0


def test_label_info_is_latched_when_vision_msgs_exists(probe, city):
    pytest.importorskip("vision_msgs", reason="vision_msgs is not installed here")
    from vision_msgs.msg import LabelInfo

    topic = city.topic("segmentation/label_info")
    probe.record(topic, LabelInfo, transient_local=True)
    [info] = probe.wait_for(lambda: probe.messages(topic)[-1:], 10.0, "LabelInfo")
    assert [c.class_name for c in info.class_map] == list(CITYSCAPES_CLASSES)


def _vehicle_box_corridor(labels: np.ndarray, vehicle_ids) -> list[float]:
    """A rectangle around the largest vehicle blob, normalised: a corridor full of vehicle."""
    vehicle = np.isin(labels, vehicle_ids).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(vehicle)
    assert count > 1, "no vehicle in the frame"
    x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    height, width = labels.shape
    x0, y0, x1, y1 = x / width, y / height, (x + w) / width, (y + h) / height
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def test_vehicle_ahead_on_a_real_frame_follows_a_runtime_corridor(domain, workdir, probe,
                                                                  city, stills):
    subscribe_outputs(probe, city, ("segmentation/label_map", "vehicle_ahead",
                                    "vehicle_ahead/coverage"))
    set_ok(probe, city, "frames_on", 2)
    set_ok(probe, city, "frames_off", 2)
    frame = [raw_image(stills["test1"], "rgb8")]
    publish(domain, workdir, city, frame, name="probe", count=1)
    [label_msg] = of_batch(wait_quiet(probe, city.topic("segmentation/label_map")), "probe")
    labels = pixels(label_msg)
    vehicle_ids = resolve_vehicle_class_ids(CITYSCAPES_CLASSES)
    assert probe.messages(city.topic("vehicle_ahead"))[-1].data is False  # default corridor

    phases = [
        (_vehicle_box_corridor(labels, vehicle_ids), True),
        ([0.0, 0.0, 1.0, 0.0, 1.0, 0.2, 0.0, 0.2], False),  # the sky: clear
    ]
    for index, (corridor, expected) in enumerate(phases):
        set_ok(probe, city, "corridor", corridor)
        expected_coverage = corridor_coverage(labels, vehicle_ids, Corridor.from_flat(corridor))
        assert (expected_coverage >= 0.05) is expected
        probe.clear(city.topic("vehicle_ahead"), city.topic("vehicle_ahead/coverage"))
        publish(domain, workdir, city, frame, name=f"phase{index}", count=3)
        wait_quiet(probe, city.topic("vehicle_ahead"))
        decisions = [m.data for m in probe.messages(city.topic("vehicle_ahead"))]
        coverages = [m.data for m in probe.messages(city.topic("vehicle_ahead/coverage"))]
        assert len(decisions) >= 2, city.log()
        assert decisions[0] is (not expected)  # hysteresis: one frame is not enough
        assert decisions[-1] is expected
        assert coverages[-1] == pytest.approx(expected_coverage, abs=1e-6)
    set_ok(probe, city, "corridor", [0.25, 1.0, 0.75, 1.0, 0.55, 0.55, 0.45, 0.55])


# --- parameters at run time --------------------------------------------------------------------


def test_runtime_parameters_are_validated_and_applied(domain, workdir, probe, camvid, stills):
    reasons = {
        "overlay_alpha": set_rejected(probe, camvid, "overlay_alpha", 1.5),
        "corridor": set_rejected(probe, camvid, "corridor",
                                 [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]),
        "vehicle_classes": set_rejected(probe, camvid, "vehicle_classes", ["spaceship"]),
        "min_coverage": set_rejected(probe, camvid, "min_coverage", -0.1),
        "frames_on": set_rejected(probe, camvid, "frames_on", 0),
        "device": set_rejected(probe, camvid, "device", "tpu"),
        "model": set_rejected(probe, camvid, "model", "/nonexistent/model.pt"),
        "class_names": set_rejected(probe, camvid, "class_names", ["a"]),
        "input_qos": set_rejected(probe, camvid, "input_qos", "reliable"),
    }
    assert "overlay_alpha" in reasons["overlay_alpha"]
    assert "self-intersecting" in reasons["corridor"]
    assert "spaceship" in reasons["vehicle_classes"] and "Car" in reasons["vehicle_classes"]
    assert "min_coverage" in reasons["min_coverage"]
    assert "frames_on" in reasons["frames_on"]
    assert "unknown device 'tpu'" in reasons["device"]
    assert "not found" in reasons["model"]
    assert "read-only" in reasons["class_names"]
    assert "read-only" in reasons["input_qos"]
    assert probe.get_parameters(camvid.fqn, ["overlay_alpha", "vehicle_classes"]) == \
        [0.5, ["auto"]]

    # Accepted: alpha 0 makes the overlay the camera image (with the corridor drawn on it).
    set_ok(probe, camvid, "overlay_alpha", 0.0)
    set_ok(probe, camvid, "vehicle_classes", ["car", "Bicyclist"])
    assert probe.get_parameters(camvid.fqn, ["overlay_alpha"]) == [0.0]
    subscribe_outputs(probe, camvid, ("segmentation/overlay",))
    publish(domain, workdir, camvid, [raw_image(stills["test4"], "rgb8")], name="alpha0",
            count=2)
    [overlay, *_] = of_batch(wait_quiet(probe, camvid.topic("segmentation/overlay")), "alpha0")
    same = (pixels(overlay) == stills["test4"]).all(axis=2)
    assert 0.97 < same.mean() < 1.0  # all but the corridor outline and the decision text
    set_ok(probe, camvid, "overlay_alpha", 0.5)
    set_ok(probe, camvid, "vehicle_classes", ["auto"])
    probe.unsubscribe(camvid.topic("segmentation/overlay"))


# --- encodings and malformed input -------------------------------------------------------------


def _encoded(rgb: np.ndarray) -> dict[str, RawImage]:
    """The same frame in every encoding the node must accept (plus padded rows)."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    padded_rows = np.zeros((rgb.shape[0], rgb.shape[1] * 3 + 64), np.uint8)
    padded_rows[:, : rgb.shape[1] * 3] = rgb.reshape(rgb.shape[0], -1)
    padded = RawImage("rgb8", rgb.shape[0], rgb.shape[1], padded_rows.shape[1],
                      padded_rows.tobytes())
    return {
        "rgb8": raw_image(rgb, "rgb8"),
        "bgr8": raw_image(bgr, "bgr8"),
        "rgba8": raw_image(np.concatenate([rgb, alpha], axis=2), "rgba8"),
        "bgra8": raw_image(np.concatenate([bgr, alpha], axis=2), "bgra8"),
        "mono8": raw_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "mono8"),
        "grey_rgb8": raw_image(cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
                                            cv2.COLOR_GRAY2RGB), "rgb8"),
        "yuv422": raw_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY), "yuv422"),
        "yuv422_yuy2": raw_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2), "yuv422_yuy2"),
        "padded_rgb8": padded,
    }


def test_every_encoding_gives_the_same_segmentation(domain, workdir, probe, camvid, stills):
    rgb = cv2.resize(stills["test4"], (640, 360), interpolation=cv2.INTER_AREA)
    variants = _encoded(rgb)
    names = list(variants)
    unsupported = RawImage("16UC1", 360, 640, 1280, bytes(360 * 1280))
    before = counters(probe, camvid)
    subscribe_outputs(probe, camvid, ("segmentation/label_map",))
    messages = [*variants.values(), unsupported]  # two passes (lockstep: none is dropped)
    published = publish(domain, workdir, camvid, messages, name="enc", count=2 * len(messages))
    sent = published.sent()
    label_maps = of_batch(wait_quiet(probe, camvid.topic("segmentation/label_map")), "enc")
    results = {}
    for msg in label_maps:
        entry = assert_header_sent(msg, sent)
        assert (msg.height, msg.width) == (360, 640)
        if entry["index"] < len(names):
            results[names[entry["index"]]] = pixels(msg)
    assert set(results) == set(names), f"missing {set(names) - set(results)}\n{camvid.log()}"
    reference = results["rgb8"]
    assert reference.max() < len(CAMVID_CLASSES)
    for name in ("bgr8", "rgba8", "bgra8", "padded_rgb8"):
        np.testing.assert_array_equal(results[name], reference, err_msg=name)
    for name in ("yuv422", "yuv422_yuy2"):  # chroma subsampling: nearly the same
        assert np.mean(results[name] == reference) > 0.9, name
    np.testing.assert_array_equal(results["mono8"], results["grey_rgb8"])  # grey = R = G = B
    assert "16UC1" in camvid.process.wait_for_log("'16UC1'", 10)
    after = counters(probe, camvid)
    assert 1 <= after["frames_rejected"] - before["frames_rejected"] <= 2
    assert_every_frame_accounted_for({k: after[k] - before[k] for k in after})


def _malformed(rng: np.random.Generator, count: int) -> list[RawImage]:
    """Messages a broken or hostile publisher could send, in a random mix."""
    def make(kind: int) -> RawImage:
        h, w = int(rng.integers(1, 48)), int(rng.integers(2, 64)) * 2
        good = bytes(rng.integers(0, 256, h * w * 3, dtype=np.uint8))
        variants = [
            lambda: RawImage("rgb8", 0, w, w * 3, b""),
            lambda: RawImage("rgb8", h, 0, 0, b""),
            lambda: RawImage("rgb8", h, w, w * 3 - 1, good),
            lambda: RawImage("rgb8", h, w, w * 3, good[: -int(rng.integers(1, 50))]),
            lambda: RawImage("rgb8", h, w, w * 3, good + b"\0" * int(rng.integers(1, 50))),
            lambda: RawImage("".join(rng.choice(list("abcxyz0189_"), 6)), h, w, w * 3, good),
            lambda: RawImage("", h, w, w * 3, good),
            lambda: RawImage(str(rng.choice(["16UC1", "mono16", "rgb16", "bgra16", "32FC1"])),
                             h, w, w * 2, bytes(h * w * 2)),
            lambda: RawImage("rgb8", 100_000, 100_000, 300_000, good),
            lambda: RawImage("yuv422", h, w + 1, (w + 1) * 2, bytes(h * (w + 1) * 2)),
            lambda: RawImage("bgr8", h, w, 2**32 - 1, good),
            lambda: RawImage("mono8", h, w, w, bytes(rng.integers(0, 256, 7, dtype=np.uint8))),
        ]
        return variants[kind % len(variants)]()

    return [make(int(k)) for k in rng.integers(0, 1000, count)]


def test_malformed_messages_are_skipped_and_good_frames_still_work(domain, workdir, probe,
                                                                 camvid, stills):
    good = [raw_image(stills["test5"], "rgb8")]
    subscribe_outputs(probe, camvid, ("segmentation/label_map",))
    publish(domain, workdir, camvid, good, name="before", count=1)
    [reference] = of_batch(wait_quiet(probe, camvid.topic("segmentation/label_map")), "before")
    before = counters(probe, camvid)

    malformed = _malformed(np.random.default_rng(7), 300)
    # No output to wait for: at a rate (the counts below allow for a frame lost to a stalled
    # node), then the good frames in lockstep (by their output, every earlier frame is taken).
    publish(domain, workdir, camvid, malformed, name="fuzz", lockstep=False, rate=50.0)
    published = publish(domain, workdir, camvid, good, name="after", count=2)
    after_maps = of_batch(wait_quiet(probe, camvid.topic("segmentation/label_map")), "after")
    assert camvid.process.poll() is None
    assert not of_batch(probe.messages(camvid.topic("segmentation/label_map")), "fuzz")
    assert after_maps, camvid.log()
    for msg in after_maps:
        assert_header_sent(msg, published.sent())
        np.testing.assert_array_equal(pixels(msg), pixels(reference))
    after = counters(probe, camvid)
    delta = {k: after[k] - before[k] for k in after}
    assert delta["frames_received"] >= 290  # reliable: (nearly) all 300 + 2 arrive
    assert_every_frame_accounted_for(delta)
    assert delta["frames_rejected"] >= 50 and delta["frames_failed"] == 0
    assert "skipping a frame" in camvid.log() and "Traceback" not in camvid.log()


# --- flooding: newest frame only ---------------------------------------------------------------


def test_flooding_keeps_latency_bounded_and_counts_drops(domain, workdir, probe, camvid,
                                                         stills):
    subscribe_outputs(probe, camvid, ("segmentation/label_map",))
    before = counters(probe, camvid)
    # At a camera's rate faster than the node, on purpose: it must skip frames.
    published = publish(domain, workdir, camvid, [raw_image(stills["test1"], "rgb8")],
                        name="flood", lockstep=False, rate=60.0, count=180)
    # The newest frame is never replaced: the last one sent comes back, then the node idles.
    label_maps = camvid.topic(topics.LABEL_MAP)
    probe.wait_for(lambda: "flood179" in {m.header.frame_id for m in probe.messages(label_maps)},
                   60.0, "the last frame's label map")
    received = [(t, m) for t, m in probe.timed(camvid.topic("segmentation/label_map"))
                if m.header.frame_id.startswith("flood")]
    values = diagnostic_values(latest_status(probe, camvid, after=time.time()))
    after = {k: int(v) for k, v in values.items() if k.startswith("frames_")}
    delta = {k: after[k] - before[k] for k in after}
    sent = published.sent()
    assert len(sent) == 180
    assert 0 < len(received) <= delta["frames_processed"] < 180 / 2, "no frame was skipped"
    assert_every_frame_accounted_for(delta)
    # Bounded: no output is much older than one inference; a backlog would reach seconds.
    per_frame_s = float(values["latency_ms_p99"]) / 1000
    ages = [t - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9) for t, m in received]
    assert max(ages) < 3 * per_frame_s + 1.0, (max(ages), per_frame_s)
    last_seq = max(sent[m.header.frame_id]["seq"] for _, m in received)
    assert last_seq >= 180 - 5  # the last outputs are for the last frames sent


# --- QoS: auto matching and the stalled-input warning ------------------------------------------


def test_auto_qos_receives_reliable_and_best_effort_publishers(domain, workdir, probe, camvid,
                                                               stills):
    subscribe_outputs(probe, camvid, ("segmentation/label_map",))
    frame = [raw_image(stills["test4"], "rgb8")]  # 1280x720 rgb8
    for name, reliability in (("be", "best_effort"), ("rel", "reliable")):
        # same_qos: the node re-subscribed with what this publisher offers before frame 1.
        publish(domain, workdir, camvid, frame, name=name, count=10, reliability=reliability,
                same_qos=True)
        maps = of_batch(wait_quiet(probe, camvid.topic("segmentation/label_map")), name)
        assert len(maps) >= 4, f"{reliability}: {len(maps)} of 10 frames\n{camvid.log()}"
        assert all((m.width, m.height) == (1280, 720) for m in maps)
    assert "input QoS: reliable -> best_effort" in camvid.log()
    assert "input QoS: best_effort -> reliable" in camvid.log()


def test_a_publisher_whose_frames_cannot_arrive_is_reported(domain, workdir, probe, camvid,
                                                            stills):
    set_ok(probe, camvid, "stall_timeout", 2.0)
    # Best effort 1920x1080 without the SHM profile in the publisher: Fast DDS loses them
    # (measured: none of 150 arrive; a rare 1280x720 frame does get through).
    full_hd = cv2.resize(stills["test4"], (1920, 1080))
    started = time.time()
    published = publish(domain, workdir, camvid, [raw_image(full_hd, "rgb8")], name="lost",
                        lockstep=False, rate=5.0, count=100, reliability="best_effort",
                        fastdds_profile=False, wait=False)

    def best_effort_stalls() -> list:  # not the earlier, brief stalls of lockstep publishers
        return [s for t, array in probe.timed(topics.DIAGNOSTICS) if t > started
                for s in array.status if s.name.endswith(camvid.fqn) and "stalled" in s.message
                and diagnostic_values(s)["input_qos"].startswith("best_effort")]

    try:
        # Generous: on a loaded machine the publisher process alone takes seconds to start.
        warning = probe.wait_for(lambda: [line for line in camvid.log().splitlines()
                                          if "input stalled" in line and "best_effort" in line],
                                 60.0, "the stalled-input warning")[-1]
        assert "FASTDDS_DEFAULT_PROFILES_FILE" in warning
        status = probe.wait_for(lambda: best_effort_stalls()[-1:], 10.0,
                                "a stalled diagnostic")[0]
        assert status.level == b"\x01"  # WARN
        assert "fastdds_shm.xml" in status.message
    finally:
        published.process.stop()
    set_ok(probe, camvid, "stall_timeout", 3.0)


# --- model swap at run time, then a clean shutdown ---------------------------------------------


def test_model_swap_failure_keeps_the_old_model_and_success_switches(domain, workdir, probe,
                                                                     camvid, stills):
    corrupt = workdir / "corrupt.pt"
    corrupt.write_bytes(b"this is not a TorchScript archive" * 100)
    subscribe_outputs(probe, camvid, ("segmentation/label_map",))
    set_ok(probe, camvid, "model", str(corrupt))  # accepted: the load starts in the background
    camvid.process.wait_for_log("model swap to", 30.0)
    status = probe.wait_for(
        lambda: [s for s in node_statuses(probe, camvid.fqn)
                 if "failed" in diagnostic_values(s)["model_load"]][-1:], 10.0, "swap failure")[0]
    assert status.level == b"\x01" and "corrupt.pt" in status.message
    assert diagnostic_values(status)["model"] == "espnet-camvid"
    frame = [raw_image(stills["test1"], "rgb8")]
    publish(domain, workdir, camvid, frame, name="old", count=2)
    old = of_batch(wait_quiet(probe, camvid.topic("segmentation/label_map")), "old")
    assert old and all(pixels(m).max() < len(CAMVID_CLASSES) for m in old)

    set_ok(probe, camvid, "model", "espnet-cityscapes")
    busy = set_rejected(probe, camvid, "model", "espnet-camvid")
    assert "in progress" in busy
    camvid.process.wait_for_log("model swapped in", 60.0)
    probe.wait_for(lambda: probe.get_parameters(camvid.fqn, ["class_names"])[0]
                     == list(CITYSCAPES_CLASSES), 10.0, "class_names of the new model")
    publish(domain, workdir, camvid, frame, name="new", count=2)
    new = of_batch(wait_quiet(probe, camvid.topic("segmentation/label_map")), "new")
    assert new, camvid.log()
    car = CITYSCAPES_CLASSES.index("car")
    assert all(np.any(pixels(m) == car) for m in new)  # Cityscapes ids beyond CamVid's 12
    values = diagnostic_values(latest_status(probe, camvid, after=time.time()))
    assert values["model"] == "espnet-cityscapes" and values["model_load"] == ""


def test_sigint_shuts_down_cleanly(camvid, city):
    for node in (camvid, city):
        assert node.process.stop() == 0 and node.process.stopped_by == "SIGINT"
        assert "Traceback" not in node.log(), node.log()


# --- compressed input --------------------------------------------------------------------------


def test_compressed_input(domain, workdir, probe, jpeg, stills):
    rgb = stills["test5"]
    jpeg_format, jpeg_data = encode_compressed(rgb, "jpeg", quality=95)
    png_format, png_data = encode_compressed(cv2.resize(rgb, (640, 360)), "png")
    rng = np.random.default_rng(3)
    corrupt = [
        Compressed("jpeg", jpeg_data[: len(jpeg_data) // 3]),
        Compressed("png", png_data[:100]),
        Compressed("jpeg", bytes(rng.integers(0, 256, 5000, dtype=np.uint8))),
        Compressed("tiff", jpeg_data),
        Compressed("png", b""),
    ]
    subscribe_outputs(probe, jpeg, ("segmentation/label_map", "segmentation/overlay"))
    before = counters(probe, jpeg)
    messages = [Compressed(jpeg_format, jpeg_data), Compressed(png_format, png_data), *corrupt]
    published = publish(domain, workdir, jpeg, messages, name="cmp",
                        topic=topics.COMPRESSED_IMAGE)
    sent = published.sent()
    maps = {assert_header_sent(m, sent)["index"]: m
            for m in of_batch(wait_quiet(probe, jpeg.topic("segmentation/label_map")), "cmp")}
    assert set(maps) == {0, 1}, jpeg.log()
    assert (maps[0].width, maps[0].height) == (1280, 720)
    assert (maps[1].width, maps[1].height) == (640, 360)
    overlays = of_batch(probe.messages(jpeg.topic("segmentation/overlay")), "cmp")
    assert overlays and all(m.encoding == "rgb8" for m in overlays)
    after = counters(probe, jpeg)
    delta = {k: after[k] - before[k] for k in after}
    assert delta["frames_received"] == len(messages)
    assert_every_frame_accounted_for(delta)
    assert delta["frames_rejected"] >= len(corrupt) - 1  # one may be dropped unseen
    assert jpeg.process.poll() is None
    assert jpeg.process.stop() == 0 and jpeg.process.stopped_by == "SIGINT"


# --- start-up failures -------------------------------------------------------------------------


def test_bad_start_up_exits_non_zero_with_one_line(domain, workdir):
    corrupt = workdir / "broken_model.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    cases = {  # (every other bad value: test_runtime and the runtime rejections above)
        "corridor:=[0.0,0.0,1.0,1.0,1.0,0.0,0.0,1.0]": "self-intersecting",
        "model:=/nonexistent/model.pt": "model file not found",
        f"model:={corrupt}": "is not a TorchScript model",
    }
    processes = {
        arg: subprocess.Popen(node_command("-p", arg), env=domain["env"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for arg in cases
    }
    for arg, expected in cases.items():
        out, err = processes[arg].communicate(timeout=120)
        assert processes[arg].returncode == 2, (arg, out, err)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert len(lines) == 1, (arg, lines)
        assert lines[0].startswith("segmentation_node: error: ") and expected in lines[0]


# --- fault injection in a node in this process -------------------------------------------------


class FaultyPipeline:
    """The real pipeline, except that the next ``failures`` calls raise ``error``."""

    def __init__(self, pipeline, error: BaseException, failures: int) -> None:
        self.pipeline, self.error, self.failures = pipeline, error, failures

    def segment_batch(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self.pipeline.segment_batch(*args, **kwargs)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return self.pipeline.network_size(height, width)


class StartFailed(RuntimeError):
    """configure or activate of an in-process node failed (the message is the node's reason)."""


@pytest.fixture
def local_node(ros_env):
    """A configured and active SegmentationNode in this process (no spinning needed: frames
    are fed to its input directly)."""
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn

    from seg_perception.node.node import SegmentationNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    nodes = []

    def make(**overrides):
        from rclpy.parameter import Parameter

        params = [Parameter(k, value=v) for k, v in {"model": "espnet-camvid",
                                                      **overrides}.items()]
        node = SegmentationNode(managed=False, context=context, parameter_overrides=params)
        nodes.append(node)
        for transition in (node.trigger_configure, node.trigger_activate):
            if transition() != TransitionCallbackReturn.SUCCESS:
                raise StartFailed(node.problem)
        return node

    yield make
    for node in nodes:
        node.stop()
        node.destroy_node()
    context.try_shutdown()


class Capture:
    def __init__(self) -> None:
        self.messages = []

    def publish(self, msg) -> None:
        self.messages.append(msg)


def _diagnose(node) -> tuple[bytes, dict[str, str], str]:
    capture = Capture()
    node._diagnostics = capture
    node._publish_diagnostics()
    [status] = capture.messages[-1].status
    return status.level, diagnostic_values(status), status.message


def _feed(node, frame_msg, until, timeout: float = 20.0) -> None:
    """Hand frames to the node's input (as its subscription would) until ``until()``."""
    deadline = time.monotonic() + timeout
    camera_input = node._cameras[""].input
    while not until():
        assert time.monotonic() < deadline, "the worker did not get there"
        camera_input._receive(frame_msg)
        time.sleep(0.1)


def _settle(stats, quiet_s: float = 0.5) -> None:
    """Wait until the worker has finished every frame it was given."""
    last, since = None, time.monotonic()
    while time.monotonic() - since < quiet_s:
        now = (stats.processed, stats.failed, stats.rejected)
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.05)


def test_inference_errors_are_reported_and_the_node_recovers(local_node, stills):
    import torch
    from sensor_msgs.msg import Image

    from seg_perception.node.model_manager import ActiveModel

    node = local_node()
    msg = raw_image(cv2.resize(stills["test1"], (480, 360)), "rgb8")
    frame = Image(encoding=msg.encoding, height=msg.height, width=msg.width, step=msg.step,
                  data=msg.data)
    stats = node._cameras[""].stats
    real = node._models.active
    for error, reason in ((RuntimeError("boom in the network"), "boom in the network"),
                          (torch.cuda.OutOfMemoryError("CUDA out of memory."), "out of memory")):
        faulty = FaultyPipeline(real.pipeline, error, failures=10**6)
        node._models.active = ActiveModel(real.loaded, faulty)
        failed = stats.failed
        _feed(node, frame, lambda f=failed: stats.failed >= f + 3)
        level, values, message = _diagnose(node)
        assert level == b"\x02" and reason in message and reason in values["last_error"]
        assert int(values["frames_failed"]) >= 3
        faulty.failures = 0  # the fault goes away: the next good frame clears the error
        processed = stats.processed
        _feed(node, frame, lambda p=processed: stats.processed > p)
        _settle(stats)
        level, values, _ = _diagnose(node)
        assert level == b"\x00", (values["last_error"], values)
        assert node._worker.is_alive()


def test_missing_cuda_falls_back_to_cpu_with_a_warning(local_node):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    node = local_node(device="cuda")
    level, values, message = _diagnose(node)
    assert values["device"] == "cpu" and level == b"\x01" and "FALLBACK" in message
    with pytest.raises(StartFailed, match="fallback is off"):
        local_node(device="cuda", device_fallback=False)
