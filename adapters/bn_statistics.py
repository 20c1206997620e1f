"""BatchNorm-statistics matching: the DeepInversion feature-distribution prior.

A :class:`BatchNormStatistics` registers a forward hook on every BatchNorm
layer of the teacher. After each teacher forward, :attr:`loss` is the sum over
layers of ``||mu_batch - running_mean||_2 + ||var_batch - running_var||_2``,
where ``mu_batch`` and ``var_batch`` are the per-channel mean and (biased)
variance of that layer's input over the batch and spatial positions. The
hooks keep only the values of the last forward; the guard's own teacher
forwards never fire them (see :func:`dfkd_guard.teacher_state.quiet_teacher`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BatchNormStatistics", "batchnorm_layers"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that track running statistics, in module order."""
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


class BatchNormStatistics:
    """Forward hooks that measure how far a batch is from the teacher's BN statistics.

    :param teacher: a network with BatchNorm layers.
    :raises ValueError: the teacher has no BatchNorm layer with running statistics.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.layers = batchnorm_layers(teacher)
        if not self.layers:
            raise ValueError(
                f"the teacher ({type(teacher).__name__}) has no BatchNorm layer with running statistics; "
                "BN-statistics matching needs them (set the BN loss weight to 0 to run without)"
            )
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [layer.register_forward_hook(self._recorder(i)) for i, layer in enumerate(self.layers)]

    def _recorder(self, index: int):  # noqa: ANN202 - a hook closure
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.inputs[index] = inputs[0]

        return record

    def layer_losses(self) -> list[torch.Tensor]:
        """Per layer ``||mu - running_mean||_2 + ||var - running_var||_2`` of the last forward."""
        losses = []
        for layer, x in zip(self.layers, self.inputs):
            if x is None:
                raise RuntimeError("BatchNormStatistics.loss read before any teacher forward")
            dims = [0, *range(2, x.ndim)]
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)
            losses.append(
                torch.norm(mean - layer.running_mean, 2) + torch.norm(var - layer.running_var, 2)  # type: ignore[operator]
            )
        return losses

    @property
    def loss(self) -> torch.Tensor:
        """Sum of :meth:`layer_losses`: a scalar with grad to the teacher's input."""
        return torch.stack(self.layer_losses()).sum()

    def remove(self) -> None:
        """Remove the hooks from the teacher."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.inputs = [None] * len(self.layers)
