"""The dfkd-guard hook contract.

This module and :mod:`dfkd_guard.components` are the whole interface between
the guard and its plugins. Built-in scorers, weightings and penalties are
plugins written exactly as a third-party plugin is.

A plugin uses pluggy for two things: *declaration* (:func:`dfkd_guard_components`
returns its components) and *observation* (the ``dfkd_guard_batch_*`` and
``dfkd_guard_step_finished`` hooks, called on every plugin). The work itself
is done by the components: each is one function carrying its kind, name and
parameter model (``@scorer("name", Params)``, ``@weighting``, ``@penalty``),
which the guard calls directly when a config selects it by name.

Conventions that hold for every hook and component function:

* They are called with keyword arguments only; an implementation may accept
  any subset of the arguments offered (a component function, any subset of
  its kind's arguments, :data:`~dfkd_guard.components.COMPONENT_ARGUMENTS`).
  A component function naming any other argument is refused when the
  registry is built.
* ``images`` are float tensors (B, C, H, W) in the teacher's *input* units:
  [0, 1] pixels already normalised by the guard's
  :class:`~dfkd_guard.normalization.Normalization` (``(x - mean) / std``).
  Pixel-unit budgets must be converted with ``normalization.pixel_to_input``.
* ``logits`` are the teacher's float (B, K) outputs on those images.

The call contract of each component kind (arguments, shapes, units, what it
returns) is in :mod:`dfkd_guard.components`. While a component function
runs, its ``teacher`` is the teacher's hook-free twin
(:mod:`dfkd_guard.teacher_twin`): the same tensors, eval mode, parameters
that do not require grad, and no hooks, so neither the loop's hooks nor the
guard's BN record see its forwards. Implementations must not change its
mode or weights. An exception, a None result
or a result that breaks the contract is a
:class:`~dfkd_guard.errors.PluginError` naming the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch

    from dfkd_guard.components import Component
    from dfkd_guard.sample_weights import SampleWeights

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

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

    :returns: the plugin's :class:`~dfkd_guard.components.Component` list,
        usually functions decorated with :func:`~dfkd_guard.components.scorer`,
        :func:`~dfkd_guard.components.weighting` or
        :func:`~dfkd_guard.components.penalty`.
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
