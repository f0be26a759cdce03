"""Models: built-in registry, metadata, export to TorchScript, and loading."""

import warnings

from seg_perception.models.loading import LoadedModel, ModelLoadError, load_model
from seg_perception.models.metadata import ModelMetadata
from seg_perception.models.registry import BUILTIN_MODELS, DEFAULT_MODEL

# torch 2.14 deprecates TorchScript, which is what this package exports and loads (users ask
# for it): its FutureWarning on every torch.jit call would be noise in every user's log.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"TorchScript", category=FutureWarning)

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelLoadError",
    "ModelMetadata",
    "load_model",
]
