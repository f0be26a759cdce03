"""The benchmark's figures: stage timing, summaries, windows and paired ratios (ROS- and
torch-free).

Percentiles come from :func:`seg_perception.core.stats.percentiles_ms` (nearest rank), so the
benchmark and the node's ``/diagnostics`` report latencies the same way.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from seg_perception.core.stats import percentiles_ms

__all__ = ["StageTimer", "Summary", "paired_ratio", "per_window", "ratio", "sig", "summarize"]


@dataclass(frozen=True)
class Summary:
    """Median, p90, p99 and mean of some durations, in ms."""

    p50: float
    p90: float
    p99: float
    mean: float
    count: int

    def to_json(self, digits: int = 3) -> dict[str, float | int]:
        return {
            "p50": round(self.p50, digits), "p90": round(self.p90, digits),
            "p99": round(self.p99, digits), "mean": round(self.mean, digits),
            "n": self.count,
        }


def summarize(seconds: Iterable[float]) -> Summary:
    """:class:`Summary` of durations given in seconds."""
    values = list(seconds)
    points = percentiles_ms(values)
    mean = sum(values) / len(values) * 1e3 if values else math.nan
    return Summary(points[50], points[90], points[99], mean, len(values))


class StageTimer:
    """Wall time per frame and per named stage, for code that calls ``timer(name)``.

    Wrap each frame in ``with timer.frame():`` (``keep=False`` for warm-up frames) and each
    stage in ``with timer("name"):``. ``sync`` (e.g. ``torch.cuda.synchronize``) runs at
    every boundary so that asynchronous device work is charged where it was queued; leave it
    out on the CPU. ``stages=False`` times whole frames only (no per-stage syncs). Stages
    entered several times in one frame add up.
    """

    def __init__(self, sync: Callable[[], object] | None = None, stages: bool = True) -> None:
        self._sync = sync
        self._stages = stages
        self._frame: dict[str, float] = {}
        self.stages: dict[str, list[float]] = defaultdict(list)
        self.totals: list[float] = []

    def __call__(self, name: str) -> AbstractContextManager[object]:
        return self._stage(name) if self._stages else nullcontext()

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        if self._sync is not None:
            self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self._frame[name] = self._frame.get(name, 0.0) + time.perf_counter() - start

    @contextmanager
    def frame(self, keep: bool = True) -> Iterator[None]:
        """Time one frame; its stages and total are recorded only if ``keep``."""
        self._frame = {}
        if self._sync is not None:
            self._sync()
        start = time.perf_counter()
        yield
        if self._sync is not None:
            self._sync()
        elapsed = time.perf_counter() - start
        if keep:
            self.totals.append(elapsed)
            for name, seconds in self._frame.items():
                self.stages[name].append(seconds)
        self._frame = {}

    def total(self) -> Summary:
        """:class:`Summary` of the kept frames' wall times."""
        return summarize(self.totals)

    def summary(self) -> dict[str, Summary]:
        """Stage name -> :class:`Summary`, in the order the stages first ran."""
        return {name: summarize(values) for name, values in self.stages.items()}


def per_window(
    samples: Iterable[tuple[float, float]], window_s: float, span_s: float | None = None
) -> list[tuple[float, Summary]]:
    """(time, duration) samples grouped into consecutive windows of ``window_s`` seconds.

    Returns (window start, :class:`Summary`) for every window that holds a sample; times are
    relative to the first sample. With ``span_s`` (the run's planned length), samples past
    the last whole window join it, so a run's last moments do not form a window of a few
    samples. The soak test reports latency per minute this way.
    """
    ordered = sorted(samples)
    if not ordered:
        return []
    origin = ordered[0][0]
    last = None if span_s is None else max(0, int(span_s // window_s) - 1)
    buckets: dict[int, list[float]] = defaultdict(list)
    for when, duration in ordered:
        index = int((when - origin) // window_s)
        buckets[index if last is None else min(index, last)].append(duration)
    return [(index * window_s, summarize(values)) for index, values in sorted(buckets.items())]


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of per-frame ratios. The contenders run back to back on each frame, so a
    ratio per frame cancels the machine's drift over the run (20 % and more here), which a
    ratio of two medians does not."""
    return float(np.median(np.asarray(numerators) / np.asarray(denominators)))


def sig(value: float | None, digits: int = 4) -> float | None:
    """Rounded to significant digits (never to 0 for a small positive figure)."""
    return None if value is None else float(f"{value:.{digits}g}")


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den`` to significant digits; None when either is missing or ``den`` <= 0."""
    if num is None or den is None or not den > 0:
        return None
    return sig(num / den)
