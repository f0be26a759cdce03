"""``seg-perception export``: a network to a TorchScript file with its metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_perception.models.export import export_builtin
from seg_perception.models.registry import BUILTIN_MODELS
from seg_perception.shared_data import use_shared_torch_home
from seg_perception.tools.common import parse_size

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
    parser.add_argument("-o", "--output", required=True, type=Path, help="file to write")
    parser.add_argument("--weights", type=Path, help="your own state_dict checkpoint (.pth)")
    parser.add_argument("--num-classes", type=int, help="classes in --weights (else read off it)")
    parser.add_argument("--class-names", help="comma-separated class names for --weights")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="random weights (checks the export mechanics offline)")
    parser.add_argument("--input-size", type=parse_size, help="network input WxH, e.g. 768x384")
    parser.add_argument("--half", action="store_true", help="store fp16 weights (for CUDA)")
    parser.add_argument("--check-image", type=Path,
                        help="image for the eager/TorchScript parity check "
                        "(default: a dash-cam still)")


def run(args: argparse.Namespace) -> int:
    use_shared_torch_home()
    names = args.class_names.split(",") if args.class_names else None
    if names and args.num_classes and len(names) != args.num_classes:
        raise ValueError(
            f"--class-names has {len(names)} names for --num-classes {args.num_classes}"
        )
    if args.num_classes and not names:
        names = [f"class_{i}" for i in range(args.num_classes)]
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
