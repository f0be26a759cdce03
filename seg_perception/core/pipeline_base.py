"""What both pipeline back ends share: the result type, the frame geometry and small kernels.

A back end turns one HxWx3 uint8 frame into host arrays (label map, optionally colour mask
and overlay) for one loaded model; :mod:`.pipeline_cpu` and :mod:`.pipeline_cuda` are the two,
:class:`~seg_perception.core.pipeline.SegmentationPipeline` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch

from seg_perception.models.loading import LoadedModel
from seg_perception.models.metadata import ModelMetadata

ChannelOrder = Literal["rgb", "bgr"]
# ``timer("stage")`` wraps each stage of a frame (e.g. the benchmark's StageTimer).
Timer = Callable[[str], AbstractContextManager[object]]

ALPHA_ONE = 128  # overlay blending in int16 fixed point on the GPU: alpha 1.0 == 128
UNKNOWN_ID = 255  # label-map id of pixels whose confidence is below min_confidence


def untimed(name: str) -> AbstractContextManager[object]:
    return nullcontext()


@dataclass(frozen=True)
class OutputRequest:
    """Which optional outputs to compute for a frame (the label map always is).

    ``confidence``: the max class probability per pixel, 0..255. ``min_confidence`` > 0:
    pixels whose max class probability is below it get :data:`UNKNOWN_ID` in the label map.
    """

    color_mask: bool = False
    overlay_alpha: float | None = None  # None: no overlay
    confidence: bool = False
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.overlay_alpha is not None and not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay alpha must be within [0, 1], got {self.overlay_alpha}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {self.min_confidence}")


@dataclass(frozen=True)
class FrameJob:
    """One frame for a batch: pixels (HxWx3 uint8 in ``channel_order``), the outputs asked
    for, and its stream's smoother and stamp."""

    pixels: np.ndarray
    channel_order: str = "rgb"
    request: OutputRequest = OutputRequest()
    smoother: Any = None
    stamp_s: float | None = None


@dataclass
class HostSegmentation:
    """A frame's results as host arrays, ready for ``bytes(...)`` into messages.

    The arrays are the back end's reused output buffers: valid until its next frame. Copy
    what you keep longer.
    """

    label_map: np.ndarray  # HxW uint8 class ids (UNKNOWN_ID: below min_confidence)
    color_mask: np.ndarray | None = None  # HxWx3 uint8 RGB
    overlay: np.ndarray | None = None  # HxWx3 uint8 RGB
    confidence: np.ndarray | None = None  # HxW uint8, 255 = probability 1


def class_maps(scores: torch.Tensor, probabilities: bool, confidence: bool,
               min_confidence: float, scratch: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """1xCxhxw class scores -> (hxw uint8 labels, hxw uint8 confidence or None) at network
    resolution, on the scores' device.

    ``scores`` are logits, or class probabilities when ``probabilities`` (a smoothed
    average). Confidence is the max class probability: the max of the probabilities, or
    ``1 / sum(exp(logits - max))`` from logits. ``torch.max`` gives the argmax too, and is
    about twice as fast as ``torch.argmax`` on channels-last CPU logits. ``scratch`` (shaped
    and laid out like ``scores``) takes the shifted exponentials: on the CPU, a fresh 40 MB
    tensor per frame cost more than the arithmetic itself.
    """
    values, index = torch.max(scores, 1)
    conf = None
    if confidence or min_confidence > 0.0:
        if probabilities:
            conf = values
        else:
            shifted = torch.sub(scores, values.unsqueeze(1), out=scratch)
            conf = shifted.exp_().sum(1).reciprocal_()
    labels = index[0].to(torch.uint8)
    if min_confidence > 0.0:
        labels[conf[0] < min_confidence] = UNKNOWN_ID
    if not confidence:
        return labels, None
    return labels, conf[0].mul(255.0).round_().to(torch.uint8)


@lru_cache(maxsize=16)
def nearest_indices(small: int, large: int) -> np.ndarray:
    """Source index of each output pixel for nearest-exact scaling (pixel centres aligned).

    Exact integer form of ``floor((i + 0.5) * small / large)``: torch's ``nearest-exact``
    except where its float scale falls just short of an exact tie (OpenCV's
    INTER_NEAREST_EXACT is off by one more often). Both back ends use these indices, so class
    ids are never interpolated and CPU and GPU label maps agree pixel for pixel.
    """
    index = ((2 * np.arange(large, dtype=np.int64) + 1) * small) // (2 * large)
    index = np.minimum(index, small - 1).astype(np.intp)
    index.setflags(write=False)
    return index


def palette_array(metadata: ModelMetadata) -> np.ndarray:
    """Kx3 uint8 RGB colours by class id (at least one row)."""
    palette = np.zeros((max(metadata.num_classes, 1), 3), np.uint8)
    palette[: metadata.num_classes] = metadata.palette
    return palette


def check_frame(pixels: np.ndarray) -> None:
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {pixels.dtype} {pixels.shape}")


class HostBuffers:
    """Reused host arrays by name; pinned (page-locked) when they serve CUDA copies."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self._tensors: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, shape: tuple[int, ...], dtype=torch.uint8) -> torch.Tensor:
        found = self._tensors.get(name)
        if found is None or tuple(found.shape) != shape or found.dtype != dtype:
            # A stream rarely changes size: keep only the latest shape per name.
            found = torch.empty(shape, dtype=dtype, pin_memory=self.pinned)
            self._tensors[name] = found
        return found

    def array(self, name: str, shape: tuple[int, ...], dtype=torch.uint8) -> np.ndarray:
        return self.tensor(name, shape, dtype).numpy()

    def like(self, name: str, template: torch.Tensor) -> torch.Tensor:
        """A reused (never pinned) tensor with ``template``'s shape, dtype and layout."""
        found = self._tensors.get(name)
        if (found is None or found.shape != template.shape or found.dtype != template.dtype
                or found.stride() != template.stride()):
            found = torch.empty_like(template)
            self._tensors[name] = found
        return found


class Backend:
    """One model on one device kind: the frame geometry and normalisation both back ends use."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.metadata = model.metadata
        self.palette = palette_array(model.metadata)
        self.scale, self.bias = model.metadata.affine()

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network is fed at for a frame of the given size."""
        meta = self.metadata
        if meta.input_size is not None:
            return meta.input_size[1], meta.input_size[0]
        m = meta.size_multiple
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def segment_to_host(self, job: FrameJob, stage: Timer, slot: int = 0) -> HostSegmentation:
        """One frame; its outputs go to the reused buffers of ``slot``."""
        raise NotImplementedError

    def segment_batch(self, jobs: list[FrameJob], stage: Timer) -> list[HostSegmentation]:
        """Several frames, each into the buffers of its own slot (one at a time here; a back
        end that gains from batches overrides this)."""
        return [self.segment_to_host(job, stage, slot) for slot, job in enumerate(jobs)]

    def network_input(self, pixels: np.ndarray, channel_order: str) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
