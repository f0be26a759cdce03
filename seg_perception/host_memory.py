"""glibc malloc settings for a process that runs the same network on frame after frame.

By default glibc hands large freed blocks back to the kernel, so every CPU forward pass maps
its activations afresh: ~20,000 minor page faults per frame for ESPNet at 1024x512 on the
development machine (each one a kernel entry plus zeroing 4 KiB). Keeping freed memory in
the heap makes the next frame reuse it: no faults after the first frame, and a resident size
that stays at the high-water mark the next frame needs anyway.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt() options, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP = (
    (_M_ARENA_MAX, 1),  # one heap: the inference thread reuses what the loader freed
    (_M_MMAP_MAX, 0),  # large blocks from the heap too, not from mmap (unmapped on free)
    (_M_TRIM_THRESHOLD, 2**31 - 1),  # never shrink the heap
)
# Any of these means the user chose malloc settings themselves: leave them alone.
_USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_",
                  "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (once per process); True if it now does.

    A no-op off glibc (macOS, musl) and when the environment already sets malloc tunables
    or preloads another allocator. Call it before the process starts threads, that is before
    importing numpy, OpenCV or rclpy (each starts some): a thread that has already allocated
    keeps an arena of its own, other threads may later be given it, and glibc unmaps the
    emptied heaps of such an arena whatever the trim threshold.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    chosen = [name for name in _USER_SETTINGS if os.environ.get(name)]
    if chosen:
        log.debug("malloc settings left as they are (%s set)", ", ".join(chosen))
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(option, value) == 1 for option, value in _KEEP)


def release_freed_memory() -> bool:
    """Hand memory that is free in the heap back to the kernel (``malloc_trim``); True if
    some was. For the rare moment the process stops inferring for good, e.g. a lifecycle
    cleanup that unloads the model: :func:`keep_freed_memory` otherwise keeps it."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = (ctypes.c_size_t,)
    return bool(malloc_trim(0))
