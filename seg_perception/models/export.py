"""Exporting networks to TorchScript files that carry their metadata.

Export is checked: the TorchScript module must reproduce the eager network on a real image
(a dash-cam still when the shared data is present); the largest absolute logit difference is
reported and stored in the metadata.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from seg_perception.checks import atomic_path, check_output_file
from seg_perception.errors import SegPerceptionError
from seg_perception.models.loading import silence_torchscript_deprecation
from seg_perception.models.metadata import EXTRA_FILE_NAME, ModelMetadata
from seg_perception.models.registry import BUILTIN_MODELS, ModelSpec

silence_torchscript_deprecation()
log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3


class ExportError(SegPerceptionError, RuntimeError):
    """The network could not be exported, or the export does not reproduce it."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    metadata: ModelMetadata
    max_abs_diff: float
    check_image: str
    seconds: float


class _OutOnly(nn.Module):
    """torchvision segmentation models return a dict; TorchScript users want the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def export_builtin(
    name: str,
    output: str | os.PathLike,
    pretrained: bool = True,
    weights_path: str | os.PathLike | None = None,
    class_names: list[str] | None = None,
    input_size: tuple[int, int] | None = None,
    half: bool = False,
    check_image: str | os.PathLike | None = None,
) -> ExportReport:
    """Build ``name`` (its published weights, none, or a user checkpoint) and export it."""
    if name not in BUILTIN_MODELS:
        raise ExportError(f"unknown architecture '{name}': choose from {', '.join(BUILTIN_MODELS)}")
    spec: ModelSpec = BUILTIN_MODELS[name]
    check_output_file(output, "export output")  # before building: seconds, or a download
    if weights_path is not None:
        model, metadata = spec.build_from_checkpoint(weights_path, class_names)
    else:
        model, metadata = spec.build(pretrained), spec.metadata
        if not pretrained:
            metadata = replace(metadata, source=metadata.source + " [random init: no weights]")
    if input_size is not None:
        metadata = metadata.with_input_size(tuple(input_size))
    return export_module(model, metadata, output, half=half, check_image=check_image)


def export_module(
    model: nn.Module,
    metadata: ModelMetadata,
    output: str | os.PathLike,
    half: bool = False,
    check_image: str | os.PathLike | None = None,
) -> ExportReport:
    """Script an eager segmentation network, check parity, save it with its metadata.

    ``output`` is checked first (not a folder, in a writable folder) and written through a
    temporary file: a failure, or another process exporting to the same path, never leaves a
    partial file. An existing file is replaced (one log line says so).
    """
    output = check_output_file(output, "export output")
    start = time.perf_counter()
    model = model.eval()
    probe = model(torch.zeros(1, 3, 64, 64))
    if isinstance(probe, dict):
        model = _OutOnly(model).eval()
    try:
        scripted = torch.jit.script(model)
    except Exception as exc:  # noqa: BLE001 - any scripting failure: fall back to tracing
        log.warning("scripting failed (%s); tracing instead", str(exc).splitlines()[0])
        scripted = torch.jit.trace(model, _check_tensor(metadata, check_image)[0])
    x, image_name = _check_tensor(metadata, check_image)
    with torch.inference_mode():
        eager_out, script_out = model(x), scripted(x)
    diff = float((eager_out - script_out).abs().max())
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"TorchScript output differs from eager by {diff:g} on {image_name}")
    if half:
        scripted = scripted.half()
    extra = dict(metadata.extra)
    extra.update(
        parity_max_abs_diff=diff,
        parity_image=image_name,
        torch_version=torch.__version__,
        weights_dtype="float16" if half else "float32",
    )
    metadata = replace(metadata, extra=extra)
    with atomic_path(output) as temporary:
        torch.jit.save(scripted, str(temporary),
                       _extra_files={EXTRA_FILE_NAME: metadata.to_json()})
    return ExportReport(output, metadata, diff, image_name, time.perf_counter() - start)


def _check_tensor(
    metadata: ModelMetadata, image: str | os.PathLike | None
) -> tuple[torch.Tensor, str]:
    """The parity input: a real image, preprocessed per the metadata (eager reference code)."""
    if image is None:
        from seg_perception.shared_data import SharedDataError, dashcam_stills

        try:
            image = dashcam_stills()[0]
        except (SharedDataError, IndexError):
            image = None
    if image is not None:
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ExportError(f"cannot read the check image {image}")
        name = Path(image).name
    else:
        gradient = np.linspace(0, 255, 640, dtype=np.uint8)
        bgr = np.dstack([np.tile(gradient, (480, 1))] * 3)
        name = "synthetic gradient (shared data not found)"
    pixels = bgr if metadata.channel_order == "bgr" else bgr[..., ::-1]
    width, height = metadata.input_size or (512, 256)
    pixels = cv2.resize(np.ascontiguousarray(pixels), (width, height)).astype(np.float32)
    scale, bias = metadata.affine()
    pixels = pixels * np.float32(scale) + np.float32(bias)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None], name
