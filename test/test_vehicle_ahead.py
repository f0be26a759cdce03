"""Tests for seg_perception.core.corridor and .vehicle_ahead (ROS-free; CUDA checks skip without
a GPU)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from seg_perception.core.corridor import DEFAULT_CORRIDOR, Corridor, CorridorError
from seg_perception.core.vehicle_ahead import (
    DEFAULT_MIN_BLOB_FRACTION,
    DEFAULT_MIN_COVERAGE,
    DEFAULT_VEHICLE_CLASS_NAMES,
    GROUND_TRUTH_MIN_COVERAGE,
    Hysteresis,
    VehicleAheadConfig,
    VehicleAheadDetector,
    VehicleAheadResult,
    VehicleClassError,
    check_in_range,
    corridor_coverage,
    ground_truth_vehicle_ahead,
    resolve_vehicle_class_ids,
)

CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle", "background",
)
CAMVID_NAMES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist", "Unlabelled",
)
CAR = 13  # Cityscapes id used in synthetic label maps

# Polygons used for exactness checks (all valid, simple).
POLYGONS = {
    "default_ccw": DEFAULT_CORRIDOR,
    "default_cw": tuple(reversed(DEFAULT_CORRIDOR)),
    "triangle": ((0.1, 0.9), (0.9, 0.8), (0.4, 0.05)),
    "concave_arrow": ((0.0, 1.0), (0.5, 0.2), (1.0, 1.0), (0.5, 0.6)),
    "l_shape": ((0.1, 0.1), (0.6, 0.1), (0.6, 0.4), (0.3, 0.4), (0.3, 0.9), (0.1, 0.9)),
    "full_image": ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)),
    # Vertices and edges exactly on pixel centres of a 12x16 image (boundary convention).
    "on_centres": ((1.5 / 16, 0.5 / 12), (9.5 / 16, 0.5 / 12), (9.5 / 16, 6.5 / 12),
                   (1.5 / 16, 6.5 / 12)),
    "slanted_on_centres": ((0.5 / 16, 0.5 / 12), (15.5 / 16, 11.5 / 12), (0.5 / 16, 11.5 / 12)),
}


def reference_mask(vertices, height: int, width: int) -> np.ndarray:
    """Independent per-pixel even-odd ray cast (PNPOLY) in exact rational arithmetic."""
    verts = [(Fraction(x), Fraction(y)) for x, y in vertices]
    out = np.zeros((height, width), dtype=bool)
    for row in range(height):
        py = Fraction(2 * row + 1, 2 * height)
        for col in range(width):
            px = Fraction(2 * col + 1, 2 * width)
            inside = False
            j = len(verts) - 1
            for i in range(len(verts)):
                xi, yi = verts[i]
                xj, yj = verts[j]
                if (yi > py) != (yj > py) and px < (xj - xi) * (py - yi) / (yj - yi) + xi:
                    inside = not inside
                j = i
            out[row, col] = inside
    return out


# ------------------------------------------------------------------------------------------
# Corridor mask
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(POLYGONS))
@pytest.mark.parametrize("size", [(12, 16), (7, 5), (1, 1)])
def test_mask_matches_reference_loop(name: str, size: tuple[int, int]) -> None:
    corridor = Corridor(POLYGONS[name])
    height, width = size
    expected = reference_mask(POLYGONS[name], height, width)
    np.testing.assert_array_equal(corridor.mask_numpy(height, width), expected)
    mask = corridor.mask(height, width)
    assert mask.dtype == torch.bool and mask.shape == (height, width)
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert corridor.pixel_count(height, width) == int(expected.sum())


def test_mask_orientation_independent() -> None:
    cw = Corridor(tuple(reversed(DEFAULT_CORRIDOR)))
    ccw = Corridor(DEFAULT_CORRIDOR)
    rotated = Corridor(DEFAULT_CORRIDOR[2:] + DEFAULT_CORRIDOR[:2])
    for height, width in [(12, 16), (37, 53), (100, 64)]:
        np.testing.assert_array_equal(cw.mask_numpy(height, width), ccw.mask_numpy(height, width))
        np.testing.assert_array_equal(
            rotated.mask_numpy(height, width), ccw.mask_numpy(height, width))


def test_mask_boundary_convention_is_half_open() -> None:
    # Rectangle [0.375, 0.875] x [0.375, 0.875] on 4x4: centres 0.125, 0.375, 0.625, 0.875.
    # Left/top boundary centres are inside, right/bottom boundary centres outside.
    corridor = Corridor(((0.375, 0.375), (0.875, 0.375), (0.875, 0.875), (0.375, 0.875)))
    expected = np.zeros((4, 4), dtype=bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(corridor.mask_numpy(4, 4), expected)


def test_adjacent_corridors_partition_pixels() -> None:
    left = Corridor(((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)))
    right = Corridor(((0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)))
    for height, width in [(3, 3), (5, 7), (6, 6)]:
        a, b = left.mask_numpy(height, width), right.mask_numpy(height, width)
        assert not np.any(a & b)
        assert np.all(a | b)


def test_mask_is_cached_and_read_only() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    assert corridor.mask(48, 64) is corridor.mask(48, 64)
    assert corridor.mask(48, 64) is Corridor(DEFAULT_CORRIDOR).mask(48, 64, torch.device("cpu"))
    arr = corridor.mask_numpy(48, 64)
    assert not arr.flags.writeable


@pytest.mark.parametrize("size", [(720, 1280), (512, 1024), (1080, 1920)])
def test_mask_large_resolutions(size: tuple[int, int]) -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    height, width = size
    mask = corridor.mask(height, width)
    assert mask.shape == size
    # Pixel count approximates the polygon area (error bounded by the perimeter in pixels).
    assert abs(int(mask.sum()) - corridor.area * height * width) < 2 * (height + width)


def test_thin_corridor_has_no_pixels_and_zero_coverage() -> None:
    thin = Corridor(((0.5, 0.0), (0.5001, 0.0), (0.5001, 1.0), (0.5, 1.0)))
    labels = torch.full((8, 8), CAR, dtype=torch.uint8)
    assert thin.pixel_count(8, 8) == 0
    assert corridor_coverage(labels, (CAR,), thin) == 0.0
    assert corridor_coverage(torch.zeros((0, 0), dtype=torch.uint8), (CAR,), thin) == 0.0
    # At a high enough resolution it does contain pixels.
    assert thin.pixel_count(4, 20000) == 4 * 2


def test_area() -> None:
    assert Corridor(DEFAULT_CORRIDOR).area == pytest.approx(0.5 * (0.5 + 0.1) * 0.45)
    assert Corridor(POLYGONS["full_image"]).area == 1.0


def test_from_flat_and_to_flat_round_trip() -> None:
    flat = [0.25, 1.0, 0.75, 1.0, 0.55, 0.55, 0.45, 0.55]
    corridor = Corridor.from_flat(flat)
    assert corridor == Corridor(DEFAULT_CORRIDOR)
    assert corridor.vertices == DEFAULT_CORRIDOR
    assert corridor.to_flat() == flat
    assert Corridor.from_flat(np.array(flat)) == corridor
    # Lists of lists are normalised to hashable tuples.
    assert Corridor([[0.25, 1.0], [0.75, 1], [0.55, 0.55], [0.45, 0.55]]) == corridor


# ------------------------------------------------------------------------------------------
# Corridor validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vertices", "reason"),
    [
        ((), "at least 3"),
        (((0.1, 0.1), (0.9, 0.9)), "at least 3"),
        (((0.1, 0.1), (1.1, 0.9), (0.1, 0.9)), "outside [0, 1]"),
        (((0.1, -0.01), (0.9, 0.9), (0.1, 0.9)), "outside [0, 1]"),
        (((0.1, float("nan")), (0.9, 0.9), (0.1, 0.9)), "not finite"),
        (((0.1, 0.1), (float("inf"), 0.9), (0.1, 0.9)), "not finite"),
        (((0.1, 0.1), (0.5, 0.5), (0.9, 0.9)), "collinear"),
        (((0.1, 0.1), (0.5, 0.5), (0.9, 0.9), (0.3, 0.3)), "collinear"),
        (((0.2, 0.8), (1.0, 0.0), (0.8, 0.2)), "zero area"),  # collinear up to float noise
        (((0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)), "self-intersecting"),  # bow-tie
        (((0.2, 0.2), (0.8, 0.2), (0.5, 0.2), (0.5, 0.8)), "self-intersecting"),  # doubles back
        (((0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.5, 0.1), (0.1, 0.9)), "self-intersecting"),
        (((0.1, 0.1), (0.9, 0.1), (0.1, 0.9), (0.1, 0.1)), "identical"),  # closed explicitly
        (((0.1, 0.1), (0.1, 0.1), (0.9, 0.1), (0.1, 0.9)), "identical"),
        (((0.1, 0.1), (0.9,), (0.1, 0.9)), "2 coordinates"),
        (((0.1, 0.1), ("a", 0.1), (0.1, 0.9)), "numeric"),
        ("abc", "pairs"),
        (5, "pairs"),
    ],
)
def test_corridor_validation_failures(vertices, reason: str) -> None:
    with pytest.raises(CorridorError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        Corridor(vertices)


def test_touching_non_adjacent_edges_is_self_intersecting() -> None:
    # Vertex 3 lies exactly on edge 0: the outline touches itself.
    with pytest.raises(CorridorError, match="self-intersecting"):
        Corridor(((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.0), (0.0, 1.0)))


def test_collinear_vertex_on_straight_edge_is_valid() -> None:
    corridor = Corridor(((0.0, 1.0), (0.5, 1.0), (1.0, 1.0), (0.5, 0.0)))
    np.testing.assert_array_equal(corridor.mask_numpy(9, 11), reference_mask(
        corridor.vertices, 9, 11))


@pytest.mark.parametrize("flat", [[0.1, 0.2, 0.3], [0.1] * 7, [0.1]])
def test_from_flat_odd_length(flat: list[float]) -> None:
    with pytest.raises(CorridorError, match="even"):
        Corridor.from_flat(flat)


def test_from_flat_too_few_values() -> None:
    with pytest.raises(CorridorError, match="at least 3"):
        Corridor.from_flat([])
    with pytest.raises(CorridorError, match="at least 3"):
        Corridor.from_flat([0.1, 0.2, 0.3, 0.4])


def test_error_classes_are_value_errors() -> None:
    assert issubclass(CorridorError, ValueError)
    assert issubclass(VehicleClassError, ValueError)


# ------------------------------------------------------------------------------------------
# Class name resolution
# ------------------------------------------------------------------------------------------


def test_resolve_defaults_cityscapes() -> None:
    # Two-wheelers are not vehicles for the decision (CamVid-tuned; see DEFAULT_VEHICLE_...).
    assert resolve_vehicle_class_ids(CITYSCAPES_NAMES) == (13, 14, 15, 16)


def test_resolve_defaults_camvid() -> None:
    assert resolve_vehicle_class_ids(CAMVID_NAMES) == (8,)


def test_resolve_explicit_case_insensitive() -> None:
    assert resolve_vehicle_class_ids(CITYSCAPES_NAMES, ["CAR", "Bus"]) == (13, 15)
    assert resolve_vehicle_class_ids(CAMVID_NAMES, ["car", "bicyclist"]) == (8, 10)
    assert resolve_vehicle_class_ids(CAMVID_NAMES, "car") == (8,)
    assert resolve_vehicle_class_ids(CITYSCAPES_NAMES, ["car", "car"]) == (13,)


def test_resolve_unknown_names_listed_with_known() -> None:
    with pytest.raises(VehicleClassError) as info:
        resolve_vehicle_class_ids(CAMVID_NAMES, ["car", "truck", "spaceship"])
    message = str(info.value)
    assert "truck" in message and "spaceship" in message
    assert "Car" in message and "Pedestrian" in message  # known names are listed


def test_resolve_empty_list_rejected() -> None:
    with pytest.raises(VehicleClassError, match="empty"):
        resolve_vehicle_class_ids(CITYSCAPES_NAMES, [])


def test_resolve_defaults_absent_rejected() -> None:
    with pytest.raises(VehicleClassError, match="none of the default"):
        resolve_vehicle_class_ids(["road", "sky"])


def test_default_names_constant() -> None:
    assert DEFAULT_VEHICLE_CLASS_NAMES == ("car", "truck", "bus", "train")
    assert GROUND_TRUTH_MIN_COVERAGE == 0.05
    # The tuned prediction-side defaults are what a default config uses (node, eval, README).
    config = VehicleAheadConfig()
    assert config.min_coverage == DEFAULT_MIN_COVERAGE == 0.05
    assert config.min_blob_fraction == DEFAULT_MIN_BLOB_FRACTION == 0.0


# ------------------------------------------------------------------------------------------
# Coverage
# ------------------------------------------------------------------------------------------


def test_coverage_rectangle_of_cars_matches_independent_count() -> None:
    height, width = 12, 16
    ref = reference_mask(DEFAULT_CORRIDOR, height, width)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[9:12, 6:10] = CAR  # a car block in the lower middle of the image
    expected = int((ref & (labels == CAR)).sum()) / int(ref.sum())
    assert 0.0 < expected < 1.0
    coverage = corridor_coverage(torch.from_numpy(labels), (CAR,), Corridor(DEFAULT_CORRIDOR))
    assert coverage == expected


def test_coverage_zero_and_one() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    assert corridor_coverage(torch.zeros((48, 64), dtype=torch.uint8), (CAR,), corridor) == 0.0
    full = torch.full((48, 64), CAR, dtype=torch.uint8)
    assert corridor_coverage(full, (CAR,), corridor) == 1.0
    mixed = torch.randint(13, 19, (48, 64), dtype=torch.uint8)
    assert corridor_coverage(mixed, (13, 14, 15, 16, 17, 18), corridor) == 1.0
    assert corridor_coverage(full, (), corridor) == 0.0


def test_coverage_ignores_pixels_outside_corridor() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    mask = corridor.mask_numpy(48, 64)
    labels = np.where(mask, 0, CAR).astype(np.uint8)
    assert corridor_coverage(labels, (CAR,), corridor) == 0.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.uint16, np.int16])
def test_numpy_and_torch_agree(dtype) -> None:
    rng = np.random.default_rng(1)
    corridor = Corridor(DEFAULT_CORRIDOR)
    labels = rng.integers(0, 20, size=(45, 71)).astype(dtype)
    ids = (13, 14, 15, 16, 17, 18)
    from_numpy = corridor_coverage(labels, ids, corridor)
    from_torch = corridor_coverage(torch.from_numpy(labels.astype(np.int64)), ids, corridor)
    assert from_numpy == from_torch
    mask = corridor.mask_numpy(45, 71)
    assert from_numpy == int((np.isin(labels, ids) & mask).sum()) / int(mask.sum())


def test_numpy_non_contiguous_input() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    labels = np.random.default_rng(2).integers(0, 20, size=(40, 60), dtype=np.uint8)
    flipped = labels[::-1, ::-1].T.T  # negative strides
    assert corridor_coverage(flipped, (CAR,), corridor) == corridor_coverage(
        np.ascontiguousarray(flipped), (CAR,), corridor)


def test_ids_outside_dtype_range_never_match() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    labels = torch.full((10, 10), 300 % 256, dtype=torch.uint8)
    assert corridor_coverage(labels, (300,), corridor) == 0.0
    assert corridor_coverage(labels.to(torch.int64), (44,), corridor) == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros((4, 4), dtype=torch.float32),
        torch.zeros((4, 4), dtype=torch.bool),
        torch.zeros((1, 4, 4), dtype=torch.uint8),
        np.zeros((4,), dtype=np.uint8),
        np.zeros((4, 4), dtype=np.float64),
        [[0, 1], [2, 3]],
    ],
)
def test_bad_label_maps_rejected(bad) -> None:
    with pytest.raises(ValueError):
        corridor_coverage(bad, (CAR,), Corridor(DEFAULT_CORRIDOR))


def test_negative_vehicle_id_rejected() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        corridor_coverage(torch.zeros((4, 4), dtype=torch.uint8), (-1,), Corridor())


def test_ground_truth_rule() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    height, width = 40, 40
    mask = corridor.mask_numpy(height, width)
    count = int(mask.sum())
    rows, cols = np.nonzero(mask)
    needed = math.ceil(0.05 * count)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[rows[:needed], cols[:needed]] = CAR
    assert ground_truth_vehicle_ahead(labels, (CAR,))
    labels[rows[needed - 1], cols[needed - 1]] = 0
    assert not ground_truth_vehicle_ahead(labels, (CAR,), corridor)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    labels = torch.randint(0, 20, (720, 1280), dtype=torch.uint8)
    cpu = corridor_coverage(labels, (13, 14, 15), corridor)
    gpu = corridor_coverage(labels.cuda(), (13, 14, 15), corridor)
    assert cpu == gpu
    assert corridor.mask(720, 1280, "cuda").is_cuda
    assert corridor.mask(720, 1280, "cuda").cpu().equal(corridor.mask(720, 1280))


# ------------------------------------------------------------------------------------------
# Threshold, hysteresis, detector
# ------------------------------------------------------------------------------------------


def _labels_with_coverage(corridor: Corridor, height: int, width: int, hits: int) -> np.ndarray:
    mask = corridor.mask_numpy(height, width)
    rows, cols = np.nonzero(mask)
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[rows[:hits], cols[:hits]] = CAR
    return labels


def test_threshold_boundary_is_positive() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    count = corridor.pixel_count(40, 40)
    hits = 7
    labels = _labels_with_coverage(corridor, 40, 40, hits)
    exact = hits / count
    detector = VehicleAheadDetector(VehicleAheadConfig(corridor, (CAR,), min_coverage=exact))
    result = detector.update(labels)
    assert result == VehicleAheadResult(coverage=exact, raw=True, vehicle_ahead=True)
    above = VehicleAheadDetector(
        VehicleAheadConfig(corridor, (CAR,), min_coverage=math.nextafter(exact, 1.0)))
    assert above.update(labels) == VehicleAheadResult(exact, raw=False, vehicle_ahead=False)


def test_hysteresis_sequence_on3_off2() -> None:
    hysteresis = Hysteresis(frames_on=3, frames_off=2)
    raw = [1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    expected = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0]
    assert [int(hysteresis.update(bool(r))) for r in raw] == expected
    hysteresis.reset()
    assert hysteresis.state is False
    assert [int(hysteresis.update(True)) for _ in range(3)] == [0, 0, 1]


def test_hysteresis_passthrough_by_default() -> None:
    hysteresis = Hysteresis()
    raw = [True, False, False, True, True, False]
    assert [hysteresis.update(r) for r in raw] == raw


@pytest.mark.parametrize("kwargs", [{"frames_on": 0}, {"frames_off": 0}, {"frames_on": -2},
                                    {"frames_on": 1.5}, {"frames_off": True}])
def test_hysteresis_invalid_frames(kwargs) -> None:
    with pytest.raises(ValueError):
        Hysteresis(**kwargs)


def test_detector_sequence_with_hysteresis() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    count = corridor.pixel_count(30, 40)
    hit = _labels_with_coverage(corridor, 30, 40, count)  # coverage 1
    miss = np.zeros((30, 40), dtype=np.uint8)
    detector = VehicleAheadDetector(VehicleAheadConfig(corridor, (CAR,), 0.05, 3, 2))
    frames = [hit, hit, miss, hit, hit, hit, hit, miss, hit, miss, miss, miss]
    expected = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    results = [detector.update(torch.from_numpy(f)) for f in frames]
    assert [int(r.vehicle_ahead) for r in results] == expected
    assert [r.raw for r in results] == [f is hit for f in frames]
    assert all(r.coverage in (0.0, 1.0) for r in results)


def test_detector_reconfigure_keeps_state() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    hit = np.full((20, 20), CAR, dtype=np.uint8)
    miss = np.zeros((20, 20), dtype=np.uint8)
    config = VehicleAheadConfig(corridor, (CAR,), 0.05, frames_on=1, frames_off=3)
    detector = VehicleAheadDetector(config)
    assert detector.update(hit).vehicle_ahead
    assert detector.update(miss).vehicle_ahead  # off-streak 1 of 3
    # Threshold change only: state and streak are kept.
    detector.reconfigure(VehicleAheadConfig(corridor, (CAR,), 0.5, frames_on=1, frames_off=3))
    assert detector.config.min_coverage == 0.5
    assert detector.update(miss).vehicle_ahead  # streak 2 of 3
    # Frame count change: state kept, streak restarts under the new count.
    detector.reconfigure(VehicleAheadConfig(corridor, (CAR,), 0.5, frames_on=1, frames_off=2))
    assert detector.state
    assert detector.update(miss).vehicle_ahead  # streak 1 of 2
    assert not detector.update(miss).vehicle_ahead
    detector.reset()
    assert not detector.state


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"min_coverage": -0.1}, r"\[0, 1\]"),
        ({"min_coverage": 1.5}, r"\[0, 1\]"),
        ({"min_coverage": float("nan")}, "nan"),
        ({"min_coverage": "x"}, "number"),
        ({"frames_on": 0}, "frames_on"),
        ({"frames_off": 0}, "frames_off"),
        ({"vehicle_ids": (-3,)}, ">= 0"),
        ({"vehicle_ids": (1.5,)}, "vehicle id must be an integer"),
        ({"corridor": ((0.0, 0.0), (1.0, 1.0))}, "at least 3"),
        ({"min_blob_fraction": -0.01}, r"\[0, 1\)"),
        ({"min_blob_fraction": 1.0}, r"\[0, 1\)"),
        ({"min_blob_fraction": float("nan")}, r"\[0, 1\)"),
        ({"min_blob_fraction": True}, "bool"),
        ({"min_blob_fraction": "x"}, "number"),
    ],
)
def test_config_validation(kwargs, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        VehicleAheadConfig(**kwargs)


def test_config_normalisation() -> None:
    config = VehicleAheadConfig(corridor=DEFAULT_CORRIDOR, vehicle_ids=[15, 13, 13],
                                min_coverage=0, frames_on=np.int64(2))
    assert config.corridor == Corridor(DEFAULT_CORRIDOR)
    assert config.vehicle_ids == (13, 15)
    assert config.min_coverage == 0.0 and isinstance(config.min_coverage, float)
    assert config.frames_on == 2 and type(config.frames_on) is int
    assert VehicleAheadConfig().corridor.vertices == DEFAULT_CORRIDOR


def test_range_check_names_the_setting_and_the_range() -> None:
    assert check_in_range("min_coverage", 1, 0.0, 1.0) == 1.0
    assert check_in_range("frames_on", 4, 1, 1000, integral=True) == 4
    with pytest.raises(ValueError, match="bool"):
        check_in_range("min_coverage", True, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"frames_off must be in \[1, 1000\]"):
        check_in_range("frames_off", 0, 1, 1000, integral=True)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        check_in_range("min_blob_fraction", 1.0, 0.0, 1.0, high_open=True)
    assert check_in_range("min_blob_fraction", np.float32(0.25), 0.0, 1.0) == 0.25


# ------------------------------------------------------------------------------------------
# Prediction-side clean-up (min_blob_fraction)
# ------------------------------------------------------------------------------------------


def _full_corridor() -> Corridor:
    return Corridor(POLYGONS["full_image"])


def test_blob_cleanup_drops_small_groups_only() -> None:
    labels = np.zeros((20, 20), dtype=np.uint8)  # the corridor is the whole image: 400 px
    labels[2:12, 2:12] = CAR  # 100 px
    labels[15:17, 15:17] = CAR  # 4 px speck
    labels[0, 19] = CAR  # 1 px speck
    corridor = _full_corridor()
    assert corridor_coverage(labels, (CAR,), corridor) == 105 / 400
    assert corridor_coverage(labels, (CAR,), corridor, 0.0) == 105 / 400
    assert corridor_coverage(labels, (CAR,), corridor, 4 / 400) == 104 / 400  # >= is kept
    assert corridor_coverage(labels, (CAR,), corridor, 5 / 400) == 100 / 400
    assert corridor_coverage(labels, (CAR,), corridor, 101 / 400) == 0.0


def test_blob_cleanup_uses_8_connectivity_and_all_vehicle_ids() -> None:
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2, 2] = CAR
    labels[3, 3] = 14  # diagonal neighbour of another vehicle class: one group of 2
    corridor = _full_corridor()
    assert corridor_coverage(labels, (CAR, 14), corridor, 2 / 100) == 2 / 100
    assert corridor_coverage(labels, (CAR,), corridor, 2 / 100) == 0.0  # alone: 1 px


def test_blob_cleanup_counts_only_the_part_inside_the_corridor() -> None:
    height, width = 40, 64
    corridor = Corridor(DEFAULT_CORRIDOR)
    mask = corridor.mask_numpy(height, width)
    labels = np.full((height, width), CAR, dtype=np.uint8)
    labels[:, : width // 2 - 1] = 0  # a car straddling the corridor's left edge...
    inside = int((mask & (labels == CAR)).sum())
    count = int(mask.sum())
    assert corridor_coverage(labels, (CAR,), corridor, inside / count) == inside / count
    assert corridor_coverage(labels, (CAR,), corridor, (inside + 1) / count) == 0.0


def test_blob_cleanup_is_resolution_independent() -> None:
    corridor = Corridor(DEFAULT_CORRIDOR)
    small = np.zeros((36, 48), dtype=np.uint8)
    small[30:34, 22:26] = CAR  # a 4x4 block low in the corridor
    large = np.kron(small, np.ones((10, 10), dtype=np.uint8))  # the same scene at 10x
    for fraction in (0.0, 0.005, 0.02, 0.05, 0.1):
        a = corridor_coverage(small, (CAR,), corridor, fraction)
        b = corridor_coverage(large, (CAR,), corridor, fraction)
        assert a == pytest.approx(b, abs=0.01)
    assert corridor_coverage(small, (CAR,), corridor, 0.05) > 0.05  # the block is ~7 %...
    assert corridor_coverage(large, (CAR,), corridor, 0.1) == 0.0  # ...below 10 %: dropped


def test_blob_cleanup_torch_matches_numpy_and_detector_uses_it() -> None:
    rng = np.random.default_rng(5)
    labels = (rng.random((60, 80)) < 0.08).astype(np.uint8) * CAR  # salt noise...
    labels[40:58, 30:50] = CAR  # ...and one real car
    corridor = Corridor(DEFAULT_CORRIDOR)
    noisy = corridor_coverage(labels, (CAR,), corridor)
    clean = corridor_coverage(labels, (CAR,), corridor, 0.01)
    assert clean < noisy
    assert corridor_coverage(torch.from_numpy(labels), (CAR,), corridor, 0.01) == clean
    config = VehicleAheadConfig(corridor, (CAR,), min_coverage=clean, min_blob_fraction=0.01)
    result = VehicleAheadDetector(config).update(labels)
    assert result.coverage == clean and result.raw and result.vehicle_ahead
    above = VehicleAheadConfig(corridor, (CAR,), min_coverage=math.nextafter(clean, 1.0),
                               min_blob_fraction=0.01)
    assert not VehicleAheadDetector(above).update(labels).raw


def test_reconfigure_changes_cleanup_on_next_frame() -> None:
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[5, 5] = CAR
    corridor = _full_corridor()
    detector = VehicleAheadDetector(VehicleAheadConfig(corridor, (CAR,), min_coverage=0.001))
    assert detector.update(labels).raw
    detector.reconfigure(VehicleAheadConfig(corridor, (CAR,), min_coverage=0.001,
                                            min_blob_fraction=0.01))
    assert detector.update(labels).coverage == 0.0


def test_positional_config_fields_keep_their_order() -> None:
    # The node builds VehicleAheadConfig(corridor, ids, min_coverage, frames_on, frames_off).
    config = VehicleAheadConfig(Corridor(DEFAULT_CORRIDOR), (CAR,), 0.1, 2, 3)
    assert (config.min_coverage, config.frames_on, config.frames_off) == (0.1, 2, 3)
    assert config.min_blob_fraction == DEFAULT_MIN_BLOB_FRACTION


# ------------------------------------------------------------------------------------------
# Fuzz
# ------------------------------------------------------------------------------------------


def _random_vertices(rng: np.random.Generator) -> list[tuple[float, float]]:
    kind = rng.integers(0, 5)
    n = int(rng.integers(0, 8))
    if kind == 0:  # star-shaped around a centre (always simple unless degenerate)
        n = max(n, 3)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.01, 0.5, n)
        cx, cy = rng.uniform(0.3, 0.7, 2)
        pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        return [tuple(p) for p in np.clip(pts, 0.0, 1.0)]
    if kind == 1:  # arbitrary, possibly slightly out of range
        return [tuple(p) for p in rng.uniform(-0.05, 1.05, (n, 2))]
    if kind == 2:  # on a coarse grid: many collinear / touching / duplicate cases
        return [tuple(p) for p in rng.integers(0, 5, (n, 2)) / 4.0]
    if kind == 3:  # sprinkle NaN / inf
        pts = [tuple(p) for p in rng.uniform(0, 1, (max(n, 3), 2))]
        bad = rng.choice([np.nan, np.inf, -np.inf])
        pts[int(rng.integers(0, len(pts)))] = (bad, 0.5)
        return pts
    return [tuple(p) for p in rng.uniform(0, 1, (n, 2))]


def test_fuzz_only_value_errors_and_coverage_in_unit_interval() -> None:
    rng = np.random.default_rng(20240611)
    n_valid = n_invalid = 0
    for iteration in range(2500):
        vertices = _random_vertices(rng)
        height, width = (int(v) for v in rng.integers(0, 24, 2))
        labels = rng.integers(0, 25, (height, width), dtype=np.uint8)
        ids = [int(i) for i in rng.integers(-1 if rng.random() < 0.05 else 0, 300,
                                            int(rng.integers(0, 6)))]
        use_torch = bool(rng.integers(0, 2))
        try:
            corridor = Corridor(vertices)
            coverage = corridor_coverage(
                torch.from_numpy(labels) if use_torch else labels, ids, corridor)
        except ValueError:
            n_invalid += 1
            continue
        n_valid += 1
        assert 0.0 <= coverage <= 1.0
        mask = corridor.mask_numpy(height, width)
        count = int(mask.sum())
        expected = int((np.isin(labels, ids) & mask).sum()) / count if count else 0.0
        assert coverage == expected
        if iteration % 10 == 0 and height * width <= 200:
            np.testing.assert_array_equal(mask, reference_mask(corridor.vertices, height, width))
    assert n_valid > 500 and n_invalid > 500
