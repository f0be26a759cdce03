"""Statistics of a frame stream: rates, latency percentiles and per-stream counters.

ROS-free: the node reports these on ``/diagnostics`` and the benchmark computes its latency
percentiles with the same :class:`LatencyWindow` (nearest rank), so both report alike.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = [
    "FrameStats",
    "LatencyWindow",
    "RateMeter",
    "StageClock",
    "StarvationMonitor",
    "percentiles_ms",
]


class RateMeter:
    """Events per second over a sliding window (0 when the last event is older than it)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._first: float | None = None

    def tick(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        count = len(self._times)
        if count == 0 or self._first is None:
            return 0.0
        if now - self._first >= self.window_s:  # a full window of history
            return count / self.window_s
        span = self._times[-1] - self._times[0]
        return (count - 1) / span if count >= 2 and span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class LatencyWindow:
    """Percentiles of the last ``size`` latencies (seconds in, milliseconds out)."""

    def __init__(self, size: int = 300) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def percentiles_ms(self, points: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
        """Nearest-rank percentiles in ms; NaN for each when there is no sample yet."""
        if not self._values:
            return {p: math.nan for p in points}
        ordered = sorted(self._values)
        n = len(ordered)
        return {p: ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))] * 1e3
                for p in points}


@dataclass
class FrameStats:
    """Counters shared by the subscription callback, the inference thread and diagnostics."""

    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced by a newer frame before inference took it
    rejected: int = 0  # malformed or unsupported input
    failed: int = 0  # inference or publishing raised
    consecutive_failures: int = 0
    last_error: str = ""
    last_error_time: float | None = None
    last_rejection: str = ""
    last_rejection_time: float | None = None
    input_rate: RateMeter = field(default_factory=RateMeter)
    output_rate: RateMeter = field(default_factory=RateMeter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_received(self, now: float) -> None:
        with self.lock:
            self.received += 1
            self.input_rate.tick(now)

    def on_dropped(self, count: int = 1) -> None:
        with self.lock:
            self.dropped += count

    def on_processed(self, now: float, latency_s: float) -> None:
        with self.lock:
            self.processed += 1
            self.consecutive_failures = 0
            self.output_rate.tick(now)
            self.latency.add(latency_s)

    def on_rejected(self, now: float, reason: str) -> None:
        with self.lock:
            self.rejected += 1
            self.last_rejection, self.last_rejection_time = reason, now

    def on_failed(self, now: float, reason: str) -> None:
        with self.lock:
            self.failed += 1
            self.consecutive_failures += 1
            self.last_error, self.last_error_time = reason, now


def percentiles_ms(seconds: Iterable[float],
                   points: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
    """Nearest-rank percentiles, in ms, of durations given in seconds (NaN when empty)."""
    values = list(seconds)
    window = LatencyWindow(size=max(1, len(values)))
    for value in values:
        window.add(value)
    return window.percentiles_ms(points)


class StageClock:
    """The wall time of each stage of one frame: ``with clock("forward"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class StarvationMonitor:
    """Notices a CPU-starved network: recent forward passes far slower than the best one.

    The best forward time since the model loaded stands for the machine's quiet figure (on a
    shared computer some frames always get the cores). Starved while the median of the last
    ``window`` frames exceeds ``factor`` times it.
    """

    def __init__(self, window: int = 20, factor: float = 2.0) -> None:
        self.factor = factor
        self._recent: deque[float] = deque(maxlen=window)
        self._best = math.inf
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds)
            self._best = min(self._best, seconds)

    def reset(self) -> None:
        """A new model: its forward time is another figure."""
        with self._lock:
            self._recent.clear()
            self._best = math.inf

    def figures_ms(self) -> tuple[float, float] | None:
        """(median of the recent forward passes, best) in ms, once there are a few."""
        with self._lock:
            if len(self._recent) < min(5, self._recent.maxlen or 5):
                return None
            recent = sorted(self._recent)
            return recent[len(recent) // 2] * 1e3, self._best * 1e3

    def starved(self) -> tuple[float, float] | None:
        """(recent median, best) in ms while starved, else None."""
        figures = self.figures_ms()
        if figures is None or figures[0] <= self.factor * figures[1]:
            return None
        return figures
