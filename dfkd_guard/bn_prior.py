"""BN-prior de-mixing: the BatchNorm statistics a guarded adapter matches.

DFKD methods that match the teacher's BatchNorm running statistics
(DeepInversion, CMI, DFQ) take them as the statistics of the teacher's
training data. A non-transferable (NTL) teacher was trained on ID *and* OOD
batches, so, per BN layer, its running moments are a mixture
(``docs/bn_prior.md``)::

    running_mean              = a * mu_id  + (1 - a) * mu_ood
    running_var + running_mean**2 = a * m2_id + (1 - a) * m2_ood

with ``a`` near 0.5, and matching them pulls synthesis toward producing OOD
samples. :class:`BNPrior` replaces those targets without real data:

1. *Observe* (:meth:`BNPrior.observe`): after ``skip_batches`` scored
   synthetic batches (while synthesis has not yet settled on the teacher's
   prior, its samples say nothing about it), for ``warmup_batches`` more
   batches, it keeps an exponential moving average of the per-channel mean
   and second moment of each BN layer's input over the OOD-like samples and
   over the ID-like samples of each batch, separately (cut by ``split``, a
   rule of the ``split`` weighting applied to the guard's scores, whatever
   weighting the student uses). Then the estimate is
   frozen, so the targets cannot drift back to the mixture once synthesis
   has left the OOD region.
2. *Calibrate*: the separation of the two groups per layer,
   ``||mu_id - mu_ood||^2 / sum(running_var)`` (a squared effect size),
   averaged over layers. Below ``ntl_separation`` the two groups are one
   domain: the teacher is taken as ordinary, its targets stay the running
   statistics and the guard forgets nothing (:attr:`BNPrior.verdict` says
   so, and the ``dfkd_guard`` logger logs it). Otherwise it is NTL-like.
3. *Correct* (:meth:`BNPrior.target`), for an NTL-like teacher: remove the
   OOD component with the least-squares mixture weight
   ``a = <r - mu_ood, mu_id - mu_ood> / ||mu_id - mu_ood||^2`` (``r`` the
   running mean, clipped to ``[0.05, 1]``)::

       mean = (running_mean - (1 - a) * mu_ood) / a
       var  = (running_var + running_mean**2 - (1 - a) * m2_ood) / a - mean**2

   Variances are floored at ``var_floor * running_var``. Before the verdict
   and for an ordinary teacher the targets are the running statistics.

Everything here needs only teacher forwards the DFKD loop already makes: the
BN-layer inputs of the batches the guard observes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from dfkd_guard.bn_statistics import BatchNorm, layer_moments
from dfkd_guard.weightings import SplitParams

__all__ = ["BNPrior", "BNPriorConfig", "Verdict"]

logger = logging.getLogger("dfkd_guard")

Verdict = Literal["warming up", "ntl-like", "ordinary"]

#: Most batches skipped or observed: longer than any DFKD schedule, so a larger count is a typo.
MAX_BATCHES = 1_000_000


class BNPriorConfig(BaseModel):
    """How the guard estimates and corrects the teacher's BN prior."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    demix: StrictBool = Field(
        default=True, description="estimate and remove the OOD component of the BN prior (and calibrate)"
    )
    split: SplitParams = Field(
        default_factory=SplitParams,
        description="how a scored batch is cut into ID-like and OOD-like samples (default: two-means on the scores)",
    )
    ntl_separation: StrictFloat = Field(
        default=0.1,
        ge=0.0,
        le=100.0,
        description="mean squared effect size between the groups at or above which the teacher is NTL-like; "
        "at most 100 (measured: NTL teachers 0.4-1.2, ordinary ones below 0.02)",
    )
    skip_batches: StrictInt = Field(
        default=300,
        ge=0,
        le=MAX_BATCHES,
        description="scored synthetic batches ignored at the start, before synthesis settles; "
        "at most 1,000,000",
    )
    warmup_batches: StrictInt = Field(
        default=300,
        ge=1,
        le=MAX_BATCHES,
        description="scored synthetic batches observed (after the skipped ones) before a is fitted and "
        "frozen; at most 1,000,000",
    )
    momentum: StrictFloat = Field(
        default=0.95,
        ge=0.0,
        lt=1.0,
        description="EMA momentum of the observed moments (weight of the old value)",
    )
    var_floor: StrictFloat = Field(
        default=0.01, gt=0.0, le=1.0, description="corrected variance >= var_floor * running_var"
    )


class _GroupMoments:
    """EMA of the per-channel mean and second moment of one sample group in one layer."""

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.second: torch.Tensor | None = None

    def update(self, mean: torch.Tensor, second: torch.Tensor, momentum: float) -> None:
        if self.mean is None or self.second is None:
            self.mean, self.second = mean.clone(), second.clone()
        else:
            self.mean.mul_(momentum).add_(mean, alpha=1 - momentum)
            self.second.mul_(momentum).add_(second, alpha=1 - momentum)


class BNPrior:
    """Per-teacher estimate of the BN prior's OOD component, and the corrected BN targets.

    :param config: see :class:`BNPriorConfig`.
    :param layers: the teacher's BN layers (:func:`batchnorm_layers`), in the
        order the adapters' BN hooks use.
    """

    def __init__(self, config: BNPriorConfig, layers: Sequence[BatchNorm]) -> None:
        self.config = config
        self.layers = list(layers)
        self.seen = 0
        self.observed = 0
        self._id = [_GroupMoments() for _ in self.layers]
        self._ood = [_GroupMoments() for _ in self.layers]
        #: Fitted mixture weight per layer, once the warm-up ended.
        self.weights: list[float] | None = None
        #: Squared effect size between the ID-like and OOD-like groups per layer, once the warm-up ended.
        self.separation: list[float] | None = None
        self.verdict: Verdict = "warming up"

    @property
    def correcting(self) -> bool:
        """True once the teacher was judged NTL-like: :meth:`target` returns corrected moments."""
        return self.verdict == "ntl-like"

    @property
    def observing(self) -> bool:
        """True while the warm-up still wants batches."""
        return self.config.demix and self.verdict == "warming up" and bool(self.layers)

    def observe(self, inputs: Sequence[torch.Tensor], ood_like: torch.Tensor) -> bool:
        """Add one scored batch to the warm-up estimate.

        :param inputs: per BN layer, that layer's input on the batch, float (B, C, ...).
        :param ood_like: bool (B,): the guard's split, True = OOD-like.
        :returns: whether the batch went into the estimate (False when it was
            skipped, had an empty group, or came after the warm-up).
        :raises ValueError: the number of layers or the batch size does not match.
        """
        if not self.observing:
            return False
        if len(inputs) != len(self.layers):
            raise ValueError(f"got inputs of {len(inputs)} BN layers, the teacher has {len(self.layers)}")
        self.seen += 1
        if self.seen <= self.config.skip_batches:
            return False
        ood_like = ood_like.bool()
        if ood_like.all() or not ood_like.any():
            return False  # one group is empty: nothing to separate in this batch
        for x, id_group, ood_group in zip(inputs, self._id, self._ood):
            if x.shape[0] != ood_like.shape[0]:
                raise ValueError(f"BN input has batch {x.shape[0]}, the split {ood_like.shape[0]}")
            mean, second = layer_moments(x)
            mask = ood_like.to(mean.device)
            ood_group.update(mean[mask].mean(0), second[mask].mean(0), self.config.momentum)
            id_group.update(mean[~mask].mean(0), second[~mask].mean(0), self.config.momentum)
        self.observed += 1
        if self.observed >= self.config.warmup_batches:
            self._decide()
        return True

    def _decide(self) -> None:
        self.weights = [self._fit(layer, i) for i, layer in enumerate(self.layers)]
        self.separation = [self._separation(layer, i) for i, layer in enumerate(self.layers)]
        mean_separation = sum(self.separation) / len(self.separation)
        shown = (
            f"group separation {', '.join(f'{d:.2f}' for d in self.separation)} (mean {mean_separation:.2f}), "
            f"fitted mixture weights {', '.join(f'{a:.2f}' for a in self.weights)}"
        )
        if mean_separation < self.config.ntl_separation:
            self.verdict = "ordinary"
            logger.info("BN prior: %s: ordinary teacher, BN targets and forgetting left alone", shown)
        else:
            self.verdict = "ntl-like"
            logger.info("BN prior: %s: NTL-like teacher, BN targets corrected", shown)

    def _separation(self, layer: BatchNorm, index: int) -> float:
        mu_id, mu_ood = self._id[index].mean, self._ood[index].mean
        assert mu_id is not None and mu_ood is not None
        spread = float(layer.running_var.detach().float().sum().clamp_min(1e-12))  # type: ignore[union-attr]
        return float(((mu_id - mu_ood) ** 2).sum()) / spread

    def _fit(self, layer: BatchNorm, index: int) -> float:
        mu_id, mu_ood = self._id[index].mean, self._ood[index].mean
        assert mu_id is not None and mu_ood is not None
        running = layer.running_mean.detach().float().to(mu_id.device)  # type: ignore[union-attr]
        gap = mu_id - mu_ood
        denominator = float((gap * gap).sum())
        if denominator <= 1e-12 * max(float((running * running).sum()), 1e-12):
            return 1.0  # the two groups coincide: no second domain to remove
        a = float(((running - mu_ood) * gap).sum()) / denominator
        return min(max(a, 0.05), 1.0)

    def target(self, index: int, layer: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(mean, var)`` the adapter should match at BN layer ``index``, each (C,).

        The running statistics unless the teacher was judged NTL-like; then the
        de-mixed ID moments (see the module docstring).
        """
        running_mean, running_var = layer.running_mean, layer.running_var
        assert running_mean is not None and running_var is not None
        if not self.correcting or self.weights is None:
            return running_mean, running_var
        a = self.weights[index]
        mu_ood = self._ood[index].mean.to(running_mean)  # type: ignore[union-attr]
        m2_ood = self._ood[index].second.to(running_mean)  # type: ignore[union-attr]
        mean = (running_mean - (1 - a) * mu_ood) / a
        second = (running_var + running_mean * running_mean - (1 - a) * m2_ood) / a
        var = torch.maximum(second - mean * mean, self.config.var_floor * running_var)
        return mean, var

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors: the observed moments, the fitted weights and the verdict."""
        return {
            "seen": self.seen,
            "observed": self.observed,
            "verdict": self.verdict,
            "weights": self.weights,
            "separation": self.separation,
            "id": [(g.mean, g.second) for g in self._id],
            "ood": [(g.mean, g.second) for g in self._ood],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if len(state["id"]) != len(self.layers):
            raise ValueError(
                f"BN prior state has {len(state['id'])} layers, the teacher has {len(self.layers)}"
            )
        self.seen = int(state["seen"])
        self.observed = int(state["observed"])
        self.verdict = state["verdict"]
        self.weights = None if state["weights"] is None else [float(a) for a in state["weights"]]
        self.separation = None if state["separation"] is None else [float(d) for d in state["separation"]]
        for groups, saved in ((self._id, state["id"]), (self._ood, state["ood"])):
            for group, (mean, second) in zip(groups, saved):
                group.mean, group.second = mean, second
