"""One camera of the node: its input, outputs, decision state, calibration and statistics.

The node serves one or several cameras with one model; everything that is per camera lives
in a :class:`CameraStream`, so cameras never share state (a malformed frame or a stalled
publisher on one camera does not touch another).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sensor_msgs.msg import CameraInfo

from seg_perception import topics
from seg_perception.core.frame import StreamState
from seg_perception.core.geometry import GroundCamera
from seg_perception.core.stats import FrameStats
from seg_perception.node.input import CameraInput, stall_hint
from seg_perception.node.outputs import CameraOutputs
from seg_perception.node.params import NodeSettings

__all__ = ["CameraStream", "Frame"]


class Frame(NamedTuple):
    """A received message waiting for inference."""

    msg: Any  # sensor_msgs/Image or CompressedImage
    received: float  # time.monotonic() at arrival


class CameraStream:
    """Everything the node keeps per camera (``name`` "" is the single default camera, at
    the node's own topic names)."""

    def __init__(self, node: Any, name: str, settings: NodeSettings,
                 class_names: tuple[str, ...]) -> None:
        self.node = node
        self.name = name
        self.label = name or "(default)"
        self.settings = settings
        self.outputs = CameraOutputs(node, name, settings.output_qos, settings.output_depth)
        self.state = StreamState(settings.vehicle_config(class_names),
                                 settings.temporal_smoothing, settings.metric_corridor)
        self.stats = FrameStats()
        self.input: CameraInput | None = None  # while active
        self._camera_info: Any = None  # its subscription, while active
        self._last_camera_info: Any = None  # to recalibrate when the mounting changes
        self._calibration: tuple | None = None  # what the current calibration came from
        self._input_format: tuple[int, int, str] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def activate(self, put: Callable[[str, Frame], bool], on_camera_info: Callable[[], None]
                 ) -> None:
        """Subscribe to the camera's images (into ``put``) and its camera_info."""
        settings = self.settings
        compressed = settings.input_transport == "compressed"

        def receive(msg: Any, now: float) -> None:
            self.stats.on_received(now)
            if put(self.name, Frame(msg, now)):
                self.stats.on_dropped()

        image = topics.COMPRESSED_IMAGE if compressed else topics.IMAGE
        self.input = CameraInput(self.node, topics.camera_topic(self.name, image), compressed,
                                 settings.input_qos, settings.input_depth,
                                 settings.stall_timeout, receive)

        def camera_info(msg: CameraInfo) -> None:
            self._last_camera_info = msg
            on_camera_info()

        self._camera_info = self.node.create_subscription(
            CameraInfo, topics.camera_topic(self.name, topics.CAMERA_INFO), camera_info,
            topics.camera_info_profile())

    def deactivate(self) -> None:
        if self.input is not None:
            self.input.destroy()
            self.input = None
        if self._camera_info is not None:
            self.node.destroy_subscription(self._camera_info)
            self._camera_info = None

    def destroy(self) -> None:
        self.deactivate()
        self.outputs.destroy()

    # --- settings and calibration ------------------------------------------------------------

    def reconfigure(self, settings: NodeSettings, class_names: tuple[str, ...]) -> None:
        """New settings (or a new model's classes); the decision keeps its state."""
        self.state.reconfigure(settings.vehicle_config(class_names),
                               settings.temporal_smoothing, settings.metric_corridor)
        if self.input is not None:
            self.input.stall.timeout = settings.stall_timeout
        self.settings = settings

    def calibrate(self, lock: threading.Lock) -> str | None:
        """A GroundCamera from the newest CameraInfo and the mounting, when both are known and
        something changed; a log line saying what changed, or None. Raises CalibrationError."""
        info, own = self._last_camera_info, self.settings
        if info is None:
            return None
        key = (tuple(info.k), tuple(info.d), info.width, info.height, own.camera_height,
               own.camera_pitch, own.metric_corridor)
        if key == self._calibration:
            return None
        self._calibration = key
        ground = None
        if own.camera_height > 0:
            ground = GroundCamera.from_camera_info(info, own.camera_height, own.camera_pitch)
        with lock:
            self.state.set_camera(ground)
        if ground is None:
            return None
        text = (f"camera {self.label} calibrated ({info.width}x{info.height}, height "
                f"{own.camera_height} m, pitch {own.camera_pitch} rad): lead vehicle ranging on")
        corridor = self.state.corridor
        if own.metric_corridor and corridor is not None:
            vertices = [tuple(round(c, 3) for c in v) for v in corridor.vertices]
            text += f"; corridor_m {list(own.metric_corridor)} -> {vertices}"
        return text

    def input_format_changed(self, msg: Any, shape: tuple[int, ...]) -> str | None:
        """"WxH encoding" when the camera's frame size or encoding changed, else None."""
        kind = msg.format if self.settings.input_transport == "compressed" else msg.encoding
        found = (shape[1], shape[0], kind)
        if found == self._input_format:
            return None
        self._input_format = found
        return f"input frames: {shape[1]}x{shape[0]} {kind}" + \
            (f" (camera {self.name})" if self.name else "")

    def forget_input_format(self) -> None:
        self._input_format = None

    # --- diagnostics -------------------------------------------------------------------------

    def input_figures(self, now: float) -> tuple[float | None, str, dict[str, str]]:
        """(seconds stalled or None, the stall hint, the input's diagnostic values)."""
        watch = self.input
        stalled = watch.stall.stalled_for(now) if watch is not None else None
        hint = stall_hint(watch.reliability) if stalled is not None else ""
        values = {
            "input_topic": watch.topic if watch else "(inactive)",
            "input_qos": f"{watch.reliability} ({watch.qos_reason})" if watch else "",
            "frames_lost_in_transport": str(watch.lost_in_transport if watch else 0),
            "input_stalled_s": f"{stalled:.1f}" if stalled is not None else "",
        }
        return stalled, hint, values

    def failed(self, reason: str) -> None:
        self.stats.on_failed(time.monotonic(), reason)
