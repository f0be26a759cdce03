"""The training loop: epochs of class-balanced cross-entropy, validation, early stopping.

Schedule: ``lr = base * (1 - progress) ** power`` ("poly"), where progress is the larger of
iterations done / planned and time used / ``time_budget_s``: with a time budget the learning
rate reaches zero when the time is up, which is when a fine-tune learns most per minute.
Validation after each epoch counts the confusion matrix with the evaluation's
:class:`~seg_perception.evaluation.ConfusionMatrix` on the network's own predictions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from seg_perception.core.pipeline_base import nearest_indices
from seg_perception.errors import UsageError
from seg_perception.evaluation import ConfusionMatrix
from seg_perception.training.checkpoint import EpochRecord, RunState
from seg_perception.training.data import IGNORE_INDEX, SegmentationDataset
from seg_perception.training.distributed import Distributed
from seg_perception.training.model_surgery import set_train_mode

log = logging.getLogger(__name__)

ENET_C = 1.02  # ENet's class weighting constant: weights range from 1/ln(2.02) to 1/ln(1.02)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 8  # over all processes together
    lr: float = 1e-3
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    time_budget_s: float | None = None
    patience: int = 8  # epochs without a better val mIoU before stopping; 0 = never
    seed: int = 0
    workers: int = 0
    amp: bool = True  # float16 autocast + gradient scaling, on CUDA only


def class_weights(class_pixels: np.ndarray) -> torch.Tensor:
    """ENet's ``1 / ln(c + p_class)``: rare classes (poles, signs, cyclists) weigh more without
    inverse frequency's extremes; classes absent from the training labels weigh 0."""
    share = class_pixels / max(int(class_pixels.sum()), 1)
    weights = 1.0 / np.log(ENET_C + share)
    weights[class_pixels == 0] = 0.0
    return torch.tensor(weights, dtype=torch.float32)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    trainable = [p for p in params if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(trainable, lr=config.lr, momentum=0.9,
                           weight_decay=config.weight_decay)


def poly_lr(base: float, progress: float, power: float) -> float:
    return base * max(0.0, 1.0 - progress) ** power


class Trainer:
    """Trains one network on one process of a (possibly distributed) run.

    ``on_epoch(state, best)`` is called on every rank after each epoch (rank 0 saves).
    """

    def __init__(self, model: nn.Module, train_set: SegmentationDataset,
                 val_set: SegmentationDataset | None, num_labelled: int,
                 class_pixels: np.ndarray, config: TrainConfig, ctx: Distributed,
                 frozen_prefixes: list[str]) -> None:
        if config.batch_size % ctx.world_size:
            raise UsageError(f"--batch-size {config.batch_size} must be a multiple of the "
                             f"{ctx.world_size} processes")
        self.config, self.ctx = config, ctx
        # channels-last: the convolutions' fast layout on CPUs (oneDNN) and GPUs alike
        self.model = model.to(ctx.device, memory_format=torch.channels_last)
        self.frozen_prefixes = frozen_prefixes
        self.network = ctx.wrap(self.model)
        self.train_set, self.val_set = train_set, val_set
        self.num_labelled = num_labelled
        self.sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=config.seed, drop_last=True)
        per_rank = config.batch_size // ctx.world_size
        self.loader = DataLoader(train_set, batch_size=per_rank, sampler=self.sampler,
                                 num_workers=config.workers, drop_last=True,
                                 pin_memory=ctx.device.type == "cuda",
                                 persistent_workers=config.workers > 0)
        if len(self.loader) == 0:
            raise UsageError(f"{len(train_set)} training image(s) make no batch of {per_rank} "
                             "per process: lower --batch-size")
        self.criterion = nn.CrossEntropyLoss(weight=class_weights(class_pixels).to(ctx.device),
                                             ignore_index=IGNORE_INDEX)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.amp = config.amp and ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp)
        self.state = RunState()
        self._started = time.perf_counter()
        self._elapsed_before = 0.0  # training time of earlier sessions (resumed runs)

    @property
    def planned_iterations(self) -> int:
        return self.config.epochs * len(self.loader)

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint (see :func:`~.checkpoint.save_checkpoint`)."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.state = RunState.from_dict(payload["state"])
        self.state.finished = False  # a resumed run goes on (to more --epochs, a new budget)

    def elapsed(self) -> float:
        """Training time so far (earlier sessions included), rank 0's clock on every rank."""
        return self.ctx.from_main(self._elapsed_before + time.perf_counter() - self._started)

    def progress(self, elapsed: float) -> float:
        done = self.state.iteration / max(self.planned_iterations, 1)
        budget = self.config.time_budget_s
        return max(done, elapsed / budget if budget else 0.0)

    def fit(self, on_epoch: Callable[[RunState, bool], None], show_progress: bool = True
            ) -> RunState:
        """Epochs until ``epochs``, the time budget, or early stopping; returns the state."""
        state = self.state
        self._started, self._elapsed_before = time.perf_counter(), state.elapsed_s
        while not state.finished and state.epoch < self.config.epochs:
            epoch = state.epoch + 1
            bar = tqdm(total=len(self.loader), desc=f"epoch {epoch}/{self.config.epochs}",
                       disable=not (self.ctx.is_main and show_progress), dynamic_ncols=True,
                       unit="it")
            loss, lr, out_of_time = self._train_epoch(epoch, bar)
            self.ctx.average_buffers(self.model)
            confusion = self._validate() if self.val_set is not None else None
            elapsed = self.elapsed()
            record = EpochRecord(epoch, state.iteration, elapsed, lr, loss)
            if confusion is not None:
                record.val_miou = confusion.mean_iou
                record.val_pixel_accuracy = confusion.pixel_accuracy
                record.val_iou = [float(v) for v in confusion.iou]
                bar.set_postfix(loss=f"{loss:.3f}", val_mIoU=f"{record.val_miou:.3f}")
            bar.close()
            best = self._update(record)
            state.elapsed_s = elapsed
            state.finished = out_of_time or 0 < self.config.patience <= state.stale_epochs
            if state.finished and state.epoch < self.config.epochs:
                reason = ("time budget used" if out_of_time else
                          f"no better val mIoU for {state.stale_epochs} epochs")
                log.info("stopping after epoch %d: %s", epoch, reason)
            on_epoch(state, best)
        return state

    def _update(self, record: EpochRecord) -> bool:
        """Append ``record``; True when it is the best epoch so far (no val: the latest)."""
        state = self.state
        state.epoch = record.epoch
        state.history.append(record)
        score = record.val_miou if math.isfinite(record.val_miou) else math.inf
        best = self.val_set is None or score > state.best_miou
        if best:
            state.best_epoch, state.stale_epochs = record.epoch, 0
            state.best_miou = score if math.isfinite(score) else state.best_miou
        else:
            state.stale_epochs += 1
        return best

    def _train_epoch(self, epoch: int, bar: tqdm) -> tuple[float, float, bool]:
        """One pass over this rank's shard; (mean loss over all ranks, last lr, out of time)."""
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        set_train_mode(self.model, self.frozen_prefixes)
        device, amp = self.ctx.device, self.amp
        total = torch.zeros(2, dtype=torch.float64, device=device)
        lr, out_of_time = self.config.lr, False
        elapsed = self.elapsed()
        for images, targets in self.loader:
            lr = poly_lr(self.config.lr, self.progress(elapsed), self.config.poly_power)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            autocast = (torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext())
            with autocast:
                loss = self.criterion(self.network(images), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.state.iteration += 1
            total += torch.stack([loss.detach().double(), torch.ones((), device=device,
                                                                     dtype=torch.float64)])
            bar.update()
            bar.set_postfix(loss=f"{total[0].item() / total[1].item():.3f}", lr=f"{lr:.2g}")
            elapsed = self.elapsed()
            if self.config.time_budget_s and elapsed >= self.config.time_budget_s:
                out_of_time = True
                break
        self.ctx.sum_(total)
        return float(total[0] / total[1]), lr, out_of_time

    @torch.inference_mode()
    def _validate(self) -> ConfusionMatrix:
        """This rank's share of the val images (every world_size-th), summed over ranks.

        Each image goes through the network at its input size and the class map comes back
        to the label size with the pipeline's exact nearest indices.
        """
        self.model.eval()
        confusion = ConfusionMatrix(self.num_labelled)
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext())
        for index in range(self.ctx.rank, len(self.val_set), self.ctx.world_size):
            image, truth = self.val_set[index]
            with autocast:
                x = image[None].to(self.ctx.device).contiguous(memory_format=torch.channels_last)
                logits = self.model(x)
            small = logits[0].argmax(0).to(torch.uint8).cpu().numpy()
            height, width = truth.shape
            rows = nearest_indices(small.shape[0], height)
            cols = nearest_indices(small.shape[1], width)
            confusion.add(truth.numpy(), small[np.ix_(rows, cols)])
        matrix = torch.from_numpy(confusion.matrix).to(self.ctx.device)
        confusion.matrix = self.ctx.sum_(matrix).cpu().numpy()
        return confusion
