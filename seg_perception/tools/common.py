"""Options shared by the tools, so every tool spells them the same way.

The checks of arguments and output paths live in :mod:`seg_perception.checks` (``parse_size``
is re-exported here for the tools that import it from this module).
"""

from __future__ import annotations

import argparse

import torch

from seg_perception.checks import number_type, parse_size
from seg_perception.models.loading import PRECISIONS, LoadedModel, load_model
from seg_perception.models.registry import BUILTIN_MODELS, DEFAULT_MODEL
from seg_perception.shared_data import use_shared_torch_home

__all__ = ["add_model_arguments", "load_model_from_args", "parse_size"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"exported .pt file or built-in name ({', '.join(BUILTIN_MODELS)}); "
        f"default {DEFAULT_MODEL}",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="auto = fp16 on CUDA, fp32 on CPU; bf16 = autocast on CPU")
    group.add_argument("--threads", type=number_type(int, minimum=0), default=0,
                       help="CPU threads for torch (default 0 = torch's choice)")


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    use_shared_torch_home()
    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, device=args.device, precision=args.precision)
