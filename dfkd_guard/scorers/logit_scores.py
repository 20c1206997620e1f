"""Scores computed from the teacher's logits alone: zero extra forward passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from dfkd_guard.components import Component
from dfkd_guard.hookspecs import hookimpl
from dfkd_guard.scorers._direction import ConfidenceDirection


class EnergyParams(ConfidenceDirection):
    """Parameters of the ``energy`` scorer."""

    temperature: float = Field(default=1.0, gt=0.0, description="T of E(x) = -T logsumexp(f(x)/T)")


@hookimpl(trylast=True)
def dfkd_guard_components() -> list[Component]:
    return [
        Component("scorer", "msp", "negative max softmax probability (Hendrycks & Gimpel 2017)", ConfidenceDirection),
        Component("scorer", "energy", "free energy -T logsumexp(f/T) (Liu et al. 2020)", EnergyParams),
        Component("scorer", "entropy", "entropy of the teacher's softmax, nats", ConfidenceDirection),
    ]


@hookimpl(trylast=True)
def dfkd_guard_score(scorer: str, params: BaseModel, logits: torch.Tensor) -> torch.Tensor | None:
    assert isinstance(params, ConfidenceDirection)
    logits = logits.float()
    if scorer == "msp":
        unconfidence = -F.softmax(logits, dim=1).amax(dim=1)
    elif scorer == "energy":
        assert isinstance(params, EnergyParams)
        unconfidence = -params.temperature * torch.logsumexp(logits / params.temperature, dim=1)
    elif scorer == "entropy":
        log_p = F.log_softmax(logits, dim=1)
        unconfidence = -(log_p.exp() * log_p).sum(dim=1)
    else:
        return None
    return params.orient(unconfidence)
