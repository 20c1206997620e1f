"""The teacher's BatchNorm statistics: what its layers saw in the last forward, and how far that is from a target.

DFKD methods that match the teacher's feature statistics (DeepInversion, CMI,
DFQ) read, after each teacher forward, the per-channel mean and variance of
every BatchNorm layer's input and pull them toward the layer's stored moments.
A :class:`BNRecorder` keeps those inputs (one forward hook per layer, public
``register_forward_hook`` only), and :func:`bn_matching_loss` is the distance::

    sum over layers of ||mu_batch - mean_target||_2 + ||var_batch - var_target||_2

with ``mu_batch`` and ``var_batch`` the per-channel mean and biased variance of
the layer's input over the batch and spatial positions. The guard owns one
recorder per teacher (:meth:`dfkd_guard.Guard.bn_loss`), so one teacher forward
serves the synthesis loss and the guard's BN prior. Under sharded synthesis
the moments are those of the whole batch, reduced over the processes.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from dfkd_guard.processes import Processes

__all__ = [
    "BNRecorder",
    "BatchNorm",
    "batchnorm_layers",
    "bn_matching_loss",
    "layer_moments",
    "recording_paused",
]

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[BatchNorm]:
    """The model's BatchNorm layers that track running statistics, in module order."""
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]


def layer_moments(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel first and second moments of a BN layer's input.

    :param inputs: float (B, C, ...) the layer's input (any spatial dims).
    :returns: ``(mean, second_moment)``, each float (B, C), detached.
    """
    x = inputs.detach().float().flatten(2) if inputs.ndim > 2 else inputs.detach().float().unsqueeze(2)
    return x.mean(dim=2), (x * x).mean(dim=2)


def bn_matching_loss(
    inputs: Sequence[torch.Tensor],
    targets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    processes: Processes | None = None,
) -> torch.Tensor:
    """Sum over layers of ``||mu - mean_target||_2 + ||var - var_target||_2``.

    :param inputs: per BN layer, its input on a batch, float (B, C, ...), with
        grad to whatever produced the batch.
    :param targets: per BN layer, the ``(mean, var)`` to match, each (C,).
    :param processes: when several, ``inputs`` are this process's rows and the
        moments are those of every process's rows together (differentiable
        all-reduces); the loss is then the same on every process.
    :returns: scalar tensor with grad to ``inputs``.
    """
    if len(inputs) != len(targets):
        raise ValueError(f"got inputs of {len(inputs)} BN layers and targets for {len(targets)}")
    inputs = [x.float() for x in inputs]  # statistics in float32, also under autocast
    if processes is None or processes.world == 1:
        moments = [_moments(x) for x in inputs]
    else:
        moments = _moments_over(inputs, processes)
    losses = [
        torch.norm(mean - mean_target, 2) + torch.norm(var - var_target, 2)
        for (mean, var), (mean_target, var_target) in zip(moments, targets)
    ]
    return torch.stack(losses).sum()


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of (B, C, ...) over the batch and positions, each (C,)."""
    dims = [0, *range(2, x.ndim)]
    return x.mean(dim=dims), x.var(dim=dims, unbiased=False)


def _moments_over(
    inputs: Sequence[torch.Tensor], processes: Processes
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`_moments` of every layer over the rows of all processes: two passes (mean, then the
    squared deviations from it), each one all-reduce of every layer's channels together."""
    dims = [[0, *range(2, x.ndim)] for x in inputs]
    widths = [x.shape[1] for x in inputs]
    counts = torch.tensor([x.numel() / x.shape[1] for x in inputs], device=inputs[0].device)
    sums = torch.cat([x.sum(dim=d) for x, d in zip(inputs, dims)])
    reduced = processes.sum(torch.cat([sums, counts]))  # the counts ride along: one all-reduce
    counts = reduced[sums.shape[0] :].detach()
    per_channel = torch.cat([c.expand(w) for c, w in zip(counts, widths)])
    means = reduced[: sums.shape[0]] / per_channel
    centred = [x - m.view(1, -1, *[1] * (x.ndim - 2)) for x, m in zip(inputs, means.split(widths))]
    variances = processes.sum(torch.cat([(c * c).sum(dim=d) for c, d in zip(centred, dims)])) / per_channel
    return list(zip(means.split(widths), variances.split(widths)))


#: The live recorders of each teacher, so that one guard's scoring pauses every guard's record.
_RECORDERS: weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet[BNRecorder]] = weakref.WeakKeyDictionary()


@contextmanager
def recording_paused(teacher: nn.Module) -> Iterator[None]:
    """Forwards inside the block are recorded by none of the recorders on ``teacher`` (each keeps its record)."""
    with ExitStack() as stack:
        for recorder in list(_RECORDERS.get(teacher, ())):
            stack.enter_context(recorder.paused())
        yield


class BNRecorder:
    """Forward hooks that keep the input of every BatchNorm layer in the teacher's last forward.

    Also remembers which tensor that forward took (the first positional
    argument of the teacher's top module), so a caller can tell whether the
    recorded inputs belong to a given batch. Recording can be paused
    (:meth:`paused`) for forwards that must leave no trace, such as scoring.

    :param teacher: the network; hooks go on ``layers`` and on ``teacher`` itself.
    :param layers: its BN layers (:func:`batchnorm_layers`), non-empty.
    """

    def __init__(self, teacher: nn.Module, layers: Sequence[BatchNorm]) -> None:
        if not layers:
            raise ValueError(f"{type(teacher).__name__} has no BatchNorm layer with running statistics")
        self.layers = list(layers)
        _RECORDERS.setdefault(teacher, weakref.WeakSet()).add(self)
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self.last_input: torch.Tensor | None = None
        self._recording = True
        self._in_forward = False
        self._handles = [
            teacher.register_forward_pre_hook(self._record_input),
            teacher.register_forward_hook(self._end),
        ]
        self._handles += [
            layer.register_forward_hook(self._recorder(i)) for i, layer in enumerate(self.layers)
        ]

    def _record_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._recording:
            self._in_forward = True
            self.last_input = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.inputs = [None] * len(self.layers)

    def _end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._recording:
            self._in_forward = False

    def _recorder(self, index: int):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self._recording:
                if not self._in_forward:  # a submodule run alone: the record belongs to no one input
                    self.last_input = None
                self.inputs[index] = inputs[0]

        return record

    def recorded(self) -> list[torch.Tensor]:
        """Each layer's input in the last recorded forward, float (B, C, ...).

        :raises RuntimeError: no forward has been recorded, or the last one
            did not reach every BN layer.
        """
        if any(x is None for x in self.inputs):
            raise RuntimeError(
                "no teacher forward recorded yet: run the teacher on the batch before asking for its BN statistics"
            )
        return list(self.inputs)  # type: ignore[arg-type]

    def holds(self, images: torch.Tensor) -> bool:
        """Whether the last recorded forward took exactly ``images`` (the same tensor object)."""
        return self.last_input is images and all(x is not None for x in self.inputs)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside the block are not recorded; the previous record is kept."""
        was_recording, self._recording = self._recording, False
        try:
            yield
        finally:
            self._recording = was_recording

    @property
    def removed(self) -> bool:
        """True once :meth:`remove` took the hooks off the teacher."""
        return not self._handles

    def remove(self) -> None:
        """Remove the hooks from the teacher and drop the recorded tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.inputs = [None] * len(self.layers)
        self.last_input = None
