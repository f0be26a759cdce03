"""Statistics of a frame stream: rates, latency percentiles and per-stream counters.

ROS-free: the node reports these on ``/diagnostics`` and the benchmark computes its latency
percentiles with the same :class:`LatencyWindow` (nearest rank), so both report alike.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["FrameStats", "LatencyWindow", "RateMeter", "percentiles_ms"]


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
