"""Built-in sample weightings: turn OOD scores into KD weights and a forget mask.

* ``split`` (ATEsc): every sample is either ID-like (KD weight 1, kept) or
  OOD-like (KD weight 0, forgotten). ``rule`` decides where the cut is:

  - ``flip``: score > 0, for signed adversarial margins (``atesc`` with
    ``measure="margin"``): OOD-like when the prediction survives the attack;
  - ``threshold``: score > ``threshold``;
  - ``quantile``: score above the batch's ``quantile`` (0.5 = median split);
  - ``two_means``: 1-D k-means with two centres (Lloyd iterations from the
    batch's min and max), cut at the midpoint of the centres;
  - ``otsu``: the exact cut that maximises the between-class variance.

  The batch-adaptive rules (``two_means``, ``otsu``) keep every sample when
  the scores are all equal.
* ``soft``: ``w = sigmoid(-(s - median(s)) / (width * std(s)))``: weights fall
  smoothly with the score; nothing is forgotten.
* ``none``: weight 1 everywhere (use with generator penalties only).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, model_validator

from dfkd_guard.components import Component, weighting
from dfkd_guard.hookspecs import hookimpl
from dfkd_guard.sample_weights import SampleWeights

__all__ = ["SoftParams", "SplitParams", "ood_mask", "otsu_cut", "two_means_cut"]


class SplitParams(BaseModel):
    """Parameters of the ``split`` weighting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rule: Literal["flip", "threshold", "quantile", "two_means", "otsu"] = Field(
        default="two_means", description="how the OOD-like side is chosen"
    )
    threshold: StrictFloat | None = Field(default=None, description="score cut for rule 'threshold', finite")
    quantile: StrictFloat = Field(
        default=0.5, gt=0.0, lt=1.0, description="batch quantile cut for rule 'quantile', in (0, 1)"
    )

    @model_validator(mode="after")
    def _threshold_given(self) -> SplitParams:
        if self.rule == "threshold" and self.threshold is None:
            raise ValueError("rule 'threshold' needs a threshold value")
        return self


class SoftParams(BaseModel):
    """Parameters of the ``soft`` weighting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    width: StrictFloat = Field(
        default=1.0,
        gt=0.0,
        le=100.0,
        description="sigmoid width, in batch standard deviations, at most 100 (beyond, every weight is "
        "about 0.5)",
    )


def two_means_cut(scores: torch.Tensor, iterations: int = 50) -> float | None:
    """Midpoint of two 1-D k-means centres started at min and max; None if all scores are equal."""
    low, high = scores.min(), scores.max()
    if low == high:
        return None
    for _ in range(iterations):
        cut = (low + high) / 2
        upper = scores > cut
        new_low, new_high = scores[~upper].mean(), scores[upper].mean()
        if new_low == low and new_high == high:
            break
        low, high = new_low, new_high
    return float((low + high) / 2)


def otsu_cut(scores: torch.Tensor) -> float | None:
    """The cut maximising between-class variance over all splits of the sorted scores.

    :returns: midpoint between the last low and the first high score; None if
        all scores are equal.
    """
    values = scores.double().sort().values
    n = values.numel()
    if n < 2 or values[0] == values[-1]:
        return None
    counts = torch.arange(1, n, dtype=values.dtype, device=values.device)
    sums = values.cumsum(0)[:-1]
    mean_low = sums / counts
    mean_high = (values.sum() - sums) / (n - counts)
    between = counts * (n - counts) * (mean_low - mean_high) ** 2
    between[values[1:] == values[:-1]] = -1  # a cut must fall between distinct values
    i = int(between.argmax())
    return float((values[i] + values[i + 1]) / 2)


def ood_mask(scores: torch.Tensor, params: SplitParams) -> torch.Tensor:
    """Bool (B,): True where the sample is on the OOD-like side of the rule's cut."""
    if params.rule == "flip":
        cut: float | None = 0.0
    elif params.rule == "threshold":
        cut = params.threshold
    elif params.rule == "quantile":
        cut = float(torch.quantile(scores.double(), params.quantile))
    elif params.rule == "two_means":
        cut = two_means_cut(scores)
    else:
        cut = otsu_cut(scores)
    if cut is None:
        return torch.zeros_like(scores, dtype=torch.bool)
    return scores > cut


@weighting("split", SplitParams)
def split(scores: torch.Tensor, params: SplitParams) -> SampleWeights:
    """OOD-like samples get KD weight 0 and are forgotten (ATEsc)"""
    ood = ood_mask(scores, params)
    return SampleWeights(kd=(~ood).float(), forget=ood)


@weighting("soft", SoftParams)
def soft(scores: torch.Tensor, params: SoftParams) -> SampleWeights:
    """KD weights fall smoothly with the score; nothing forgotten"""
    spread = scores.std() if scores.numel() > 1 else scores.new_zeros(())
    if spread == 0:
        return SampleWeights.keep_all(scores.numel(), scores.device)
    kd = torch.sigmoid(-(scores - scores.median()) / (params.width * spread))
    return SampleWeights(kd=kd, forget=torch.zeros_like(scores, dtype=torch.bool))


@weighting("none")
def none(scores: torch.Tensor) -> SampleWeights:
    """KD weight 1 everywhere, nothing forgotten"""
    return SampleWeights.keep_all(scores.numel(), scores.device)


@hookimpl(trylast=True)
def dfkd_guard_components() -> list[Component]:
    return [split, soft, none]
