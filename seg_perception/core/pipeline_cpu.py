"""The CPU back end: single-pass OpenCV / numpy kernels around the network.

On the CPU the host *is* the device, so every pass that is not the network uses a kernel that
stays fast on a busy 2-core machine (measured with ``seg-perception bench``): uint8 resize, a
float look-up table that normalises straight into the reused channels-last network input, the
argmax at network resolution, nearest upsampling of the uint8 ids by precomputed exact
indices, a palette look-up and an ``addWeighted`` blend. Only the network and the argmax use
torch. Every buffer is reused from frame to frame.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from seg_perception.core.pipeline_base import (
    Backend,
    FrameJob,
    HostBuffers,
    HostSegmentation,
    Timer,
    class_maps,
    nearest_indices,
)
from seg_perception.models.loading import LoadedModel, run_network


def upsample_labels(small: np.ndarray, out: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Nearest-exact scaling of an hxw uint8 map into ``out`` (HxW): two gathers, one thread.

    ``rows`` is scratch of shape (H, w).
    """
    h, w = small.shape
    height, width = out.shape
    if (h, w) == (height, width):
        np.copyto(out, small)
        return out
    np.take(small, nearest_indices(h, height), axis=0, out=rows, mode="clip")
    return np.take(rows, nearest_indices(w, width), axis=1, out=out, mode="clip")


def palette_lut(palette: np.ndarray) -> np.ndarray:
    """256x1x3 uint8 table for ``cv2.applyColorMap``; ids without a colour map to black."""
    lut = np.zeros((256, 1, 3), np.uint8)
    count = min(len(palette), 256)
    lut[:count, 0] = palette[:count]
    return lut


class CpuBackend(Backend):
    """Frames through one model on the CPU; not thread-safe (one per inference thread)."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        self._palette_lut = palette_lut(self.palette)
        # Normalisation as a look-up table: value v of channel c -> v * scale[c] + bias[c]
        # (the same float32 maths as a multiply-add, but one pass into the input buffer).
        values = np.arange(256, dtype=np.float32)[:, None]
        lut = values * np.float32(self.scale) + np.float32(self.bias)
        self._normalise_lut = np.ascontiguousarray(lut.astype(np.float32).reshape(256, 1, 3))
        self._out = HostBuffers(pinned=False)  # handed to the caller
        self._work = HostBuffers(pinned=False)  # scratch, never handed out

    def network_input(self, pixels: np.ndarray, channel_order: str) -> torch.Tensor:
        """The reused 1x3xhxw float32 input (channels-last memory), filled for this frame.

        uint8 resize, channel swap and a float LUT straight into the tensor's memory.
        """
        height, width = self.network_size(*pixels.shape[:2])
        nhwc = self._work.tensor("input", (1, height, width, 3), torch.float32)
        small = pixels
        if pixels.shape[:2] != (height, width):
            small = self._work.array("resized", (height, width, 3))
            cv2.resize(pixels, (width, height), dst=small, interpolation=cv2.INTER_LINEAR)
        if channel_order != self.metadata.channel_order:
            swapped = self._work.array("swapped", (height, width, 3))
            small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR, dst=swapped)  # same swap both ways
        cv2.LUT(small, self._normalise_lut, dst=nhwc[0].numpy())
        return nhwc.permute(0, 3, 1, 2)  # NCHW view of NHWC memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_network(self.model, x)

    def _upsampled(self, name: str, small: torch.Tensor, height: int, width: int) -> np.ndarray:
        """An hxw uint8 map brought to the frame size, into the reused output ``name``."""
        rows = self._work.array("upsample_rows", (height, small.shape[1]))
        return upsample_labels(small.numpy(), self._out.array(name, (height, width)), rows)

    def segment_to_host(self, job: FrameJob, stage: Timer, slot: int = 0) -> HostSegmentation:
        pixels, channel_order, request = job.pixels, job.channel_order, job.request
        smoother, stamp_s = job.smoother, job.stamp_s
        height, width = pixels.shape[:2]
        with stage("preprocess"):
            x = self.network_input(pixels, channel_order)
        with stage("forward"):
            scores = self.forward(x)
        with torch.inference_mode():
            if smoother is not None:
                with stage("smoothing"):
                    scores = smoother.update(scores, stamp_s)
            with stage("postprocess"):
                exp_logits = None
                if smoother is None and (request.confidence or request.min_confidence > 0):
                    exp_logits = self._work.like("exp_logits", scores)
                small_labels, small_conf = class_maps(scores, smoother is not None,
                                                      request.confidence, request.min_confidence,
                                                      exp_logits)
                labels = self._upsampled(f"label_map{slot}", small_labels, height, width)
                conf = None
                if small_conf is not None:
                    conf = self._upsampled(f"confidence{slot}", small_conf, height, width)
        colour = overlay = None
        alpha = request.overlay_alpha
        if request.color_mask or alpha is not None:
            with stage("color_mask"):
                colour = self._out.array(f"color_mask{slot}", (height, width, 3))
                cv2.applyColorMap(labels, self._palette_lut, dst=colour)
        if alpha is not None:
            with stage("overlay"):
                overlay = self._out.array(f"overlay{slot}", (height, width, 3))
                rgb = pixels
                if channel_order == "bgr":
                    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB,
                                       dst=self._work.array("rgb_frame", pixels.shape))
                cv2.addWeighted(rgb, 1.0 - alpha, colour, alpha, 0.0, dst=overlay)
        return HostSegmentation(labels, colour if request.color_mask else None, overlay, conf)
