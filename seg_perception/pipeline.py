"""The ROS-free segmentation core: frame in, label map / colour mask / overlay out.

Everything after the upload happens on the model's device and in as few passes as possible:
the uint8 frame is resized, reordered and normalised there, the network runs, the class map is
taken at the network's resolution and brought to the frame size with nearest-neighbour (class
ids are never interpolated), and only uint8 results come back to the host, on request.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from seg_perception.models.loading import LoadedModel, run_network

ChannelOrder = Literal["rgb", "bgr"]
Upsample = Literal["labels", "logits"]

# torch warns when wrapping read-only buffers (ROS message data); we never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_ALPHA_ONE = 128  # overlay blending in int16 fixed point: alpha 1.0 == 128, no overflow


def _check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be within [0, 1], got {alpha}")
    return float(alpha)


@dataclass
class Segmentation:
    """One frame's result; the label map lives on the model's device, the rest is lazy."""

    label_map: torch.Tensor  # HxW uint8 class ids at the frame's resolution
    frame: torch.Tensor  # HxWx3 uint8 RGB on the device (for the overlay)
    palette: torch.Tensor  # Kx3 uint8 RGB

    def color_mask(self) -> torch.Tensor:
        """HxWx3 uint8 RGB, one palette colour per class."""
        return self.palette[self.label_map.long()]

    def overlay(self, alpha: float, color_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(1 - alpha) * frame + alpha * colour``, rounded, HxWx3 uint8 RGB."""
        weight = round(_check_alpha(alpha) * _ALPHA_ONE)
        colour = self.color_mask() if color_mask is None else color_mask
        mixed = self.frame.to(torch.int16) * (_ALPHA_ONE - weight)
        mixed += colour.to(torch.int16) * weight
        mixed += _ALPHA_ONE // 2
        return (mixed >> 7).to(torch.uint8)  # >> 7 == // _ALPHA_ONE


class SegmentationPipeline:
    """Preprocess, infer and postprocess frames for one loaded model.

    ``upsample="labels"`` (default) takes the argmax at network resolution and scales the
    uint8 class map; ``"logits"`` interpolates the logits to the frame first (smoother edges,
    slower). Not thread-safe: one pipeline per inference thread.
    """

    def __init__(self, model: LoadedModel, upsample: Upsample = "labels") -> None:
        if upsample not in ("labels", "logits"):
            raise ValueError(f"upsample must be 'labels' or 'logits', not {upsample!r}")
        self.model = model
        self.upsample = upsample
        meta = model.metadata
        device = model.device
        scale, bias = meta.affine()
        self._scale = torch.tensor(scale, device=device, dtype=model.dtype).view(1, 3, 1, 1)
        self._bias = torch.tensor(bias, device=device, dtype=model.dtype).view(1, 3, 1, 1)
        palette = np.zeros((max(meta.num_classes, 1), 3), np.uint8)
        palette[: meta.num_classes] = meta.palette
        self.palette = torch.from_numpy(palette).to(device)

    @property
    def metadata(self):
        return self.model.metadata

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network is fed at for a frame of the given size."""
        meta = self.metadata
        if meta.input_size is not None:
            return meta.input_size[1], meta.input_size[0]
        m = meta.size_multiple
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def upload(self, pixels: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 (any strides) -> device tensor, without a host float copy."""
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {pixels.dtype} {pixels.shape}")
        frame = torch.from_numpy(pixels)
        if self.model.device.type == "cuda":
            frame = frame.contiguous().pin_memory().to(self.model.device, non_blocking=True)
        return frame

    def preprocess(self, frame: torch.Tensor, channel_order: ChannelOrder) -> torch.Tensor:
        """Device uint8 HxWx3 -> normalised 1x3xhxw network input (channels-last)."""
        height, width = frame.shape[:2]
        size = self.network_size(height, width)
        x = frame.permute(2, 0, 1).unsqueeze(0)  # a view: channels-last strides already
        if channel_order != self.metadata.channel_order:
            x = x.flip(1)
        if size != (height, width):
            if x.device.type == "cpu":  # uint8 resize is vectorised on CPU: resize, then widen
                x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size,
                                  mode="bilinear", align_corners=False)
                x = x.to(self.model.dtype)
            else:
                x = F.interpolate(x.to(self.model.dtype), size=size, mode="bilinear",
                                  align_corners=False)
        else:
            x = x.to(self.model.dtype)
        x = torch.addcmul(self._bias, x, self._scale)
        return x.contiguous(memory_format=torch.channels_last)

    def postprocess(self, logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """NCHW logits -> HxW uint8 class map at the frame's resolution."""
        if self.upsample == "logits" and logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear",
                                   align_corners=False)
        labels = logits.argmax(1, keepdim=True).to(torch.uint8)
        if labels.shape[-2:] != (height, width):
            labels = F.interpolate(labels, size=(height, width), mode="nearest-exact")
        return labels[0, 0]

    def segment(self, pixels: np.ndarray, channel_order: ChannelOrder = "rgb") -> Segmentation:
        """Segment one HxWx3 uint8 frame given in ``channel_order``."""
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {channel_order!r}")
        frame = self.upload(pixels)
        height, width = frame.shape[:2]
        with torch.inference_mode():
            x = self.preprocess(frame, channel_order)
            logits = run_network(self.model, x)
            labels = self.postprocess(logits, height, width)
            rgb = frame if channel_order == "rgb" else frame.flip(2)
        return Segmentation(labels, rgb, self.palette)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Device uint8 tensor -> contiguous host array (a copy only when on another device)."""
    return tensor.contiguous().cpu().numpy()
