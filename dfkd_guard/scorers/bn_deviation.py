"""``bn_deviation``: how far a sample's BatchNorm inputs sit from the running statistics.

For every BatchNorm layer of the teacher, the per-sample channel means of its
input are compared with the layer's running mean, in units of the running
standard deviation; the score is the mean squared z-score over channels and
layers. One extra forward pass (the layers' inputs are needed, not only the
logits). Note that an NTL teacher's running statistics mix both domains
(docs/bn_prior.md), which blunts this score on such teachers.
"""

from __future__ import annotations

import torch
from torch import nn

from dfkd_guard.components import Component, scorer
from dfkd_guard.hookspecs import hookimpl


@scorer("bn_deviation")
def bn_deviation(images: torch.Tensor, teacher: nn.Module) -> torch.Tensor:
    """squared z-score of BatchNorm input means vs running stats"""
    layers = [
        m
        for m in teacher.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not layers:
        raise ValueError("the teacher has no BatchNorm layer with running statistics")
    deviations: list[torch.Tensor] = []

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        x = inputs[0].float()
        channel_means = x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x
        z = (channel_means - module.running_mean) / (module.running_var + module.eps).sqrt()  # type: ignore[operator]
        deviations.append(z.pow(2).mean(dim=1))

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            teacher(images)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(deviations).mean(dim=0)


@hookimpl(trylast=True)
def dfkd_guard_components() -> list[Component]:
    return [bn_deviation]
