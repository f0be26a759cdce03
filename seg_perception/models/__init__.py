"""Models: built-in registry, metadata, export to TorchScript, and loading.

The package itself loads nothing heavy: ``from seg_perception.models import load_model``
imports the loader (and torch) when it is asked for, so the node can name and check models
before it loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BUILTIN_MODELS": "registry",
    "DEFAULT_MODEL": "registry",
    "LoadedModel": "loading",
    "ModelLoadError": "loading",
    "ModelMetadata": "metadata",
    "load_model": "loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
