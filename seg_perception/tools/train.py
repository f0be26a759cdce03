"""``seg-perception train``: fine-tune a model on labelled images into an exported file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from seg_perception.checks import number_type, parse_size
from seg_perception.errors import UsageError
from seg_perception.models.registry import BUILTIN_MODELS, DEFAULT_MODEL
from seg_perception.shared_data import use_shared_torch_home
from seg_perception.training.checkpoint import BEST, CURVES_PNG, LAST, LOG_CSV
from seg_perception.training.data import CLASS_FILE_EXAMPLE
from seg_perception.training.fine_tune import SUMMARY_JSON, FineTuneRequest, fine_tune
from seg_perception.training.loop import TrainConfig

log = logging.getLogger(__name__)

HELP = "fine-tune a model on your labelled images and export it (TorchScript + metadata)"
_DEFAULTS = TrainConfig()
_CLASS_FILE = "\n".join("    " + line for line in CLASS_FILE_EXAMPLE.splitlines())
EPILOG = f"""examples:
  # CamVid from the Cityscapes model: new 12-class head, the 60-minute recipe on 2 CPU cores
  # (the lr decays to 0 at 55 min: no early stop, and the final weights are exported)
  seg-perception train --images ../shared/data/camvid/train \\
      --labels ../shared/data/camvid/trainannot --val-images ../shared/data/camvid/val \\
      --val-labels ../shared/data/camvid/valannot --classes camvid --out camvid-ft.pt \\
      --time-budget 55 --epochs 100 --patience 0 --export last
  # a quick look: 8 images, one epoch
  seg-perception train --images IMG --labels LBL --classes camvid --out quick.pt \\
      --limit 8 --epochs 1 --batch-size 4
  # continue a stopped run (same --out / --run-dir), to more epochs
  seg-perception train ... --out camvid-ft.pt --epochs 60 --resume
  # several processes (CPU: gloo; GPUs: NCCL, one per GPU); --batch-size is the total
  torchrun --nproc_per_node 2 -m seg_perception.cli train ... --out camvid-ft.pt

data: images and single-channel label PNGs of class ids with the same file names (CamVid
  layout). --classes names a known data set (camvid: 12 classes, 11 = Unlabelled is void) or
  a class-list YAML file, e.g.
{_CLASS_FILE}
  One class at least must be a vehicle (car, truck, bus, train) for the vehicle-ahead flag.
  Every pair is read and checked before training: problems are listed one line each.

model: a built-in ESPNet ({', '.join(n for n in BUILTIN_MODELS if n.startswith('espnet'))}) or a
  file written by this tool. A different class set gets a new last layer whose classes start
  from the matching old ones (config/mappings/<model>_to_<data set>.yaml or --mapping); the
  rest of the network keeps its pretrained weights. Input: the model's channel order and
  recipe with the training images' own mean/std (--keep-normalisation: the model's).

training: Adam (or SGD), lr poly-decayed over --epochs or over --time-budget (whichever ends
  first), class-balanced cross-entropy (ENet weights 1/ln(1.02 + share)), void ignored, random
  scale 0.75-1.5 / crop / flip / colour jitter seeded by --seed, float16 autocast on CUDA.
  After each epoch: val mIoU, checkpoint, log; early stop after --patience epochs without
  a better val mIoU.

outputs: --out, the best epoch (or with --export last the last one) exported (loads in every
  tool and the node); in --run-dir
  (default <out>_training/): {LAST}, {BEST} (checkpoints, for --resume), {LOG_CSV},
  {CURVES_PNG}, eval/ (seg-perception eval of --out on the val images) and {SUMMARY_JSON}.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, required=True, metavar="DIR",
                      help="folder of training images")
    data.add_argument("--labels", type=Path, required=True, metavar="DIR",
                      help="folder of label PNGs with the same names as the images")
    data.add_argument("--val-images", type=Path, metavar="DIR",
                      help="validation images (val mIoU, early stopping, best epoch)")
    data.add_argument("--val-labels", type=Path, metavar="DIR", help="validation labels")
    data.add_argument("--classes", required=True, metavar="NAME|FILE",
                      help="the labels' classes: camvid, cityscapes, or a class-list YAML")
    data.add_argument("--limit", type=number_type(int, minimum=0), default=0, metavar="N",
                      help="only the first N images of each folder (quick runs)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH",
                       help=f"model to start from (default {DEFAULT_MODEL})")
    model.add_argument("--mapping", type=Path, metavar="FILE",
                       help="model classes -> your classes YAML, for the new head's start")
    model.add_argument("--freeze-encoder", action="store_true",
                       help="train the decoder only (faster; for very few images)")
    model.add_argument("--input-size", type=parse_size, metavar="WxH",
                       help="network input size (default: the training images' size)")
    model.add_argument("--crop", type=parse_size, metavar="WxH",
                       help="training crop size (default: the input size)")
    model.add_argument("--keep-normalisation", action="store_true",
                       help="keep the model's mean/std instead of the training images'")
    opt = parser.add_argument_group("training")
    opt.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, metavar="N",
                     help=f"at most N epochs (default {_DEFAULTS.epochs})")
    opt.add_argument("--time-budget", type=number_type(float, positive=True), metavar="MIN",
                     help="stop after MIN minutes of training; the lr decays to 0 by then")
    opt.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, metavar="N",
                     help=f"images per step, all processes together (default "
                     f"{_DEFAULTS.batch_size})")
    opt.add_argument("--lr", type=number_type(float, positive=True), default=_DEFAULTS.lr,
                     help=f"initial learning rate (default {_DEFAULTS.lr:g})")
    opt.add_argument("--optimizer", choices=("adam", "sgd"), default=_DEFAULTS.optimizer)
    opt.add_argument("--weight-decay", type=number_type(float, minimum=0),
                     default=_DEFAULTS.weight_decay,
                     help=f"default {_DEFAULTS.weight_decay:g}")
    opt.add_argument("--patience", type=number_type(int, minimum=0), default=_DEFAULTS.patience,
                     metavar="N",
                     help=f"early stop after N epochs without a better val mIoU (default "
                     f"{_DEFAULTS.patience}; 0 = off)")
    opt.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    opt.add_argument("--workers", type=number_type(int, minimum=0), default=_DEFAULTS.workers,
                     metavar="N",
                     help="data-loading processes (default 0: in the training process)")
    opt.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    opt.add_argument("--threads", type=number_type(int, minimum=0), default=0,
                     help="CPU threads for torch (default: all cores, shared between processes)")
    opt.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="FILE",
                     help="the exported model (TorchScript with metadata); an existing file is "
                     "replaced (one line says so), never one of the inputs")
    out.add_argument("--export", choices=("best", "last"), default="best",
                     help="the epoch written to --out: best (highest val mIoU; default) or last "
                     "(the end of the lr schedule; the val set did not choose it)")
    out.add_argument("--run-dir", type=Path, metavar="DIR",
                     help="checkpoints, log and curves (default <out>_training/)")
    out.add_argument("--resume", action="store_true",
                     help=f"continue the run in --run-dir from its {LAST}")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")


def request_from_args(args: argparse.Namespace) -> FineTuneRequest:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, time_budget_s=args.time_budget * 60
        if args.time_budget else None, patience=args.patience, seed=args.seed,
        workers=args.workers, amp=not args.no_amp,
    )
    run_dir = args.run_dir or args.out.with_name(f"{args.out.stem}_training")
    return FineTuneRequest(
        images=args.images, labels=args.labels, classes=args.classes, out=args.out,
        run_dir=run_dir, model=args.model, val_images=args.val_images,
        val_labels=args.val_labels, config=config, limit=args.limit,
        input_size=args.input_size, crop=args.crop, mapping=args.mapping,
        freeze_encoder=args.freeze_encoder, dataset_normalisation=not args.keep_normalisation,
        resume=args.resume, export=args.export, show_progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from seg_perception.training.distributed import setup

    request = request_from_args(args)
    use_shared_torch_home()
    ctx = setup(args.device, args.threads)
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
    try:
        summary = fine_tune(request, ctx)
    finally:
        ctx.close()
    if summary is None:
        return 0
    line = (f"{summary['export']} epoch {summary['exported_epoch']} of {summary['epochs_run']}"
            f" (best val mIoU: epoch {summary['best_epoch']})")
    if summary.get("val_miou") is not None:
        line += f": trainer val mIoU {summary['val_miou']:.3f}"
    evaluated = summary.get("eval")
    if evaluated:
        cars = {k: v for k, v in evaluated["per_class_iou"].items() if k.casefold() == "car"}
        line += (f"; seg-perception eval of {summary['out']}: mIoU {evaluated['mean_iou']:.3f}"
                 + "".join(f", {k} IoU {v:.3f}" for k, v in cars.items() if v is not None))
    print(line)
    print(f"wrote {summary['out']}; checkpoints, {LOG_CSV}, {CURVES_PNG} and {SUMMARY_JSON} "
          f"in {summary['run_dir']}")
    return 0
