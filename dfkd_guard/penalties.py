"""Built-in generator penalties: push synthesis away from the OOD-like region.

* ``confidence``: a differentiable confidence score of the teacher, oriented
  so that the OOD-like side costs more. With ``ood_when="confident"`` (the
  default, for NTL teachers, which are over-confident off their domain) it is
  the mean ``T logsumexp(f/T)`` (``score="energy"``) or mean max softmax
  (``score="msp"``); ``"unconfident"`` flips the sign.
* ``input_gradient``: a robustness proxy. Robust samples have a small input
  gradient of the teacher's loss ``CE(T(x), argmax T(x))``; the penalty is
  ``-mean(log(||grad_x||_1 + floor))`` with the gradient in pixel units,
  computed with double backprop so it is differentiable in ``x``.

Both are off by default (the config's ``penalties`` list is empty).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, StrictFloat

from dfkd_guard.components import Component, penalty
from dfkd_guard.hookspecs import hookimpl
from dfkd_guard.normalization import Normalization
from dfkd_guard.scorers._direction import OodWhen
from dfkd_guard.scorers.logit_scores import MAX_TEMPERATURE

__all__ = ["ConfidencePenaltyParams", "InputGradientParams"]


class ConfidencePenaltyParams(BaseModel):
    """Parameters of the ``confidence`` penalty."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    score: Literal["energy", "msp"] = Field(default="energy", description="which confidence score")
    ood_when: OodWhen = Field(default="confident", description="the side that is penalised")
    temperature: StrictFloat = Field(
        default=1.0, gt=0.0, le=MAX_TEMPERATURE, description="T of the energy score, at most 1e4"
    )


class InputGradientParams(BaseModel):
    """Parameters of the ``input_gradient`` penalty."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    floor: StrictFloat = Field(
        default=1e-6,
        gt=0.0,
        le=1.0,
        description="added to the gradient norm before the log, in (0, 1] (a larger floor hides the small "
        "norms of robust samples, the signal)",
    )


@penalty("confidence", ConfidencePenaltyParams)
def confidence(logits: torch.Tensor, params: ConfidencePenaltyParams) -> torch.Tensor:
    """oriented energy / MSP of the teacher on synthetic samples"""
    if params.score == "energy":
        value = params.temperature * torch.logsumexp(logits / params.temperature, dim=1)
    else:
        value = F.softmax(logits, dim=1).amax(dim=1)
    sign = 1.0 if params.ood_when == "confident" else -1.0
    return sign * value.mean()


@penalty("input_gradient", InputGradientParams)
def input_gradient(
    images: torch.Tensor, logits: torch.Tensor, normalization: Normalization, params: InputGradientParams
) -> torch.Tensor:
    """-log input-gradient norm of the teacher's loss (robustness proxy)"""
    if not images.requires_grad:
        raise ValueError("input_gradient needs images that require grad (the generator's output)")
    loss = F.cross_entropy(logits, logits.detach().argmax(dim=1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, images, create_graph=True)
    pixel_grad = grad * normalization.pixel_to_input(1.0, images)  # d loss / d pixel = grad / std
    norms = pixel_grad.flatten(1).abs().sum(dim=1)
    return -torch.log(norms + params.floor).mean()


@hookimpl(trylast=True)
def dfkd_guard_components() -> list[Component]:
    return [confidence, input_gradient]
