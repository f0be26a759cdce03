"""Process-wide settings for a program that infers frame after frame on a shared computer.

Made once, first thing, before numpy, OpenCV, rclpy and torch start threads (libgomp reads
its settings when torch loads it; malloc arenas are handed out as threads first allocate):

* malloc keeps freed memory for the next frame (:func:`~seg_perception.host_memory.
  keep_freed_memory`);
* OpenMP threads sleep while they wait for work instead of spinning. With spinning threads a
  busy neighbour process (another camera's node, a planner) costs far more than the CPU it
  takes: measured on 2 cores beside one busy process, the default model's forward pass went
  from ~125 ms to 2,247 ms with spinning threads, 358 ms with sleeping ones
  (``scripts/cpu_sharing_matrix.py`` measures the choices). A value the user set is kept.
"""

from __future__ import annotations

import os

from seg_perception.host_memory import keep_freed_memory

__all__ = ["OPENMP_DEFAULTS", "prepare_process"]

OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def prepare_process() -> None:
    """Malloc and OpenMP settings for this process (idempotent; user settings win)."""
    keep_freed_memory()
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)
