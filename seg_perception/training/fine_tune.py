"""A whole fine-tuning run: check the data, build the network, train, export, evaluate.

Rank 0 checks the inputs once (every problem before any minute is spent), writes every file,
and finally measures the exported file with ``seg-perception eval`` itself, so the figures it
reports are the ones a user's own ``eval`` on the file gives.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from seg_perception.checks import atomic_write, check_output_dir, check_output_file
from seg_perception.core.labels import LabelSet, find_label_set
from seg_perception.errors import UsageError
from seg_perception.evaluation import LABEL_SETS as DATASET_LABEL_SETS
from seg_perception.models.export import export_module
from seg_perception.models.metadata import ModelMetadata
from seg_perception.training.checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    RunState,
    load_checkpoint,
    save_checkpoint,
    state_digest,
    write_log,
)
from seg_perception.training.data import (
    Augmentation,
    ScanResult,
    SegmentationDataset,
    load_label_set,
    scan_samples,
)
from seg_perception.training.distributed import Distributed
from seg_perception.training.loop import TrainConfig, Trainer
from seg_perception.training.model_surgery import (
    EspNetArchitecture,
    fit_head,
    freeze_encoder,
    load_source_model,
)

log = logging.getLogger(__name__)
SUMMARY_JSON = "summary.json"


@dataclass(frozen=True)
class FineTuneRequest:
    """What the user asked for (the ``train`` tool's options)."""

    images: Path
    labels: Path
    classes: str
    out: Path
    run_dir: Path
    model: str = "espnet-cityscapes"
    val_images: Path | None = None
    val_labels: Path | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    limit: int = 0
    input_size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mapping: Path | None = None
    freeze_encoder: bool = False
    dataset_normalisation: bool = True
    resume: bool = False
    export: str = "best"  # which checkpoint becomes --out: "best" (val mIoU) or "last"
    show_progress: bool = True


@dataclass(frozen=True)
class Inputs:
    """The checked training and validation folders."""

    train: ScanResult
    val: ScanResult | None


def check_inputs(request: FineTuneRequest, label_set: LabelSet) -> Inputs:
    """Every check that needs no network: folders, pairs, label values, sizes, the output."""
    last = request.run_dir / LAST
    if request.resume and not last.is_file():
        raise CheckpointError(f"--resume: no checkpoint {last} (is --run-dir right?)")
    if not request.resume and last.exists():
        raise UsageError(f"{request.run_dir} already holds a run: give --resume to continue it, "
                         "or another --run-dir")
    if (request.val_images is None) != (request.val_labels is None):
        raise UsageError("give --val-images and --val-labels together")
    train = scan_samples(request.images, request.labels, label_set, request.limit)
    val = None
    if request.val_images is not None:
        val = scan_samples(request.val_images, request.val_labels, label_set, request.limit,
                           what="validation")
    check_output_file(request.out, "--out", {
        "--model": request.model if Path(request.model).is_file() else None,
        "input files": [*train.files, *(val.files if val else ())]})
    check_output_dir(request.run_dir, "--run-dir")
    network_size(request, train)
    return Inputs(train, val)


def network_size(request: FineTuneRequest, train: ScanResult) -> tuple[int, int]:
    """--input-size, else the training images' own size (which must then be one size)."""
    size = request.input_size
    if size is None:
        if len(train.sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(train.sizes)[:4])
            raise UsageError(f"the training images have {len(train.sizes)} sizes ({shown}): "
                             "give --input-size WxH")
        (size,) = train.sizes
    for name, (width, height) in (("input size", size), ("crop", request.crop or size)):
        if width % 8 or height % 8:
            raise UsageError(f"{name} {width}x{height}: ESPNet needs both sides multiples of 8 "
                             "(give --input-size / --crop)")
    return size


def training_metadata(source: ModelMetadata, label_set: LabelSet, request: FineTuneRequest,
                      train: ScanResult, arch: EspNetArchitecture) -> ModelMetadata:
    """The source model's input recipe with the new classes, size and (by default) the
    training images' own mean/std, and the network's layout in ``extra``."""
    mean, std = source.mean, source.std
    if request.dataset_normalisation:
        order = slice(None) if source.channel_order == "bgr" else slice(None, None, -1)
        mean, std = tuple(train.mean[order]), tuple(train.std[order])
    return replace(
        source,
        name=request.out.stem,
        class_names=label_set.class_names,
        palette=label_set.palette,
        mean=tuple(round(v, 2) for v in mean),
        std=tuple(round(v, 2) for v in std),
        input_size=network_size(request, train),
        source=f"seg-perception train from {request.model} on {request.images}",
        version="",
        extra={"architecture": arch.to_dict()},
    )


def prepare_model(request: FineTuneRequest, label_set: LabelSet, inputs: Inputs,
                  payload: dict[str, Any] | None):
    """(network, metadata): from the checkpoint when resuming, else the source model."""
    if payload is not None:
        metadata = ModelMetadata.from_json(payload["metadata"])
        if metadata.class_names != label_set.class_names:
            raise CheckpointError(f"{request.run_dir / LAST} was trained for the classes "
                                  f"{', '.join(metadata.class_names)}, not --classes "
                                  f"{request.classes}")
        arch = EspNetArchitecture.from_dict(payload["architecture"])
        return arch.build(), metadata
    network, source = load_source_model(request.model)
    for line in fit_head(network, source.class_names, label_set, request.mapping):
        log.info("new head: %s", line)
    arch = EspNetArchitecture.of(network)
    return network, training_metadata(source, label_set, request, inputs.train, arch)


def fine_tune(request: FineTuneRequest, ctx: Distributed) -> dict[str, Any] | None:
    """Run the whole fine-tune; returns the summary on rank 0 (None on the other ranks)."""
    label_set = load_label_set(request.classes)
    inputs = ctx.run_on_main(lambda: check_inputs(request, label_set))
    if ctx.is_main:
        log.info("data: %d training, %d validation image pairs, %d classes", len(inputs.train
                 .samples), len(inputs.val.samples) if inputs.val else 0, label_set.num_classes)
    payload = load_checkpoint(request.run_dir / LAST) if request.resume else None
    torch.manual_seed(request.config.seed)
    network, metadata = prepare_model(request, label_set, inputs, payload)
    frozen = freeze_encoder(network) if request.freeze_encoder else []
    crop = request.crop or metadata.input_size
    train_set = SegmentationDataset(inputs.train.samples, metadata, label_set,
                                    Augmentation(crop), request.config.seed)
    val_set = (SegmentationDataset(inputs.val.samples, metadata, label_set)
               if inputs.val else None)
    trainer = Trainer(network, train_set, val_set, label_set.labelled.num_classes,
                      inputs.train.class_pixels, request.config, ctx, frozen)
    if payload is not None:
        trainer.restore(payload)
        log.info("resuming after epoch %d (%d iterations, %.0f s)", trainer.state.epoch,
                 trainer.state.iteration, trainer.state.elapsed_s)
    info = {"architecture": metadata.extra["architecture"], "metadata": metadata.to_json(),
            "options": json.dumps({**asdict(request.config),
                                   "freeze_encoder": request.freeze_encoder})}
    names = label_set.labelled.class_names

    def on_epoch(state: RunState, best: bool) -> None:
        if ctx.is_main:
            save_checkpoint(request.run_dir, state, trainer.model, trainer.optimizer,
                            trainer.scaler, info, best)
            write_log(request.run_dir, state.history, names)
            log.info("epoch %d: %s", state.history[-1].epoch, describe(state, names))

    state = trainer.fit(on_epoch, request.show_progress)
    digests = ctx.gather(state_digest(trainer.model))
    summary = None
    if ctx.is_main:
        if len(set(digests)) != 1:
            raise RuntimeError(f"the {ctx.world_size} processes ended with different weights: "
                               f"{digests}")
        summary = finish(request, label_set, state, metadata, digests, inputs)
    # The ranks leave together: destroying the process group is collective (a rank that tore
    # down gloo while rank 0 was still exporting aborted).
    ctx.barrier()
    return summary


def describe(state: RunState, names: tuple[str, ...]) -> str:
    record = state.history[-1]
    text = f"train loss {record.train_loss:.3f}, lr {record.lr:.2g}, {record.elapsed_s:.0f} s"
    if math.isfinite(record.val_miou):
        vehicles = [f"{n} {v:.3f}" for n, v in zip(names, record.val_iou, strict=True)
                    if n.casefold() == "car"]
        text += f", val mIoU {record.val_miou:.3f}" + "".join(f", {v}" for v in vehicles)
    return text


def finish(request: FineTuneRequest, label_set: LabelSet, state: RunState,
           metadata: ModelMetadata, digests: list[str], inputs: Inputs) -> dict[str, Any]:
    """Export the chosen epoch (``request.export``: best or last) to ``--out`` and measure
    that file with ``seg-perception eval``."""
    chosen = load_checkpoint(request.run_dir / (LAST if request.export == "last" else BEST))
    network = EspNetArchitecture.from_dict(chosen["architecture"]).build()
    network.load_state_dict(chosen["model"])
    record = RunState.from_dict(chosen["state"]).history[-1]
    training = {
        "images": str(request.images), "train_pairs":
        len(inputs.train.samples), "val_images": str(request.val_images or ""),
        "export": request.export, "exported_epoch": record.epoch,
        "best_epoch": state.best_epoch, "epochs_run": state.epoch, "iterations": record.iterations,
        "seconds": round(record.elapsed_s, 1), "val_miou": _finite(record.val_miou),
        "seed": request.config.seed, "processes": len(digests),
    }
    metadata = replace(metadata, version=f"epoch {record.epoch}",
                       extra={**metadata.extra, "training": training})
    report = export_module(network.eval(), metadata, request.out)
    log.info("wrote %s (epoch %d of %d)", report.path, record.epoch, state.epoch)
    summary: dict[str, Any] = {"out": str(report.path), "run_dir": str(request.run_dir),
                               "source": metadata.source, **training, "rank_state_sha256": digests,
                               "trainer_val_iou": dict(zip(label_set.labelled.class_names,
                                                           map(_finite, record.val_iou),
                                                           strict=False))}
    if request.val_images is not None:
        summary["eval"] = evaluate_file(request, label_set)
    with atomic_write(request.run_dir / SUMMARY_JSON, announce=False) as stream:
        json.dump(summary, stream, indent=1)
    return summary


def evaluate_file(request: FineTuneRequest, label_set: LabelSet) -> dict[str, Any] | None:
    """``seg-perception eval`` on the exported file and the val folder; its eval.json."""
    from seg_perception.cli import build_parser

    known = find_label_set(label_set.class_names)
    dataset = known.name if known is not None else label_set.name
    if dataset not in DATASET_LABEL_SETS:
        log.info("seg-perception eval knows the data sets %s, not %s: the val figures above "
                 "are the trainer's own", ", ".join(DATASET_LABEL_SETS), dataset)
        return None
    out_dir = request.run_dir / "eval"
    argv = ["eval", "--model", str(request.out), "--images", str(request.val_images),
            "--labels", str(request.val_labels), "--dataset", dataset, "-o", str(out_dir),
            "--limit", str(request.limit), "--no-progress"]
    args = build_parser(("eval",)).parse_args(argv)
    args.run(args)
    result = json.loads((out_dir / "eval.json").read_text())
    keys = ("images", "pixel_accuracy", "mean_iou", "per_class_iou", "dataset", "model")
    return {"eval_json": str(out_dir / "eval.json"), **{k: result[k] for k in keys},
            "vehicle_ahead_f1": result["vehicle_ahead"]["f1"]}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
