"""Segmentation of frames: HxWx3 uint8 pixels in, uint8 host arrays out, for one model.

The frame is resized, reordered and normalised on the model's device, the network runs, the
class map is taken at the network's resolution and brought to the frame size with exact
nearest-neighbour indices (class ids are never interpolated), and only uint8 results come back
to the host. :class:`SegmentationPipeline` is the one entry point; the CPU and CUDA back ends
(:mod:`.pipeline_cpu`, :mod:`.pipeline_cuda`) do the same maths with the kernels that are
fast on each.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import torch

from seg_perception.core.pipeline_base import (
    UNKNOWN_ID,
    Backend,
    ChannelOrder,
    FrameJob,
    HostSegmentation,
    OutputRequest,
    Timer,
    check_frame,
    untimed,
)
from seg_perception.core.pipeline_cpu import CpuBackend
from seg_perception.core.pipeline_cuda import CudaBackend
from seg_perception.core.smoothing import TemporalSmoother
from seg_perception.models.loading import LoadedModel
from seg_perception.models.metadata import ModelMetadata

__all__ = [
    "UNKNOWN_ID",
    "FrameJob",
    "HostSegmentation",
    "OutputRequest",
    "SegmentationPipeline",
    "Timer",
    "configure_threads",
]

# torch warns when wrapping read-only buffers (ROS message data); we never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def _check_job(job: FrameJob) -> None:
    if job.channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {job.channel_order!r}")
    check_frame(job.pixels)


# The libraries' own thread counts, read before anything changes them: num_threads 0 means
# these (set back whenever a count was chosen earlier).
_DEFAULT_THREADS = (torch.get_num_threads(), cv2.getNumThreads())


def configure_threads(num_threads: int) -> int:
    """Use ``num_threads`` CPU threads for torch and OpenCV (0: the libraries' defaults).

    Both libraries run parts of the CPU pipeline; giving them the same count keeps them from
    oversubscribing the cores. torch's setting belongs to the calling thread's OpenMP team:
    call it in the thread that infers. Returns torch's thread count afterwards.
    """
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, not {num_threads}")
    torch_threads, cv_threads = (num_threads, num_threads) if num_threads else _DEFAULT_THREADS
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)
    return torch.get_num_threads()


class SegmentationPipeline:
    """Preprocess, infer and postprocess frames for one loaded model.

    ``cuda_graph=True`` (CUDA only, ignored on the CPU) captures one CUDA graph per frame
    size and replays it. Not thread-safe: one pipeline per inference thread.
    """

    def __init__(self, model: LoadedModel, cuda_graph: bool = False) -> None:
        self.model = model
        cuda = model.device.type == "cuda"
        self.cuda_graph = bool(cuda_graph) and cuda
        self.backend: Backend = (CudaBackend(model, self.cuda_graph) if cuda
                                 else CpuBackend(model))

    @property
    def metadata(self) -> ModelMetadata:
        return self.model.metadata

    @property
    def palette(self) -> np.ndarray:
        """Kx3 uint8 RGB colours by class id."""
        return self.backend.palette

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network is fed at for a frame of the given size."""
        return self.backend.network_size(height, width)

    def segment_to_host(
        self,
        pixels: np.ndarray,
        channel_order: ChannelOrder = "rgb",
        request: OutputRequest | None = None,
        *,
        smoother: TemporalSmoother | None = None,
        stamp_s: float | None = None,
        timer: Timer | None = None,
    ) -> HostSegmentation:
        """One frame (HxWx3 uint8, any strides, in ``channel_order``) -> host arrays.

        The label map always; the colour mask, the overlay (``(1 - alpha) * frame + alpha *
        colour``, RGB) and the confidence when ``request`` asks. ``smoother`` (one per
        stream) averages class probabilities over frames, restarting on a gap in
        ``stamp_s``. The arrays are reused buffers, valid until the next call. ``timer``
        wraps each stage, for the benchmark.
        """
        job = FrameJob(pixels, channel_order, request or OutputRequest(), smoother, stamp_s)
        _check_job(job)
        return self.backend.segment_to_host(job, timer or untimed)

    def segment_batch(self, jobs: list[FrameJob], timer: Timer | None = None
                      ) -> list[HostSegmentation]:
        """Several frames at once (the node's cameras): one network call on the GPU, where
        that is faster; one after another on the CPU, where it is not (measured: batch 3 is
        slower per frame there). Each result has its own buffers, valid until the next call.
        """
        for job in jobs:
            _check_job(job)
        sizes = {self.network_size(*job.pixels.shape[:2]) for job in jobs}
        if len(sizes) > 1:
            raise ValueError(f"a batch needs one network input size, got {sorted(sizes)}")
        return self.backend.segment_batch(list(jobs), timer or untimed)

    def network_input(self, pixels: np.ndarray, channel_order: ChannelOrder = "rgb"
                      ) -> torch.Tensor:
        """The normalised network input for a frame (the benchmark times the network on it)."""
        check_frame(pixels)
        return self.backend.network_input(pixels, channel_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network alone, under the model's precision policy."""
        return self.backend.forward(x)
