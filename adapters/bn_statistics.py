"""BatchNorm-statistics matching: the DeepInversion feature-distribution prior.

A :class:`BatchNormStatistics` registers a forward hook on every BatchNorm
layer of the teacher. After each teacher forward, :attr:`loss` is the sum over
layers of ``||mu_batch - mean_target||_2 + ||var_batch - var_target||_2``,
where ``mu_batch`` and ``var_batch`` are the per-channel mean and (biased)
variance of that layer's input over the batch and spatial positions. The
targets are the layer's running statistics, or what a
:class:`~dfkd_guard.bn_prior.BNTargets` gives (the guard's de-mixed prior,
:attr:`dfkd_guard.Guard.bn_prior`, or fixed moments). The
hooks keep only the values of the last forward; the guard's own teacher
forwards never fire them (see :func:`dfkd_guard.teacher_state.quiet_teacher`).
"""

from __future__ import annotations

import torch
from torch import nn

from dfkd_guard.bn_prior import BNTargets, FixedBNTargets, batchnorm_layers, layer_moments

__all__ = ["BatchNormStatistics", "batchnorm_layers", "measure_bn_targets"]


class BatchNormStatistics:
    """Forward hooks that measure how far a batch is from the teacher's BN statistics.

    :param teacher: a network with BatchNorm layers.
    :param targets: where the per-layer target moments come from; None = the
        running statistics. Settable later (e.g. an oracle in a benchmark).
    :raises ValueError: the teacher has no BatchNorm layer with running statistics.
    """

    def __init__(self, teacher: nn.Module, targets: BNTargets | None = None) -> None:
        self.layers = batchnorm_layers(teacher)
        if not self.layers:
            raise ValueError(
                f"the teacher ({type(teacher).__name__}) has no BatchNorm layer with running statistics; "
                "BN-statistics matching needs them (set the BN loss weight to 0 to run without)"
            )
        self.targets = targets
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [layer.register_forward_hook(self._recorder(i)) for i, layer in enumerate(self.layers)]

    def _recorder(self, index: int):  # noqa: ANN202 - a hook closure
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.inputs[index] = inputs[0]

        return record

    def recorded_inputs(self) -> list[torch.Tensor]:
        """Each layer's input in the last teacher forward, float (B, C, H, W).

        :raises RuntimeError: no forward was recorded yet.
        """
        if any(x is None for x in self.inputs):
            raise RuntimeError("BatchNormStatistics read before any teacher forward")
        return list(self.inputs)  # type: ignore[arg-type]

    def layer_losses(self) -> list[torch.Tensor]:
        """Per layer ``||mu - mean_target||_2 + ||var - var_target||_2`` of the last forward."""
        losses = []
        for index, (layer, x) in enumerate(zip(self.layers, self.recorded_inputs())):
            dims = [0, *range(2, x.ndim)]
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)
            if self.targets is None:
                mean_target, var_target = layer.running_mean, layer.running_var
            else:
                mean_target, var_target = self.targets.target(index, layer)
            losses.append(torch.norm(mean - mean_target, 2) + torch.norm(var - var_target, 2))  # type: ignore[operator]
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


def measure_bn_targets(teacher: nn.Module, images: torch.Tensor, batch_size: int = 500) -> FixedBNTargets:
    """Per-channel mean and (biased) variance of every BN layer's input on ``images``.

    :param teacher: the network (put in eval mode for the measurement; mode restored).
    :param images: float (N, C, H, W) in the teacher's input units.
    :returns: the moments as fixed BN targets (e.g. the benchmark's oracle, not data-free).
    """
    statistics = BatchNormStatistics(teacher)
    sums: list[list[torch.Tensor | float]] = [[0.0, 0.0] for _ in statistics.layers]
    count = 0
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                teacher(chunk)
                for i, x in enumerate(statistics.recorded_inputs()):
                    mean, second = layer_moments(x)
                    sums[i][0] = sums[i][0] + mean.sum(dim=0)
                    sums[i][1] = sums[i][1] + second.sum(dim=0)
                count += len(chunk)
    finally:
        statistics.remove()
        teacher.train(was_training)
    moments = []
    for first, second in sums:
        mean = first / count
        moments.append((mean, (second / count - mean * mean).clamp_min(0.0)))  # type: ignore[union-attr]
    return FixedBNTargets(moments)  # type: ignore[arg-type]
