"""The dfkd-guard hook contract.

This module is the whole interface between the guard and its plugins.
Built-in scorers, weightings and penalties implement these hooks exactly as a
third-party plugin does.

Conventions that hold for every hook:

* Hooks are called with keyword arguments only; an implementation may accept
  any subset of a spec's parameters.
* ``images`` are float tensors (B, C, H, W) in the teacher's *input* units:
  [0, 1] pixels already normalised by the guard's
  :class:`~dfkd_guard.normalization.Normalization` (``(x - mean) / std``).
  Pixel-unit budgets must be converted with ``normalization.pixel_to_input``.
* ``logits`` are the teacher's float (B, K) outputs on those images.
* The method hooks (score, sample weights, generator penalty) are dispatched
  by name: the guard calls each on the plugin that declared the selected
  component in :func:`dfkd_guard_components`, passing the component's name and
  validated parameters. One plugin may declare several components and branch
  on the name.
* While a method hook runs, the teacher is in eval mode, its parameters do not
  require grad and the forward hooks registered on its modules are suspended
  (an adapter's BatchNorm-statistics hooks keep the values of *its* last
  forward). All of this is restored afterwards; implementations must not
  change it themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from dfkd_guard.components import Component
    from dfkd_guard.normalization import Normalization
    from dfkd_guard.sample_weights import SampleWeights

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME"]

PROJECT_NAME = "dfkd_guard"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------
# Declaration
# -------------------------------------------------------------------------


@hookspec
def dfkd_guard_components() -> list[Component]:
    """Declare the scorers, weightings and penalties this plugin provides.

    Called once when a guard's plugin manager is built. Results of all
    plugins are concatenated; a name declared twice for the same kind is an
    error naming both plugins.

    :returns: the plugin's :class:`~dfkd_guard.components.Component` list.

    Every plugin that implements a method hook implements this one.
    """


# -------------------------------------------------------------------------
# Method hooks: called by adapters (through the Guard) inside the DFKD loop
# -------------------------------------------------------------------------


@hookspec(firstresult=True)
def dfkd_guard_score(
    scorer: str,
    params: BaseModel,
    images: torch.Tensor,
    logits: torch.Tensor,
    teacher: torch.nn.Module,
    normalization: Normalization,
) -> torch.Tensor | None:
    """Score how OOD-like each synthetic sample is.

    Called on every synthetic batch the student will see (once per image for
    pooled adapters), on the plugin that declared the scorer ``scorer``.
    Stops at the first non-None result.

    :param scorer: name of the selected scorer.
    :param params: its validated parameters (an instance of the declared model).
    :param images: float (B, C, H, W), teacher input units, detached.
    :param logits: float (B, K) teacher logits on ``images``, detached; reuse
        them instead of running the teacher again when the score needs only logits.
    :param teacher: the teacher (eval mode, frozen, forward hooks suspended).
    :param normalization: the pixel normalisation, to convert pixel budgets.
    :returns: float tensor (B,), finite, higher = more OOD-like, no grad.
    """


@hookspec(firstresult=True)
def dfkd_guard_sample_weights(
    weighting: str,
    params: BaseModel,
    scores: torch.Tensor,
    logits: torch.Tensor,
) -> SampleWeights | None:
    """Turn a batch's OOD scores into KD weights and a forget mask.

    Called before each student step, on the plugin that declared the
    weighting ``weighting``. Stops at the first non-None result.

    :param weighting: name of the selected weighting.
    :param params: its validated parameters.
    :param scores: float (B,) from :func:`dfkd_guard_score`, higher = more OOD-like.
    :param logits: float (B, K) teacher logits on the batch, detached.
    :returns: :class:`~dfkd_guard.sample_weights.SampleWeights`: ``kd`` float (B,)
        in [0, 1] and ``forget`` bool (B,).
    """


@hookspec(firstresult=True)
def dfkd_guard_generator_penalty(
    penalty: str,
    params: BaseModel,
    images: torch.Tensor,
    logits: torch.Tensor,
    teacher: torch.nn.Module,
    normalization: Normalization,
) -> torch.Tensor | None:
    """A loss term that pushes synthesis away from the OOD-like region.

    Called inside each synthesis step, before ``backward()``, once for every
    penalty in the configuration, on the plugin that declared it. The guard
    multiplies each result by the penalty's configured weight and sums them.

    :param penalty: name of the selected penalty.
    :param params: its validated parameters.
    :param images: float (B, C, H, W), teacher input units; *keeps grad* to the
        generator (or to the pixels being optimised).
    :param logits: float (B, K) teacher logits on ``images``, keeping grad to
        ``images`` (not to the teacher's weights).
    :param teacher: the teacher (eval mode, frozen, forward hooks suspended).
    :param normalization: the pixel normalisation.
    :returns: scalar float tensor with grad to ``images``; lower is better for
        the generator.
    """


# -------------------------------------------------------------------------
# Observability: called for every plugin, results ignored
# -------------------------------------------------------------------------


@hookspec
def dfkd_guard_batch_scored(scorer: str, scores: torch.Tensor, logits: torch.Tensor) -> None:
    """A batch was scored.

    :param scorer: name of the scorer that produced ``scores``.
    :param scores: float (B,), higher = more OOD-like, detached.
    :param logits: float (B, K) teacher logits on the batch, detached.
    """


@hookspec
def dfkd_guard_batch_weighted(weighting: str, scores: torch.Tensor, weights: SampleWeights) -> None:
    """A batch's KD weights and forget mask were decided.

    :param weighting: name of the weighting used.
    :param scores: float (B,) OOD scores of the batch.
    :param weights: the validated result.
    """


@hookspec
def dfkd_guard_step_finished(step: int, metrics: Mapping[str, float]) -> None:
    """An adapter finished a training iteration.

    :param step: 0-based iteration counter of the adapter's loop.
    :param metrics: scalar losses and rates of that step, by name
        (``"loss/student"``, ``"guard/forgotten"``...).
    """
