"""``atesc``: how robust is the teacher's prediction to a small perturbation?

An NTL teacher is trained to be robust and confident off its domain, while its
in-domain predictions stay fragile (docs/components.md). The score runs a batched L-inf PGD attack on the teacher's own
prediction ``y0 = argmax T(x)``, maximising ``CE(T(x + d), y0)``, and measures
how little the prediction moved:

* ``measure="kl"``: ``-log(KL(T(x) || T(x + d)) + 1e-12)``; a robust sample has
  a tiny KL and a high score.
* ``measure="margin"``: the adversarial margin ``f_y0(x + d) - max_k!=y0 f_k(x + d)``;
  positive when the prediction survives the attack (so ``split`` with
  ``rule="flip"`` thresholds it at 0).

The attack starts at ``d = 0`` and uses no randomness, so scoring never draws
from the caller's RNG streams. Cost: ``steps`` forward+backward passes (the
backward reaches the input only, not the weights) plus one forward.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from dfkd_guard.components import Component, scorer
from dfkd_guard.hookspecs import hookimpl
from dfkd_guard.normalization import Normalization

_KL_FLOOR = 1e-12


class AtescParams(BaseModel):
    """Parameters of the ``atesc`` scorer. Budgets are in pixel units of [0, 1] images."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    eps: StrictFloat = Field(
        default=4 / 255, gt=0.0, le=1.0, description="L-inf radius, pixel units, in (0, 1]"
    )
    steps: StrictInt = Field(
        default=3, ge=1, le=100, description="PGD steps, 1..100 (each is a forward+backward per batch)"
    )
    step_size: StrictFloat | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="per-step size, pixel units, in (0, 1] (the whole pixel range); "
        "default 2.5 * eps / steps",
    )
    measure: Literal["kl", "margin"] = Field(
        default="kl", description="what is read off the attacked prediction"
    )
    clip_to_pixel_range: StrictBool = Field(
        default=False, description="keep x + d inside [0, 1] pixels (off: synthetic images may lie outside)"
    )

    @property
    def pixel_step(self) -> float:
        """The step size in pixel units, after applying the default."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


def pgd_perturbation(
    teacher: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    params: AtescParams,
    normalization: Normalization,
) -> torch.Tensor:
    """Batched untargeted L-inf PGD on ``CE(teacher(images + d), targets)``.

    :param images: float (B, C, H, W), teacher input units, detached.
    :param targets: int64 (B,) labels to move away from.
    :returns: the perturbation ``d`` (B, C, H, W) in input units, detached.
    """
    eps = normalization.pixel_to_input(params.eps, images)
    step = normalization.pixel_to_input(params.pixel_step, images)
    low, high = normalization.input_range(images) if params.clip_to_pixel_range else (None, None)
    delta = torch.zeros_like(images)
    for _ in range(params.steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(teacher(images + delta), targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = torch.maximum(torch.minimum(delta + step * grad.sign(), eps), -eps)
            if low is not None:
                delta = torch.maximum(torch.minimum(images + delta, high), low) - images
    return delta.detach()


@scorer("atesc", AtescParams)
def atesc(
    images: torch.Tensor,
    logits: torch.Tensor,
    teacher: torch.nn.Module,
    normalization: Normalization,
    params: AtescParams,
) -> torch.Tensor:
    """robustness of the teacher's prediction under L-inf PGD (ATEsc)"""
    targets = logits.argmax(dim=1)
    delta = pgd_perturbation(teacher, images, targets, params, normalization)
    with torch.no_grad():
        attacked = teacher(images + delta).float()
    if params.measure == "margin":
        own = attacked.gather(1, targets[:, None]).squeeze(1)
        others = attacked.scatter(1, targets[:, None], float("-inf")).amax(dim=1)
        return own - others
    kl = F.kl_div(
        F.log_softmax(attacked, dim=1),
        F.log_softmax(logits.float(), dim=1),
        reduction="none",
        log_target=True,
    ).sum(dim=1)
    return -torch.log(kl.clamp_min(0.0) + _KL_FLOOR)


@hookimpl(trylast=True)
def dfkd_guard_components() -> list[Component]:
    return [atesc]
