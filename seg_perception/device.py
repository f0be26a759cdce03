"""Choosing where inference runs, and saying why."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from seg_perception.errors import SegPerceptionError

if TYPE_CHECKING:
    import torch

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")


class DeviceError(SegPerceptionError, ValueError):
    """The requested device is malformed or unavailable (and fallback is off)."""


def check_device_spec(spec: str) -> str:
    """``spec`` normalised if it names a device kind at all (auto, cpu, cuda, cuda:N), without
    asking the machine (torch is not loaded for this); else :class:`DeviceError`."""
    spec = (spec or "auto").strip().lower()
    if spec not in ("auto", "cpu") and not _CUDA_SPEC.match(spec):
        raise DeviceError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N")
    return spec


def select_device(spec: str = "auto", fallback: bool = True) -> tuple[torch.device, str]:
    """Resolve ``auto`` / ``cpu`` / ``cuda[:N]`` to a device plus a human reason.

    With ``fallback``, an unavailable CUDA device degrades to the CPU (the reason says so, so
    the caller can warn); without it, :class:`DeviceError` is raised.
    """
    import torch

    spec = check_device_spec(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0"), f"auto: CUDA available ({torch.cuda.get_device_name(0)})"
        return torch.device("cpu"), "auto: no CUDA device, using CPU"
    if spec == "cpu":
        return torch.device("cpu"), "requested cpu"
    index = int(_CUDA_SPEC.match(spec).group(1) or 0)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index < count:
        name = torch.cuda.get_device_name(index)
        return torch.device("cuda", index), f"requested {spec} ({name})"
    problem = f"{spec} requested but only {count} CUDA device(s) available"
    if fallback:
        return torch.device("cpu"), f"FALLBACK to CPU: {problem}"
    raise DeviceError(problem + " (device fallback is off)")
