"""The node's parameters on the ROS side: declared with descriptors, read back, refused.

The schema (names, defaults, ranges, meanings) is :mod:`seg_perception.node.params`; this
module only puts it onto an rclpy node: every parameter and each per-camera override given at
start-up is declared with its descriptor, an override rclpy refuses becomes a one-line reason
(configure then fails with it), and names the node does not know get a warning.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.parameter import Parameter

from seg_perception.core.geometry import CalibrationError, metric_corridor
from seg_perception.node.model_manager import ModelManager, check_device, check_model_source
from seg_perception.node.params import (
    PARAMETERS,
    NodeSettings,
    ParameterError,
    descriptor,
    parameter_defaults,
    resolve_settings,
    settings_from,
    split_camera_parameter,
)

if TYPE_CHECKING:
    from seg_perception.node.camera import CameraStream

__all__ = [
    "check_parameter_change",
    "declare_parameters",
    "parameter_text",
    "parameter_values_of",
    "show_class_names",
    "typed_like_schema",
]

_ROS_OWN = ("use_sim_time", "class_names")


def declare_parameters(node: Any, overrides: Mapping[str, Any]) -> str:
    """Declare every parameter and the per-camera overrides given at start-up on ``node``.

    Returns the first problem ("" when none): a value rclpy refuses is replaced by the
    default and reported, so a managed node stays up and fails its configure with the reason.
    """
    problems = []

    def declare(full_name: str, name: str, default: Any) -> None:
        try:
            node.declare_parameter(full_name, default, descriptor(name))
        except Exception as exc:  # noqa: BLE001 - rclpy's type/range refusals
            node.declare_parameter(full_name, default, descriptor(name), ignore_override=True)
            problems.append(_override_problem(full_name, name, overrides.get(full_name), exc))

    defaults = parameter_defaults()
    for name, default in defaults.items():
        declare(name, name, default)
    cameras = node.get_parameter("cameras").value
    logger = node.get_logger()
    for full_name in sorted(overrides):
        split = split_camera_parameter(full_name)
        if split is not None and split[0] in cameras:
            declare(full_name, split[1], defaults[split[1]])
        elif full_name not in PARAMETERS and full_name not in _ROS_OWN:
            where = f" (cameras: {list(cameras)})" if "." in full_name else ""
            logger.warning(f"parameter '{full_name}' is not a parameter of this node "
                           f"(ignored): check its spelling{where}")
    if node.get_parameter("model_path").value and "model" in overrides:
        logger.warning("both 'model' and 'model_path' are set: model_path wins")
    return problems[0] if problems else ""


def _override_problem(full_name: str, name: str, override: Any, exc: Exception) -> str:
    """Our own reason for an override rclpy refused (clearer than rclpy's), else rclpy's."""
    if override is not None:
        try:
            settings_from({name: override.value})
        except ParameterError as problem:
            return f"parameter '{full_name}': {problem.reason}"
    return f"parameter '{full_name}': " + " ".join(str(exc).split())


def typed_like_schema(parameters: list[Parameter]) -> list[Parameter]:
    """Values as the schema types them, before they are checked and stored: an integer for a
    float parameter becomes a float (``ros2 param set ... overlay_alpha 1``), and a list the
    ros2 CLI could only send as a string (``[0, 1, 0.5]``, mixed ints and floats) is read as
    the YAML it is."""
    defaults = parameter_defaults()
    typed = []
    for parameter in parameters:
        split = split_camera_parameter(parameter.name)
        default = defaults.get(split[1] if split else parameter.name)
        value = parameter.value
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            parameter = Parameter(parameter.name, value=float(value))
        elif isinstance(default, list) and isinstance(value, str):
            try:
                loaded = yaml.safe_load(value)
            except yaml.YAMLError:
                loaded = None
            if isinstance(loaded, list) and all(isinstance(v, (int, float)) for v in loaded):
                parameter = Parameter(parameter.name, value=[float(v) for v in loaded])
            elif isinstance(loaded, list) and all(isinstance(v, str) for v in loaded):
                parameter = Parameter(parameter.name, value=loaded)
        typed.append(parameter)
    return typed


def parameter_text(value: Any) -> str:
    """A parameter value as ``--ros-args -p name:=VALUE`` reads it (YAML, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**20).strip()
    return text.removesuffix("...").strip()  # YAML's document end after a plain scalar


def parameter_values_of(node: Any) -> dict[str, Any]:
    """The node's parameters and the declared per-camera overrides, by name."""
    return {name: node.get_parameter(name).value for name in node._parameters
            if name in PARAMETERS or split_camera_parameter(name)}


def show_class_names(node: Any, class_names: tuple[str, ...]) -> None:
    """Declare or update the read-only parameter ``class_names`` (the caller lets its own
    parameter callback pass the change)."""
    names = list(class_names)
    if not node.has_parameter("class_names"):
        node.declare_parameter("class_names", names, ParameterDescriptor(
            description="Class names of the running model, by class id (the values in "
            "segmentation/label_map; 255 is unknown).", read_only=True))
        return
    try:
        node._set_parameters_atomically_common(
            [Parameter("class_names", value=names)],
            descriptors={"class_names": node.describe_parameter("class_names")})
    except Exception as exc:  # noqa: BLE001 - rclpy internals: report, do not crash
        node.get_logger().warning(f"could not update class_names: {exc}")


def check_parameter_change(values: Mapping[str, Any], changed: Sequence[str],
                           old: NodeSettings | None, models: ModelManager,
                           cameras: Mapping[str, CameraStream],
                           decision_lock: threading.Lock) -> None:
    """ParameterError when the parameters ``values`` (after a set of ``changed``) cannot run
    on the node as it is: vehicle classes absent from the active model, a metric corridor
    outside a calibrated camera's view, an unusable device or model source, or a model
    reload while one is already loading. Nothing is applied here."""
    settings, camera_settings = resolve_settings(dict(values))
    model = models.active
    if model is not None:
        with decision_lock:
            for camera in camera_settings.values():
                camera.vehicle_config(model.class_names)
    for name, stream in cameras.items():
        wanted = camera_settings[name].metric_corridor
        if wanted and stream.state.camera is not None:
            try:
                metric_corridor(stream.state.camera, *wanted)
            except CalibrationError as exc:
                raise ParameterError("corridor_m", str(exc)) from None
    if old is None:
        return
    if model is not None and ((settings.device, settings.device_fallback)
                              != (old.device, old.device_fallback)):
        check_device(settings)  # torch is loaded: the machine's devices can be asked
    if settings.changed(old, "reload"):
        check_model_source(settings)
        if models.loading is not None:
            raise ParameterError(next(n for n in changed if n in PARAMETERS
                                      and PARAMETERS[n].reload),
                                 f"a model load ({models.loading}) is in progress: try again "
                                 "when it is done")
