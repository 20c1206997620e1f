"""The process group of a data-parallel distillation run: joining and leaving it, comparing what the processes hold.

Each process synthesises its rows of every batch (the adapters take a
:class:`~dfkd_guard.processes.Processes`); what a round produced is gathered
in rank order, so the pools, the guard's BN prior, its verdict and its trap
memory are the same on every process, and a checkpoint written by the first
process resumes on any number of processes. Each student step trains the
process's share of the guarded batch (:func:`~dfkd_guard.adapters.base.student_step`
with the processes), averaging the gradients and the BatchNorm running
statistics over the processes, so the students stay identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from dfkd_guard.processes import Processes
from dfkd_guard.serialization import plain_digest

__all__ = ["digest", "gathered", "joined", "leave_together"]


@contextmanager
def joined(device: torch.device) -> Iterator[tuple[Processes, torch.device]]:
    """Join the process group ``torchrun`` describes (environment ``WORLD_SIZE`` > 1), or run alone.

    gloo on the CPU, nccl on CUDA, where each process takes the GPU of its ``LOCAL_RANK``. A group joined
    here is left on exit, and the processes leave together (:func:`leave_together`). A group the caller
    set up is kept.

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
    store, rank, world = next(dist.rendezvous("env://"))
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world
    )
    try:
        yield Processes.current(), device
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other processes may never get there
        raise
    dist.barrier()
    dist.destroy_process_group()
    leave_together(store, rank, world)


def leave_together(store: dist.Store, rank: int, world: int) -> None:
    """Return once every process has torn its group down; the first process, which may host ``store``, last.

    A process whose peer exits while it still tears its gloo group down can abort
    ("terminate called without an active exception"), so none exits before all are done.
    """
    prefix = f"dfkd_guard/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    store.set(f"{prefix}/left/{rank}", "1")
    store.wait([f"{prefix}/left/{other}" for other in range(world)])
    if rank:
        store.set(f"{prefix}/gone/{rank}", "1")
    else:
        store.wait([f"{prefix}/gone/{other}" for other in range(1, world)])


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
