"""The network to fine-tune: a built-in or exported ESPNet, given a head for the new classes.

A new class set keeps the pretrained decoder at its own width and replaces only the last
layer (the 2x2 transposed conv), each new class starting from its best-matching old class.
That network is none of the built-in layouts, so its layout travels in the exported file's
metadata (``extra["architecture"]``) and :func:`load_source_model` rebuilds it from there.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg_perception.core.labels import LabelSet
from seg_perception.errors import SegPerceptionError
from seg_perception.evaluation import ClassMapping, MappingError
from seg_perception.models.espnet import EspNet
from seg_perception.models.loading import read_model_file, resolve_model_path
from seg_perception.models.metadata import ModelMetadata
from seg_perception.models.registry import BUILTIN_MODELS

log = logging.getLogger(__name__)


class ArchitectureError(SegPerceptionError, ValueError):
    """The model cannot be fine-tuned: not an ESPNet, or its file does not say its layout."""


@dataclass(frozen=True)
class EspNetArchitecture:
    """Enough to rebuild an ESPNet whose last layer may be narrower than its decoder."""

    decoder_width: int  # channels of every decoder layer (the pretraining's class count)
    num_classes: int  # outputs of the last layer
    p: int = 2
    q: int = 8
    fuse_input_projection: bool = False
    family: str = "espnet"

    def build(self) -> EspNet:
        model = EspNet(self.decoder_width, self.p, self.q, self.fuse_input_projection)
        if self.num_classes != self.decoder_width:
            model.classifier = new_classifier(self.decoder_width, self.num_classes)
        return model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EspNetArchitecture:
        if not isinstance(data, dict) or data.get("family") != "espnet":
            raise ArchitectureError(f"unsupported architecture {data!r}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ArchitectureError(f"malformed architecture {data!r}: {exc}") from None

    @classmethod
    def of(cls, model: EspNet) -> EspNetArchitecture:
        """Read the layout off a built network."""
        return cls(decoder_width=model.br.num_features,
                   num_classes=model.classifier.out_channels,
                   p=len(model.encoder.level2), q=len(model.encoder.level3),
                   fuse_input_projection=model.fuse_input_projection)


def new_classifier(in_channels: int, num_classes: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, num_classes, 2, stride=2, bias=False)


def load_source_model(model: str) -> tuple[EspNet, ModelMetadata]:
    """A built-in ESPNet with its pretrained weights, or an exported file's network, eager."""
    if model in BUILTIN_MODELS:
        spec = BUILTIN_MODELS[model]
        if not isinstance(spec.build(pretrained=False), EspNet):  # before fetching weights
            espnets = ", ".join(n for n in BUILTIN_MODELS if n.startswith("espnet"))
            raise ArchitectureError(f"training supports ESPNet models ({espnets} or a file "
                                    f"trained from one), not {model}")
        return spec.build(pretrained=True), spec.metadata
    path = resolve_model_path(model)
    scripted, metadata = read_model_file(path)
    arch = metadata.extra.get("architecture")
    if arch is None and metadata.name in BUILTIN_MODELS:  # a plain export of a built-in
        built = BUILTIN_MODELS[metadata.name].build(pretrained=False)
        arch = EspNetArchitecture.of(built).to_dict() if isinstance(built, EspNet) else None
    if arch is None:
        raise ArchitectureError(f"{path} does not say its architecture (metadata extra "
                                "'architecture'): only files written by 'seg-perception train' "
                                "or exports of the built-in ESPNets can be fine-tuned")
    network = EspNetArchitecture.from_dict(arch).build()
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in scripted.state_dict().items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArchitectureError(f"{path}: weights do not fit its architecture {arch}: "
                                f"{str(exc).splitlines()[0]}") from None
    return network, metadata


def head_sources(source_names: tuple[str, ...], label_set: LabelSet,
                 mapping_path: Path | None = None) -> list[list[int]]:
    """For each new class, the old class ids its output starts from.

    A labelled class starts from the first model class listed for it in the class mapping
    (``config/mappings/<model>_to_<data set>.yaml``, or ``mapping_path``: Car <- car,
    Tree <- vegetation, ...), else from a same-named class; a void class from the model's
    unmapped classes (Cityscapes "background"). An empty list: a fresh start.
    """
    target = label_set.labelled
    index = {name.casefold(): i for i, name in enumerate(source_names)}
    table: dict[str, tuple[str, ...]] = {}
    unmapped: tuple[str, ...] = ()
    try:
        mapping = ClassMapping.resolve(source_names, target, mapping_path)
        table, unmapped = mapping.table, mapping.unmapped_sources
    except MappingError:
        if mapping_path is not None:
            raise
        log.warning("no class mapping from the model's classes to %s: new classes without a "
                    "same-named model class start from scratch (give --mapping)", target.name)
    first = {t.casefold(): s[0].casefold() for t, s in table.items() if s}
    sources = []
    for class_id, name in enumerate(label_set.class_names):
        key = first.get(name.casefold(), name.casefold())
        if key in index:
            sources.append([index[key]])
        elif class_id in label_set.void_ids:
            sources.append([index[n.casefold()] for n in unmapped])
        else:
            sources.append([])
    return sources


def fit_head(model: EspNet, source_names: tuple[str, ...], label_set: LabelSet,
             mapping_path: Path | None = None) -> list[str]:
    """Give ``model`` an output per class of ``label_set`` (no change when they already match).

    Returns one line per new class saying where it started, for the log.
    """
    if tuple(n.casefold() for n in source_names) == tuple(
            n.casefold() for n in label_set.class_names):
        return []
    old = model.classifier
    head = new_classifier(old.in_channels, label_set.num_classes)
    sources = head_sources(source_names, label_set, mapping_path)
    lines = []
    with torch.no_grad():
        for class_id, ids in enumerate(sources):
            if ids:
                head.weight[:, class_id] = old.weight[:, ids].mean(dim=1)
            names = ", ".join(source_names[i] for i in ids) or "scratch"
            lines.append(f"{label_set.class_names[class_id]} <- {names}")
    model.classifier = head
    return lines


def freeze_encoder(model: EspNet) -> list[str]:
    """Stop training the encoder (its weights and BatchNorm statistics); return the prefixes.

    ``encoder.classifier`` stays trainable: in the full network it is the decoder's first
    layer, as wide as the decoder.
    """
    frozen = [name for name, _ in model.encoder.named_children() if name != "classifier"]
    prefixes = [f"encoder.{name}." for name in frozen]
    for name, param in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            param.requires_grad_(False)
    return prefixes


def set_train_mode(model: nn.Module, frozen_prefixes: list[str]) -> None:
    """Training mode, except the frozen modules' BatchNorm layers keep their statistics."""
    model.train()
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and (name + ".").startswith(tuple(frozen_prefixes)):
            module.eval()
