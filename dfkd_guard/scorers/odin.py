"""``odin``: temperature-scaled MSP after one input-preprocessing step.

Liang et al. 2018: move the input a small step ``eps`` (pixel units) in the
direction that raises the temperature-scaled max softmax, then read that
probability. One forward+backward plus one forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, StrictFloat

from dfkd_guard.components import Component, scorer
from dfkd_guard.hookspecs import hookimpl
from dfkd_guard.normalization import Normalization
from dfkd_guard.scorers._direction import ConfidenceDirection


class OdinParams(ConfidenceDirection):
    """Parameters of the ``odin`` scorer."""

    temperature: StrictFloat = Field(
        default=1000.0,
        gt=0.0,
        le=1e5,
        description="softmax temperature, at most 1e5 (100x the paper's 1000; beyond, the softmax is "
        "uniform)",
    )
    eps: StrictFloat = Field(
        default=0.0014, ge=0.0, le=1.0, description="preprocessing step, pixel units, in [0, 1]"
    )


@scorer("odin", OdinParams)
def odin(
    images: torch.Tensor,
    logits: torch.Tensor,
    teacher: torch.nn.Module,
    normalization: Normalization,
    params: OdinParams,
) -> torch.Tensor:
    """temperature-scaled MSP after input preprocessing (Liang et al. 2018)"""
    x = images.clone().requires_grad_(True)
    loss = F.cross_entropy(teacher(x) / params.temperature, logits.argmax(dim=1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    step = normalization.pixel_to_input(params.eps, images)
    with torch.no_grad():
        shifted = teacher(images - step * grad.sign()).float()
    msp = F.softmax(shifted / params.temperature, dim=1).amax(dim=1)
    return params.orient(-msp)


@hookimpl(trylast=True)
def dfkd_guard_components() -> list[Component]:
    return [odin]
