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
from typing import TYPE_CHECKING, Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_msgs.msg import Header

from seg_perception import topics
from seg_perception.core.geometry import CalibrationError
from seg_perception.core.stats import StarvationMonitor
from seg_perception.errors import SegPerceptionError
from seg_perception.node.diagnostics import camera_statuses, unconfigured_status
from seg_perception.node.model_manager import ActiveModel, ModelManager, first_line, set_threads
from seg_perception.node.parameters import (
    check_parameter_change,
    declare_parameters,
    parameter_text,
    parameter_values_of,
    show_class_names,
    typed_like_schema,
)
from seg_perception.node.params import NodeSettings, ParameterError, resolve_settings
from seg_perception.node.worker import FrameMailbox, InferenceWorker

if TYPE_CHECKING:
    from seg_perception.node.camera import CameraStream, Frame
    from seg_perception.node.processing import FrameProcessor

__all__ = ["SegmentationNode"]

_WATCH_PERIOD_S = 0.5  # publisher discovery (QoS auto) and stall detection
_DIAGNOSTICS_PERIOD_S = 1.0
_THROTTLE_S = 5.0
_SUCCESS, _FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


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
        # Undeclared names may be set: a camera's own value (front.min_coverage) can be set at
        # run time without a start-up override; the validation refuses every other name.
        kwargs.setdefault("allow_undeclared_parameters", True)
        super().__init__(topics.NODE_NAME, enable_communication_interface=managed, **kwargs)
        self.problem = ""
        self._managed = managed
        self.restart_requested = False  # after cleanup: the process starts afresh
        self._log_handler = _RosLogHandler(self.get_logger())
        core_logger = logging.getLogger("seg_perception")
        self._core_propagate, self._core_level = core_logger.propagate, core_logger.level
        core_logger.addHandler(self._log_handler)
        core_logger.propagate = False
        core_logger.setLevel(logging.INFO)  # e.g. "exporting built-in model ... (first use)"
        self._models = ModelManager(lambda text: self.get_logger().error(text))
        self._starvation = StarvationMonitor()
        self._decision_lock = threading.Lock()  # model swap vs decision reconfiguration
        self._processor: FrameProcessor | None = None  # made at configure
        self._cameras: dict[str, CameraStream] = {}
        self._worker: InferenceWorker | None = None
        self._threads_applied: int | None = None
        self._threads_in_use = 0  # torch threads of the inference thread (diagnostics)
        self._updating_class_names = False
        self._announce: ActiveModel | None = None
        self._watch_timer: Any = None
        self._declare_parameters()
        self.add_pre_set_parameters_callback(typed_like_schema)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._diagnostics = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self.create_timer(_DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)

    # --- parameters ------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        self._settings_problem = declare_parameters(self, getattr(self, "_parameter_overrides",
                                                                  {}))
        self._resolve_or_none()

    def _parameter_values(self) -> dict[str, Any]:
        return parameter_values_of(self)

    def parameter_arguments(self) -> list[str]:
        """``-p name:=value`` for every parameter's current value: a restarted process starts
        with what was set at run time."""
        return [arg for name, value in self._parameter_values().items()
                for arg in ("-p", f"{name}:={parameter_text(value)}")]

    def _resolve_or_none(self) -> None:
        """The settings from the current parameters, or None and the reason."""
        self._settings: NodeSettings | None = None
        self._camera_settings: dict[str, NodeSettings] = {}
        if self._settings_problem:
            return
        try:
            self._settings, self._camera_settings = resolve_settings(self._parameter_values())
        except ParameterError as exc:
            self._settings_problem = str(exc)

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject impossible values with a reason; nothing is applied here."""
        changes = {p.name: p.value for p in parameters}
        if "class_names" in changes:
            if self._updating_class_names and len(changes) == 1:
                return SetParametersResult(successful=True)
            return SetParametersResult(successful=False,
                                       reason="class_names is read-only (it follows the model)")
        try:
            check_parameter_change({**self._parameter_values(), **changes}, list(changes),
                                   self._settings, self._models, self._cameras,
                                   self._decision_lock)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """After a successful set: take the new values into use."""
        if all(p.name == "class_names" for p in parameters):
            return
        old = self._settings
        self._settings_problem = ""
        self._resolve_or_none()
        settings, model = self._settings, self._models.active
        if old is None or model is None or settings is None:
            return  # not configured: configure reads the settings
        with self._decision_lock:
            for camera in self._cameras.values():
                camera.reconfigure(self._camera_settings[camera.name], model.class_names)
        for camera in self._cameras.values():
            self._calibrate(camera)  # the mounting may have changed
        if settings.changed(old, "reload"):
            self.get_logger().info(f"loading model {settings.model_source} (device "
                                   f"{settings.device}) in the background; the current model "
                                   "keeps running until it is ready")
            self._models.start_swap(settings, self._check_classes)

    def _check_classes(self, model: ActiveModel) -> None:
        """Every camera's vehicle classes exist in ``model`` (ParameterError if not)."""
        for camera in self._camera_settings.values():
            camera.vehicle_config(model.class_names)

    # --- lifecycle -------------------------------------------------------------------------

    def _fail(self, reason: str) -> TransitionCallbackReturn:
        """A failed transition; a managed node logs the reason, a plain one exits with it."""
        self.problem = reason
        if self._managed:
            self.get_logger().error(reason)
        return _FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters, load the model, create the publishers."""
        self._resolve_or_none()
        settings = self._settings
        if settings is None:
            return self._fail(self._settings_problem)
        try:
            model = self._models.load(settings)
            self._check_classes(model)
        except SegPerceptionError as exc:
            self._models.release()
            return self._fail(str(exc))
        except (OSError, ValueError, RuntimeError) as exc:  # weights, metadata, ...
            self._models.release()
            return self._fail(f"cannot load model '{settings.model_source}': "
                              f"{first_line(exc)}")
        self._threads_applied = None
        self._starvation.reset()
        self._show_class_names(model)
        # The frame path loads with the model, not at start: an unconfigured node stays small.
        from seg_perception.node.camera import CameraStream
        from seg_perception.node.processing import FrameProcessor

        self._processor = FrameProcessor(
            self.get_logger(), self._decision_lock, self._starvation,
            lambda: self._worker is None or self._worker.stopping or not self.context.ok())
        self._cameras = {name: CameraStream(self, name, own, model.class_names)
                         for name, own in self._camera_settings.items()}
        for camera in self._cameras.values():
            camera.outputs.publish_label_info(model.class_names)
        self.problem = ""
        return _SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the inference thread, then subscribe (the model is loaded and warmed up)."""
        settings = self._settings
        mailbox: FrameMailbox[Frame] = FrameMailbox()
        self._worker = InferenceWorker(mailbox, self._process, self._between_frames,
                                       self._unexpected, batch=self._batching)
        self._worker.start()
        compressed = settings.input_transport == "compressed"
        for camera in self._cameras.values():
            camera.activate(mailbox.put, lambda camera=camera: self._calibrate(camera))
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
        """Free the model and the publishers; then the process starts afresh, unconfigured.

        A Python process cannot unload torch (about 500 MB) or end its CUDA context, so the
        model's memory only really goes back with the process: once this transition's answer
        is out, the process replaces itself (same pid, same name and parameters), as an
        unconfigured node that has not loaded torch.
        """
        self._release()
        self.restart_requested = True
        self.get_logger().info("unconfigured: model unloaded; restarting the process to give "
                               "torch's memory back (same parameters, about a second)")
        self._exit_timer = self.create_timer(0.3, self.context.try_shutdown)
        return _SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free everything; the process then ends (once the transition's answer is out)."""
        self.stop()
        self.get_logger().info("finalized: shutting down")
        self._exit_timer = self.create_timer(0.2, self.context.try_shutdown)
        return _SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return _SUCCESS

    def _stop_processing(self) -> None:
        if self._watch_timer is not None:
            self.destroy_timer(self._watch_timer)
            self._watch_timer = None
        for camera in self._cameras.values():
            camera.deactivate()
        if self._worker is not None:
            for name in self._worker.stop():
                if name in self._cameras:
                    self._cameras[name].stats.on_dropped()
            self._worker = None

    def _release(self) -> None:
        self._stop_processing()
        for camera in self._cameras.values():
            camera.destroy()
        self._cameras = {}
        self._models.release()

    def stop(self) -> None:
        """Stop everything the node runs (before it is destroyed); safe to call twice."""
        self._release()
        core_logger = logging.getLogger("seg_perception")
        core_logger.removeHandler(self._log_handler)
        core_logger.propagate = self._core_propagate
        core_logger.setLevel(self._core_level)

    # --- the inference thread --------------------------------------------------------------

    def _between_frames(self) -> None:
        """In the inference thread: thread count, then a model that finished loading."""
        wanted = self._settings.num_threads
        if wanted != self._threads_applied:
            self._threads_in_use = set_threads(wanted)
            self._threads_applied = wanted
        model = self._models.take_loaded()
        if model is None:
            return
        with self._decision_lock:
            try:
                self._check_classes(model)
            except ParameterError as exc:
                self._models.abandon(model, str(exc))
                return
            self._models.swapped(model)
            self._starvation.reset()
            for camera in self._cameras.values():
                camera.reconfigure(camera.settings, model.class_names)
        self._announce = model

    def _process(self, taken: list[tuple[str, Frame]]) -> None:
        self._processor.process(taken, self._models.active, self._cameras, self._settings)

    def _batching(self) -> bool:
        """Several cameras' frames in one network call: on the GPU, where it is faster."""
        model, settings = self._models.active, self._settings
        return bool(model and settings and settings.batch_cameras
                    and model.loaded.device.type == "cuda")

    def _unexpected(self, exc: BaseException) -> None:
        for camera in self._cameras.values():
            self._processor.failed(camera, f"unexpected {first_line(exc)}")

    # --- calibration -----------------------------------------------------------------------

    def _calibrate(self, camera: CameraStream) -> None:
        """Lead ranging and corridor_m follow the camera's CameraInfo and mounting."""
        try:
            changed = camera.calibrate(self._decision_lock)
        except CalibrationError as exc:
            self.get_logger().warning(f"camera {camera.label}: {exc}",
                                      throttle_duration_sec=_THROTTLE_S)
            return
        if changed:
            self.get_logger().info(changed)

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
        self._updating_class_names = True  # read-only for users; the node itself updates it
        try:
            show_class_names(self, model.class_names)
        finally:
            self._updating_class_names = False

    def _announce_swap(self) -> None:
        """On the executor thread: class_names, LabelInfo and the log follow a swap."""
        model, self._announce = self._announce, None
        if model is None:
            return
        self._show_class_names(model)
        for camera in self._cameras.values():
            camera.forget_input_format()
        self.get_logger().info(f"model swapped in: {model.loaded.describe()}")

    def _publish_diagnostics(self) -> None:
        name = f"{topics.NODE_NAME}: {self.get_fully_qualified_name()}"
        if self._models.active is None or not self._cameras:  # unconfigured, and why
            statuses = [unconfigured_status(name, self.problem)]
        else:
            statuses = camera_statuses(name, self._cameras.values(), self._models,
                                       self._starvation, {"threads": str(self._threads_in_use)})
        self._diagnostics.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=statuses))
