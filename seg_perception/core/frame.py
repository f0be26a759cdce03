"""The frame path: one decoded camera frame in, everything its consumers need out.

:func:`process_frames` (and :func:`process_frame` for one) is the single implementation of
decoded-frame-to-decision that the node (per camera stream), the benchmark and the evaluation
all call: segment the frames (with each stream's temporal smoothing and the outputs asked
for), decide "vehicle ahead" on each label map with its stream's hysteresis, range the lead
vehicle when the camera is calibrated, and draw the corridor and the decision on the
overlay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from seg_perception.core.corridor import Corridor
from seg_perception.core.drawing import draw_decision
from seg_perception.core.geometry import GroundCamera, metric_corridor
from seg_perception.core.image_codec import DecodedImage
from seg_perception.core.pipeline import OutputRequest, SegmentationPipeline, Timer
from seg_perception.core.pipeline_base import FrameJob, HostSegmentation, untimed
from seg_perception.core.smoothing import TemporalSmoother
from seg_perception.core.vehicle_ahead import (
    VehicleAheadConfig,
    VehicleAheadDetector,
    VehicleAheadResult,
    nearest_vehicle_blob,
)

__all__ = [
    "FrameInput",
    "FrameResult",
    "LeadVehicle",
    "OutputRequest",
    "StreamState",
    "process_frame",
    "process_frames",
]


@dataclass(frozen=True)
class LeadVehicle:
    """Where the nearest vehicle in the corridor touches the ground."""

    point: tuple[float, float, float]  # camera optical frame (x right, y down, z fwd), metres
    range_m: float  # horizontal distance ahead of the camera
    pixel: tuple[float, float]  # the contact point in the frame, pixels (x right, y down)


@dataclass(frozen=True)
class FrameResult:
    """One frame's outputs.

    The arrays are the pipeline's reused buffers: valid until the next frame through the same
    pipeline. Copy what you keep longer.
    """

    label_map: np.ndarray  # HxW uint8 class ids at the frame's resolution (255: unknown)
    confidence: np.ndarray | None  # HxW uint8, 255 = max class probability 1
    color_mask: np.ndarray | None  # HxWx3 uint8 RGB
    overlay: np.ndarray | None  # HxWx3 uint8 RGB, corridor and decision drawn on it
    vehicle: VehicleAheadResult | None  # None: the stream decides nothing
    lead: LeadVehicle | None = None  # only with a calibrated camera and a vehicle ahead


class StreamState:
    """What a camera stream carries from one frame to the next: the decision's hysteresis,
    the temporal smoothing's average and the camera's calibration.

    ``config`` None: the stream has no corridor and decides nothing (e.g. a rear camera).
    ``smoothing`` in [0, 1): the share of the running average kept at each frame (0: off).
    ``corridor_m`` (half-width, near, far in metres) replaces the config's image corridor
    once the camera is calibrated (:meth:`set_camera`).
    """

    def __init__(self, config: VehicleAheadConfig | None, smoothing: float = 0.0,
                 corridor_m: tuple[float, float, float] | None = None) -> None:
        self.camera: GroundCamera | None = None
        self.detector: VehicleAheadDetector | None = None
        self.smoother: TemporalSmoother | None = None
        self.reconfigure(config, smoothing, corridor_m)

    def reconfigure(self, config: VehicleAheadConfig | None, smoothing: float = 0.0,
                    corridor_m: tuple[float, float, float] | None = None) -> None:
        """New settings; a running decision keeps its published state, a running average
        continues when its strength is unchanged."""
        self._config, self._corridor_m = config, corridor_m
        effective = self._effective_config(self.camera)
        if effective is None:
            self.detector = None
        elif self.detector is None:
            self.detector = VehicleAheadDetector(effective)
        else:
            self.detector.reconfigure(effective)
        if smoothing <= 0.0:
            self.smoother = None
        elif self.smoother is None or self.smoother.weight != 1.0 - smoothing:
            self.smoother = TemporalSmoother(1.0 - smoothing)

    def set_camera(self, camera: GroundCamera | None) -> None:
        """The camera's calibration and mounting (None: unknown); with ``corridor_m`` the
        corridor follows it. Raises CalibrationError when the metric corridor is not in view
        (the previous corridor stays)."""
        effective = self._effective_config(camera)
        self.camera = camera
        if self.detector is not None and effective is not None:
            self.detector.reconfigure(effective)

    def _effective_config(self, camera: GroundCamera | None) -> VehicleAheadConfig | None:
        """The config, with the metric corridor projected through ``camera`` when both
        exist."""
        config = self._config
        if config is None or self._corridor_m is None or camera is None:
            return config
        return replace(config, corridor=metric_corridor(camera, *self._corridor_m))

    @property
    def corridor(self) -> Corridor | None:
        """The corridor in use (image coordinates, normalised), or None."""
        return None if self.detector is None else self.detector.config.corridor


def locate_lead(label_map: np.ndarray, stream: StreamState) -> LeadVehicle | None:
    """The nearest vehicle blob in the stream's corridor, ranged on the flat ground."""
    camera, config = stream.camera, stream.detector.config
    blob = nearest_vehicle_blob(label_map, config.vehicle_ids, config.corridor)
    if blob is None or camera is None:
        return None
    height, width = label_map.shape
    # The calibration may be for another resolution of the same camera: scale to it.
    point = camera.pixel_to_ground(blob.contact_x * camera.width / width,
                                   blob.contact_y * camera.height / height)
    if point is None:
        return None
    return LeadVehicle(tuple(float(v) for v in point), camera.ground_range(point),
                       (blob.contact_x, blob.contact_y))


@dataclass(frozen=True)
class FrameInput:
    """One decoded frame of one stream, what to compute for it, and its header stamp (s)."""

    image: DecodedImage
    stream: StreamState
    request: OutputRequest | None = None
    stamp_s: float | None = None  # lets the stream's smoothing notice gaps


def process_frames(pipeline: SegmentationPipeline, frames: list[FrameInput],
                   timer: Timer | None = None) -> list[FrameResult]:
    """Segment the frames (one network call on the GPU for several cameras' frames), then
    decide "vehicle ahead", range the lead and draw, per frame with its stream's state."""
    stage = timer or untimed
    jobs = [FrameJob(frame.image.pixels, frame.image.channel_order,
                     frame.request or OutputRequest(), frame.stream.smoother, frame.stamp_s)
            for frame in frames]
    hosts = pipeline.segment_batch(jobs, timer)
    return [_decide(host, frame.stream, stage)
            for host, frame in zip(hosts, frames, strict=True)]


def process_frame(pipeline: SegmentationPipeline, image: DecodedImage, stream: StreamState,
                  request: OutputRequest | None = None, timer: Timer | None = None,
                  stamp_s: float | None = None) -> FrameResult:
    """One frame through :func:`process_frames`."""
    return process_frames(pipeline, [FrameInput(image, stream, request, stamp_s)], timer)[0]


def _decide(host: HostSegmentation, stream: StreamState, stage: Timer) -> FrameResult:
    """The stream's decision, lead and drawing on one frame's segmentation."""
    vehicle = lead = None
    if stream.detector is not None:
        with stage("vehicle"):
            vehicle = stream.detector.update(host.label_map)
            if vehicle.vehicle_ahead and stream.camera is not None:
                lead = locate_lead(host.label_map, stream)
        if host.overlay is not None:
            with stage("drawing"):
                draw_decision(host.overlay, stream.corridor, vehicle, lead)
    return FrameResult(host.label_map, host.confidence, host.color_mask, host.overlay,
                       vehicle, lead)
