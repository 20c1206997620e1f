"""Scores computed from the teacher's logits alone: zero extra forward passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, StrictFloat

from dfkd_guard.components import Component, scorer
from dfkd_guard.hookspecs import hookimpl
from dfkd_guard.scorers._direction import ConfidenceDirection

#: Largest energy temperature: as T grows, -T logsumexp(f/T) tends to -mean(f) - T log K, not a confidence.
MAX_TEMPERATURE = 1e4


class EnergyParams(ConfidenceDirection):
    """Parameters of the ``energy`` scorer."""

    temperature: StrictFloat = Field(
        default=1.0,
        gt=0.0,
        le=MAX_TEMPERATURE,
        description="T of E(x) = -T logsumexp(f(x)/T), at most 1e4 (as T grows, E(x) tends to "
        "-mean logit - T log K)",
    )


@scorer("msp", ConfidenceDirection)
def msp(logits: torch.Tensor, params: ConfidenceDirection) -> torch.Tensor:
    """negative max softmax probability (Hendrycks & Gimpel 2017)"""
    logits = logits.float()
    unconfidence = -F.softmax(logits, dim=1).amax(dim=1)
    return params.orient(unconfidence)


@scorer("energy", EnergyParams)
def energy(logits: torch.Tensor, params: EnergyParams) -> torch.Tensor:
    """free energy -T logsumexp(f/T) (Liu et al. 2020)"""
    logits = logits.float()
    unconfidence = -params.temperature * torch.logsumexp(logits / params.temperature, dim=1)
    return params.orient(unconfidence)


@scorer("entropy", ConfidenceDirection)
def entropy(logits: torch.Tensor, params: ConfidenceDirection) -> torch.Tensor:
    """entropy of the teacher's softmax, nats"""
    logits = logits.float()
    log_p = F.log_softmax(logits, dim=1)
    unconfidence = -(log_p.exp() * log_p).sum(dim=1)
    return params.orient(unconfidence)


@hookimpl(trylast=True)
def dfkd_guard_components() -> list[Component]:
    return [msp, energy, entropy]
