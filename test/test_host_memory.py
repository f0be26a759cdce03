"""glibc keeps freed memory between frames: no page-fault storm per forward pass."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# A fresh process (the setting is process-wide): load the real model, then count the minor
# page faults of frames 3..6 segmented in a worker thread, as the node does.
FAULTS_PER_FRAME = """
import resource, sys, threading
from seg_perception.host_memory import keep_freed_memory
keep_freed_memory()  # first: importing cv2 starts a thread
import cv2
from seg_perception.models.loading import load_model
from seg_perception.core.pipeline import OutputRequest, SegmentationPipeline
frame = cv2.cvtColor(cv2.imread(sys.argv[1]), cv2.COLOR_BGR2RGB)
model = load_model("espnet-cityscapes", device="cpu")
faults = []
def work():
    pipeline = SegmentationPipeline(model)
    for _ in range(2):
        pipeline.segment_to_host(frame, "rgb", OutputRequest(True, 0.5))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        pipeline.segment_to_host(frame, "rgb", OutputRequest(True, 0.5))
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(keep_freed_memory(), faults[0])
"""


def _faults_per_frame(shared, **env: str) -> tuple[str, float]:
    still = shared / "data" / "dashcam" / "stills" / "test1.jpg"
    if not still.exists():
        pytest.skip(f"missing {still}")
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_FRAME, str(still)],
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=240, check=True)
    kept, faults = done.stdout.split()[-2:]
    return kept, float(faults)


def test_frames_reuse_freed_memory_unless_the_user_set_malloc_options(shared):
    kept, faults = _faults_per_frame(shared)
    assert kept == "True" and faults < 2000  # measured 0-950 per frame
    kept, faults = _faults_per_frame(shared, MALLOC_ARENA_MAX="8")  # the user's choice wins
    assert kept == "False" and faults > 5000  # glibc's defaults: measured 18,000-25,000


# How many malloc arenas a process has after worker threads allocated and freed 64 MiB each,
# with STARTUP run first. A thread on an arena of its own would have its blocks unmapped when
# freed (glibc deletes a secondary arena's emptied heaps whatever the trim threshold): the
# node's inference thread, on such an arena, faulted ~12,000 pages in again per frame.
ARENAS_AFTER = """
{startup}
import ctypes, tempfile, threading
import numpy as np
def work():
    for _ in range(3):
        block = np.ones((64, 2**20), np.uint8)
        del block
threads = [threading.Thread(target=work) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
with tempfile.NamedTemporaryFile("r") as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(out.read().count("<heap nr="))
"""

NODE_STARTUP = "import seg_perception.node"
CLI_STARTUP = """
from seg_perception.cli import main
try:
    main(["bench", "--help"])  # imports every tool (numpy, OpenCV, rclpy)
except SystemExit:
    pass
"""
TOO_LATE = """
import cv2, numpy, rclpy
from seg_perception.host_memory import keep_freed_memory
keep_freed_memory()
"""


def _arenas(startup: str) -> int:
    done = subprocess.run([sys.executable, "-c", ARENAS_AFTER.format(startup=startup)],
                          capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("startup", [NODE_STARTUP, CLI_STARTUP], ids=["node", "cli"])
def test_entry_points_set_malloc_up_before_any_thread_allocates(startup):
    assert _arenas(startup) == 1


def test_malloc_set_up_after_imports_leaves_threads_their_own_arenas():
    assert _arenas(TOO_LATE) > 1  # what the entry points avoid
