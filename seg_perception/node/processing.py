"""The inference thread's work: received frames through the frame path, outputs published.

Frames of one or more cameras are decoded (a malformed one is rejected, logged and counted on
its own camera only), grouped by network input size, sent through
:func:`~seg_perception.core.frame.process_frames` in one call per group (one batch on the
GPU), and each camera's results are published with its frame's header.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from seg_perception.core.compressed_codec import decode_compressed_msg
from seg_perception.core.frame import FrameInput, process_frames
from seg_perception.core.image_codec import decode_image_msg
from seg_perception.core.stats import StageClock, StarvationMonitor
from seg_perception.node.camera import CameraStream, Frame
from seg_perception.node.model_manager import ActiveModel, first_line
from seg_perception.node.params import NodeSettings

__all__ = ["FrameProcessor"]

THROTTLE_S = 5.0


class FrameProcessor:
    """Runs taken frames for the node; ``stopping()`` says failures are the shutdown's."""

    def __init__(self, logger: Any, lock: threading.Lock, starvation: StarvationMonitor,
                 stopping: Callable[[], bool]) -> None:
        self.logger = logger
        self.lock = lock  # the decision state is not reconfigured mid-frame
        self.starvation = starvation
        self.stopping = stopping

    def process(self, taken: list[tuple[str, Frame]], model: ActiveModel,
                cameras: Mapping[str, CameraStream], settings: NodeSettings) -> None:
        """Frames of one or more cameras: decode, segment (one batch per network input
        size), decide, publish."""
        batches: dict[tuple[int, int], list[tuple[CameraStream, Frame, FrameInput]]] = {}
        for name, frame in taken:
            camera = cameras.get(name)
            item = self._decode(camera, frame, settings) if camera is not None else None
            if item is not None:
                size = model.pipeline.network_size(*item.image.pixels.shape[:2])
                batches.setdefault(size, []).append((camera, frame, item))
        for batch in batches.values():
            self._process_batch(model, batch)

    def _decode(self, camera: CameraStream, frame: Frame,
                settings: NodeSettings) -> FrameInput | None:
        """A received frame as a frame-path input; None if it is rejected (logged, counted)."""
        decode = decode_compressed_msg if settings.input_transport == "compressed" \
            else decode_image_msg
        try:
            image = decode(frame.msg, max_pixels=settings.max_pixels)
        except ValueError as exc:  # ImageFormatError, ImageConversionError
            camera.stats.on_rejected(time.monotonic(), str(exc))
            self.logger.warning(f"skipping a frame: {exc}", throttle_duration_sec=THROTTLE_S)
            return None
        changed = camera.input_format_changed(frame.msg, image.pixels.shape)
        if changed:
            self.logger.info(changed)
        stamp = frame.msg.header.stamp
        return FrameInput(image, camera.state, camera.outputs.request(camera.settings),
                          stamp.sec + stamp.nanosec * 1e-9)

    def _process_batch(self, model: ActiveModel,
                       batch: list[tuple[CameraStream, Frame, FrameInput]]) -> None:
        cameras = [camera for camera, _, _ in batch]
        try:
            clock = StageClock()
            with self.lock:
                results = process_frames(model.pipeline, [item for _, _, item in batch], clock)
            if model.loaded.device.type == "cpu":  # GPU stages are asynchronous: not timed
                self.starvation.add(clock.seconds["forward"] / len(batch))
            for (camera, frame, _), result in zip(batch, results, strict=True):
                camera.outputs.publish(frame.msg.header, result)
                camera.outputs.publish_label_info(model.class_names, frame.msg.header.frame_id)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            for camera in cameras:
                self.failed(camera, f"CUDA out of memory on {model.loaded.device} (frame "
                            "dropped; try a smaller model, fp16 or a lower input size)")
            return
        except Exception as exc:  # noqa: BLE001 - reported, the next frame may succeed
            if self.stopping():
                return
            for camera in cameras:
                self.failed(camera, f"inference failed: {first_line(exc)}")
            return
        now = time.monotonic()
        for camera, frame, _ in batch:
            camera.stats.on_processed(now, now - frame.received)

    def failed(self, camera: CameraStream, reason: str) -> None:
        camera.failed(reason)
        self.logger.error(reason, throttle_duration_sec=THROTTLE_S)
