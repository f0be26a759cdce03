"""Checkpoints of a training run, and the run's log (CSV) and learning curves (PNG).

A checkpoint holds only tensors and plain values, so ``torch.load(weights_only=True)`` reads
it (no pickled code). Every file is written to a temporary file beside it and renamed
(:func:`seg_perception.checks.atomic_write`): a crash never leaves a half-written file, and the
previous checkpoint stays valid until the new one is whole.
"""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from seg_perception.checks import atomic_write
from seg_perception.errors import SegPerceptionError

CHECKPOINT_FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"
LOG_CSV = "log.csv"
CURVES_PNG = "curves.png"


class CheckpointError(SegPerceptionError, RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another kind of run."""


@dataclass
class EpochRecord:
    """One epoch's line of the log."""

    epoch: int
    iterations: int
    elapsed_s: float
    lr: float
    train_loss: float
    val_miou: float = math.nan
    val_pixel_accuracy: float = math.nan
    val_iou: list[float] = field(default_factory=list)  # per labelled class


@dataclass
class RunState:
    """Where a run stands: what ``--resume`` continues from."""

    epoch: int = 0  # epochs completed
    iteration: int = 0
    elapsed_s: float = 0.0
    best_epoch: int = 0
    best_miou: float = -1.0
    stale_epochs: int = 0  # epochs since the best one (early stopping)
    finished: bool = False
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        history = [EpochRecord(**record) for record in data.get("history", [])]
        return cls(**{**data, "history": history})


def save_checkpoint(run_dir: Path, state: RunState, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    info: dict[str, Any], best: bool) -> None:
    """``last.pt`` always, copied to ``best.pt`` when this epoch is the best so far.

    ``info`` holds the run's identity: architecture, metadata, class names, options.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state": state.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **info,
    }
    with atomic_write(run_dir / LAST, "wb", announce=False) as stream:
        torch.save(payload, stream)
    if best:
        with (open(run_dir / LAST, "rb") as source,
              atomic_write(run_dir / BEST, "wb", announce=False) as stream):
            shutil.copyfileobj(source, stream)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint {path} to resume from")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line for the user
        raise CheckpointError(f"{path} is not a readable checkpoint: "
                              f"{str(exc).strip().splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a seg-perception training checkpoint "
                              f"(format {CHECKPOINT_FORMAT})")
    return payload


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's weights and buffers: equal digests, equal networks."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_log(run_dir: Path, history: list[EpochRecord], class_names: tuple[str, ...]) -> None:
    """``log.csv`` (one row per epoch, per-class IoU columns) and ``curves.png``."""
    columns = ["epoch", "iterations", "elapsed_s", "lr", "train_loss", "val_miou",
               "val_pixel_accuracy", *(f"iou_{name}" for name in class_names)]

    with atomic_write(run_dir / LOG_CSV, announce=False) as stream:
        writer = csv.writer(stream)
        writer.writerow(columns)
        for r in history:
            ious = r.val_iou or [math.nan] * len(class_names)
            writer.writerow([r.epoch, r.iterations, f"{r.elapsed_s:.1f}", f"{r.lr:.3g}",
                             f"{r.train_loss:.4f}", f"{r.val_miou:.4f}",
                             f"{r.val_pixel_accuracy:.4f}", *(f"{v:.4f}" for v in ious)])
    with atomic_write(run_dir / CURVES_PNG, "wb", announce=False) as stream:
        _plot_curves(history, class_names, stream)


def _plot_curves(history: list[EpochRecord], class_names: tuple[str, ...], stream) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, iou_axes = figure.subplots(1, 2)
    minutes = [r.elapsed_s / 60 for r in history]
    loss_axes.plot(minutes, [r.train_loss for r in history], "o-")
    loss_axes.set(xlabel="minutes", ylabel="train loss (weighted CE)", title="training loss")
    iou_axes.plot(minutes, [r.val_miou for r in history], "o-", label="val mIoU")
    for index, name in enumerate(class_names):
        if name.casefold() in ("car", "road"):
            iou_axes.plot(minutes, [r.val_iou[index] if r.val_iou else math.nan
                                    for r in history], ".--", label=f"val IoU {name}")
    iou_axes.set(xlabel="minutes", ylabel="IoU", title="validation", ylim=(0, 1))
    iou_axes.grid(alpha=0.3)
    iou_axes.legend(loc="lower right")
    figure.savefig(stream, format="png", dpi=90)
