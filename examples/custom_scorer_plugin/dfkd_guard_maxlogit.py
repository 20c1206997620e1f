"""The MaxLogit OOD scorer as a dfkd-guard plugin.

Hendrycks et al. 2022 ("Scaling Out-of-Distribution Detection for Real-World
Settings") score a sample by its largest *unnormalised* logit: unlike the max
softmax probability it is not squashed towards 1 when one class dominates, so
it keeps separating samples that are all confidently classified. The OOD score
is the negative max logit, ``-max_k f_k(x)``: higher = more OOD-like.

The plugin declares one scorer, ``max_logit``: one decorated function. It
reads the teacher's logits only, so it costs no teacher pass. Select it with
``GuardConfig(scorer="max_logit")`` or, in a TOML config::

    [scorer]
    name = "max_logit"
    params = { ood_when = "confident" }
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from dfkd_guard import Component, hookimpl, scorer

__all__ = ["MaxLogitParams", "dfkd_guard_components", "max_logit"]


class MaxLogitParams(BaseModel):
    """Parameters of the ``max_logit`` scorer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ood_when: Literal["unconfident", "confident"] = Field(
        default="unconfident",
        description="'unconfident': a low max logit is OOD-like (textbook); "
        "'confident': a high one is (non-transferable teachers)",
    )


@scorer("max_logit", MaxLogitParams, summary="negative max logit (Hendrycks et al. 2022)")
def max_logit(logits: torch.Tensor, params: MaxLogitParams) -> torch.Tensor:
    """``-max_k logits[:, k]`` (float (B,)), negated again when ``ood_when="confident"``."""
    unconfidence = -logits.float().amax(dim=1)
    return unconfidence if params.ood_when == "unconfident" else -unconfidence


@hookimpl
def dfkd_guard_components() -> list[Component]:
    return [max_logit]
