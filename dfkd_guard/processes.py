"""This process's place among the processes ``torchrun`` started, and the collectives sharded synthesis needs.

Sharded synthesis keeps every process in lockstep: each one draws the random
numbers of the *whole* batch from the same seed and keeps its own rows
(:meth:`Processes.own`), so the CPU random stream, and everything drawn from
it later (pool batches, augmentations), stays the same on every process.
What couples the samples of a batch is reduced across processes: the
BatchNorm-statistics loss (``Guard.bn_loss(processes)``), the skip decision
(:meth:`Processes.all_true`), the gradients of networks every process holds
(:meth:`Processes.average_gradients`) and their running statistics
(:meth:`Processes.average_buffers`); what a round produced is gathered in rank
order (:meth:`Processes.gather`) before the guard sees it. On one process
every method is the identity and nothing is communicated.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Processes"]


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world``, and its GPU index on the node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"need 0 <= rank < world, got rank {self.rank}, world {self.world}")

    @property
    def first(self) -> bool:
        """True for the process that writes the checkpoint, the logs and the outputs."""
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This process's block of a batch of ``batch`` rows: ``batch // world`` rows (the first
        ``batch % world`` processes one more), in rank order."""
        share, extra = divmod(batch, self.world)
        begin = self.rank * share + min(self.rank, extra)
        return slice(begin, begin + share + (self.rank < extra))

    def own(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows (:meth:`rows`) of a batch every process drew whole; ``batch`` itself when alone."""
        return batch if self.world == 1 else batch[self.rows(batch.shape[0])]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows of every process, concatenated in rank order (the same tensor on every process).

        :param rows: (N_rank, ...) with the same trailing shape and dtype on every process; N_rank may differ.
        :returns: (sum of N_rank, ...) on ``rows.device``, detached.
        """
        if self.world == 1:
            return rows.detach()
        rows = rows.detach().contiguous()
        counts = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor(rows.shape[0], device=rows.device))
        sizes = [int(c) for c in counts]
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether a boolean scalar is true on every process (one host sync; one all-reduce when sharded)."""
        if self.world == 1:
            return bool(flag)
        flag = flag.detach().to(torch.int32).reshape(())
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the processes, differentiable: the gradient reaching each
        process's ``tensor`` is the sum of the gradients every process's result received."""
        if self.world == 1:
            return tensor
        return _SumOverProcesses.apply(tensor)

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replace each gradient by its mean over the processes, as DDP does (one all-reduce of them all).

        The same parameters must have a gradient on every process (those without one are left alone).
        """
        if self.world == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world)
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(mean.view_as(grad))

    def average_buffers(self, module: nn.Module) -> None:
        """Replace each floating-point buffer (BatchNorm running statistics) by its mean over the processes."""
        if self.world == 1:
            return
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat)
        flat.div_(self.world)
        for buffer, mean in zip(buffers, flat.split([b.numel() for b in buffers])):
            buffer.copy_(mean.view_as(buffer))

    @classmethod
    def current(cls) -> Processes:
        """The process group this process joined (``torch.distributed``), or one process alone."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the incoming gradients."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total
