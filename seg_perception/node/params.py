"""Every node parameter in one schema: default, description, range, choices, run-time flag.

:class:`NodeSettings` *is* the schema: one field per parameter, its metadata (made by
:func:`param`) says what the parameter means and which values it may take. One loop
(:func:`settings_from`) validates values from any source (a YAML file, ``-p``, ``ros2 param
set``) with the same reasons; the node builds its ROS descriptors from it
(:func:`descriptor`), and tests check ``config/segmentation.yaml`` and the README against it.
Adding a parameter is one field here plus one line in the YAML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from seg_perception.checks import strict_integer
from seg_perception.core.corridor import DEFAULT_CORRIDOR, Corridor
from seg_perception.core.vehicle_config import (
    DEFAULT_MIN_COVERAGE,
    FRACTION_RANGE,
    FRAMES_RANGE,
    VehicleAheadConfig,
    resolve_vehicle_class_ids,
)
from seg_perception.device import DeviceError, check_device_spec
from seg_perception.errors import SegPerceptionError
from seg_perception.models.metadata import PRECISIONS
from seg_perception.models.registry import DEFAULT_MODEL

__all__ = [
    "AUTO_VEHICLE_CLASSES",
    "PARAMETERS",
    "PER_CAMERA",
    "NodeSettings",
    "ParamInfo",
    "ParameterError",
    "camera_parameter",
    "descriptor",
    "parameter_defaults",
    "parameter_values",
    "settings_from",
    "split_camera_parameter",
]

AUTO_VEHICLE_CLASSES = "auto"
DEFAULT_MAX_PIXELS = 4096 * 4096


class ParameterError(SegPerceptionError, ValueError):
    """A parameter value is impossible; ``str()`` names the parameter and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"parameter '{name}': {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ParamInfo:
    """What a parameter means and which values it may take (a field's metadata).

    ``runtime``: may change while the node runs; the others are read-only after start-up.
    ``reload``: a change loads the model anew. ``decision``: a change reconfigures the
    vehicle-ahead decision. ``per_camera``: a camera may override it (``<camera>.<name>``).
    ``convert`` turns a parameter value into the setting (raising ValueError with the reason)
    and ``export`` turns the setting back into a parameter value.
    """

    description: str
    value_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    runtime: bool = True
    reload: bool = False
    decision: bool = False
    per_camera: bool = False
    constraints: str = ""
    convert: Callable[[Any], Any] | None = None
    export: Callable[[Any], Any] | None = None


def param(default: Any, description: str, **info: Any) -> Any:
    """A :class:`NodeSettings` field for one parameter."""
    return field(default=default, metadata={"param": ParamInfo(description, **info)})


# --- converters of the parameters that are more than a number or a choice --------------------


def _text(value: str) -> str:
    return value.strip()


def _non_empty(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("must not be empty")
    return text


_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _cameras(value: Sequence[Any]) -> tuple[str, ...]:
    names = tuple(value)
    if names == ("",):
        return names
    if not names:
        raise ValueError("must name at least one camera ([''] for one camera at the node's own "
                         "topic names)")
    for name in names:
        if not isinstance(name, str) or not _CAMERA_NAME.match(name):
            raise ValueError(f"camera names are letters, digits and underscores starting with a "
                             f"letter (a topic prefix and a parameter prefix), got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique, got {list(names)}")
    return names


def _corridor(value: Sequence[Any]) -> Corridor:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"must be a flat list of numbers [x0, y0, x1, y1, ...], got {value!r}")
    return Corridor.from_flat([float(v) for v in value])


def _metric_corridor(value: Sequence[Any]) -> tuple[float, float, float]:
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and math.isfinite(v) for v in value):
        raise ValueError(f"must be [half_width, near, far] in metres, got {list(value)!r}")
    half_width, near, far = (float(v) for v in value)
    if (half_width, near, far) != (0.0, 0.0, 0.0) and not (half_width > 0 and 0 < near < far):
        raise ValueError(f"needs half_width > 0 and 0 < near < far (or all zero: off), got "
                         f"{list(value)!r}")
    return half_width, near, far


def _vehicle_classes(value: Sequence[Any]) -> tuple[str, ...]:
    names = tuple(value)
    if not names:
        raise ValueError("must not be empty: use ['auto'] for the model's vehicle classes")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
    if AUTO_VEHICLE_CLASSES in names and len(names) > 1:
        raise ValueError("'auto' cannot be combined with class names")
    return names


@dataclass(frozen=True)
class NodeSettings:
    """Validated values of every node parameter (the schema: see :func:`param`)."""

    model: str = param(
        DEFAULT_MODEL,
        "Built-in model name or path to an exported TorchScript file. Setting it at run time "
        "loads the new model in the background and swaps it in between frames.",
        reload=True, convert=_non_empty,
        constraints="a built-in name (espnet-cityscapes, espnet-camvid, ...) or a file")
    model_path: str = param(
        "", "Path to an exported TorchScript model; overrides 'model' when not empty.",
        reload=True, convert=_text,
        constraints="empty, or a path to a .pt file exported by seg-perception")
    device: str = param(
        "auto", "Where inference runs; changing it reloads the model.",
        reload=True, convert=lambda v: _non_empty(v).lower(),
        constraints="auto, cpu, cuda or cuda:N")
    device_fallback: bool = param(
        True, "If the requested CUDA device is absent, run on the CPU with a warning instead "
        "of failing.")
    precision: str = param(
        "auto", "Inference precision; changing it reloads the model.",
        choices=PRECISIONS, reload=True)
    cuda_graph: bool = param(
        False, "On CUDA, capture the whole frame (preprocess to colour outputs) as one CUDA "
        "graph per frame size and replay it: fewer launches, less CPU. Ignored on the CPU; "
        "changing it reloads the model.", reload=True)
    num_threads: int = param(
        0, "CPU threads for torch and OpenCV in the inference thread (0: the libraries' "
        "defaults).", value_range=(0, 256))
    cameras: tuple[str, ...] = param(
        ("",), "Camera names: each camera c reads c/image and publishes under c/ (one model "
        "serves them all, round robin). [''] is one camera at the node's own topic names.",
        runtime=False, convert=_cameras, export=list,
        constraints="[''] or unique names of letters, digits and underscores")
    batch_cameras: bool = param(
        True, "On the GPU, run the waiting frames of several cameras through the network as "
        "one batch (ignored on the CPU, where a batch is slower per frame).")
    input_transport: str = param(
        "raw", "raw: subscribe to 'image' (sensor_msgs/Image); compressed: subscribe to "
        "'image/compressed' (sensor_msgs/CompressedImage, jpeg/png).",
        choices=("raw", "compressed"), runtime=False)
    input_qos: str = param(
        "auto", "Input reliability. auto: match the publishers on the topic (reliable only if "
        "all of them are), re-checked whenever publishers change.",
        choices=("auto", "sensor_data", "reliable"), runtime=False)
    input_depth: int = param(
        5, "Input queue depth (keep last).", value_range=(1, 100), runtime=False)
    output_qos: str = param(
        "reliable", "Reliability of the image and decision outputs.",
        choices=("reliable", "best_effort"), runtime=False)
    output_depth: int = param(
        2, "Output queue depth (keep last).", value_range=(1, 100), runtime=False)
    max_pixels: int = param(
        DEFAULT_MAX_PIXELS, "Frames with more pixels are rejected before decoding (guards "
        "against absurd message sizes).", value_range=(1, 2**31 - 1))
    overlay_alpha: float = param(
        0.5, "Weight of the class colour in segmentation/overlay (0: camera image only, "
        "1: colour mask only).", value_range=(0.0, 1.0), per_camera=True)
    vehicle_ahead: bool = param(
        True, "Decide and publish vehicle_ahead for this camera (false: no corridor, e.g. a "
        "rear camera).", decision=True, per_camera=True)
    corridor: Corridor = param(
        Corridor(DEFAULT_CORRIDOR),
        "Driving corridor polygon as a flat list [x0, y0, x1, y1, ...] in normalised image "
        "coordinates (x right, y down, 0..1).",
        decision=True, per_camera=True, convert=_corridor, export=Corridor.to_flat,
        constraints="at least 3 vertices in [0, 1], a simple polygon of non-zero area")
    vehicle_classes: tuple[str, ...] = param(
        (AUTO_VEHICLE_CLASSES,),
        "Class names that count as vehicles (case-insensitive). ['auto']: those of car, truck, "
        "bus, train that the model has.",
        decision=True, per_camera=True, convert=_vehicle_classes, export=list,
        constraints="['auto'] or names from the read-only parameter class_names")
    min_coverage: float = param(
        DEFAULT_MIN_COVERAGE,
        "Fraction of the corridor that vehicle pixels must cover for a raw 'vehicle ahead'.",
        value_range=FRACTION_RANGE, decision=True, per_camera=True)
    frames_on: int = param(
        2, "Consecutive raw 'vehicle' frames before vehicle_ahead switches on.",
        value_range=FRAMES_RANGE, decision=True, per_camera=True)
    frames_off: int = param(
        3, "Consecutive raw 'clear' frames before vehicle_ahead switches off.",
        value_range=FRAMES_RANGE, decision=True, per_camera=True)
    min_confidence: float = param(
        0.0, "Pixels whose max class probability is below this get the id 255 (unknown) in "
        "segmentation/label_map and never count as a vehicle (0: off).",
        value_range=(0.0, 1.0), per_camera=True)
    temporal_smoothing: float = param(
        0.0, "Share of the running average of class probabilities kept at each frame (0: off; "
        "0.5 averages over about two frames). Restarts on a new frame size or a stamp gap.",
        value_range=(0.0, 0.95), per_camera=True)
    camera_height: float = param(
        0.0, "Height of the camera's optical centre above the (flat) ground, m; with the "
        "camera_info topic it enables vehicle_ahead/lead and corridor_m (0: unknown).",
        value_range=(0.0, 100.0), per_camera=True)
    camera_pitch: float = param(
        0.0, "Angle of the optical axis below the horizontal, rad (positive looks down).",
        value_range=(-1.5, 1.5), per_camera=True)
    corridor_m: tuple[float, float, float] = param(
        (0.0, 0.0, 0.0), "Metric corridor [half_width, near, far] in metres on the ground; "
        "replaces 'corridor' once the camera is calibrated (all zero: off).",
        decision=True, per_camera=True, convert=_metric_corridor, export=list,
        constraints="[0, 0, 0] or half_width > 0 and 0 < near < far")
    stall_timeout: float = param(
        3.0, "Seconds without a frame while a publisher is matched before the node reports a "
        "stalled input.", value_range=(0.5, 3600.0))

    @property
    def model_source(self) -> str:
        """What to load: ``model_path`` when set, else ``model``."""
        return self.model_path or self.model

    @property
    def wanted_vehicle_classes(self) -> tuple[str, ...] | None:
        """None for the model's default vehicle classes, else the names asked for."""
        if self.vehicle_classes == (AUTO_VEHICLE_CLASSES,):
            return None
        return self.vehicle_classes

    def vehicle_config(self, class_names: Sequence[str]) -> VehicleAheadConfig | None:
        """The decision's settings for a model with these classes (ParameterError if
        impossible); None when this camera decides nothing (``vehicle_ahead`` false)."""
        if not self.vehicle_ahead:
            return None
        try:
            ids = resolve_vehicle_class_ids(class_names, self.wanted_vehicle_classes)
        except ValueError as exc:
            raise ParameterError("vehicle_classes", str(exc)) from None
        return VehicleAheadConfig(self.corridor, ids, self.min_coverage, self.frames_on,
                                  self.frames_off)

    @property
    def metric_corridor(self) -> tuple[float, float, float] | None:
        """``corridor_m`` when set, else None (the image corridor applies)."""
        return None if self.corridor_m == (0.0, 0.0, 0.0) else self.corridor_m

    def changed(self, other: NodeSettings, what: str) -> bool:
        """Whether a parameter of group ``what`` ("reload" or "decision") differs."""
        return any(getattr(PARAMETERS[name], what) and
                   getattr(self, name) != getattr(other, name) for name in PARAMETERS)


PARAMETERS: dict[str, ParamInfo] = {f.name: f.metadata["param"] for f in fields(NodeSettings)}
PER_CAMERA: tuple[str, ...] = tuple(name for name, info in PARAMETERS.items() if info.per_camera)


def camera_parameter(camera: str, name: str) -> str:
    """The name of camera ``camera``'s own value of parameter ``name``."""
    return f"{camera}.{name}"


def split_camera_parameter(full_name: str) -> tuple[str, str] | None:
    """(camera, parameter) of a per-camera parameter name, else None."""
    camera, _, name = full_name.partition(".")
    return (camera, name) if name in PER_CAMERA and _CAMERA_NAME.match(camera) else None
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(NodeSettings)
                             if f.default is not MISSING}


def _export(name: str, value: Any) -> Any:
    info = PARAMETERS[name]
    return info.export(value) if info.export else value


def parameter_defaults() -> dict[str, Any]:
    """Every parameter's default as a ROS parameter value (what the YAML file lists)."""
    return {name: _export(name, value) for name, value in _DEFAULTS.items()}


def parameter_values(settings: NodeSettings) -> dict[str, Any]:
    """The parameter values of ``settings`` (inverse of :func:`settings_from`)."""
    return {name: _export(name, getattr(settings, name)) for name in PARAMETERS}


def _check(name: str, value: Any) -> Any:
    """One parameter value -> its setting, by the kind of its default; ValueError if bad."""
    info = PARAMETERS[name]
    default = parameter_defaults()[name]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
    elif isinstance(default, int):
        value = strict_integer(value)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        value = float(value)  # an integer is a fine number (ros2 param set ... 1)
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
    elif isinstance(default, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"must be a list, got {value!r}")
    if info.value_range is not None:
        low, high = info.value_range
        if not low <= value <= high:
            raise ValueError(f"{value} is outside [{low:g}, {high:g}]")
    if info.choices is not None and value not in info.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(info.choices)}")
    return info.convert(value) if info.convert else value


def settings_from(values: Mapping[str, Any], base: NodeSettings | None = None) -> NodeSettings:
    """``base`` (default: the defaults) with ``values`` applied, every value validated.

    Raises :class:`ParameterError` naming the first bad parameter and why. The device is
    checked for its form here; whether the machine has it, once torch is loaded (the node's
    configure and run-time checks). Vehicle class names are checked against a model by
    :meth:`NodeSettings.vehicle_config`.
    """
    changes = {}
    for name, value in values.items():
        if name not in PARAMETERS:
            raise ParameterError(name, "unknown parameter")
        try:
            changes[name] = _check(name, value)
        except ValueError as exc:
            raise ParameterError(name, str(exc)) from None
    settings = replace(base or NodeSettings(), **changes)
    try:
        check_device_spec(settings.device)
    except DeviceError as exc:
        raise ParameterError("device", str(exc)) from None
    return settings


def descriptor(name: str) -> Any:
    """The rcl_interfaces ParameterDescriptor of parameter ``name``."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    info = PARAMETERS[name]
    default = parameter_defaults()[name]
    constraints = info.constraints
    if info.choices:
        constraints = "one of: " + ", ".join(info.choices)
    result = ParameterDescriptor(
        description=info.description,
        additional_constraints=constraints,
        read_only=not info.runtime,
        # Numbers may be written as integers (overlay_alpha 1, corridor [0, 1, ...]): the
        # schema checks and converts them.
        dynamic_typing=isinstance(default, (float, list)),
    )
    if info.value_range is not None:
        low, high = info.value_range
        if isinstance(default, float):
            result.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
        else:
            result.integer_range = [IntegerRange(from_value=int(low), to_value=int(high),
                                                 step=1)]
    return result


def resolve_settings(values: Mapping[str, Any]) -> tuple[NodeSettings, dict[str, NodeSettings]]:
    """All parameter values -> (the node's settings, each camera's settings).

    ``values`` holds the node's parameters and the per-camera overrides ``<camera>.<name>``;
    a camera's settings are the node's with its overrides applied. Raises
    :class:`ParameterError` naming the first bad parameter (``front.corridor`` for a camera's).
    """
    node_values = {k: v for k, v in values.items() if "." not in k}
    settings = settings_from(node_values)
    overrides: dict[str, dict[str, Any]] = {camera: {} for camera in settings.cameras}
    for full_name, value in values.items():
        if "." not in full_name:
            continue
        split = split_camera_parameter(full_name)
        if split is None or split[0] not in overrides:
            raise ParameterError(full_name, "unknown parameter (per-camera parameters are "
                                 f"<camera>.<name>, cameras {list(settings.cameras)}, names "
                                 f"{', '.join(PER_CAMERA)})")
        overrides[split[0]][split[1]] = value
    cameras = {}
    for camera, own in overrides.items():
        try:
            cameras[camera] = settings_from(own, base=settings)
        except ParameterError as exc:
            raise ParameterError(camera_parameter(camera, exc.name), exc.reason) from None
    return settings, cameras
