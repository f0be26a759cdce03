"""What comes back in the demo: the node's outputs matched to the input frames, and which
frame each stamp was (the player's ``--print-frames`` lines).

Images carry the input's header, so they are matched by stamp. The decision topics
(``vehicle_ahead``, ``vehicle_ahead/coverage``) carry no header; the node publishes one of
each per processed frame, so they are paired with the label maps in order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
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
    """The demo's subscriptions to the node's outputs, and their pairing per input frame.

    Callbacks run on the executor thread; the main thread reads through :meth:`ready`.
    """

    def __init__(self, ros: RosNode) -> None:
        self.ros = ros
        self.car_id: int | None = None  # for the share of car pixels in each label map
        self.lock = threading.Lock()
        self.counters = NodeCounters(ros, NODE)  # cumulative: kept across phases
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
            self.ros.subscribe_to_publishers(topic, msg_type, callback, 10, timeout)
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
            output = self.outputs.get(stamp) or self.outputs.setdefault(stamp, Output(stamp))
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
    """Reads the player's stdout: 'frame INDEX stamp SEC.NANOSEC NAME' lines and its summary."""

    def __init__(self, stream: IO[str]) -> None:
        self.frames: dict[int, tuple[int, str]] = {}  # stamp -> (index, name)
        self.summary = ""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "frame" and parts[2] == "stamp":
                sec, _, nanosec = parts[3].partition(".")
                with self.lock:
                    self.frames[int(sec) * 1_000_000_000 + int(nanosec)] = (
                        int(parts[1]), " ".join(parts[4:]))
            elif line.strip():
                self.summary = line.strip()

    def lookup(self, stamp: int) -> tuple[int, str] | None:
        with self.lock:
            return self.frames.get(stamp)

    def count(self) -> int:
        with self.lock:
            return len(self.frames)
