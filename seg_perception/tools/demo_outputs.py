"""What comes back in the demo: the node's outputs matched to the input frames, which frame
each stamp was (the player's ``--print-frames`` lines), and the figures of each phase.

Images carry the input's header, so they are matched by stamp. The decision topics
(``vehicle_ahead``, ``vehicle_ahead/coverage``) carry no header; the node publishes one of
each per processed frame, so they are paired with the label maps in order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from seg_perception import topics
from seg_perception.core.image_codec import decode_image_msg
from seg_perception.tools.rosgraph import NodeCounters, RosNode, stamp_ns

NODE = "/" + topics.NODE_NAME  # the node's fully qualified name (its diagnostics end with it)
PARTIAL_AFTER_S = 3.0  # an output still missing parts this long after its label map: give up


@dataclass
class Output:
    """Everything received for one input frame (matched by its stamp)."""

    stamp_ns: int
    camera: str = ""  # of a multi-camera node; "" for the node's own topic names
    label_arrival: float | None = None
    car_fraction: float | None = None
    overlay: np.ndarray | None = None  # RGB
    overlay_arrival: float | None = None
    vehicle_ahead: bool | None = None
    coverage: float | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.label_arrival, self.overlay_arrival, self.vehicle_ahead,
                            self.coverage)

    @property
    def latency_ms(self) -> float | None:
        """Input stamp (publish time) to the arrival of the last image output, in ms."""
        arrivals = [t for t in (self.label_arrival, self.overlay_arrival) if t is not None]
        return (max(arrivals) - self.stamp_ns / 1e9) * 1000 if arrivals else None


class Collector:
    """The demo's subscriptions to the outputs of one camera of the node (``camera`` "": the
    node's own topic names), and their pairing per input frame.

    Callbacks run on the executor thread; the main thread reads through :meth:`ready`.
    """

    def __init__(self, ros: RosNode, camera: str = "") -> None:
        self.ros = ros
        self.camera = camera
        self.car_id: int | None = None  # for the share of car pixels in each label map
        self.lock = threading.Lock()
        # The camera's own status (cumulative: kept across phases).
        self.counters = NodeCounters(ros, NODE + (f"/{camera}" if camera else ""))
        self.reset()

    def reset(self) -> None:
        """Forget the previous phase's outputs."""
        with self.lock:
            self.outputs: dict[int, Output] = {}  # not handed out yet, by stamp
            self.order: list[int] = []  # stamps in label-map arrival order
            self.decisions: list[bool] = []
            self.coverages: list[float] = []
            self.handed_out = 0
            self.done: set[int] = set()  # stamps handed out: late parts of them are ignored

    def subscribe(self, timeout: float) -> None:
        """Subscribe to the node's outputs with the QoS it offers, once it publishes them."""
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool, Float32

        for topic, msg_type, callback in (
            (topics.LABEL_MAP, Image, self._on_label_map),
            (topics.OVERLAY, Image, self._on_overlay),
            (topics.VEHICLE_AHEAD, Bool, lambda m: self._decided(self.decisions, bool(m.data))),
            (topics.COVERAGE, Float32, lambda m: self._decided(self.coverages, float(m.data))),
        ):
            self.ros.subscribe_to_publishers(topics.camera_topic(self.camera, topic), msg_type,
                                             callback, 10, timeout)
        time.sleep(0.5)  # matching completes on the node's side a moment later

    def _on_label_map(self, msg: Any) -> None:
        arrival = time.time()
        # mono8 class ids; the codec serves mono8 as grey RGB, so any channel is the id.
        labels = decode_image_msg(msg).pixels[:, :, 0]
        fraction = None
        if self.car_id is not None:
            fraction = float(np.count_nonzero(labels == self.car_id)) / labels.size
        self._update(msg, label_arrival=arrival, car_fraction=fraction)

    def _on_overlay(self, msg: Any) -> None:
        arrival = time.time()
        self._update(msg, overlay=decode_image_msg(msg).to_rgb(), overlay_arrival=arrival)

    def _update(self, msg: Any, **fields: Any) -> None:
        """Fill in the output of the frame ``msg`` belongs to (a label map opens its turn)."""
        stamp = stamp_ns(msg.header.stamp)
        with self.lock:
            if stamp in self.done:
                return
            output = self.outputs.get(stamp) or self.outputs.setdefault(
                stamp, Output(stamp, self.camera))
            for name, value in fields.items():
                setattr(output, name, value)
            if "label_arrival" in fields:
                self.order.append(stamp)
                self._pair(len(self.order) - 1)

    def _decided(self, values: list, value: Any) -> None:
        with self.lock:
            values.append(value)
            self._pair(len(values) - 1)

    def _pair(self, i: int) -> None:
        """The i-th decision and coverage belong to the i-th label map (one each per frame)."""
        if i >= len(self.order) or self.order[i] not in self.outputs:
            return
        output = self.outputs[self.order[i]]
        if i < len(self.decisions):
            output.vehicle_ahead = self.decisions[i]
        if i < len(self.coverages):
            output.coverage = self.coverages[i]

    def ready(self) -> list[Output]:
        """Outputs not handed out yet, in arrival order, once complete (or given up on)."""
        now = time.time()
        result = []
        with self.lock:
            while self.handed_out < len(self.order):
                stamp = self.order[self.handed_out]
                output = self.outputs[stamp]
                if not output.complete and now - (output.label_arrival or now) < PARTIAL_AFTER_S:
                    break
                result.append(output)
                del self.outputs[stamp]  # a long video must not pile up its overlays
                self.done.add(stamp)
                self.handed_out += 1
        return result


class PlayerOutput:
    """Reads the player's stdout: 'frame INDEX stamp SEC.NANOSEC NAME' lines and its summary,
    each after 'CAMERA: ' when it plays several cameras."""

    def __init__(self, stream: IO[str]) -> None:
        self.frames: dict[tuple[str, int], tuple[int, str]] = {}  # (camera, stamp) -> (index, name)
        self.summaries: dict[str, str] = {}  # camera -> its summary line
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            camera = ""
            parts = line.split()
            if parts and parts[0].endswith(":") and parts[0][:-1].isidentifier():
                camera, parts = parts[0][:-1], parts[1:]
            if len(parts) >= 4 and parts[0] == "frame" and parts[2] == "stamp":
                sec, _, nanosec = parts[3].partition(".")
                with self.lock:
                    self.frames[camera, int(sec) * 1_000_000_000 + int(nanosec)] = (
                        int(parts[1]), " ".join(parts[4:]))
            elif parts:
                self.summaries[camera] = " ".join(parts)

    def lookup(self, stamp: int, camera: str = "") -> tuple[int, str] | None:
        with self.lock:
            return self.frames.get((camera, stamp))

    def count(self, camera: str | None = None) -> int:
        """Frames published, of one camera or (None) of all."""
        with self.lock:
            return sum(1 for key in self.frames if camera is None or key[0] == camera)


@dataclass
class PhaseResult:
    """Figures of one phase (of one camera, with several) for the summary."""

    name: str
    published: int = 0
    outputs: int = 0
    complete: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    node_before: dict[str, str] = field(default_factory=dict)
    node_after: dict[str, str] = field(default_factory=dict)
    player_summary: str = ""

    def node_delta(self, key: str) -> str:
        try:
            return str(int(float(self.node_after[key]) - float(self.node_before.get(key, 0))))
        except (KeyError, ValueError):
            return "?"


def print_summary(results: list[PhaseResult], diagnostics: dict[str, str], out: Path) -> None:
    print("\nsummary", flush=True)
    for result in results:
        latencies = np.asarray(result.latencies_ms)
        if latencies.size:
            p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
            latency = f"p50 {p50:.0f} / p90 {p90:.0f} / p99 {p99:.0f} ms"
        else:
            latency = "n/a"
        print(
            f"  {result.name:<13}  published {result.published}, received by the node "
            f"{result.node_delta('frames_received')}, processed "
            f"{result.node_delta('frames_processed')}, dropped "
            f"{result.node_delta('frames_dropped')}, outputs received {result.outputs} "
            f"({result.complete} complete); latency stamp->outputs {latency}",
            flush=True,
        )
    node_figures = ", ".join(f"{k} {diagnostics[k]}" for k in (
        "model", "device", "latency_ms_p50", "latency_ms_p99") if k in diagnostics)
    print(f"  node: {node_figures or '(no diagnostics received)'}", flush=True)
    print(f"  outputs in {out}/", flush=True)


def fmt(value: Any, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def fmt_bool(value: bool | None) -> str:
    return "?" if value is None else str(value).lower()
