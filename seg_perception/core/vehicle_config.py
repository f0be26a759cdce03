"""What the "vehicle ahead" decision is told: corridor, vehicle classes, threshold, hysteresis.

Torch-free on purpose: the node validates its parameters against these rules before any
model (and torch) is loaded, and the evaluation and the tools build the same config. The
decision itself is :mod:`seg_perception.core.vehicle_ahead`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seg_perception.checks import strict_integer
from seg_perception.core.corridor import DEFAULT_CORRIDOR, Corridor
from seg_perception.errors import SegPerceptionError

__all__ = [
    "DEFAULT_MIN_BLOB_FRACTION",
    "DEFAULT_MIN_COVERAGE",
    "DEFAULT_VEHICLE_CLASS_NAMES",
    "FRACTION_RANGE",
    "FRAMES_RANGE",
    "GROUND_TRUTH_MIN_COVERAGE",
    "LEAD_MIN_BLOB_FRACTION",
    "VehicleAheadConfig",
    "VehicleClassError",
    "check_in_range",
    "resolve_vehicle_class_ids",
    "validate_vehicle_ids",
]


class VehicleClassError(SegPerceptionError, ValueError):
    """Unknown or missing vehicle class names; the message lists unknown and known names."""


# Model classes that count as a vehicle. Tuned on CamVid train + val (see README, "Vehicle
# ahead: the tuned defaults"): the ground truth is CamVid "Car", which holds cars, vans, trucks
# and buses but not two-wheelers (those are "Bicyclist"); adding motorcycle/bicycle to the
# prediction only added false alarms (1024x512: F1 0.965 instead of 0.970).
DEFAULT_VEHICLE_CLASS_NAMES: tuple[str, ...] = ("car", "truck", "bus", "train")
# Ground-truth rule used by the evaluation tool: vehicle ahead iff coverage >= this. Part of
# the product definition: fixed, never tuned.
GROUND_TRUTH_MIN_COVERAGE = 0.05
# The lead vehicle is the nearest blob of at least this fraction of the corridor's pixels:
# smaller groups are specks of misclassification, not a vehicle to range. A ground corridor
# holds only the bottom of a far vehicle: a car 60 m ahead leaves about 0.08 % of a
# 4 m x 3..80 m corridor at 1920x1080 (its body stands above the corridor's far edge).
LEAD_MIN_BLOB_FRACTION = 0.0005
# Prediction side: report a vehicle when the (cleaned) predicted coverage reaches this. Swept
# from 0.02 to 0.08 on CamVid train + val; 0.05 (equal to the ground-truth rule) has the best
# F1 at every input size within 0.005 of the optimum.
DEFAULT_MIN_COVERAGE = 0.05
# Prediction side clean-up: connected groups of vehicle pixels inside the corridor smaller than
# this fraction of the corridor are ignored. Off by default: on CamVid no value in 0.002..0.03
# removed a false alarm (they come from large misclassified regions, not specks) while larger
# values cost true detections of cars cut by the corridor edge. A knob for noisier models.
DEFAULT_MIN_BLOB_FRACTION = 0.0

# The values the decision's settings may take; the node's parameter schema uses the same.
FRACTION_RANGE = (0.0, 1.0)  # min_coverage: a fraction of the corridor
FRAMES_RANGE = (1, 1000)  # frames_on / frames_off: 1 = no hysteresis


def check_in_range(name: str, value: Any, low: float, high: float, integral: bool = False,
                   high_open: bool = False) -> float | int:
    """``value`` as an int (``integral``) or float within [low, high] (or [low, high)).

    Raises ValueError naming ``name`` and the range; bools, NaN and non-numbers are refused.
    """
    kind = "an integer" if integral else "a number"
    closing = ")" if high_open else "]"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {kind} in [{low:g}, {high:g}{closing}, got a bool "
                         f"({value})")
    try:
        number = operator.index(value) if integral else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {kind} in [{low:g}, {high:g}{closing}, "
                         f"got {value!r}") from None
    inside = low <= number < high if high_open else low <= number <= high
    if not inside:  # also refuses NaN
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{closing}, got {number}")
    return number


def validate_vehicle_ids(ids: Any) -> tuple[int, ...]:
    """Return the ids as a sorted tuple of unique non-negative ints; raise ValueError otherwise."""
    if isinstance(ids, (str, bytes)):
        raise ValueError(f"vehicle ids must be a list of integers, got the string {ids!r}")
    try:
        items = list(ids)
    except TypeError:
        raise ValueError(f"vehicle ids must be a list of integers, got {ids!r}") from None
    result = set()
    for item in items:
        value = strict_integer(item, "a vehicle id")
        if value < 0:
            raise ValueError(f"vehicle ids must be >= 0 (class ids), got {value}")
        result.add(value)
    return tuple(sorted(result))




# --------------------------------------------------------------------------------------------
# Class names -> ids.
# --------------------------------------------------------------------------------------------


def _name_key(name: str) -> str:
    return name.strip().casefold()


def resolve_vehicle_class_ids(
    class_names: Sequence[str], wanted: Sequence[str] | str | None = None
) -> tuple[int, ...]:
    """Map vehicle class names to the model's class ids (sorted, case-insensitive match).

    `wanted=None` selects those of DEFAULT_VEHICLE_CLASS_NAMES that the model has (CamVid only
    has "Car"). If the model has none of them, VehicleClassError is raised rather than returning
    no ids, because a detector without vehicle ids would silently never report a vehicle.
    Explicit names must all exist; a name that appears several times in `class_names` yields all
    its ids. A single string is taken as one name.
    """
    if isinstance(class_names, (str, bytes)):
        raise VehicleClassError("class_names must be a list of names, got a single string")
    ids_by_name: dict[str, list[int]] = {}
    for index, name in enumerate(class_names):
        if not isinstance(name, str):
            raise VehicleClassError(f"class name {index} must be a string, got {name!r}")
        ids_by_name.setdefault(_name_key(name), []).append(index)
    known = ", ".join(repr(n) for n in class_names) or "(none)"

    if wanted is None:
        ids = sorted(i for n in DEFAULT_VEHICLE_CLASS_NAMES for i in ids_by_name.get(n, []))
        if not ids:
            raise VehicleClassError(
                f"none of the default vehicle classes ({', '.join(DEFAULT_VEHICLE_CLASS_NAMES)}) "
                f"are among the model's classes; known classes: {known}")
        return tuple(ids)

    if isinstance(wanted, str):
        wanted = [wanted]
    names = list(wanted)
    if not names:
        raise VehicleClassError(f"vehicle class list is empty; choose from: {known}")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise VehicleClassError(f"vehicle class names must be strings, got {bad!r}")
    unknown = [n for n in names if _name_key(n) not in ids_by_name]
    if unknown:
        raise VehicleClassError(
            f"unknown vehicle class name(s): {', '.join(repr(n) for n in unknown)}; "
            f"known classes: {known}")
    return tuple(sorted({i for n in names for i in ids_by_name[_name_key(n)]}))



def _frame_count(name: str, value: Any) -> int:
    return int(check_in_range(name, value, *FRAMES_RANGE, integral=True))



@dataclass(frozen=True)
class VehicleAheadConfig:
    """Validated detector settings; construct a new one to change settings (immutable)."""

    corridor: Corridor = Corridor(DEFAULT_CORRIDOR)
    vehicle_ids: tuple[int, ...] = ()
    min_coverage: float = DEFAULT_MIN_COVERAGE
    frames_on: int = 1
    frames_off: int = 1
    min_blob_fraction: float = DEFAULT_MIN_BLOB_FRACTION

    def __post_init__(self) -> None:
        corridor = self.corridor
        if not isinstance(corridor, Corridor):
            corridor = Corridor(corridor)  # accept a plain vertex sequence
        object.__setattr__(self, "corridor", corridor)
        object.__setattr__(self, "vehicle_ids", validate_vehicle_ids(self.vehicle_ids))
        object.__setattr__(self, "min_coverage",
                           check_in_range("min_coverage", self.min_coverage, *FRACTION_RANGE))
        object.__setattr__(self, "frames_on", _frame_count("frames_on", self.frames_on))
        object.__setattr__(self, "frames_off", _frame_count("frames_off", self.frames_off))
        object.__setattr__(self, "min_blob_fraction", check_in_range(
            "min_blob_fraction", self.min_blob_fraction, *FRACTION_RANGE, high_open=True))


