"""One process or many: the same training code under ``python`` and under ``torchrun``.

``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; then the process group starts with
NCCL on GPUs and gloo on the CPU, each process takes one GPU (``LOCAL_RANK``) or its share of
the CPU cores, and only rank 0 writes files. Without ``torchrun`` every collective below is a
no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from seg_perception.device import select_device
from seg_perception.errors import SegPerceptionError, UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    device_reason: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (already on ``device``) when distributed."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value: float) -> float:
        """Rank 0's value on every rank (time-based decisions must agree)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def run_on_main(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 and its result on every rank.

        A user error (or a missing file) raised by ``work`` is raised on rank 0; the other ranks
        exit quietly with status 2, so the problem is printed once.
        """
        result: list[Any] = [None]
        if self.is_main:
            try:
                result[0] = work()
            except (SegPerceptionError, OSError) as exc:
                result[0] = exc
        if self.active:
            dist.broadcast_object_list(result, src=0)
        if isinstance(result[0], (SegPerceptionError, OSError)):
            if self.is_main:
                raise result[0]
            raise SystemExit(2)
        return result[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def average_buffers(self, model: nn.Module) -> None:
        """Average BatchNorm statistics over ranks: DDP syncs gradients, not buffers."""
        if not self.active:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(self.world_size)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup(device: str = "auto", threads: int = 0) -> Distributed:
    """This process's rank and device; starts the process group under ``torchrun``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target, reason = select_device(device)
    if world_size > 1 and target.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                             "GPU(s): start at most one process per GPU")
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        reason = f"torchrun: GPU {local_rank} of rank {rank}"
    if threads:
        torch.set_num_threads(threads)
    elif world_size > 1 and target.type == "cpu":  # share the cores, do not oversubscribe
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        log.debug("rank %d/%d joined the %s process group", rank, world_size, backend)
    return Distributed(rank, world_size, local_rank, target, reason)
