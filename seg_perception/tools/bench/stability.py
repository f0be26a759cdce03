"""Temporal smoothing (``temporal_smoothing``) against label flicker, and what it costs in
decision delay: the figures to choose its default by.

Flicker: the share of pixels whose label changes between consecutive frames of the shared
dash-cam video (25 fps), through :func:`~seg_perception.core.frame.process_frames` with a
stream of each smoothing strength and stamps 40 ms apart, as the node sees them. Part of it
is real motion (the car drives); the reduction against no smoothing is what the average buys.

Delay: a step, as the stream sees it when a car cuts in: a still without any vehicle, then a
still with a car in a corridor over the right-hand lane, then the empty still again. Counted
in frames from the step until the *raw* decision (coverage >= min_coverage, before the
hysteresis) follows; the published decision adds ``frames_on - 1`` / ``frames_off - 1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from seg_perception.core.corridor import Corridor
from seg_perception.core.frame import FrameInput, StreamState, process_frames
from seg_perception.core.image_codec import DecodedImage
from seg_perception.shared_data import dashcam_video, shared_path
from seg_perception.sources import open_source
from seg_perception.tools.bench.timing import StageTimer, sig

DEFAULT_SMOOTHING = (0.3, 0.5, 0.7)
FRAME_INTERVAL_S = 0.04  # the video's 25 fps
STEP_FRAMES = 8  # frames of each scene of the step: clear, vehicle, clear
CLEAR_STILL = "test2.jpg"  # the one still without any vehicle (shared/README.md)
VEHICLE_STILL = "test1.jpg"  # a car in the right-hand lane, close
# Over the right-hand lane, where test1's car is (about half of it is car with either
# built-in model); the default corridor, straight ahead, holds no car in any still.
STEP_CORRIDOR = ((0.74, 0.72), (1.0, 0.72), (1.0, 0.55), (0.76, 0.55))
TARGET_FLICKER_REDUCTION = 0.30


def measure_stability(loaded: Any, vehicle_config: Any, smoothing: Sequence[float],
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Flicker and step delay with smoothing off and at each strength in ``smoothing``."""
    from seg_perception.core.pipeline import SegmentationPipeline

    pipeline = SegmentationPipeline(loaded)
    video = [DecodedImage(frame.pixels_rgb, "rgb") for frame in open_source(dashcam_video())]
    stills = {frame.name: frame.pixels_rgb
              for frame in open_source(shared_path("data", "dashcam", "stills"))}
    clear, vehicle = (DecodedImage(stills[name], "rgb") for name in (CLEAR_STILL, VEHICLE_STILL))
    step = [clear] * STEP_FRAMES + [vehicle] * STEP_FRAMES + [clear] * STEP_FRAMES
    step_config = replace(vehicle_config, corridor=Corridor(STEP_CORRIDOR))
    rows = []
    for strength in [0.0, *smoothing]:
        log(f"  temporal_smoothing {strength:g}: {len(video)} video frames, a step of "
            f"{len(step)} stills")
        timer = StageTimer()
        labels, raw_video, _ = _play(pipeline, video, StreamState(vehicle_config, strength),
                                     timer)
        _, raw_step, coverage = _play(pipeline, step, StreamState(step_config, strength), timer)
        smoothing_ms = timer.summary().get("smoothing")
        rows.append({
            "temporal_smoothing": strength,
            "flicker": sig(_flicker(labels)),
            "raw_flips": int(np.count_nonzero(np.diff(raw_video))),
            "onset_delay_frames": _delay(raw_step, STEP_FRAMES, True),
            "release_delay_frames": _delay(raw_step, 2 * STEP_FRAMES, False),
            "smoothing_ms_p50": sig(smoothing_ms.p50) if smoothing_ms else 0.0,
            "step_coverage": [sig(c, 3) for c in coverage],
        })
    _compare(rows)
    return {
        "video": dashcam_video().name, "video_frames": len(video),
        "frame_interval_ms": FRAME_INTERVAL_S * 1e3,
        "step": {"clear": CLEAR_STILL, "vehicle": VEHICLE_STILL, "frames_each": STEP_FRAMES,
                 "corridor": [list(v) for v in STEP_CORRIDOR],
                 "min_coverage": vehicle_config.min_coverage},
        "target_flicker_reduction_min": TARGET_FLICKER_REDUCTION,
        "settings": rows,
    }


def _play(pipeline: Any, images: Sequence[DecodedImage], stream: StreamState,
          timer: StageTimer) -> tuple[list[np.ndarray], list[bool], list[float]]:
    """One stream through the frame path: label maps (copies), raw decisions, coverages."""
    labels, raw, coverage = [], [], []
    for index, image in enumerate(images):
        with timer.frame():
            [result] = process_frames(
                pipeline, [FrameInput(image, stream, stamp_s=index * FRAME_INTERVAL_S)], timer)
        labels.append(result.label_map.copy())
        raw.append(result.vehicle.raw)
        coverage.append(result.vehicle.coverage)
    return labels, raw, coverage


def _flicker(labels: Sequence[np.ndarray]) -> float:
    """Mean share of pixels whose label differs from the previous frame's."""
    changes = [np.count_nonzero(labels[i] != labels[i - 1]) / labels[i].size
               for i in range(1, len(labels))]
    return float(np.mean(changes)) if changes else 0.0


def _delay(raw: Sequence[bool], start: int, wanted: bool) -> int | None:
    """Frames from ``start`` until the raw decision is ``wanted`` (0: at once); None: never
    within the scene."""
    for offset, value in enumerate(raw[start:start + STEP_FRAMES]):
        if value == wanted:
            return offset
    return None


def _compare(rows: list[dict[str, Any]]) -> None:
    """Each row against smoothing off (the first): flicker reduction, extra delay."""
    off = rows[0]
    for row in rows:
        row["flicker_reduction"] = (sig(1.0 - row["flicker"] / off["flicker"])
                                    if off["flicker"] else None)
        for key in ("onset", "release"):
            mine, base = row[f"{key}_delay_frames"], off[f"{key}_delay_frames"]
            row[f"extra_{key}_frames"] = None if None in (mine, base) else mine - base


def format_stability(data: dict[str, Any]) -> list[str]:
    """The table of the part."""
    step = data["step"]
    lines = [
        f"stability: label flicker on {data['video']} ({data['video_frames']} frames, "
        f"{data['frame_interval_ms']:g} ms apart); raw decision delay in frames after a step "
        f"{step['clear']} -> {step['vehicle']} -> {step['clear']} ({step['frames_each']} "
        "frames each, corridor over the right lane)",
        "  smoothing   flicker  reduction  raw flips  onset (+extra)  release (+extra)  "
        "smoothing ms",
    ]
    for row in data["settings"]:
        reduction = row["flicker_reduction"]
        lines.append(
            f"  {row['temporal_smoothing']:<9g} {row['flicker']:8.4f} "
            + (f"{100 * reduction:9.0f}%" if reduction is not None else "         -")
            + f" {row['raw_flips']:10d}"
            + f"  {_frames(row['onset_delay_frames'], row['extra_onset_frames']):>14}"
            + f"  {_frames(row['release_delay_frames'], row['extra_release_frames']):>16}"
            + f"  {row['smoothing_ms_p50']:12.2f}")
    lines.append(f"  (target: flicker reduction >= {100 * TARGET_FLICKER_REDUCTION:.0f}% at the "
                 "chosen setting, with its delay quoted; flicker includes real motion)")
    return lines


def _frames(delay: int | None, extra: int | None) -> str:
    if delay is None:
        return "never"
    return f"{delay} (+{extra})" if extra is not None else str(delay)
