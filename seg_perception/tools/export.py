"""``seg-perception export``: a network to a TorchScript file with its metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from seg_perception.checks import check_input_file, check_output_file, parse_size
from seg_perception.errors import UsageError
from seg_perception.models.export import export_builtin
from seg_perception.models.registry import BUILTIN_MODELS
from seg_perception.shared_data import use_shared_torch_home

MAX_CLASSES = 256

HELP = "export a built-in architecture (with its weights or yours) to TorchScript"
EPILOG = """examples:
  seg-perception export espnet-cityscapes -o espnet_cityscapes.pt
  seg-perception export espnet-camvid -o espnet_camvid.pt --half       # fp16 weights for CUDA
  seg-perception export lraspp_mobilenet_v3_large -o lraspp.pt         # downloads VOC weights
  seg-perception export deeplabv3_resnet50 -o mine.pt --weights my.pth --num-classes 5 \\
      --class-names road,car,person,sky,other
  seg-perception export fcn_resnet50 -o fcn.pt --no-pretrained          # mechanics only
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", choices=list(BUILTIN_MODELS), help="architecture or built-in")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="file to write; an existing file is replaced (one line says so), "
                        "never one of the inputs")
    parser.add_argument("--weights", type=Path, help="your own state_dict checkpoint (.pth)")
    parser.add_argument("--num-classes", type=int,
                        help="classes in --weights, 1..256 (else read off it)")
    parser.add_argument("--class-names",
                        help="comma-separated unique class names for --weights")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="random weights (checks the export mechanics offline)")
    parser.add_argument("--input-size", type=parse_size, help="network input WxH, e.g. 768x384")
    parser.add_argument("--half", action="store_true", help="store fp16 weights (for CUDA)")
    parser.add_argument("--check-image", type=Path,
                        help="image for the eager/TorchScript parity check "
                        "(default: a dash-cam still)")


def _class_names(args: argparse.Namespace) -> list[str] | None:
    """--num-classes and --class-names, checked: they describe --weights, nothing else."""
    if args.weights is None:
        if args.num_classes is not None or args.class_names is not None:
            raise UsageError("--num-classes and --class-names describe your --weights "
                             "checkpoint: give --weights FILE (a built-in's classes are fixed)")
        return None
    if args.num_classes is not None and not 1 <= args.num_classes <= MAX_CLASSES:
        raise UsageError(f"--num-classes must be 1..{MAX_CLASSES} (one byte per label), not "
                         f"{args.num_classes}")
    if args.class_names is None:
        return [f"class_{i}" for i in range(args.num_classes)] if args.num_classes else None
    names = [name.strip() for name in args.class_names.split(",")]
    if "" in names:
        raise UsageError(f"--class-names has an empty name (number {names.index('') + 1})")
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise UsageError(f"--class-names names {twice!r} twice: class names must be unique")
    if args.num_classes is not None and len(names) != args.num_classes:
        raise UsageError(f"--class-names has {len(names)} names for --num-classes "
                         f"{args.num_classes}")
    return names


def _check(args: argparse.Namespace) -> list[str] | None:
    """Every argument and path, before any weights are read or a network is built."""
    names = _class_names(args)
    if args.weights is not None and args.no_pretrained:
        raise UsageError("--no-pretrained (random weights) and --weights contradict: give one")
    if args.input_size is not None:
        BUILTIN_MODELS[args.arch].metadata.with_input_size(args.input_size)
    if args.weights is not None:
        check_input_file(args.weights, "--weights")
    if args.check_image is not None:
        check_input_file(args.check_image, "--check-image")
        if not cv2.haveImageReader(str(args.check_image)):
            raise UsageError(f"--check-image {args.check_image} is not an image file")
    check_output_file(args.output, "-o/--output",
                      {"--weights": args.weights, "--check-image": args.check_image})
    return names


def run(args: argparse.Namespace) -> int:
    names = _check(args)
    use_shared_torch_home()
    report = export_builtin(
        args.arch,
        args.output,
        pretrained=not args.no_pretrained,
        weights_path=args.weights,
        class_names=names,
        input_size=args.input_size,
        half=args.half,
        check_image=args.check_image,
    )
    meta = report.metadata
    size = "x".join(map(str, meta.input_size)) if meta.input_size else "any"
    megabytes = report.path.stat().st_size / 1e6
    print(f"wrote {report.path} ({megabytes:.1f} MB) in {report.seconds:.1f} s")
    print(f"  {meta.num_classes} classes, input {size} {meta.channel_order}, source {meta.source}")
    print(f"  TorchScript vs eager on {report.check_image}: max abs diff {report.max_abs_diff:.3g}")
    return 0
