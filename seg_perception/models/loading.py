"""Loading an exported model: validate the file and its metadata, place it, warm it up.

Every tool takes ``--model`` as either a built-in name (exported once into a local cache) or a
path to an exported TorchScript file; both end up here, so all tools run the same artefact.
TorchScript files contain code: load only files from sources you trust.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from seg_perception.checks import OutputPathError, check_output_dir
from seg_perception.device import select_device
from seg_perception.errors import SegPerceptionError
from seg_perception.host_memory import keep_freed_memory
from seg_perception.models.metadata import (
    EXTRA_FILE_NAME,
    PRECISIONS,
    MetadataError,
    ModelMetadata,
    Precision,
)


def silence_torchscript_deprecation() -> None:
    """torch 2.14 deprecates TorchScript, which this package exports and loads (users ask
    for it): its FutureWarning on every torch.jit call would be noise in every user's log."""
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"TorchScript", category=FutureWarning)


silence_torchscript_deprecation()

log = logging.getLogger(__name__)



class ModelLoadError(SegPerceptionError, RuntimeError):
    """A model could not be loaded; the message is one line that says what to fix."""


@dataclass
class LoadedModel:
    """A TorchScript segmentation network placed on a device, with what it needs to be fed."""

    module: torch.jit.ScriptModule
    metadata: ModelMetadata
    device: torch.device
    dtype: torch.dtype  # dtype of the input tensor and weights
    autocast_dtype: torch.dtype | None  # CPU bf16 runs fp32 weights under autocast
    path: Path
    device_reason: str

    def describe(self) -> str:
        meta = self.metadata
        size = "x".join(map(str, meta.input_size)) if meta.input_size else "native"
        precision = str(self.autocast_dtype or self.dtype).removeprefix("torch.")
        return (
            f"model {self.metadata.name} ({self.metadata.num_classes} classes, input {size}, "
            f"{precision}) on {self.device} [{self.device_reason}] from {self.path}"
        )


def cache_dir() -> Path:
    """Where built-in models are exported to on first use (``SEG_PERCEPTION_CACHE``)."""
    root = os.environ.get("SEG_PERCEPTION_CACHE") or Path.home() / ".cache" / "seg_perception"
    return Path(root) / "models"


def check_model_name(model: str) -> Path | None:
    """The file ``model`` names, or None for a built-in name; raise :class:`ModelLoadError`
    if it is neither (a check that loads nothing, for the tools to fail fast)."""
    from seg_perception.models.registry import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        return None
    path = Path(model).expanduser()
    if not path.exists():
        names = ", ".join(BUILTIN_MODELS)
        raise ModelLoadError(f"model file not found: {path} (built-in names: {names})")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    return path


def resolve_model_path(model: str) -> Path:
    """A path for ``model``: an existing file as given, or the cached export of a built-in.

    The cache folder is checked before exporting; the export is written to a temporary file
    and renamed, so processes exporting the same built-in at once each leave a whole file.
    """
    from seg_perception import __version__

    path = check_model_name(model)
    if path is not None:
        return path
    path = cache_dir() / f"{model}-{__version__}.pt"
    if not path.exists():
        from seg_perception.models.export import export_builtin

        try:
            check_output_dir(path.parent, "the model cache (SEG_PERCEPTION_CACHE)")
        except OutputPathError as exc:
            raise ModelLoadError(f"{exc}: set SEG_PERCEPTION_CACHE to a writable folder") from None
        log.info("exporting built-in model %s to %s (first use: 10-30 s; later starts "
                 "load the file)", model, path)
        export_builtin(model, path)
    return path


def is_torchscript_file(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with code and constants), as opposed
    to a ``torch.save`` checkpoint (a zip of pickled tensors) or anything else."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_model_file(path: Path, map_location: torch.device | str = "cpu"):
    """Open a TorchScript file and its metadata (embedded, else ``<file>.json``)."""
    extra = {EXTRA_FILE_NAME: ""}
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except (RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        export = "export it with 'seg-perception export <arch> --weights FILE'"
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path} is not a TorchScript model (not even a zip archive; "
                                 f"if it is a torch.save checkpoint, {export})") from None
        hint = "" if is_torchscript_file(path) else (
            f" (it looks like a torch.save checkpoint: {export})")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.split(". ")[0]  # torch appends paragraphs of advice
        raise ModelLoadError(f"{path} is not a TorchScript model{hint}: {reason}") from None
    text = extra[EXTRA_FILE_NAME]
    sidecar = path.with_name(path.name + ".json")
    if not text and sidecar.exists():
        text = sidecar.read_text()
    if not text:
        raise ModelLoadError(
            f"{path} has no seg_perception metadata (neither embedded {EXTRA_FILE_NAME} nor "
            f"{sidecar.name}): export it with 'seg-perception export'"
        )
    try:
        metadata = ModelMetadata.from_json(text)
    except MetadataError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return module, metadata


def load_model(
    model: str,
    device: str = "auto",
    precision: Precision = "auto",
    device_fallback: bool = True,
    warmup: bool = True,
    optimize: bool = True,
    input_size: tuple[int, int] | None = None,
) -> LoadedModel:
    """Load, validate, place and warm up a model; raise :class:`ModelLoadError` on any problem.

    ``input_size`` (width, height) overrides the network input size of the metadata: a speed /
    accuracy trade-off for fully convolutional networks (sides must suit ``size_multiple``).
    The process's malloc is set to keep freed memory for the next frame
    (:func:`~seg_perception.host_memory.keep_freed_memory`).
    """
    keep_freed_memory()
    target, reason = select_device(device, fallback=device_fallback)
    if reason.startswith("FALLBACK"):
        log.warning("device: %s", reason)
    dtype, autocast = _resolve_precision(precision, target)  # before the (slow) load
    path = resolve_model_path(model)
    module, metadata = read_model_file(path, map_location=target)
    if input_size is not None:
        try:
            metadata = metadata.with_input_size(input_size)
        except MetadataError as exc:
            raise ModelLoadError(str(exc)) from None
    module = module.eval().to(target)
    module = module.to(memory_format=torch.channels_last)
    module = module.to(dtype)  # also upcasts fp16-exported weights for the CPU
    if optimize:
        module = torch.jit.freeze(module)
    loaded = LoadedModel(module, metadata, target, dtype, autocast, path, reason)
    if warmup:
        _warm_up(loaded)
    return loaded


def _resolve_precision(
    precision: str, device: torch.device
) -> tuple[torch.dtype, torch.dtype | None]:
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        return (torch.float16 if cuda else torch.float32), None
    if precision == "fp16":
        if not cuda:
            raise ModelLoadError("precision fp16 needs a CUDA device: use fp32 or bf16 on CPU")
        return torch.float16, None
    if precision == "bf16":
        return (torch.bfloat16, None) if cuda else (torch.float32, torch.bfloat16)
    return torch.float32, None


def _warm_up(loaded: LoadedModel) -> None:
    """Run the network twice at its input size, and check its output against the metadata."""
    meta = loaded.metadata
    width, height = meta.input_size or (640, 480)
    x = torch.zeros(1, 3, height, width, device=loaded.device, dtype=loaded.dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    try:
        for _ in range(2):
            out = run_network(loaded, x)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ModelLoadError(
            f"{loaded.path}: the network fails on a {width}x{height} input: {reason}"
        ) from None
    if out.dim() != 4 or out.shape[0] != 1:
        raise ModelLoadError(
            f"{loaded.path}: output shape {tuple(out.shape)} is not NCHW logits (logits_nchw)"
        )
    if out.shape[1] != meta.num_classes:
        raise ModelLoadError(
            f"{loaded.path}: the network outputs {out.shape[1]} channels but the metadata "
            f"names {meta.num_classes} classes: re-export with the right class list"
        )
    log.debug("warm-up took %.0f ms", (time.perf_counter() - start) * 1e3)


def run_network(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """The forward pass alone, under the model's precision policy."""
    with torch.inference_mode():
        if loaded.autocast_dtype is not None:
            with torch.autocast(loaded.device.type, dtype=loaded.autocast_dtype):
                return loaded.module(x)
        return loaded.module(x)
