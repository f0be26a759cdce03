"""The ROS 2 segmentation node: camera in; label map, colour mask, overlay, vehicle ahead out.

The node only wires ROS to the ROS-free core: :mod:`seg_perception.image_codec` turns messages
into pixels, :class:`~seg_perception.pipeline.SegmentationPipeline` segments them,
:mod:`seg_perception.vehicle_ahead` decides, and :mod:`seg_perception.runtime` holds the
parameter schema, the one-slot frame mailbox and the statistics.

Threads: the executor thread runs the subscription callback (it only stores the message in the
mailbox), timers (input watch, diagnostics) and parameter callbacks; one worker thread takes the
newest frame, infers and publishes; a model swap loads in a short-lived loader thread. Inference
never blocks the executor and never builds a backlog.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from seg_perception.host_memory import keep_freed_memory

# First, before rclpy, numpy and OpenCV start threads: a thread that allocates before this
# gets a malloc arena of its own, and an inference thread that later shares such an arena
# has its activations unmapped and faulted in again on every frame (see host_memory).
keep_freed_memory()

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float32, Header

from seg_perception import qos
from seg_perception.runtime import (
    MODEL_PARAMETERS,
    PARAMETERS,
    VEHICLE_PARAMETERS,
    FrameStats,
    LatestFrameSlot,
    ParameterError,
    ParamSpec,
    Settings,
    StallMonitor,
    assess_health,
    decide_reliability,
    validate_settings,
    with_changes,
)

try:  # optional: LabelInfo needs vision_msgs
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:  # pragma: no cover - depends on the ROS install
    LabelInfo = VisionClass = None

NODE_NAME = "segmentation"
INPUT_TOPIC = "image"
LABEL_MAP_TOPIC = "segmentation/label_map"
COLOR_MASK_TOPIC = "segmentation/color_mask"
OVERLAY_TOPIC = "segmentation/overlay"
LABEL_INFO_TOPIC = "segmentation/label_info"
VEHICLE_AHEAD_TOPIC = "vehicle_ahead"
COVERAGE_TOPIC = "vehicle_ahead/coverage"
DIAGNOSTICS_TOPIC = "/diagnostics"

_WATCH_PERIOD_S = 0.5  # publisher discovery (QoS auto) and stall detection
_DIAGNOSTICS_PERIOD_S = 1.0
_WARN_THROTTLE_S = 5.0
_LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN,
           "ERROR": DiagnosticStatus.ERROR}


class StartupError(RuntimeError):
    """The node cannot start; the message is one line that says what to fix."""


class _Frame(NamedTuple):
    msg: Image | CompressedImage
    received: float  # time.monotonic() at arrival
    compressed: bool


@dataclass(frozen=True)
class _ActiveModel:
    """What the worker runs: one loaded model and the pipeline built on it."""

    loaded: Any  # LoadedModel
    pipeline: Any  # SegmentationPipeline

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.loaded.metadata.class_names)

    @property
    def name(self) -> str:
        return self.loaded.metadata.name


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
            self._logger.debug(message)


def _descriptor(spec: ParamSpec, read_only: bool = False) -> ParameterDescriptor:
    """A ParameterDescriptor with description, range and constraints from the schema."""
    constraints = spec.constraints
    if spec.choices:
        constraints = "one of: " + ", ".join(spec.choices)
    descriptor = ParameterDescriptor(
        description=spec.description,
        additional_constraints=constraints,
        read_only=read_only or not spec.runtime,
        # A corridor written with integers ([0, 1, ...]) is fine: the schema checks numbers.
        dynamic_typing=spec.name == "corridor",
    )
    if spec.value_range is not None:
        low, high = spec.value_range
        if isinstance(spec.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)
            ]
        else:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high),
                                                     step=1)]
    return descriptor


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"


class SegmentationNode(Node):
    """Semantic segmentation of a camera stream, with a vehicle-ahead decision.

    Raises :class:`StartupError` (one line) if a parameter is invalid or the model cannot be
    loaded; ``main`` turns that into an exit status.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._log_handler = _RosLogHandler(self.get_logger())
        core_logger = logging.getLogger("seg_perception")
        self._core_propagate = core_logger.propagate
        core_logger.addHandler(self._log_handler)
        core_logger.propagate = False
        try:
            self._start()
        except BaseException:  # StartupError, or Ctrl-C while loading: leave nothing behind
            if hasattr(self, "_worker"):
                self.stop()
            self._release_logging()
            self.destroy_node()
            raise

    def _start(self) -> None:
        self._settings = self._declare_parameters()

        from seg_perception.models.loading import ModelLoadError

        try:
            self._model = _in_passing_thread(self._load_model, self._settings)
            vehicle_config = self._settings.vehicle_config(self._model.class_names)
        except (ModelLoadError, ParameterError) as exc:
            raise StartupError(str(exc)) from None
        except (OSError, ValueError, RuntimeError) as exc:  # weights, metadata, ...
            raise StartupError(f"cannot load model '{self._settings.model_source}': "
                               f"{_first_line(exc)}") from None

        from seg_perception.vehicle_ahead import VehicleAheadDetector

        self._detector = VehicleAheadDetector(vehicle_config)
        self.declare_parameter(
            "class_names", list(self._model.class_names),
            ParameterDescriptor(description="Class names of the running model, by class id "
                                "(the values in segmentation/label_map).", read_only=True))

        self._stats = FrameStats()
        self._slot: LatestFrameSlot[_Frame] = LatestFrameSlot()
        self._stopping = threading.Event()
        self._model_lock = threading.Lock()  # model swap vs vehicle reconfiguration
        self._pending_model: _ActiveModel | None = None
        self._announce_model: _ActiveModel | None = None
        self._loading: str | None = None
        self._model_status = ""  # last swap failure (WARN) or "loading ..." (info)
        self._model_failed = False
        self._threads_applied = self._settings.num_threads
        self._lost_in_transport = 0
        self._updating_class_names = False
        self._input_format: tuple[int, int, str] | None = None

        self._create_publishers()
        self._worker = threading.Thread(target=self._run_worker, name="segmentation-inference",
                                        daemon=True)
        self._worker.start()

        # Subscribe only now: the model is loaded and warmed up.
        compressed = self._settings.input_transport == "compressed"
        base = self.resolve_topic_name(INPUT_TOPIC)
        self._input_topic = f"{base}/compressed" if compressed else base
        self._input_type = CompressedImage if compressed else Image
        self._stall = StallMonitor(self._settings.stall_timeout)
        self._known_publishers: list[tuple[bytes, str]] | None = None
        self._reliability, self._qos_reason = decide_reliability(
            self._settings.input_qos, [], None)
        self._subscription = None
        self._subscribe()

        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._watch_timer = self.create_timer(_WATCH_PERIOD_S, self._watch_input)
        self._diagnostics_timer = self.create_timer(_DIAGNOSTICS_PERIOD_S,
                                                    self._publish_diagnostics)
        self._publish_label_info()
        loaded = self._model.loaded
        self.get_logger().info(
            f"ready: {loaded.describe()}; input {self._input_topic} "
            f"({self._input_type.__name__}, input_qos {self._settings.input_qos}), "
            f"network input {self._input_size_text(loaded)}")

    # --- start-up ------------------------------------------------------------------------

    def _declare_parameters(self) -> Settings:
        """Declare every parameter (overrides from the params file apply) and validate them."""
        from rclpy.exceptions import (
            InvalidParameterTypeException,
            InvalidParameterValueException,
        )

        values = {}
        for spec in PARAMETERS:
            try:
                values[spec.name] = self.declare_parameter(
                    spec.name, spec.default, _descriptor(spec)).value
            except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
                raise StartupError(self._override_problem(spec.name, exc)) from None
        try:
            return validate_settings(values)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None

    def _override_problem(self, name: str, exc: Exception) -> str:
        """Our own reason for an override rclpy refused (clearer than rclpy's), else rclpy's."""
        override = getattr(self, "_parameter_overrides", {}).get(name)
        if override is not None:
            try:
                validate_settings({name: override.value})
            except ParameterError as problem:
                return str(problem)
        return f"parameter '{name}': " + " ".join(str(exc).split())

    def _load_model(self, settings: Settings) -> _ActiveModel:
        from seg_perception.models.loading import load_model
        from seg_perception.pipeline import SegmentationPipeline

        self._apply_thread_count(settings.num_threads)
        loaded = load_model(settings.model_source, device=settings.device,
                            precision=settings.precision,
                            device_fallback=settings.device_fallback)
        return _ActiveModel(loaded, SegmentationPipeline(loaded, cuda_graph=settings.cuda_graph))

    @staticmethod
    def _input_size_text(loaded: Any) -> str:
        size = loaded.metadata.input_size
        return f"{size[0]}x{size[1]}" if size else "camera size"

    def _create_publishers(self) -> None:
        from seg_perception.image_codec import ImageMessageWriter

        profile = qos.stream_profile(self._settings.output_qos, self._settings.output_depth)
        self._label_map_pub = self.create_publisher(Image, LABEL_MAP_TOPIC, profile)
        self._color_mask_pub = self.create_publisher(Image, COLOR_MASK_TOPIC, profile)
        self._overlay_pub = self.create_publisher(Image, OVERLAY_TOPIC, profile)
        # One reused message buffer per image output (published before it is reused).
        self._image_writers = {pub: ImageMessageWriter(Image) for pub in
                               (self._label_map_pub, self._color_mask_pub, self._overlay_pub)}
        self._vehicle_pub = self.create_publisher(Bool, VEHICLE_AHEAD_TOPIC, profile)
        self._coverage_pub = self.create_publisher(Float32, COVERAGE_TOPIC, profile)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._label_info_pub = None
        if LabelInfo is not None:
            self._label_info_pub = self.create_publisher(LabelInfo, LABEL_INFO_TOPIC,
                                                         qos.latched_profile())

    def _publish_label_info(self) -> None:
        if self._label_info_pub is None:
            return
        names = self._model.class_names
        header = Header(stamp=self.get_clock().now().to_msg())
        classes = [VisionClass(class_id=i, class_name=name) for i, name in enumerate(names)]
        self._label_info_pub.publish(LabelInfo(header=header, class_map=classes, threshold=0.0))

    # --- input ---------------------------------------------------------------------------

    def _subscribe(self) -> None:
        """(Re)create the input subscription with the current reliability."""
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
        events = SubscriptionEventCallbacks(message_lost=self._on_message_lost)
        profile = qos.stream_profile(self._reliability, self._settings.input_depth)
        try:
            self._subscription = self.create_subscription(
                self._input_type, self._input_topic, self._on_frame, profile,
                event_callbacks=events)
        except Exception:  # noqa: BLE001 - an RMW without the message-lost event
            self._subscription = self.create_subscription(
                self._input_type, self._input_topic, self._on_frame, profile)
        self._stall.reset()

    def _on_frame(self, msg: Image | CompressedImage) -> None:
        """Store the newest frame for the worker; never blocks on inference."""
        now = time.monotonic()
        self._stats.on_received(now)
        self._stall.frame(now)
        self._slot.put(_Frame(msg, now, self._input_type is CompressedImage))

    def _on_message_lost(self, info: Any) -> None:
        self._lost_in_transport = int(info.total_count)

    def _watch_input(self) -> None:
        """QoS auto re-check when publishers change; stalled-input detection; swap notices."""
        self._announce_swap()
        publishers = qos.publisher_reliabilities(self, self._input_topic)
        if self._settings.input_qos == "auto" and publishers != self._known_publishers:
            self._known_publishers = publishers
            wanted, reason = decide_reliability(
                "auto", [r for _, r in publishers], self._reliability)
            self._qos_reason = reason
            if wanted != self._reliability:
                self.get_logger().info(
                    f"input QoS: {self._reliability} -> {wanted} on {self._input_topic} "
                    f"({reason})")
                self._reliability = wanted
                self._subscribe()
        now = time.monotonic()
        self._stall.publishers(self._subscription.get_publisher_count(), now)
        stalled = self._stall.stalled_for(now)
        if stalled is not None:
            self.get_logger().warning(
                f"input stalled: a publisher is matched on {self._input_topic} "
                f"({self._reliability}) but no frame arrived for {stalled:.1f} s; likely fix: "
                f"{qos.stall_hint(self._reliability)}", throttle_duration_sec=10.0)

    # --- the worker ----------------------------------------------------------------------

    def _run_worker(self) -> None:
        """Newest frame in, outputs out; exceptions never end the loop."""
        self._apply_thread_count(self._threads_applied)
        while not self._stopping.is_set():
            self._swap_model_if_ready()
            wanted_threads = self._settings.num_threads
            if wanted_threads != self._threads_applied:
                self._apply_thread_count(wanted_threads)
                self._threads_applied = wanted_threads
            frame = self._slot.take(timeout=0.1)
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the node must outlive any bad frame
                if self._stopping.is_set() or not self.context.ok():
                    break
                self._record_failure(f"unexpected {_first_line(exc)}")

    def _process(self, frame: _Frame) -> None:
        import torch

        from seg_perception.image_codec import (
            ImageConversionError,
            ImageFormatError,
            decode_compressed_msg,
            decode_image_msg,
        )

        settings = self._settings
        decode = decode_compressed_msg if frame.compressed else decode_image_msg
        try:
            decoded = decode(frame.msg, max_pixels=settings.max_pixels)
        except (ImageFormatError, ImageConversionError) as exc:
            self._stats.on_rejected(time.monotonic(), str(exc))
            self.get_logger().warning(f"skipping a frame: {exc}",
                                      throttle_duration_sec=_WARN_THROTTLE_S)
            return
        self._note_input_format(frame, decoded.pixels.shape)
        model = self._model
        want_mask = self._color_mask_pub.get_subscription_count() > 0
        want_overlay = self._overlay_pub.get_subscription_count() > 0
        try:
            host = model.pipeline.segment_to_host(
                decoded.pixels, decoded.channel_order, color_mask=want_mask,
                overlay_alpha=settings.overlay_alpha if want_overlay else None)
            result = self._detector.update(host.label_map)
            self._publish_outputs(frame.msg.header, host, result)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            self._record_failure(f"CUDA out of memory on {model.loaded.device} (frame "
                                 "dropped; try a smaller model, fp16 or a lower input size)")
            return
        except Exception as exc:  # noqa: BLE001 - reported, the next frame may succeed
            if self._stopping.is_set() or not self.context.ok():
                return
            self._record_failure(f"inference failed: {_first_line(exc)}")
            return
        now = time.monotonic()
        self._stats.on_processed(now, now - frame.received)

    def _note_input_format(self, frame: _Frame, shape: tuple[int, ...]) -> None:
        """One log line whenever the camera's frame size or encoding changes."""
        kind = frame.msg.format if frame.compressed else frame.msg.encoding
        input_format = (shape[1], shape[0], kind)
        if input_format != self._input_format:
            self._input_format = input_format
            self.get_logger().info(f"input frames: {shape[1]}x{shape[0]} {kind}",
                                   throttle_duration_sec=_WARN_THROTTLE_S)

    def _record_failure(self, reason: str) -> None:
        self._stats.on_failed(time.monotonic(), reason)
        self.get_logger().error(reason, throttle_duration_sec=_WARN_THROTTLE_S)

    def _publish_outputs(self, header: Header, host: Any, result: Any) -> None:
        """The decision first (always: planners wait on it), then the label map, then the
        images for people, each only where someone listens. The arrays are the pipeline's
        reused buffers: publish copies them out."""
        self._vehicle_pub.publish(Bool(data=bool(result.vehicle_ahead)))
        self._coverage_pub.publish(Float32(data=float(result.coverage)))
        if self._label_map_pub.get_subscription_count():
            self._publish_image(self._label_map_pub, header, host.label_map, "mono8")
        if host.color_mask is not None:
            self._publish_image(self._color_mask_pub, header, host.color_mask, "rgb8")
        if host.overlay is not None:
            self._publish_image(self._overlay_pub, header, host.overlay, "rgb8")

    def _publish_image(self, publisher: Any, header: Header, pixels: Any, encoding: str) -> None:
        publisher.publish(self._image_writers[publisher](pixels, encoding, header))

    @staticmethod
    def _apply_thread_count(count: int) -> None:
        """torch and OpenCV CPU threads (0 keeps the defaults); in each thread that infers."""
        from seg_perception.pipeline import configure_threads

        configure_threads(count)

    # --- model swap ----------------------------------------------------------------------

    def _start_model_load(self, settings: Settings) -> None:
        self._loading = settings.model_source
        self._model_status = f"loading {settings.model_source} on {settings.device}"
        self._model_failed = False
        self.get_logger().info(f"loading model {settings.model_source} (device "
                               f"{settings.device}) in the background; the current model "
                               "keeps running until it is ready")
        threading.Thread(target=self._load_in_background, args=(settings,),
                         name="segmentation-model-loader", daemon=True).start()

    def _load_in_background(self, settings: Settings) -> None:
        source = settings.model_source
        try:
            model = self._load_model(settings)
            settings.vehicle_config(model.class_names)  # the vehicle classes must exist
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model running
            reason = str(exc) if isinstance(exc, (ValueError, RuntimeError)) else \
                _first_line(exc)
            self._model_status = (f"model swap to {source} failed, still running "
                                  f"{self._model.name}: {reason.splitlines()[0]}")
            self._model_failed = True
            self.get_logger().error(self._model_status)
        else:
            self._pending_model = model
        finally:
            self._loading = None

    def _swap_model_if_ready(self) -> None:
        """In the worker, between frames: switch to a loaded model."""
        model = self._pending_model
        if model is None:
            return
        self._pending_model = None
        with self._model_lock:
            try:
                config = self._settings.vehicle_config(model.class_names)
            except ParameterError as exc:
                self._model_status = (f"model swap to {model.name} abandoned, still running "
                                      f"{self._model.name}: {exc}")
                self._model_failed = True
                self.get_logger().error(self._model_status)
                return
            old, self._model = self._model, model
            self._detector.reconfigure(config)
        self._model_status, self._model_failed = "", False
        self._announce_model = model
        if old.loaded.device.type == "cuda":
            import torch

            del old
            torch.cuda.empty_cache()

    def _announce_swap(self) -> None:
        """On the executor thread: class_names, LabelInfo and the log follow a swap."""
        model, self._announce_model = self._announce_model, None
        if model is None:
            return
        self._updating_class_names = True
        try:
            descriptor = self.describe_parameter("class_names")
            # class_names is read-only for users; the node itself updates it after a swap.
            self._set_parameters_atomically_common(
                [Parameter("class_names", value=list(model.class_names))],
                descriptors={"class_names": descriptor})
        except Exception as exc:  # noqa: BLE001 - rclpy internals: report, do not crash
            self.get_logger().warning(f"could not update class_names: {_first_line(exc)}")
        finally:
            self._updating_class_names = False
        self._input_format: tuple[int, int, str] | None = None
        self._publish_label_info()
        self.get_logger().info(f"model swapped in: {model.loaded.describe()}")

    # --- parameters ----------------------------------------------------------------------

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject impossible values with a reason; nothing is applied here."""
        changes = {p.name: p.value for p in parameters}
        if "class_names" in changes:
            if self._updating_class_names and len(changes) == 1:
                return SetParametersResult(successful=True)
            return SetParametersResult(successful=False,
                                       reason="class_names is read-only (it follows the model)")
        try:
            settings = with_changes(self._settings, changes)
            if changes.keys() & VEHICLE_PARAMETERS:
                with self._model_lock:
                    settings.vehicle_config(self._model.class_names)
            if self._model_settings_changed(settings):
                self._check_model_source(settings.model_source)
                if self._loading is not None:
                    raise ParameterError(
                        next(iter(changes.keys() & MODEL_PARAMETERS)),
                        f"a model load ({self._loading}) is in progress: try again when it "
                        "is done")
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """After a successful set: take the new values into use."""
        changes = {p.name: p.value for p in parameters if p.name != "class_names"}
        if not changes:
            return
        settings = with_changes(self._settings, changes)
        reload = self._model_settings_changed(settings)
        self._settings = settings
        self._stall.timeout = settings.stall_timeout
        if changes.keys() & VEHICLE_PARAMETERS:
            with self._model_lock:
                self._detector.reconfigure(settings.vehicle_config(self._model.class_names))
        if reload:
            self._start_model_load(settings)

    def _model_settings_changed(self, settings: Settings) -> bool:
        current = self._settings
        return any(getattr(settings, name) != getattr(current, name)
                   for name in ("model_source", "device", "device_fallback", "precision"))

    @staticmethod
    def _check_model_source(source: str) -> None:
        """A missing file is rejected at once; a corrupt one fails later, in the loader."""
        from seg_perception.models.registry import BUILTIN_MODELS

        if source in BUILTIN_MODELS:
            return
        path = Path(source).expanduser()
        if not path.is_file():
            raise ParameterError(
                "model", f"model file not found: {path} (built-in names: "
                f"{', '.join(BUILTIN_MODELS)})")

    # --- diagnostics ---------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        model = self._model
        stalled = self._stall.stalled_for(now)
        device_reason = model.loaded.device_reason
        health = assess_health(
            self._stats, now, stalled_for=stalled,
            stall_hint=qos.stall_hint(self._reliability) if stalled is not None else "",
            model_error=self._model_status if self._model_failed else "",
            device_warning=device_reason if device_reason.startswith("FALLBACK") else "")
        stats = self._stats
        with stats.lock:
            latency = stats.latency.percentiles_ms()
            values = {
                "model": model.name,
                "model_file": str(model.loaded.path),
                "device": str(model.loaded.device),
                "device_reason": device_reason,
                "input_topic": self._input_topic,
                "input_qos": f"{self._reliability} ({self._qos_reason})",
                "input_hz": f"{stats.input_rate.rate(now):.2f}",
                "output_hz": f"{stats.output_rate.rate(now):.2f}",
                "frames_received": str(stats.received),
                "frames_processed": str(stats.processed),
                "frames_dropped": str(self._slot.dropped),
                "frames_rejected": str(stats.rejected),
                "frames_failed": str(stats.failed),
                "frames_lost_in_transport": str(self._lost_in_transport),
                "latency_ms_p50": f"{latency[50]:.1f}",
                "latency_ms_p90": f"{latency[90]:.1f}",
                "latency_ms_p99": f"{latency[99]:.1f}",
                "last_error": stats.last_error,
                "last_rejection": stats.last_rejection,
                "model_load": self._model_status,
                "input_stalled_s": f"{stalled:.1f}" if stalled is not None else "",
            }
        status = DiagnosticStatus(
            level=_LEVELS[health.level],
            name=f"{NODE_NAME}: {self.get_fully_qualified_name()}",
            message=health.message,
            hardware_id=str(model.loaded.device),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        self._diagnostics_pub.publish(
            DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                            status=[status]))

    # --- shutdown ------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (it finishes the frame in hand) before the node is destroyed."""
        self._stopping.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout)
        self._release_logging()

    def _release_logging(self) -> None:
        core_logger = logging.getLogger("seg_perception")
        core_logger.removeHandler(self._log_handler)
        core_logger.propagate = self._core_propagate


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _in_passing_thread(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` run in a thread that ends with it; its result, or its exception.

    torch's OpenMP keeps one pool of threads per thread that runs parallel work. Loading and
    warming up the model in the main thread would leave a pool there, idle beside the
    inference thread's; with more pool threads than cores, libgomp stops spinning between
    parallel regions and inference slows by about 10 % (measured on 2 cores). A pool ends
    with its thread.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="segmentation-model-loader", daemon=True)
    thread.start()
    thread.join()  # a signal still interrupts the main thread here
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def main(args: list[str] | None = None) -> int:
    """``segmentation_node``: run until SIGINT/SIGTERM; exit 2 with one line if it cannot start.

    Signals are handled in Python (not by rclpy's handlers): a Ctrl-C that arrives while the
    model is still loading would otherwise be lost or leave a half-shut-down context behind.
    Either signal raises KeyboardInterrupt in the main thread, wherever it is.
    """
    from rclpy.signals import SignalHandlerOptions

    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node: SegmentationNode | None = None
    try:
        try:
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        except RuntimeError as exc:  # RCLError: malformed --ros-args
            print(f"{NODE_NAME}_node: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        try:
            node = SegmentationNode()
        except StartupError as exc:
            print(f"{NODE_NAME}_node: error: {exc}", file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
