"""Temporal stabilisation: an exponential moving average of class probabilities per stream.

Frame-to-frame label flicker becomes costmap noise and decision chatter. Averaging the
network's class probabilities over time (at network resolution, before the argmax) steadies
labels and confidence where the scene is static, at the price of some lag where it changes.
The average starts over when the frame size changes or the stream's stamps jump (a gap, a
restart, a bag looping back), so one scene never bleeds into an unrelated one.
"""

from __future__ import annotations

import torch

__all__ = ["TemporalSmoother", "softmax_into"]


def softmax_into(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Class probabilities of NCHW ``logits`` written into ``out`` (same shape): max-shifted
    exp, then a division by the per-pixel sum. Channels-last logits stay channels-last, where
    ``torch.softmax`` over dim 1 is several times slower on the CPU."""
    torch.sub(logits, logits.amax(1, keepdim=True), out=out)
    out.exp_()
    out.div_(out.sum(1, keepdim=True))
    return out


class TemporalSmoother:
    """``p <- weight * softmax(logits) + (1 - weight) * p``, per stream.

    ``weight`` 1 follows the newest frame only (no smoothing); smaller values average over
    about ``1 / weight`` frames. The average restarts on a new network output shape, on a
    stamp that goes back, or on a gap of more than ``max_gap_s`` between stamps.
    """

    def __init__(self, weight: float, max_gap_s: float = 0.5) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"smoothing weight must be in (0, 1], got {weight}")
        self.weight = float(weight)
        self.max_gap_s = float(max_gap_s)
        self._average: torch.Tensor | None = None
        self._probabilities: torch.Tensor | None = None
        self._last_stamp: float | None = None
        self.restarts = 0  # times the average started over (for tests and diagnostics)

    def reset(self) -> None:
        self._average = None
        self._last_stamp = None

    def _continues(self, shape: torch.Size, device: torch.device, stamp_s: float | None) -> bool:
        if self._average is None or self._average.shape != shape:
            return False
        if self._average.device != device:
            return False
        if stamp_s is None or self._last_stamp is None:
            return True
        gap = stamp_s - self._last_stamp
        return 0.0 <= gap <= self.max_gap_s

    def update(self, logits: torch.Tensor, stamp_s: float | None = None) -> torch.Tensor:
        """The averaged class probabilities after this frame (a reused tensor)."""
        with torch.inference_mode():
            if self._probabilities is None or self._probabilities.shape != logits.shape \
                    or self._probabilities.device != logits.device:
                self._probabilities = torch.empty_like(logits, dtype=torch.float32)
            probabilities = softmax_into(logits.float(), self._probabilities)
            if self._continues(logits.shape, logits.device, stamp_s):
                self._average.lerp_(probabilities, self.weight)
            else:
                self._average = probabilities.clone()
                self.restarts += 1
        self._last_stamp = stamp_s
        return self._average
