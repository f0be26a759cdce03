"""Flat-ground geometry: ranges of ground points, the metric corridor, the lead vehicle.

A synthetic camera (a CameraInfo with known intrinsics, mounted at a known height and pitch)
"renders" the flat ground: vehicles are drawn into a label map exactly where their
ground-contact points project, and the frame path must range them back.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from seg_perception.core.corridor import Corridor
from seg_perception.core.frame import StreamState, locate_lead
from seg_perception.core.geometry import (
    CalibrationError,
    GroundCamera,
    clip_to_unit_square,
    metric_corridor,
)
from seg_perception.core.vehicle_ahead import VehicleAheadConfig, nearest_vehicle_blob

CAR = 13  # a Cityscapes-like id; the decision is told it is a vehicle


def camera_info(width=1920, height=1080, fx=1400.0, d=()):
    return SimpleNamespace(k=[fx, 0.0, width / 2, 0.0, fx, height / 2, 0.0, 0.0, 1.0],
                           d=list(d), width=width, height=height,
                           distortion_model="plumb_bob")


@pytest.fixture
def camera() -> GroundCamera:
    return GroundCamera.from_camera_info(camera_info(), height_m=1.5, pitch_rad=math.radians(3))


def render_vehicle(labels: np.ndarray, camera: GroundCamera, lateral_m: float,
                   forward_m: float, half_width_m: float = 0.9, tall_m: float = 1.4) -> None:
    """Fill the pixels whose centres see the vehicle's rear face: a box standing on the ground
    at ``forward_m``, its bottom edge exactly at the ground-contact row."""
    left = camera.ground_to_pixel(lateral_m - half_width_m, forward_m)
    right = camera.ground_to_pixel(lateral_m + half_width_m, forward_m)
    contact_v = camera.ground_to_pixel(lateral_m, forward_m)[1]
    top_v = contact_v - tall_m * camera.camera_matrix[1][1] / forward_m  # roughly its height
    rows = np.arange(labels.shape[0]) + 0.5
    cols = np.arange(labels.shape[1]) + 0.5
    inside_rows = (rows >= top_v) & (rows < contact_v)
    inside_cols = (cols >= left[0]) & (cols < right[0])
    labels[np.ix_(inside_rows, inside_cols)] = CAR


@pytest.mark.parametrize("forward_m", [5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0])
@pytest.mark.parametrize("lateral_m", [0.0, 0.6])
def test_lead_vehicle_range_is_recovered_within_two_percent(camera, forward_m, lateral_m):
    labels = np.zeros((camera.height, camera.width), np.uint8)
    render_vehicle(labels, camera, lateral_m, forward_m)
    stream = StreamState(VehicleAheadConfig(vehicle_ids=(CAR,)), corridor_m=(2.0, 3.0, 80.0))
    stream.set_camera(camera)
    lead = locate_lead(labels, stream)
    assert lead is not None
    assert lead.range_m == pytest.approx(forward_m, rel=0.02)
    lateral, down, ahead = camera.level(lead.point)
    assert down == pytest.approx(1.5)  # on the ground
    assert lateral == pytest.approx(lateral_m, abs=0.02 * forward_m + 0.05)


def test_ground_points_round_trip_through_pixels(camera):
    for forward_m in (3.0, 5.0, 12.5, 33.0, 60.0, 120.0):
        for lateral_m in (-3.5, 0.0, 2.0):
            u, v = camera.ground_to_pixel(lateral_m, forward_m)
            point = camera.pixel_to_ground(u, v)
            assert camera.ground_range(point) == pytest.approx(forward_m, rel=1e-9)
            assert point[0] == pytest.approx(lateral_m, abs=1e-9)
    assert camera.pixel_to_ground(960, 10) is None  # above the horizon


def test_distortion_is_undone_when_ranging():
    distorted = GroundCamera.from_camera_info(camera_info(d=(-0.12, 0.02, 0.001, -0.001, 0.0)),
                                              1.2, math.radians(5))
    for forward_m in (5.0, 20.0, 60.0):
        u, v = distorted.ground_to_pixel(1.5, forward_m)
        assert distorted.ground_range(distorted.pixel_to_ground(u, v)) == \
            pytest.approx(forward_m, rel=1e-6)


def test_metric_corridor_round_trips_to_the_ground(camera):
    corridor = metric_corridor(camera, 1.8, 6.0, 40.0)
    assert len(corridor.vertices) == 4  # all of it is in view: nothing clipped
    recovered = sorted(
        (round(p[0], 6), round(camera.ground_range(p), 6))
        for p in (camera.pixel_to_ground(x * camera.width, y * camera.height)
                  for x, y in corridor.vertices))
    assert recovered == sorted([(-1.8, 6.0), (1.8, 6.0), (-1.8, 40.0), (1.8, 40.0)])


def test_metric_corridor_is_clipped_to_the_image(camera):
    near_cut = metric_corridor(camera, 1.8, 1.0, 40.0)  # 1 m ahead is below the image
    assert all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in near_cut.vertices)
    assert max(y for _, y in near_cut.vertices) == 1.0
    with pytest.raises(CalibrationError, match="not in the camera's view"):
        metric_corridor(GroundCamera.from_camera_info(camera_info(), 1.5, -0.5), 1.8, 5, 40)
    with pytest.raises(CalibrationError, match="0 < near < far"):
        metric_corridor(camera, 1.8, 40.0, 5.0)


def test_the_stream_uses_the_metric_corridor_once_calibrated(camera):
    config = VehicleAheadConfig(vehicle_ids=(CAR,))
    stream = StreamState(config, corridor_m=(1.8, 6.0, 40.0))
    assert stream.corridor == config.corridor  # not calibrated: the image corridor
    stream.set_camera(camera)
    assert stream.corridor == metric_corridor(camera, 1.8, 6.0, 40.0)
    stream.set_camera(None)
    assert stream.corridor == config.corridor


def test_clipping_keeps_inner_polygons_and_drops_outer_ones():
    inner = [(0.2, 0.2), (0.8, 0.2), (0.5, 0.9)]
    assert clip_to_unit_square(inner) == inner
    assert clip_to_unit_square([(2, 2), (3, 2), (3, 3)]) == []
    clipped = clip_to_unit_square([(-1, 0.5), (2, 0.5), (0.5, 2)])
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in clipped) and len(clipped) >= 3


def test_nearest_blob_is_the_lowest_and_specks_are_ignored():
    labels = np.zeros((100, 200), np.uint8)
    labels[20:40, 80:120] = CAR  # far
    labels[50:70, 60:100] = CAR  # near: reaches lower
    labels[95:97, 10:12] = CAR  # a speck near the bottom
    whole = Corridor(((0, 0), (1, 0), (1, 1), (0, 1)))
    blob = nearest_vehicle_blob(labels, (CAR,), whole)
    assert (blob.contact_x, blob.contact_y, blob.pixels) == (80.0, 70.0, 800)
    assert nearest_vehicle_blob(np.zeros((100, 200), np.uint8), (CAR,), whole) is None


def test_bad_calibration_is_refused_with_a_reason():
    with pytest.raises(CalibrationError, match="not a calibrated pinhole"):
        GroundCamera.from_camera_info(camera_info(fx=0.0), 1.5, 0.0)
    with pytest.raises(CalibrationError, match="camera_height"):
        GroundCamera.from_camera_info(camera_info(), 0.0, 0.0)
    bad_model = camera_info(d=(0.1, 0.0, 0.0, 0.0))
    bad_model.distortion_model = "equidistant"
    with pytest.raises(CalibrationError, match="equidistant"):
        GroundCamera.from_camera_info(bad_model, 1.5, 0.0)
