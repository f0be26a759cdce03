"""The inference thread and its mailbox: the newest frame of each camera, served in turn.

Subscription callbacks only drop a frame into :class:`FrameMailbox` and return; one
:class:`InferenceWorker` thread takes frames out and runs them. A camera's new frame replaces
its waiting one (counted as dropped), so latency never builds a backlog however fast frames
arrive; with several cameras the waiting ones are served round robin, so none starves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Key = Hashable

__all__ = ["FrameMailbox", "InferenceWorker"]


class FrameMailbox(Generic[T]):
    """One slot per stream; the producer never blocks, the consumer gets the newest frames.

    :meth:`put` replaces a stream's item that was not taken yet and counts it in
    :meth:`dropped`. :meth:`take` returns the waiting item of the stream after the one served
    last (round robin over the streams in the order they first put something).
    """

    def __init__(self) -> None:
        self._items: dict[Key, T] = {}
        self._order: list[Key] = []  # every stream seen, in first-put order
        self._next = 0  # where the round robin resumes in _order
        self._dropped: dict[Key, int] = {}
        self._closed = False
        self._cond = threading.Condition()

    def put(self, key: Key, item: T) -> bool:
        """Store ``key``'s newest ``item``; True if it replaced one never taken (dropped)."""
        with self._cond:
            if key not in self._dropped:
                self._dropped[key] = 0
                self._order.append(key)
            replaced = key in self._items
            if replaced:
                self._dropped[key] += 1
            self._items[key] = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> tuple[Key, T] | None:
        """The next stream's waiting item (emptying its slot), or None on timeout or after
        :meth:`close`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if not self._items:
                return None
            count = len(self._order)
            for step in range(count):
                key = self._order[(self._next + step) % count]
                if key in self._items:
                    self._next = (self._next + step + 1) % count
                    return key, self._items.pop(key)
            raise AssertionError("unreachable: an item without a stream")  # pragma: no cover

    def take_all(self, timeout: float | None = None) -> list[tuple[Key, T]]:
        """Every waiting item, in round-robin order from the next stream on (empty on timeout
        or after :meth:`close`): a batch for the GPU."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return []
            count = len(self._order)
            keys = [self._order[(self._next + step) % count] for step in range(count)]
            taken = [(key, self._items.pop(key)) for key in keys if key in self._items]
            return taken

    def dropped(self, key: Key | None = None) -> int:
        """Items replaced before they were taken: of stream ``key``, or of all streams."""
        with self._cond:
            if key is None:
                return sum(self._dropped.values())
            return self._dropped.get(key, 0)

    def close(self) -> list[Key]:
        """Wake the consumer for good (shutdown); the streams whose waiting item is thrown
        away (counted as dropped)."""
        with self._cond:
            self._closed = True
            discarded = list(self._items)
            for key in discarded:
                self._dropped[key] += 1
            self._items.clear()
            self._cond.notify_all()
            return discarded

    @property
    def closed(self) -> bool:
        return self._closed


class InferenceWorker:
    """One thread: ``between()`` (model swaps, thread counts), then ``handle(frames)`` for the
    next frame of the mailbox, or for every waiting frame while ``batch()`` says so; an
    exception in ``handle`` goes to ``on_error`` and never ends the thread."""

    def __init__(self, mailbox: FrameMailbox[Any],
                 handle: Callable[[list[tuple[Key, Any]]], None],
                 between: Callable[[], None], on_error: Callable[[BaseException], None],
                 batch: Callable[[], bool] = lambda: False,
                 name: str = "segmentation-inference") -> None:
        self.mailbox = mailbox
        self._handle = handle
        self._between = between
        self._on_error = on_error
        self._batch = batch
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._between()
            if self._batch():
                taken = self.mailbox.take_all(timeout=0.1)
            else:
                one = self.mailbox.take(timeout=0.1)
                taken = [one] if one is not None else []
            if not taken:
                continue
            try:
                self._handle(taken)
            except Exception as exc:  # noqa: BLE001 - the node must outlive any bad frame
                if self._stopping.is_set():
                    break
                self._on_error(exc)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> list[Key]:
        """Finish the frame in hand, then end the thread; the streams whose waiting frame
        was thrown away."""
        self._stopping.set()
        discarded = self.mailbox.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return discarded
