"""Data-parallel distillation over the processes ``torchrun`` starts: replicated synthesis, sharded student steps.

Every process runs the same synthesis from the same seed, so the generator,
the image pools, the guard's BN prior, its verdict and its trap memory are the
same on every process without any communication, and a checkpoint written
by the first process resumes on any number of processes. Each student step
trains the process's share of the guarded batch (every ``world``-th sample,
:meth:`~dfkd_guard.GuardedBatch.shard`) through
``DistributedDataParallel``, which averages the gradients, so the students
stay identical; their BatchNorm running statistics are averaged over the
processes after every step. The parallel part is the student's forward and backward;
synthesis is not split (docs/distill.md says why).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dfkd_guard import GuardedBatch
from dfkd_guard.adapters.base import student_step
from dfkd_guard.serialization import plain_digest

__all__ = ["Processes", "digest", "gathered", "start", "student_steps"]


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world``, and its GPU index on the node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def first(self) -> bool:
        """True for the process that writes the checkpoint, the logs and the outputs."""
        return self.rank == 0


def start(device: torch.device) -> tuple[Processes, torch.device]:
    """Join the process group ``torchrun`` describes (environment ``WORLD_SIZE`` > 1), or run alone.

    gloo on the CPU, nccl on CUDA, where each process takes the GPU of its ``LOCAL_RANK``.

    :returns: this process's place and the device it runs on.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank), device


def student_steps(
    student: nn.Module, optimizer: torch.optim.Optimizer, processes: Processes
) -> Callable[[GuardedBatch], dict[str, float]]:
    """The student step of this process: its shard of each batch, gradients averaged over the processes."""
    parallel = DistributedDataParallel(
        student, device_ids=[processes.local_rank] if next(student.parameters()).is_cuda else None
    )

    buffers = [b for b in student.buffers() if b.is_floating_point()]

    def step(batch: GuardedBatch) -> dict[str, float]:
        metrics = student_step(parallel, optimizer, batch.shard(processes.rank, processes.world))
        for buffer in buffers:  # BatchNorm running statistics: the mean over the shards, the same everywhere
            dist.all_reduce(buffer)
            buffer.div_(processes.world)
        return metrics

    return step


def gathered(value: str, processes: Processes) -> list[str]:
    """``value`` of every process, in rank order (a one-element list when alone)."""
    if processes.world == 1:
        return [value]
    values: list[str] = [""] * processes.world
    dist.all_gather_object(values, value)
    return values


def digest(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers: equal on two processes only if they hold the same model."""
    return plain_digest(dict(module.state_dict()))
