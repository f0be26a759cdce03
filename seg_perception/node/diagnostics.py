"""What the node reports on ``/diagnostics``: a health verdict and the figures behind it.

:func:`assess_health` (ROS-free) turns a camera's statistics into OK / WARN / ERROR and one
line; :func:`camera_status` builds the DiagnosticStatus of one camera, shaped like a
diagnostic_updater task (level, message, key/value figures).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from seg_perception.core.stats import FrameStats

__all__ = [
    "Health",
    "assess_health",
    "camera_status",
    "camera_statuses",
    "unconfigured_status",
]

STARVED_HINT = ("give the node cores of its own (taskset, cgroups), lower num_threads, or "
                "use a smaller model or input size")
LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN,
          "ERROR": DiagnosticStatus.ERROR}


@dataclass(frozen=True)
class Health:
    level: str  # "OK" | "WARN" | "ERROR"
    message: str


def assess_health(
    stats: FrameStats,
    now: float,
    stalled_for: float | None = None,
    stall_hint: str = "",
    model_error: str = "",
    device_warning: str = "",
    starved: tuple[float, float] | None = None,
    recent_s: float = 5.0,
) -> Health:
    """The node's diagnostic level and one-line summary.

    ERROR while inference keeps failing (back to OK with the next good frame); WARN for a
    stalled input, recently rejected frames, a failed model swap or a device fallback.
    """
    with stats.lock:
        failures = stats.consecutive_failures
        last_error = stats.last_error
        rejection = stats.last_rejection
        rejected_recently = (stats.last_rejection_time is not None
                             and now - stats.last_rejection_time <= recent_s)
    if failures:
        return Health("ERROR", f"inference failing ({failures} frame(s) in a row): {last_error}")
    warnings = []
    if stalled_for is not None:
        warnings.append(f"input stalled: no frame for {stalled_for:.1f} s from a matched "
                        f"publisher{': ' + stall_hint if stall_hint else ''}")
    if rejected_recently:
        warnings.append(f"rejecting input frames: {rejection}")
    if model_error:
        warnings.append(model_error)
    if device_warning:
        warnings.append(device_warning)
    if starved is not None:
        recent, best = starved
        warnings.append(f"CPU-starved: the network takes {recent:.0f} ms per frame, "
                        f"{recent / best:.1f}x its best {best:.0f} ms: other processes compete "
                        f"for the cores; {STARVED_HINT}")
    if warnings:
        return Health("WARN", "; ".join(warnings))
    return Health("OK", "running")


def camera_status(name: str, stats: FrameStats, health: Health, model: Any,
                  values: dict[str, str]) -> DiagnosticStatus:
    """One camera's DiagnosticStatus: the verdict, the model and the stream's figures.

    ``model`` is the running model's LoadedModel; ``values`` adds the input's own figures
    (topic, QoS, drops, stall) in front of the counters.
    """
    now = time.monotonic()
    with stats.lock:
        latency = stats.latency.percentiles_ms()
        figures = {
            "model": model.metadata.name,
            "model_file": str(model.path),
            "device": str(model.device),
            "device_reason": model.device_reason,
            **values,
            "input_hz": f"{stats.input_rate.rate(now):.2f}",
            "output_hz": f"{stats.output_rate.rate(now):.2f}",
            "frames_received": str(stats.received),
            "frames_processed": str(stats.processed),
            "frames_dropped": str(stats.dropped),
            "frames_rejected": str(stats.rejected),
            "frames_failed": str(stats.failed),
            "latency_ms_p50": f"{latency[50]:.1f}",
            "latency_ms_p90": f"{latency[90]:.1f}",
            "latency_ms_p99": f"{latency[99]:.1f}",
            "last_error": stats.last_error,
            "last_rejection": stats.last_rejection,
        }
    return DiagnosticStatus(level=LEVELS[health.level], name=name, message=health.message,
                            hardware_id=str(model.device),
                            values=[KeyValue(key=k, value=v) for k, v in figures.items()])


def unconfigured_status(name: str, problem: str) -> DiagnosticStatus:
    """The status of a node without a model: ERROR with the reason of a failed configure,
    else OK ("unconfigured", waiting for its lifecycle manager)."""
    if problem:
        return DiagnosticStatus(level=DiagnosticStatus.ERROR, name=name,
                                message=f"unconfigured: configure failed: {problem}")
    return DiagnosticStatus(level=DiagnosticStatus.OK, name=name, message="unconfigured")


def camera_statuses(name: str, cameras: Iterable[Any], models: Any, starvation: Any,
                    extra: dict[str, str]) -> list[DiagnosticStatus]:
    """One status per camera (``name`` for the single default camera, ``name/<camera>``
    otherwise): its health and figures, with the model's state and the CPU's."""
    now = time.monotonic()
    loaded = models.active.loaded
    device_reason = loaded.device_reason
    starved, forward = starvation.starved(), starvation.figures_ms()
    statuses = []
    for camera in cameras:
        stalled, hint, values = camera.input_figures(now)
        health = assess_health(
            camera.stats, now, stalled_for=stalled, stall_hint=hint,
            model_error=models.status if models.failed else "",
            device_warning=device_reason if device_reason.startswith("FALLBACK") else "",
            starved=starved)
        values.update({
            **extra,
            "model_load": models.status,
            "forward_ms_recent": f"{forward[0]:.1f}" if forward else "",
            "forward_ms_best": f"{forward[1]:.1f}" if forward else "",
        })
        suffix = f"/{camera.name}" if camera.name else ""
        statuses.append(camera_status(name + suffix, camera.stats, health, loaded, values))
    return statuses
