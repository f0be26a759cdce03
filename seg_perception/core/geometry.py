"""A calibrated camera above flat ground: pixels to metres and metres to pixels.

Planners act on range, not on "somewhere in a trapezoid". With the camera's intrinsics (from
sensor_msgs/CameraInfo) and its mounting (height above the ground, pitch down), a pixel on
the ground back-projects to a point in the camera optical frame (x right, y down, z forward,
metres), and a ground rectangle ("my lane, 3 to 40 m") projects into the image as a corridor
polygon. The ground is taken to be a plane (a flat-ground model): good on roads, wrong on
hills, and only for points that touch the ground (a vehicle's contact point, not its roof).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from seg_perception.core.corridor import Corridor
from seg_perception.errors import SegPerceptionError

__all__ = ["CalibrationError", "GroundCamera", "clip_to_unit_square", "metric_corridor"]


class CalibrationError(SegPerceptionError, ValueError):
    """The camera calibration or mounting is unusable; the message says why."""


@dataclass(frozen=True)
class GroundCamera:
    """Pinhole intrinsics (with optional plumb-bob distortion) and the mounting above ground.

    ``height_m``: the optical centre's height above the ground plane. ``pitch_rad``: the
    optical axis's angle below the horizontal (positive looks down). Roll is taken as zero.
    """

    width: int
    height: int
    camera_matrix: tuple[tuple[float, float, float], ...]  # K, 3x3
    distortion: tuple[float, ...]  # OpenCV order (k1, k2, p1, p2[, k3, ...]); () = none
    height_m: float
    pitch_rad: float

    def __post_init__(self) -> None:
        k = np.asarray(self.camera_matrix, np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise CalibrationError(f"camera matrix K {k.tolist()} is not a calibrated pinhole "
                                   "matrix (fx, fy > 0): is the camera calibrated?")
        if self.width < 1 or self.height < 1:
            raise CalibrationError(f"calibration image size {self.width}x{self.height} is "
                                   "empty")
        if not (math.isfinite(self.height_m) and self.height_m > 0):
            raise CalibrationError(f"camera_height must be a positive number of metres, got "
                                   f"{self.height_m}")
        if not (math.isfinite(self.pitch_rad) and abs(self.pitch_rad) < math.pi / 2):
            raise CalibrationError(f"camera_pitch must be within (-pi/2, pi/2) rad, got "
                                   f"{self.pitch_rad}")

    @classmethod
    def from_camera_info(cls, info: Any, height_m: float, pitch_rad: float) -> GroundCamera:
        """From a sensor_msgs/CameraInfo (duck-typed: ``k``, ``d``, ``width``, ``height``,
        ``distortion_model``) and the mounting parameters."""
        k = [float(v) for v in info.k]
        if len(k) != 9:
            raise CalibrationError(f"CameraInfo.k has {len(k)} values, not 9")
        model = str(getattr(info, "distortion_model", "") or "")
        distortion = tuple(float(v) for v in info.d)
        if distortion and model not in ("plumb_bob", "rational_polynomial"):
            raise CalibrationError(f"distortion model {model!r} is not supported (plumb_bob, "
                                   "rational_polynomial)")
        return cls(int(info.width), int(info.height), (tuple(k[0:3]), tuple(k[3:6]),
                                                       tuple(k[6:9])),
                   distortion, float(height_m), float(pitch_rad))

    # --- frames: level (x right, y down to the ground, z forward, horizontal) vs optical -------

    def _to_level(self) -> np.ndarray:
        """Rotation taking optical-frame vectors to the level frame (pitch about x)."""
        c, s = math.cos(self.pitch_rad), math.sin(self.pitch_rad)
        return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])

    def _k(self) -> np.ndarray:
        return np.asarray(self.camera_matrix, np.float64)

    def pixel_to_ground(self, u: float, v: float) -> np.ndarray | None:
        """The ground point seen at pixel (u, v) (continuous coordinates, calibration image
        size) in the optical frame, metres; None above the horizon."""
        pixel = np.array([[[u, v]]], np.float64)
        if self.distortion:
            normalised = cv2.undistortPoints(pixel, self._k(), np.asarray(self.distortion))
            x, y = normalised[0, 0]
        else:
            k = self._k()
            x, y = (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]
        ray = self._to_level() @ np.array([x, y, 1.0])
        if ray[1] <= 1e-9:
            return None  # on or above the horizon: never meets the ground ahead
        level = ray * (self.height_m / ray[1])
        return self._to_level().T @ level

    def ground_to_pixel(self, lateral_m: float, forward_m: float) -> tuple[float, float] | None:
        """The pixel of the ground point ``lateral_m`` right of and ``forward_m`` ahead of the
        camera (measured horizontally); None when it is behind the camera."""
        optical = self._to_level().T @ np.array([lateral_m, self.height_m, forward_m])
        if optical[2] <= 1e-9:
            return None
        projected, _ = cv2.projectPoints(optical.reshape(1, 1, 3), np.zeros(3), np.zeros(3),
                                         self._k(), np.asarray(self.distortion or (0.0,) * 4))
        u, v = projected[0, 0]
        return float(u), float(v)

    def level(self, point: np.ndarray) -> np.ndarray:
        """An optical-frame point in the level frame: x right, y down (the ground is at
        ``y = height_m``), z ahead horizontally."""
        return self._to_level() @ np.asarray(point, np.float64)

    def ground_range(self, point: np.ndarray) -> float:
        """Horizontal distance ahead of the camera of an optical-frame point (metres)."""
        return float(self.level(point)[2])


def clip_to_unit_square(polygon: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """A convex-or-not polygon clipped to [0, 1] x [0, 1] (Sutherland-Hodgman)."""
    points = [tuple(map(float, p)) for p in polygon]
    for axis, bound, keep_below in ((0, 0.0, False), (0, 1.0, True), (1, 0.0, False),
                                    (1, 1.0, True)):
        if not points:
            break

        def inside(p: tuple[float, float], axis: int = axis, bound: float = bound,
                   keep_below: bool = keep_below) -> bool:
            return p[axis] <= bound if keep_below else p[axis] >= bound

        clipped = []
        for index, current in enumerate(points):
            previous = points[index - 1]
            if inside(current) != inside(previous):
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                crossing = [previous[0] + t * (current[0] - previous[0]),
                            previous[1] + t * (current[1] - previous[1])]
                crossing[axis] = bound
                clipped.append((crossing[0], crossing[1]))
            if inside(current):
                clipped.append(current)
        points = clipped
    deduplicated = [p for i, p in enumerate(points) if p != points[i - 1]]
    return deduplicated if len(deduplicated) >= 3 else []


def metric_corridor(camera: GroundCamera, half_width_m: float, near_m: float,
                    far_m: float) -> Corridor:
    """The ground rectangle ``|x| <= half_width_m``, ``near_m <= z <= far_m`` seen by
    ``camera``, as a corridor polygon in normalised image coordinates (clipped to the image).

    Raises :class:`CalibrationError` when none of it is visible.
    """
    if not (0 < half_width_m and 0 < near_m < far_m):
        raise CalibrationError(f"corridor_m needs a positive half-width and 0 < near < far, got "
                               f"[{half_width_m}, {near_m}, {far_m}]")
    corners = [(-half_width_m, near_m), (half_width_m, near_m), (half_width_m, far_m),
               (-half_width_m, far_m)]
    pixels = [camera.ground_to_pixel(x, z) for x, z in corners]
    if any(p is None for p in pixels):
        raise CalibrationError(f"corridor_m near edge {near_m} m is behind the camera")
    normalised = [(u / camera.width, v / camera.height) for u, v in pixels]
    clipped = clip_to_unit_square(normalised)
    if not clipped:
        raise CalibrationError(f"corridor_m {half_width_m} m x {near_m}..{far_m} m is not in "
                               "the camera's view (check camera_height, camera_pitch, "
                               "CameraInfo)")
    return Corridor(tuple(clipped))
