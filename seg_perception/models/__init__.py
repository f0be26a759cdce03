"""Models: built-in registry, metadata, export to TorchScript, and loading."""

from seg_perception.models.loading import LoadedModel, ModelLoadError, load_model
from seg_perception.models.metadata import ModelMetadata
from seg_perception.models.registry import BUILTIN_MODELS, DEFAULT_MODEL

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelLoadError",
    "ModelMetadata",
    "load_model",
]
