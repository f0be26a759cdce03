"""The segmentation node: wires ROS (parameters, topics, lifecycle) to the core's frame path.

It is a managed (lifecycle) node: *configure* validates the parameters and loads the model,
*activate* subscribes and starts inference, *deactivate* stops both (nothing is published
while inactive), *cleanup* frees the model. ``segmentation_node`` walks through configure and
activate by itself at start-up; ``segmentation_lifecycle_node`` waits for a lifecycle manager.

Threads: the executor thread runs subscription callbacks (they only drop the frame in the
mailbox), timers and parameter callbacks; one inference thread
(:class:`~seg_perception.node.worker.InferenceWorker`) takes the newest frame of each camera,
runs :func:`~seg_perception.core.frame.process_frame` and publishes; a model swap loads in a
short-lived loader thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Header

from seg_perception import topics
from seg_perception.core.frame import StreamState, process_frame
from seg_perception.core.image_codec import decode_compressed_msg, decode_image_msg
from seg_perception.core.pipeline import configure_threads
from seg_perception.core.stats import FrameStats
from seg_perception.errors import SegPerceptionError
from seg_perception.models.registry import BUILTIN_MODELS
from seg_perception.node.diagnostics import assess_health, camera_status
from seg_perception.node.input import CameraInput, stall_hint
from seg_perception.node.model_manager import ActiveModel, ModelManager, first_line
from seg_perception.node.outputs import CameraOutputs
from seg_perception.node.params import (
    PARAMETERS,
    NodeSettings,
    ParameterError,
    descriptor,
    parameter_defaults,
    settings_from,
)
from seg_perception.node.worker import FrameMailbox, InferenceWorker

__all__ = ["SegmentationNode"]

_WATCH_PERIOD_S = 0.5  # publisher discovery (QoS auto) and stall detection
_DIAGNOSTICS_PERIOD_S = 1.0
_THROTTLE_S = 5.0
_SUCCESS, _FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class _Frame(NamedTuple):
    msg: Any  # sensor_msgs/Image or CompressedImage
    received: float  # time.monotonic() at arrival


@dataclass
class CameraStream:
    """Everything the node keeps per camera."""

    name: str  # "" for the single default camera: today's topic names
    outputs: CameraOutputs
    state: StreamState
    stats: FrameStats = field(default_factory=FrameStats)
    input: CameraInput | None = None  # while active
    input_format: tuple[int, int, str] | None = None


class _RosLogHandler(logging.Handler):
    """Routes the core's Python logging (e.g. a device fallback) to the node's logger."""

    def __init__(self, logger: Any) -> None:
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self._logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(message)
        else:
            self._logger.info(message)


class SegmentationNode(LifecycleNode):
    """Semantic segmentation of a camera stream, with a vehicle-ahead decision.

    ``managed=False`` leaves out the lifecycle services (a plain node that the caller
    configures and activates itself). :attr:`problem` holds the reason of the last failed
    transition.
    """

    def __init__(self, managed: bool = True, **kwargs: Any) -> None:
        super().__init__(topics.NODE_NAME, enable_communication_interface=managed, **kwargs)
        self.problem = ""
        self._managed = managed
        self._log_handler = _RosLogHandler(self.get_logger())
        core_logger = logging.getLogger("seg_perception")
        self._core_propagate = core_logger.propagate
        core_logger.addHandler(self._log_handler)
        core_logger.propagate = False
        self._models = ModelManager(lambda text: self.get_logger().error(text))
        self._cameras: dict[str, CameraStream] = {}
        self._worker: InferenceWorker | None = None
        self._threads_applied: int | None = None
        self._decision_lock = threading.Lock()  # model swap vs decision reconfiguration
        self._updating_class_names = False
        self._announce: ActiveModel | None = None
        self._watch_timer: Any = None
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._diagnostics = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.create_timer(_DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)

    # --- parameters ------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        """Declare every parameter; a value rclpy refuses is kept as a problem for configure
        (which then fails with the reason) and the default is used meanwhile."""
        overrides = dict(getattr(self, "_parameter_overrides", {}))
        problems = []
        for name, default in parameter_defaults().items():
            try:
                self.declare_parameter(name, default, descriptor(name))
            except Exception as exc:  # noqa: BLE001 - rclpy's type/range refusals
                self.declare_parameter(name, default, descriptor(name), ignore_override=True)
                problems.append(self._override_problem(name, overrides.get(name), exc))
        unknown = sorted(set(overrides) - set(PARAMETERS) - {"use_sim_time", "class_names"})
        for name in unknown:
            self.get_logger().warning(f"parameter '{name}' is not a parameter of this node "
                                      "(ignored): check its spelling")
        if self.get_parameter("model_path").value and "model" in overrides:
            self.get_logger().warning("both 'model' and 'model_path' are set: model_path wins")
        self._settings_problem = problems[0] if problems else ""
        self._settings = self._settings_or_none()

    @staticmethod
    def _override_problem(name: str, override: Any, exc: Exception) -> str:
        """Our own reason for an override rclpy refused (clearer than rclpy's), else rclpy's."""
        if override is not None:
            try:
                settings_from({name: override.value})
            except ParameterError as problem:
                return str(problem)
        return f"parameter '{name}': " + " ".join(str(exc).split())

    def _parameter_values(self) -> dict[str, Any]:
        return {name: self.get_parameter(name).value for name in PARAMETERS}

    def _settings_or_none(self) -> NodeSettings | None:
        if self._settings_problem:
            return None
        try:
            return settings_from(self._parameter_values())
        except ParameterError as exc:
            self._settings_problem = str(exc)
            return None

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject impossible values with a reason; nothing is applied here."""
        changes = {p.name: p.value for p in parameters}
        if "class_names" in changes:
            if self._updating_class_names and len(changes) == 1:
                return SetParametersResult(successful=True)
            return SetParametersResult(successful=False,
                                       reason="class_names is read-only (it follows the model)")
        try:
            settings = settings_from({**self._parameter_values(), **changes})
            model = self._models.active
            if model is not None and settings.changed(self._settings, "decision"):
                with self._decision_lock:
                    settings.vehicle_config(model.class_names)
            if self._settings is not None and settings.changed(self._settings, "reload"):
                self._check_model_source(settings.model_source)
                if self._models.loading is not None:
                    raise ParameterError(next(n for n in changes if PARAMETERS[n].reload),
                                         f"a model load ({self._models.loading}) is in "
                                         "progress: try again when it is done")
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """After a successful set: take the new values into use."""
        if all(p.name == "class_names" for p in parameters):
            return
        old, self._settings_problem = self._settings, ""
        self._settings = settings = settings_from(self._parameter_values())
        model = self._models.active
        if old is None or model is None:
            return  # not configured: configure reads the settings
        for camera in self._cameras.values():
            if camera.input is not None:
                camera.input.stall.timeout = settings.stall_timeout
        if settings.changed(old, "decision"):
            with self._decision_lock:
                config = settings.vehicle_config(model.class_names)
                for camera in self._cameras.values():
                    camera.state.reconfigure(config)
        if settings.changed(old, "reload"):
            self.get_logger().info(f"loading model {settings.model_source} (device "
                                   f"{settings.device}) in the background; the current model "
                                   "keeps running until it is ready")
            self._models.start_swap(settings, lambda m: settings.vehicle_config(m.class_names))

    @staticmethod
    def _check_model_source(source: str) -> None:
        """A missing file is rejected at once; a corrupt one fails later, in the loader."""
        if source in BUILTIN_MODELS:
            return
        path = Path(source).expanduser()
        if not path.is_file():
            raise ParameterError("model", f"model file not found: {path} (built-in names: "
                                 f"{', '.join(BUILTIN_MODELS)})")

    # --- lifecycle -------------------------------------------------------------------------

    def _fail(self, reason: str) -> TransitionCallbackReturn:
        """A failed transition; a managed node logs the reason, a plain one exits with it."""
        self.problem = reason
        if self._managed:
            self.get_logger().error(reason)
        return _FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters, load the model, create the publishers."""
        self._settings = self._settings_or_none()
        settings = self._settings
        if settings is None:
            return self._fail(self._settings_problem)
        try:
            model = self._models.load(settings)
            config = settings.vehicle_config(model.class_names)
        except SegPerceptionError as exc:
            self._models.release()
            return self._fail(str(exc))
        except (OSError, ValueError, RuntimeError) as exc:  # weights, metadata, ...
            self._models.release()
            return self._fail(f"cannot load model '{settings.model_source}': "
                              f"{first_line(exc)}")
        self._threads_applied = None
        self._show_class_names(model)
        self._cameras = {
            "": CameraStream("", CameraOutputs(self, "", settings.output_qos,
                                               settings.output_depth), StreamState(config)),
        }
        for camera in self._cameras.values():
            camera.outputs.publish_label_info(model.class_names)
        self.problem = ""
        return _SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the inference thread, then subscribe (the model is loaded and warmed up)."""
        settings = self._settings
        mailbox: FrameMailbox[_Frame] = FrameMailbox()
        self._worker = InferenceWorker(mailbox, self._process, self._between_frames,
                                       self._unexpected)
        self._worker.start()
        compressed = settings.input_transport == "compressed"
        for camera in self._cameras.values():
            name = topics.COMPRESSED_IMAGE if compressed else topics.IMAGE

            def receive(msg: Any, now: float, camera: CameraStream = camera) -> None:
                camera.stats.on_received(now)
                if mailbox.put(camera.name, _Frame(msg, now)):
                    camera.stats.on_dropped()

            camera.input = CameraInput(self, topics.camera_topic(camera.name, name), compressed,
                                       settings.input_qos, settings.input_depth,
                                       settings.stall_timeout, receive)
        self._watch_timer = self.create_timer(_WATCH_PERIOD_S, self._watch_inputs)
        model = self._models.active
        inputs = ", ".join(c.input.topic for c in self._cameras.values())
        size = model.loaded.metadata.input_size
        self.get_logger().info(
            f"ready: {model.loaded.describe()}; input {inputs} "
            f"({'CompressedImage' if compressed else 'Image'}, input_qos {settings.input_qos}), "
            f"network input {f'{size[0]}x{size[1]}' if size else 'camera size'}")
        return _SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop the inference thread: nothing is published while inactive."""
        self._stop_processing()
        self.get_logger().info("inactive: input unsubscribed, inference stopped")
        return _SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and the publishers."""
        self._release()
        self.get_logger().info("unconfigured: model unloaded")
        return _SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        return _SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return _SUCCESS

    def _stop_processing(self) -> None:
        if self._watch_timer is not None:
            self.destroy_timer(self._watch_timer)
            self._watch_timer = None
        for camera in self._cameras.values():
            if camera.input is not None:
                camera.input.destroy()
                camera.input = None
        if self._worker is not None:
            for name in self._worker.stop():
                if name in self._cameras:
                    self._cameras[name].stats.on_dropped()
            self._worker = None

    def _release(self) -> None:
        self._stop_processing()
        for camera in self._cameras.values():
            camera.outputs.destroy()
        self._cameras = {}
        self._models.release()

    def stop(self) -> None:
        """Stop everything the node runs (before it is destroyed); safe to call twice."""
        self._release()
        core_logger = logging.getLogger("seg_perception")
        core_logger.removeHandler(self._log_handler)
        core_logger.propagate = self._core_propagate

    # --- the inference thread --------------------------------------------------------------

    def _between_frames(self) -> None:
        """In the inference thread: thread count, then a model that finished loading."""
        wanted = self._settings.num_threads
        if wanted != self._threads_applied:
            configure_threads(wanted)
            self._threads_applied = wanted
        model = self._models.take_loaded()
        if model is None:
            return
        with self._decision_lock:
            try:
                config = self._settings.vehicle_config(model.class_names)
            except ParameterError as exc:
                self._models.abandon(model, str(exc))
                return
            self._models.swapped(model)
            for camera in self._cameras.values():
                camera.state.reconfigure(config)
        self._announce = model

    def _process(self, camera_name: str, frame: _Frame) -> None:
        """One frame of one camera: decode, segment, decide, publish."""
        camera = self._cameras.get(camera_name)
        if camera is None:
            return
        settings, stats = self._settings, camera.stats
        compressed = settings.input_transport == "compressed"
        decode = decode_compressed_msg if compressed else decode_image_msg
        try:
            image = decode(frame.msg, max_pixels=settings.max_pixels)
        except ValueError as exc:  # ImageFormatError, ImageConversionError
            stats.on_rejected(time.monotonic(), str(exc))
            self.get_logger().warning(f"skipping a frame: {exc}",
                                      throttle_duration_sec=_THROTTLE_S)
            return
        self._note_input_format(camera, frame.msg, image.pixels.shape, compressed)
        model = self._models.active
        try:
            result = process_frame(model.pipeline, image, camera.state,
                                   camera.outputs.request(settings.overlay_alpha))
            camera.outputs.publish(frame.msg.header, result)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            self._record_failure(camera, f"CUDA out of memory on {model.loaded.device} (frame "
                                 "dropped; try a smaller model, fp16 or a lower input size)")
            return
        except Exception as exc:  # noqa: BLE001 - reported, the next frame may succeed
            if self._worker is None or self._worker.stopping or not self.context.ok():
                return
            self._record_failure(camera, f"inference failed: {first_line(exc)}")
            return
        now = time.monotonic()
        stats.on_processed(now, now - frame.received)

    def _note_input_format(self, camera: CameraStream, msg: Any, shape: tuple[int, ...],
                           compressed: bool) -> None:
        """One log line whenever a camera's frame size or encoding changes."""
        kind = msg.format if compressed else msg.encoding
        input_format = (shape[1], shape[0], kind)
        if input_format != camera.input_format:
            camera.input_format = input_format
            self.get_logger().info(f"input frames: {shape[1]}x{shape[0]} {kind}",
                                   throttle_duration_sec=_THROTTLE_S)

    def _record_failure(self, camera: CameraStream, reason: str) -> None:
        camera.stats.on_failed(time.monotonic(), reason)
        self.get_logger().error(reason, throttle_duration_sec=_THROTTLE_S)

    def _unexpected(self, exc: BaseException) -> None:
        for camera in self._cameras.values():
            self._record_failure(camera, f"unexpected {first_line(exc)}")

    # --- timers ----------------------------------------------------------------------------

    def _watch_inputs(self) -> None:
        """QoS auto re-check, stalled-input warnings, and what a model swap changes."""
        self._announce_swap()
        for camera in self._cameras.values():
            if camera.input is None:
                continue
            change, stalled = camera.input.watch()
            if change:
                self.get_logger().info(change)
            if stalled:
                self.get_logger().warning(stalled, throttle_duration_sec=10.0)

    def _show_class_names(self, model: ActiveModel) -> None:
        """The read-only parameter class_names follows the model."""
        names = list(model.class_names)
        self._updating_class_names = True  # read-only for users; the node itself updates it
        try:
            if not self.has_parameter("class_names"):
                self.declare_parameter("class_names", names, ParameterDescriptor(
                    description="Class names of the running model, by class id (the values "
                    "in segmentation/label_map).", read_only=True))
            else:
                self._set_parameters_atomically_common(
                    [Parameter("class_names", value=names)],
                    descriptors={"class_names": self.describe_parameter("class_names")})
        except Exception as exc:  # noqa: BLE001 - rclpy internals: report, do not crash
            self.get_logger().warning(f"could not update class_names: {first_line(exc)}")
        finally:
            self._updating_class_names = False

    def _announce_swap(self) -> None:
        """On the executor thread: class_names, LabelInfo and the log follow a swap."""
        model, self._announce = self._announce, None
        if model is None:
            return
        self._show_class_names(model)
        for camera in self._cameras.values():
            camera.input_format = None
            camera.outputs.publish_label_info(model.class_names)
        self.get_logger().info(f"model swapped in: {model.loaded.describe()}")

    def _publish_diagnostics(self) -> None:
        model = self._models.active
        if model is None or not self._cameras:
            return
        now = time.monotonic()
        device_reason = model.loaded.device_reason
        statuses = []
        for camera in self._cameras.values():
            watch = camera.input
            stalled = watch.stall.stalled_for(now) if watch is not None else None
            health = assess_health(
                camera.stats, now, stalled_for=stalled,
                stall_hint=stall_hint(watch.reliability) if stalled is not None else "",
                model_error=self._models.status if self._models.failed else "",
                device_warning=device_reason if device_reason.startswith("FALLBACK") else "")
            values = {
                "input_topic": watch.topic if watch else "(inactive)",
                "input_qos": f"{watch.reliability} ({watch.qos_reason})" if watch else "",
                "frames_lost_in_transport": str(watch.lost_in_transport if watch else 0),
                "model_load": self._models.status,
                "input_stalled_s": f"{stalled:.1f}" if stalled is not None else "",
            }
            suffix = f"/{camera.name}" if camera.name else ""
            name = f"{topics.NODE_NAME}: {self.get_fully_qualified_name()}{suffix}"
            statuses.append(camera_status(name, camera.stats, health, model.loaded, values))
        self._diagnostics.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=statuses))
