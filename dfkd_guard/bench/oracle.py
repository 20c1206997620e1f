"""The benchmark's oracle row: BN targets measured on real ID images (not data-free).

:class:`OracleGuard` is a guard whose :meth:`~dfkd_guard.Guard.bn_targets`
are those measured moments: what a guard would reach if it knew the ID
domain's feature statistics exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dfkd_guard import Guard
from dfkd_guard.bn_statistics import BNRecorder, batchnorm_layers, layer_moments

__all__ = ["OracleGuard", "measure_bn_moments"]

Moments = list[tuple[torch.Tensor, torch.Tensor]]


def measure_bn_moments(teacher: nn.Module, images: torch.Tensor, batch_size: int = 500) -> Moments:
    """Per-channel mean and (biased) variance of every BN layer's input over ``images``.

    :param teacher: the network (put in eval mode for the measurement; mode restored).
    :param images: float (N, C, H, W) in the teacher's input units.
    :returns: per BN layer (module order) ``(mean, var)``, each float (C,).
    """
    recorder = BNRecorder(teacher, batchnorm_layers(teacher))
    sums: list[list[torch.Tensor | float]] = [[0.0, 0.0] for _ in recorder.layers]
    count = 0
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                teacher(chunk)
                for i, x in enumerate(recorder.recorded()):
                    mean, second = layer_moments(x)
                    sums[i][0] = sums[i][0] + mean.sum(dim=0)
                    sums[i][1] = sums[i][1] + second.sum(dim=0)
                count += len(chunk)
    finally:
        recorder.remove()
        teacher.train(was_training)
    moments = []
    for first, second in sums:
        mean = first / count
        moments.append((mean, (second / count - mean * mean).clamp_min(0.0)))  # type: ignore[operator]
    return moments  # type: ignore[return-value]


class OracleGuard(Guard):
    """A guard whose BN targets are fixed moments (:func:`measure_bn_moments`), everything else as configured.

    :param moments: per BN layer ``(mean, var)``, each float (C,).
    """

    def __init__(
        self, moments: Sequence[tuple[torch.Tensor, torch.Tensor]], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        layers = batchnorm_layers(self.teacher)
        if len(layers) != len(moments):
            raise ValueError(f"oracle moments for {len(moments)} BN layers, the teacher has {len(layers)}")
        #: Per BN layer ``(mean, var)``, on the device and dtype of that layer's running statistics.
        self.moments = [
            (m.detach().to(layer.running_mean, copy=True), v.detach().to(layer.running_var, copy=True))  # type: ignore[arg-type]
            for (m, v), layer in zip(moments, layers)
        ]

    def bn_targets(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(self.moments)
