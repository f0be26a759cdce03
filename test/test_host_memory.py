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
import cv2
from seg_perception.host_memory import keep_freed_memory
from seg_perception.models.loading import load_model
from seg_perception.pipeline import SegmentationPipeline
frame = cv2.cvtColor(cv2.imread(sys.argv[1]), cv2.COLOR_BGR2RGB)
model = load_model("espnet-cityscapes", device="cpu")
faults = []
def work():
    pipeline = SegmentationPipeline(model)
    for _ in range(2):
        pipeline.segment_to_host(frame, color_mask=True, overlay_alpha=0.5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        pipeline.segment_to_host(frame, color_mask=True, overlay_alpha=0.5)
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
