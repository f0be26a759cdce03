"""ROS-free machinery of the segmentation node: parameters, the frame mailbox, statistics.

The node (``seg_perception.node``) only adapts ROS messages, parameters and QoS to these pieces
and to the core (pipeline, image codec, vehicle-ahead decision), so everything that can be
decided without ROS is decided (and unit-tested) here:

* :data:`PARAMETERS` / :func:`validate_settings`: every node parameter with its default, range
  and description, and one validation path used both at start-up and by the runtime parameter
  callback, so a value is rejected with the same reason wherever it comes from.
* :class:`LatestFrameSlot`: a one-slot mailbox between the subscription callback and the
  inference thread. Never a backlog: a new frame replaces the waiting one (counted as dropped).
* :class:`RateMeter`, :class:`LatencyWindow`, :class:`FrameStats`, :class:`StallMonitor` and
  :func:`assess_health`: what the node reports on ``/diagnostics``.
"""

from __future__ import annotations

import math
import operator
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from seg_perception.device import DeviceError, select_device
from seg_perception.models.loading import PRECISIONS
from seg_perception.models.registry import DEFAULT_MODEL
from seg_perception.vehicle_ahead import (
    DEFAULT_CORRIDOR,
    DEFAULT_MIN_COVERAGE,
    Corridor,
    VehicleAheadConfig,
    resolve_vehicle_class_ids,
)

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Parameters.
# --------------------------------------------------------------------------------------------

AUTO_VEHICLE_CLASSES = "auto"
INPUT_QOS_CHOICES = ("auto", "sensor_data", "reliable")
OUTPUT_QOS_CHOICES = ("reliable", "best_effort")
INPUT_TRANSPORTS = ("raw", "compressed")
DEFAULT_MAX_PIXELS = 4096 * 4096


class ParameterError(ValueError):
    """A parameter value is impossible; ``str()`` names the parameter and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"parameter '{name}': {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: what it means, its default and the values it may take.

    ``runtime`` parameters may change while the node runs (parameter callback); the others are
    declared read-only and take effect at start-up only. ``value_range`` is (min, max) and
    becomes the descriptor's integer/floating-point range.
    """

    name: str
    default: Any
    description: str
    value_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    runtime: bool = True
    constraints: str = ""


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model", DEFAULT_MODEL,
              "Built-in model name or path to an exported TorchScript file. Setting it at run "
              "time loads the new model in the background and swaps it in between frames.",
              constraints="a built-in name (espnet-cityscapes, espnet-camvid, ...) or a file"),
    ParamSpec("model_path", "",
              "Path to an exported TorchScript model; overrides 'model' when not empty.",
              constraints="empty, or a path to a .pt file exported by seg-perception"),
    ParamSpec("device", "auto", "Where inference runs; changing it reloads the model.",
              constraints="auto, cpu, cuda or cuda:N"),
    ParamSpec("device_fallback", True,
              "If the requested CUDA device is absent, run on the CPU with a warning instead "
              "of failing."),
    ParamSpec("precision", "auto", "Inference precision; changing it reloads the model.",
              choices=PRECISIONS),
    ParamSpec("cuda_graph", False,
              "On CUDA, capture the whole frame (preprocess to colour outputs) as one CUDA "
              "graph per frame size and replay it: fewer launches, less CPU. Ignored on the "
              "CPU; changing it reloads the model."),
    ParamSpec("num_threads", 0,
              "CPU threads for torch and OpenCV in the inference thread (0: the libraries' "
              "defaults).", value_range=(0, 256)),
    ParamSpec("input_transport", "raw",
              "raw: subscribe to 'image' (sensor_msgs/Image); compressed: subscribe to "
              "'image/compressed' (sensor_msgs/CompressedImage, jpeg/png).",
              choices=INPUT_TRANSPORTS, runtime=False),
    ParamSpec("input_qos", "auto",
              "Input reliability. auto: match the publishers on the topic (reliable only if "
              "all of them are), re-checked whenever publishers change.",
              choices=INPUT_QOS_CHOICES, runtime=False),
    ParamSpec("input_depth", 5, "Input queue depth (keep last).", value_range=(1, 100),
              runtime=False),
    ParamSpec("output_qos", "reliable", "Reliability of the image and decision outputs.",
              choices=OUTPUT_QOS_CHOICES, runtime=False),
    ParamSpec("output_depth", 2, "Output queue depth (keep last).", value_range=(1, 100),
              runtime=False),
    ParamSpec("max_pixels", DEFAULT_MAX_PIXELS,
              "Frames with more pixels are rejected before decoding (guards against absurd "
              "message sizes).", value_range=(1, 2**31 - 1)),
    ParamSpec("overlay_alpha", 0.5,
              "Weight of the class colour in segmentation/overlay (0: camera image only, "
              "1: colour mask only).", value_range=(0.0, 1.0)),
    ParamSpec("corridor", [c for vertex in DEFAULT_CORRIDOR for c in vertex],
              "Driving corridor polygon as a flat list [x0, y0, x1, y1, ...] in normalised "
              "image coordinates (x right, y down, 0..1).",
              constraints="at least 3 vertices in [0, 1], a simple polygon of non-zero area"),
    ParamSpec("vehicle_classes", [AUTO_VEHICLE_CLASSES],
              "Class names that count as vehicles (case-insensitive). ['auto']: those of car, "
              "truck, bus, train that the model has.",
              constraints="['auto'] or names from the read-only parameter class_names"),
    ParamSpec("min_coverage", DEFAULT_MIN_COVERAGE,
              "Fraction of the corridor that vehicle pixels must cover for a raw 'vehicle "
              "ahead'.", value_range=(0.0, 1.0)),
    ParamSpec("frames_on", 2,
              "Consecutive raw 'vehicle' frames before vehicle_ahead switches on.",
              value_range=(1, 1000)),
    ParamSpec("frames_off", 3,
              "Consecutive raw 'clear' frames before vehicle_ahead switches off.",
              value_range=(1, 1000)),
    ParamSpec("stall_timeout", 3.0,
              "Seconds without a frame while a publisher is matched before the node reports a "
              "stalled input.", value_range=(0.5, 3600.0)),
)
PARAMETER_SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
MODEL_PARAMETERS = frozenset(
    {"model", "model_path", "device", "device_fallback", "precision", "cuda_graph"}
)
VEHICLE_PARAMETERS = frozenset(
    {"corridor", "vehicle_classes", "min_coverage", "frames_on", "frames_off"}
)


@dataclass(frozen=True)
class Settings:
    """Validated values of every node parameter."""

    model: str
    model_path: str
    device: str
    device_fallback: bool
    precision: str
    cuda_graph: bool
    num_threads: int
    input_transport: str
    input_qos: str
    input_depth: int
    output_qos: str
    output_depth: int
    max_pixels: int
    overlay_alpha: float
    corridor: Corridor
    vehicle_classes: tuple[str, ...]
    min_coverage: float
    frames_on: int
    frames_off: int
    stall_timeout: float

    @property
    def model_source(self) -> str:
        """What to load: ``model_path`` when set, else ``model``."""
        return self.model_path or self.model

    @property
    def wanted_vehicle_classes(self) -> tuple[str, ...] | None:
        """None for the model's default vehicle classes, else the names asked for."""
        if self.vehicle_classes in ((), (AUTO_VEHICLE_CLASSES,)):
            return None
        return self.vehicle_classes

    def vehicle_config(self, class_names: Sequence[str]) -> VehicleAheadConfig:
        """The detector settings for a model with these classes (ParameterError if impossible)."""
        try:
            ids = resolve_vehicle_class_ids(class_names, self.wanted_vehicle_classes)
        except ValueError as exc:
            raise ParameterError("vehicle_classes", str(exc)) from None
        return VehicleAheadConfig(self.corridor, ids, self.min_coverage, self.frames_on,
                                  self.frames_off)


def default_values() -> dict[str, Any]:
    return {spec.name: spec.default for spec in PARAMETERS}


def _check_number(spec: ParamSpec, value: Any, integral: bool) -> float | int:
    if isinstance(value, bool) or value is None:
        raise ParameterError(spec.name, f"must be a number, got {value!r}")
    try:
        number = operator.index(value) if integral else float(value)
    except (TypeError, ValueError):
        kind = "an integer" if integral else "a number"
        raise ParameterError(spec.name, f"must be {kind}, got {value!r}") from None
    if not integral and not math.isfinite(number):
        raise ParameterError(spec.name, f"must be finite, got {number}")
    if spec.value_range is not None:
        low, high = spec.value_range
        if not low <= number <= high:
            raise ParameterError(spec.name, f"{number} is outside [{low:g}, {high:g}]")
    return number


def _check_choice(spec: ParamSpec, value: Any) -> str:
    if not isinstance(value, str) or value not in (spec.choices or ()):
        raise ParameterError(spec.name, f"{value!r} is not one of {', '.join(spec.choices)}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(name, f"must be true or false, got {value!r}")
    return value


def _check_text(name: str, value: Any, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise ParameterError(name, f"must be a string, got {value!r}")
    text = value.strip()
    if not text and not allow_empty:
        raise ParameterError(name, "must not be empty")
    return text


def _check_device(value: Any, fallback: bool) -> str:
    spec = _check_text("device", value, allow_empty=False).lower()
    try:
        select_device(spec, fallback=fallback)
    except DeviceError as exc:
        raise ParameterError("device", str(exc)) from None
    return spec


def _check_corridor(value: Any) -> Corridor:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ParameterError("corridor", f"must be a flat list of numbers [x0, y0, x1, y1, ...], "
                             f"got {value!r}")
    try:
        return Corridor.from_flat(list(value))
    except (TypeError, ValueError) as exc:
        raise ParameterError("corridor", str(exc)) from None


def _check_class_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ParameterError("vehicle_classes", f"must be a list of class names, got {value!r}")
    names = tuple(value)
    if not names:
        raise ParameterError("vehicle_classes",
                             "must not be empty: use ['auto'] for the model's vehicle classes")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ParameterError("vehicle_classes", f"class names must be non-empty strings, "
                                 f"got {name!r}")
    if AUTO_VEHICLE_CLASSES in names and len(names) > 1:
        raise ParameterError("vehicle_classes", "'auto' cannot be combined with class names")
    return names


def validate_settings(values: Mapping[str, Any]) -> Settings:
    """Check every parameter value (missing ones take their default); ParameterError if bad.

    The checks cover what ROS descriptors cannot express: choices, corridor geometry, device
    syntax and availability. Vehicle class names are checked against a model by
    :meth:`Settings.vehicle_config`.
    """
    unknown = set(values) - set(PARAMETER_SPECS)
    if unknown:
        name = sorted(unknown)[0]
        raise ParameterError(name, "unknown parameter")
    merged = {**default_values(), **values}
    spec = PARAMETER_SPECS
    fallback = _check_bool("device_fallback", merged["device_fallback"])
    return Settings(
        model=_check_text("model", merged["model"], allow_empty=False),
        model_path=_check_text("model_path", merged["model_path"], allow_empty=True),
        device=_check_device(merged["device"], fallback),
        device_fallback=fallback,
        precision=_check_choice(spec["precision"], merged["precision"]),
        cuda_graph=_check_bool("cuda_graph", merged["cuda_graph"]),
        num_threads=int(_check_number(spec["num_threads"], merged["num_threads"], True)),
        input_transport=_check_choice(spec["input_transport"], merged["input_transport"]),
        input_qos=_check_choice(spec["input_qos"], merged["input_qos"]),
        input_depth=int(_check_number(spec["input_depth"], merged["input_depth"], True)),
        output_qos=_check_choice(spec["output_qos"], merged["output_qos"]),
        output_depth=int(_check_number(spec["output_depth"], merged["output_depth"], True)),
        max_pixels=int(_check_number(spec["max_pixels"], merged["max_pixels"], True)),
        overlay_alpha=float(_check_number(spec["overlay_alpha"], merged["overlay_alpha"],
                                          False)),
        corridor=_check_corridor(merged["corridor"]),
        vehicle_classes=_check_class_names(merged["vehicle_classes"]),
        min_coverage=float(_check_number(spec["min_coverage"], merged["min_coverage"], False)),
        frames_on=int(_check_number(spec["frames_on"], merged["frames_on"], True)),
        frames_off=int(_check_number(spec["frames_off"], merged["frames_off"], True)),
        stall_timeout=float(_check_number(spec["stall_timeout"], merged["stall_timeout"],
                                          False)),
    )


def settings_values(settings: Settings) -> dict[str, Any]:
    """The parameter values of ``settings`` (inverse of :func:`validate_settings`)."""
    values = {name: getattr(settings, name) for name in PARAMETER_SPECS}
    values["corridor"] = settings.corridor.to_flat()
    values["vehicle_classes"] = list(settings.vehicle_classes)
    return values


def with_changes(settings: Settings, changes: Mapping[str, Any]) -> Settings:
    """``settings`` with some parameters changed, fully re-validated."""
    return validate_settings({**settings_values(settings), **changes})


# --------------------------------------------------------------------------------------------
# Input QoS policy (the decision; the node turns it into an rclpy QoSProfile).
# --------------------------------------------------------------------------------------------


def decide_reliability(
    input_qos: str, publisher_reliabilities: Sequence[str], current: str | None = None
) -> tuple[str, str]:
    """(``"reliable"`` | ``"best_effort"``, reason) for the input subscription.

    ``auto`` follows rosbag2: reliable only when every publisher on the topic offers reliable
    (a reliable subscription cannot match a best-effort publisher, and a best-effort one gets
    fragmented large frames from a reliable publisher without repair). With no publisher yet,
    the current choice is kept (reliable at first) and revisited when one appears.
    """
    if input_qos == "reliable":
        return "reliable", "input_qos=reliable"
    if input_qos == "sensor_data":
        return "best_effort", "input_qos=sensor_data"
    if input_qos != "auto":
        raise ValueError(f"unknown input_qos {input_qos!r}")
    if not publisher_reliabilities:
        if current is None:
            return "reliable", "auto: no publisher yet"
        return current, f"auto: no publisher now, keeping {current}"
    best_effort = sum(1 for r in publisher_reliabilities if r != "reliable")
    total = len(publisher_reliabilities)
    if best_effort == 0:
        return "reliable", f"auto: all {total} publisher(s) reliable"
    return "best_effort", f"auto: {best_effort} of {total} publisher(s) best effort"


# --------------------------------------------------------------------------------------------
# The frame mailbox.
# --------------------------------------------------------------------------------------------


class LatestFrameSlot(Generic[T]):
    """A one-slot mailbox: the producer never blocks, the consumer always gets the newest item.

    ``put`` replaces an item that was not taken yet and counts it in ``dropped``; so however
    fast frames arrive, the inference thread never works through a backlog.
    """

    def __init__(self) -> None:
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True if it replaced one that was never taken (a dropped frame)."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The waiting item (emptying the slot), or None on timeout or after :meth:`close`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake the consumer for good (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


# --------------------------------------------------------------------------------------------
# Statistics.
# --------------------------------------------------------------------------------------------


class RateMeter:
    """Events per second over a sliding window (0 when the last event is older than it)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._first: float | None = None

    def tick(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        count = len(self._times)
        if count == 0 or self._first is None:
            return 0.0
        if now - self._first >= self.window_s:  # a full window of history
            return count / self.window_s
        span = self._times[-1] - self._times[0]
        return (count - 1) / span if count >= 2 and span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class LatencyWindow:
    """Percentiles of the last ``size`` latencies (seconds in, milliseconds out)."""

    def __init__(self, size: int = 300) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def percentiles_ms(self, points: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
        """Nearest-rank percentiles in ms; NaN for each when there is no sample yet."""
        if not self._values:
            return {p: math.nan for p in points}
        ordered = sorted(self._values)
        n = len(ordered)
        return {p: ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] * 1e3
                for p in points}


@dataclass
class FrameStats:
    """Counters shared by the subscription callback, the inference thread and diagnostics."""

    received: int = 0
    processed: int = 0
    rejected: int = 0  # malformed or unsupported input
    failed: int = 0  # inference or publishing raised
    consecutive_failures: int = 0
    last_error: str = ""
    last_error_time: float | None = None
    last_rejection: str = ""
    last_rejection_time: float | None = None
    input_rate: RateMeter = field(default_factory=RateMeter)
    output_rate: RateMeter = field(default_factory=RateMeter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_received(self, now: float) -> None:
        with self.lock:
            self.received += 1
            self.input_rate.tick(now)

    def on_processed(self, now: float, latency_s: float) -> None:
        with self.lock:
            self.processed += 1
            self.consecutive_failures = 0
            self.output_rate.tick(now)
            self.latency.add(latency_s)

    def on_rejected(self, now: float, reason: str) -> None:
        with self.lock:
            self.rejected += 1
            self.last_rejection, self.last_rejection_time = reason, now

    def on_failed(self, now: float, reason: str) -> None:
        with self.lock:
            self.failed += 1
            self.consecutive_failures += 1
            self.last_error, self.last_error_time = reason, now


@dataclass(frozen=True)
class Health:
    level: str  # "OK" | "WARN" | "ERROR"
    message: str


def assess_health(
    stats: FrameStats,
    now: float,
    stalled_for: float | None = None,
    stall_hint: str = "",
    model_error: str = "",
    device_warning: str = "",
    recent_s: float = 5.0,
) -> Health:
    """The node's diagnostic level and one-line summary.

    ERROR while inference keeps failing (back to OK with the next good frame); WARN for a
    stalled input, recently rejected frames, a failed model swap or a device fallback.
    """
    with stats.lock:
        failures = stats.consecutive_failures
        last_error = stats.last_error
        rejection = stats.last_rejection
        rejected_recently = (stats.last_rejection_time is not None
                             and now - stats.last_rejection_time <= recent_s)
    if failures:
        return Health("ERROR", f"inference failing ({failures} frame(s) in a row): {last_error}")
    warnings = []
    if stalled_for is not None:
        warnings.append(f"input stalled: no frame for {stalled_for:.1f} s from a matched "
                        f"publisher{': ' + stall_hint if stall_hint else ''}")
    if rejected_recently:
        warnings.append(f"rejecting input frames: {rejection}")
    if model_error:
        warnings.append(model_error)
    if device_warning:
        warnings.append(device_warning)
    if warnings:
        return Health("WARN", "; ".join(warnings))
    return Health("OK", "running")


class StallMonitor:
    """Detects "a publisher is matched but no frame arrived for ``timeout`` seconds".

    The clock starts when the first publisher matches (or the subscription is re-created) and
    restarts with every frame; a stall ends with the next frame or when no publisher is left.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._matched_since: float | None = None
        self._last_frame: float | None = None

    def publishers(self, matched: int, now: float) -> None:
        if matched <= 0:
            self._matched_since = None
        elif self._matched_since is None:
            self._matched_since = now

    def frame(self, now: float) -> None:
        self._last_frame = now

    def reset(self) -> None:
        """A new subscription: forget history, start again."""
        self._matched_since = None
        self._last_frame = None

    def stalled_for(self, now: float) -> float | None:
        """Seconds without input while matched, once that exceeds the timeout; else None."""
        if self._matched_since is None:
            return None
        since = max(self._matched_since, self._last_frame or -math.inf)
        quiet = now - since
        return quiet if quiet >= self.timeout else None


__all__ = [
    "AUTO_VEHICLE_CLASSES",
    "PARAMETERS",
    "PARAMETER_SPECS",
    "FrameStats",
    "Health",
    "LatencyWindow",
    "LatestFrameSlot",
    "ParamSpec",
    "ParameterError",
    "RateMeter",
    "Settings",
    "StallMonitor",
    "assess_health",
    "decide_reliability",
    "default_values",
    "settings_values",
    "validate_settings",
    "with_changes",
]
