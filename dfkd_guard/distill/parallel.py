"""Data-parallel distillation over the processes ``torchrun`` starts: sharded synthesis, sharded student steps.

Each process synthesises its rows of every batch (the adapters take a
:class:`~dfkd_guard.processes.Processes`); what a round produced is gathered
in rank order, so the pools, the guard's BN prior, its verdict and its trap
memory are the same on every process, and a checkpoint written by the first
process resumes on any number of processes. Each student step trains the
process's share of the guarded batch (every ``world``-th sample,
:meth:`~dfkd_guard.GuardedBatch.shard`) through ``DistributedDataParallel``,
which averages the gradients, so the students stay identical; their BatchNorm
running statistics are averaged over the processes after every step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dfkd_guard import GuardedBatch
from dfkd_guard.adapters.base import student_step
from dfkd_guard.processes import Processes
from dfkd_guard.serialization import plain_digest

__all__ = ["digest", "gathered", "joined", "student_steps"]


@contextmanager
def joined(device: torch.device) -> Iterator[tuple[Processes, torch.device]]:
    """Join the process group ``torchrun`` describes (environment ``WORLD_SIZE`` > 1), or run alone.

    gloo on the CPU, nccl on CUDA, where each process takes the GPU of its ``LOCAL_RANK``. A group joined
    here is left on exit, after every process got there: a process that exits with its group alive can
    abort in the group's threads while another still talks to it. A group the caller set up is kept.

    :returns: this process's place and the device it runs on.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield Processes(), device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        yield Processes.current(), device
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    failed = True
    try:
        yield Processes.current(), device
        failed = False
    finally:
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def student_steps(
    student: nn.Module, optimizer: torch.optim.Optimizer, processes: Processes
) -> Callable[[GuardedBatch], dict[str, float]]:
    """The student step of this process: its shard of each batch, gradients averaged over the processes."""
    parallel = DistributedDataParallel(
        student, device_ids=[processes.local_rank] if next(student.parameters()).is_cuda else None
    )

    def step(batch: GuardedBatch) -> dict[str, float]:
        metrics = student_step(parallel, optimizer, batch.shard(processes.rank, processes.world))
        processes.average_buffers(student)  # BatchNorm running statistics: the mean over the shards
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
