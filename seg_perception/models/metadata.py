"""The metadata record that travels with every exported model.

A TorchScript file alone does not say how to feed it or what its outputs mean. The record
below does, and is stored inside the file (TorchScript ``extra_files``) so the two cannot
drift apart; a ``<model>.json`` sidecar is accepted for TorchScript files made elsewhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from seg_perception.errors import SegPerceptionError

METADATA_FORMAT = 1
EXTRA_FILE_NAME = "seg_perception.json"

ChannelOrder = Literal["rgb", "bgr"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
# auto: fp16 on CUDA, fp32 on the CPU; bf16: autocast on the CPU.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")


class MetadataError(SegPerceptionError, ValueError):
    """The metadata record is missing a field or holds an impossible value."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to preprocess input for a model and interpret its logits.

    Normalisation: ``x' = (x * input_scale - mean) / std * output_scale`` per channel, with
    ``x`` the 0..255 pixel in ``channel_order`` and ``mean``/``std`` in that order too.
    ``input_size`` is (width, height) the network is fed at; ``None`` keeps the camera size.
    The output is NCHW logits (``output_layout``), one channel per entry of ``class_names``.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    channel_order: ChannelOrder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_scale: float = 1.0
    output_scale: float = 1.0
    input_size: tuple[int, int] | None = None
    size_multiple: int = 1
    output_layout: str = "logits_nchw"
    source: str = ""
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    format: int = METADATA_FORMAT

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise MetadataError(f"model metadata '{self.name}': " + "; ".join(problems))

    def _problems(self):
        if not self.class_names:
            yield "class_names is empty"
        if len(self.class_names) > 256:
            yield f"{len(self.class_names)} classes do not fit a uint8 label map (max 256)"
        if len(self.palette) != len(self.class_names):
            yield (
                f"palette has {len(self.palette)} colours for {len(self.class_names)} classes"
            )
        for colour in self.palette:
            if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
                yield f"palette colour {list(colour)} is not three values in 0..255"
                break
        if self.channel_order not in ("rgb", "bgr"):
            yield f"channel_order must be 'rgb' or 'bgr', not {self.channel_order!r}"
        if len(self.mean) != 3 or len(self.std) != 3:
            yield "mean and std must have three values"
        elif not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            yield "mean must be finite and std finite and positive"
        if not (self.input_scale > 0 and self.output_scale > 0):
            yield "input_scale and output_scale must be positive"
        if self.input_size is not None and (
            len(self.input_size) != 2 or min(self.input_size) < 1
        ):
            yield f"input_size must be (width, height) of positive ints, not {self.input_size}"
        if self.size_multiple < 1:
            yield "size_multiple must be >= 1"
        if self.output_layout != "logits_nchw":
            yield f"output_layout {self.output_layout!r} is not supported (logits_nchw)"
        if self.format != METADATA_FORMAT:
            yield f"metadata format {self.format} is not supported (expected {METADATA_FORMAT})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_input_size(self, size: tuple[int, int]) -> ModelMetadata:
        """This record fed at ``size`` (width, height): sides must suit ``size_multiple``."""
        width, height = size
        step = self.size_multiple
        if width < step or height < step or width % step or height % step:
            raise MetadataError(
                f"input size {width}x{height} does not suit {self.name}: each side must be a "
                f"positive multiple of {step}"
            )
        return replace(self, input_size=(width, height))

    def affine(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (scale, bias) so that normalisation is one multiply-add on 0..255."""
        scale = tuple(self.input_scale * self.output_scale / s for s in self.std)
        bias = tuple(-m * self.output_scale / s for m, s in zip(self.mean, self.std, strict=True))
        return scale, bias

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        known = set(cls.__dataclass_fields__)
        missing = {"name", "class_names", "palette", "channel_order", "mean", "std"} - set(data)
        if missing:
            raise MetadataError(f"model metadata lacks field(s): {', '.join(sorted(missing))}")
        unknown = set(data) - known
        if unknown:
            names = ", ".join(sorted(unknown))
            raise MetadataError(f"model metadata has unknown field(s): {names}")
        try:
            fields = dict(data)
            fields["class_names"] = tuple(str(n) for n in data["class_names"])
            fields["palette"] = tuple(tuple(int(c) for c in col) for col in data["palette"])
            fields["mean"] = tuple(float(v) for v in data["mean"])
            fields["std"] = tuple(float(v) for v in data["std"])
            if data.get("input_size") is not None:
                fields["input_size"] = tuple(int(v) for v in data["input_size"])
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, MetadataError):
                raise
            raise MetadataError(f"model metadata has a malformed field: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MetadataError(f"model metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MetadataError("model metadata must be a JSON object")
        return cls.from_dict(data)
