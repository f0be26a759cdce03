"""The frame path: one decoded camera frame in, everything its consumers need out.

:func:`process_frame` is the single implementation of decode-to-decision that the node (per
camera stream), the benchmark and the evaluation all call: segment the frame, then decide
"vehicle ahead" on its label map with the stream's own state. Whatever a frame gains later
(confidence, smoothing, drawn overlays) is added here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seg_perception.core.image_codec import DecodedImage
from seg_perception.core.pipeline import SegmentationPipeline, Timer
from seg_perception.core.pipeline_base import untimed
from seg_perception.core.vehicle_ahead import (
    VehicleAheadConfig,
    VehicleAheadDetector,
    VehicleAheadResult,
)

__all__ = ["FrameResult", "OutputRequest", "StreamState", "process_frame"]


@dataclass(frozen=True)
class OutputRequest:
    """Which optional outputs to compute for a frame (the label map and decision always are).

    The node asks only for outputs that have subscribers.
    """

    color_mask: bool = False
    overlay_alpha: float | None = None  # None: no overlay


@dataclass(frozen=True)
class FrameResult:
    """One frame's outputs.

    The arrays are the pipeline's reused buffers: valid until the next frame through the same
    pipeline. Copy what you keep longer.
    """

    label_map: np.ndarray  # HxW uint8 class ids, at the frame's resolution
    color_mask: np.ndarray | None  # HxWx3 uint8 RGB
    overlay: np.ndarray | None  # HxWx3 uint8 RGB
    vehicle: VehicleAheadResult


class StreamState:
    """What a camera stream carries from one frame to the next: the decision's hysteresis."""

    def __init__(self, config: VehicleAheadConfig) -> None:
        self.detector = VehicleAheadDetector(config)

    def reconfigure(self, config: VehicleAheadConfig) -> None:
        """New decision settings; the published state is kept (see the detector)."""
        self.detector.reconfigure(config)


def process_frame(
    pipeline: SegmentationPipeline,
    image: DecodedImage,
    stream: StreamState,
    request: OutputRequest = OutputRequest(),
    timer: Timer | None = None,
) -> FrameResult:
    """Segment ``image`` and decide "vehicle ahead" for its stream."""
    stage = timer or untimed
    host = pipeline.segment_to_host(image.pixels, image.channel_order,
                                    color_mask=request.color_mask,
                                    overlay_alpha=request.overlay_alpha, timer=timer)
    with stage("vehicle"):
        vehicle = stream.detector.update(host.label_map)
    return FrameResult(host.label_map, host.color_mask, host.overlay, vehicle)
