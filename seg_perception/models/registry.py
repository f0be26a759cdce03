"""Built-in models: one entry per architecture + weights, in the spirit of torchvision's enums.

Each :class:`ModelSpec` says everything needed to build the eager network with its weights and
to describe it (:class:`ModelMetadata`). Nothing else in the package repeats these facts.
torch loads when a network is built, not with this module: the node names and checks models
before it loads any.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from seg_perception.core.labels import CAMVID, CITYSCAPES, VOC, voc_palette
from seg_perception.errors import SegPerceptionError
from seg_perception.models.metadata import ModelMetadata

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


class WeightsError(SegPerceptionError, RuntimeError):
    """Weights could not be obtained or do not match their published checksum."""


@dataclass(frozen=True)
class Weights:
    """A published checkpoint: where it lives and how to check it."""

    url: str
    sha256: str | None
    description: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """Fetch through the torch hub cache (offline when ``TORCH_HOME`` holds the file)."""
        import torch

        cached = Path(torch.hub.get_dir()) / "checkpoints" / self.file_name
        if cached.exists():
            self._verify(cached)
        try:
            state = torch.hub.load_state_dict_from_url(
                self.url, map_location="cpu", progress=False, weights_only=True
            )
        except OSError as exc:  # URLError is an OSError: offline without a cached copy
            raise WeightsError(
                f"cannot get {self.file_name} from {self.url} ({exc}); with no internet, set "
                "TORCH_HOME to a hub cache that holds hub/checkpoints/" + self.file_name
            ) from None
        self._verify(cached)
        return state

    def _verify(self, path: Path) -> None:
        if self.sha256 is None:
            return
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise WeightsError(
                f"{path} has sha256 {digest}, expected {self.sha256}: delete it and fetch again"
            )


class EspNetWeights(Enum):
    """The authors' pretrained ESPNet (p=2, q=8) checkpoints."""

    CITYSCAPES = Weights(
        url="https://github.com/sacmehta/ESPNet/raw/master/pretrained/decoder/espnet_p_2_q_8.pth",
        sha256="343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
        description="ESPNet p=2 q=8 trained on Cityscapes (19 classes + background)",
    )
    CAMVID = Weights(
        url="https://github.com/sacmehta/ESPNet/raw/master/pretrained/decoder/"
        "espnet_p_2_q_8_camvid.pth",
        sha256="7d354a257170322086dcd4c1e89a482454cf2c9d30b085e70883878dd59301af",
        description="ESPNet p=2 q=8 trained on CamVid (11 classes + void)",
    )


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: how to build it and what its outputs mean."""

    name: str
    metadata: ModelMetadata
    builder: Callable[[bool, int], nn.Module]  # (pretrained, num_classes) -> eager module
    trace: bool = False  # torchvision models return dicts: export wraps and scripts them

    def build(self, pretrained: bool = True) -> nn.Module:
        return self.builder(pretrained, self.metadata.num_classes).eval()

    def build_from_checkpoint(
        self, path: str | os.PathLike, class_names: Sequence[str] | None = None
    ) -> tuple[nn.Module, ModelMetadata]:
        """A user's own checkpoint of this architecture (plain state_dict, loaded safely)."""
        state = read_state_dict(path)
        num_classes = len(class_names) if class_names else self._classes_in(state)
        model = self.builder(False, num_classes)
        if any(k.startswith("aux_classifier.") for k in state) and not hasattr(
            model, "aux_classifier"
        ):
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
        elif getattr(model, "aux_classifier", None) is not None and not any(
            k.startswith("aux_classifier.") for k in state
        ):
            model.aux_classifier = None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:2]
            raise WeightsError(f"{path} does not fit {self.name}: {' '.join(first)}") from None
        names = tuple(class_names or (f"class_{i}" for i in range(num_classes)))
        meta = replace(
            self.metadata,
            name=f"{self.name}-custom",
            class_names=names,
            palette=self.metadata.palette[:num_classes]
            if len(self.metadata.palette) >= num_classes
            else voc_palette(num_classes),
            source=str(Path(path).resolve()),
        )
        return model.eval(), meta

    def _classes_in(self, state: dict[str, torch.Tensor]) -> int:
        """The class count a checkpoint was trained for, read off its last layer."""
        for key in ("classifier.weight", "classifier.4.weight", "classifier.low_classifier.weight"):
            if key in state:
                # ConvTranspose2d stores (in, out, ...); Conv2d stores (out, in, ...).
                dim = 1 if self.name.startswith("espnet") else 0
                return int(state[key].shape[dim])
        raise WeightsError("cannot tell the class count from the checkpoint: give --num-classes")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``torch.save`` state_dict (tensors by name, ``module.`` prefixes dropped), loaded
    without running pickled code; anything else is a :class:`WeightsError` that names it."""
    import torch

    from seg_perception.models.loading import is_torchscript_file

    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if is_torchscript_file(path):
        raise WeightsError(f"{path} is an exported model, not a checkpoint: give it as --model, "
                           "or give the state_dict (.pth) it was made from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - whatever the bytes are, they are not a checkpoint
        raise WeightsError(f"{path} is not a PyTorch checkpoint (a state_dict of tensors saved "
                           "with torch.save)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"{path} does not hold a state_dict (tensors by parameter name)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _espnet_builder(weights: EspNetWeights, fuse: bool) -> Callable[[bool, int], nn.Module]:
    def build(pretrained: bool, num_classes: int) -> nn.Module:
        from seg_perception.models.espnet import EspNet

        model = EspNet(num_classes, p=2, q=8, fuse_input_projection=fuse)
        if pretrained:
            model.load_state_dict(weights.value.load_state_dict(), strict=True)
        return model

    return build


def _torchvision_builder(fn_name: str) -> Callable[[bool, int], nn.Module]:
    def build(pretrained: bool, num_classes: int) -> nn.Module:
        from torchvision.models import get_model_weights, segmentation

        fn = getattr(segmentation, fn_name)
        if pretrained:
            weights = get_model_weights(fn).DEFAULT
            try:
                return fn(weights=weights)
            except OSError as exc:
                raise WeightsError(
                    f"cannot download torchvision weights {weights} ({exc}); export with "
                    "--no-pretrained to check the export mechanics offline"
                ) from None
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)

    return build


def _torchvision_metadata(fn_name: str) -> ModelMetadata:
    # torchvision's COCO-with-VOC-labels weights: the 21 VOC categories, ImageNet
    # normalisation on 0..1 RGB, 520 px on the short side (test_models checks these against
    # torchvision's own weight metadata and transforms).
    return ModelMetadata(
        name=fn_name,
        class_names=VOC.class_names,
        palette=VOC.palette,
        channel_order="rgb",
        mean=IMAGENET_MEAN_RGB,
        std=IMAGENET_STD_RGB,
        input_scale=1 / 255,
        input_size=(928, 520),
        size_multiple=8,
        source=f"torchvision.models.segmentation.{fn_name} (COCO-with-VOC-labels weights)",
    )


TORCHVISION_MODELS = (
    "fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
)  # fmt: skip

_ESPNET_COMMON = dict(channel_order="bgr", input_scale=1.0, output_scale=1 / 255, size_multiple=8)

BUILTIN_MODELS: dict[str, ModelSpec] = {
    "espnet-cityscapes": ModelSpec(
        name="espnet-cityscapes",
        metadata=ModelMetadata(
            name="espnet-cityscapes",
            class_names=CITYSCAPES.class_names,
            palette=CITYSCAPES.palette,
            mean=(72.3923, 82.9089, 73.1584),
            std=(45.3192, 46.1529, 44.9148),
            input_size=(1024, 512),
            source=EspNetWeights.CITYSCAPES.value.url,
            version="sha256:" + EspNetWeights.CITYSCAPES.value.sha256[:16],
            **_ESPNET_COMMON,
        ),
        builder=_espnet_builder(EspNetWeights.CITYSCAPES, fuse=False),
    ),
    "espnet-camvid": ModelSpec(
        name="espnet-camvid",
        metadata=ModelMetadata(
            name="espnet-camvid",
            class_names=CAMVID.class_names,
            palette=CAMVID.palette,
            mean=(110.33, 108.41, 105.03),
            std=(72.13, 72.69, 69.90),
            input_size=(480, 360),
            source=EspNetWeights.CAMVID.value.url,
            version="sha256:" + EspNetWeights.CAMVID.value.sha256[:16],
            **_ESPNET_COMMON,
        ),
        builder=_espnet_builder(EspNetWeights.CAMVID, fuse=True),
    ),
    **{
        name: ModelSpec(name, _torchvision_metadata(name), _torchvision_builder(name), trace=True)
        for name in TORCHVISION_MODELS
    },
}

DEFAULT_MODEL = "espnet-cityscapes"
