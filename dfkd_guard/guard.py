"""The :class:`Guard`: the one object users and adapters hold.

A guard is bound to one teacher. In a DFKD loop it answers four questions::

    guard = Guard(GuardConfig(scorer="atesc"), teacher)
    scores = guard.score(images, teacher_logits)           # (B,) higher = OOD-like
    weights = guard.sample_weights(scores, teacher_logits)  # KD weights, forget mask
    loss = guard.student_loss(student_logits, teacher_logits, weights)
    g_loss = g_loss + guard.generator_penalty(images, teacher_logits_with_grad)

Adapters that match the teacher's BatchNorm statistics also hand the guard
the BN-layer inputs of each scored batch (:meth:`Guard.observe_bn`) and take
their BN targets from :attr:`Guard.bn_prior` (:mod:`dfkd_guard.bn_prior`):
this de-mixes an NTL teacher's BN prior and calibrates the guard, which
forgets nothing until the warm-up has judged the teacher NTL-like. With a
trap memory (``forget.memory``), the OOD-like images of the warm-up are
kept, and after an NTL-like verdict :meth:`Guard.recall` hands some of them
back for every student batch to forget (:mod:`dfkd_guard.trap_memory`).

Images passed to a guard are in the teacher's input units (already normalised
the way the teacher was trained); ``config.normalization`` tells the guard
how those units relate to [0, 1] pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfkd_guard.bn_prior import BNPrior, batchnorm_layers
from dfkd_guard.config import GuardConfig
from dfkd_guard.errors import PluginError
from dfkd_guard.losses import student_loss
from dfkd_guard.plugins import PluginRegistry
from dfkd_guard.sample_weights import SampleWeights
from dfkd_guard.teacher_state import quiet_teacher
from dfkd_guard.trap_memory import TrapMemory
from dfkd_guard.weightings import ood_mask

__all__ = ["Guard"]

logger = logging.getLogger("dfkd_guard")


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a float tensor (B, C, H, W), got {got}")


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float tensor (B,), got {got}")


def _check_logits(logits: torch.Tensor, batch: int | None, name: str = "logits") -> None:
    """``logits`` must be (batch, K); any batch size when ``batch`` is None."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or (batch is not None and logits.shape[0] != batch):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a float tensor ({'B' if batch is None else batch}, K), got {got}")


class Guard:
    """Scores synthetic samples, weights them, and computes the guarded losses.

    :param config: a :class:`GuardConfig`, a mapping, or a path to a
        ``.json`` / ``.toml`` file.
    :param teacher: the teacher network; the guard never changes its weights,
        grad flags, train/eval mode or forward hooks.
    :param plugins: extra plugin objects registered after the built-ins.
    :param load_entrypoints: load third-party plugins from the ``dfkd_guard``
        entry-point group (default: unless ``DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD``).
    :raises ConfigError: an invalid config, naming the field.
    :raises PluginError: a plugin fails to load, naming the plugin.
    """

    def __init__(
        self,
        config: GuardConfig | Mapping[str, Any] | str | Path | None = None,
        teacher: nn.Module | None = None,
        *,
        plugins: Iterable[object] = (),
        load_entrypoints: bool | None = None,
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if config is None:
            config = GuardConfig()
        elif isinstance(config, (str, Path)):
            config = GuardConfig.from_file(config)
        elif not isinstance(config, GuardConfig):
            config = GuardConfig.from_mapping(config)
        self.config: GuardConfig = config
        self.teacher = teacher
        self.registry = PluginRegistry(plugins, load_entrypoints=load_entrypoints)
        self.resolved = config.resolve(self.registry.component_map())
        layers = batchnorm_layers(teacher)
        #: BN-prior estimate and corrected targets; None when disabled or the teacher has no BatchNorm.
        self.bn_prior: BNPrior | None = (
            BNPrior(config.bn_prior, layers) if config.enabled and config.bn_prior.demix and layers else None
        )
        #: OOD-like warm-up images to forget after an NTL-like verdict; None without ``forget.memory``.
        self.trap_memory: TrapMemory | None = (
            TrapMemory(config.forget.memory) if self.bn_prior is not None and config.forget.memory else None
        )
        self._bn_observed = False
        self._trapped_pending = False

    def __repr__(self) -> str:
        c = self.resolved
        penalties = ", ".join(f"{p.name}*{p.weight:g}" for p in c.penalties) or "none"
        return (
            f"Guard(enabled={self.config.enabled}, scorer={c.scorer.name}({_params(c.scorer.params)}), "
            f"weighting={c.weighting.name}({_params(c.weighting.params)}), penalties=[{penalties}], "
            f"forget={self.config.forget.kind}*{self.config.forget.weight:g}"
            f"{f' (trap memory {len(self.trap_memory)}/{self.trap_memory.capacity})' if self.trap_memory is not None else ''}, "
            f"tau={self.config.kd_temperature:g}, "
            f"bn_prior={self.bn_prior.verdict if self.bn_prior is not None else 'off'})"
        )

    @property
    def enabled(self) -> bool:
        """False when the config turns the guard off: every sample kept, no penalty."""
        return self.config.enabled

    @property
    def scores_needed(self) -> bool:
        """Whether scoring a batch can still change anything.

        False when the guard is off, or when the BN prior (fed by an adapter)
        has finished its warm-up and either judged the teacher ordinary (every
        sample is kept) or the weighting is ``none``. Adapters skip scoring
        then, which makes the guard's cost after the warm-up that of its
        corrected BN targets alone; score observers see no more batches.
        """
        if not self.enabled:
            return False
        prior = self.bn_prior
        if prior is None or not self._bn_observed or prior.observing:
            return True
        return prior.correcting and self.resolved.weighting.name != "none"

    # -- scoring -----------------------------------------------------------

    def score(self, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """OOD scores of a batch with the configured scorer.

        :param images: float (B, C, H, W) in teacher input units.
        :param logits: the teacher's (B, K) logits on ``images`` if the caller
            already has them (saves a forward pass); detached here.
        :returns: float (B,) on ``images.device``, higher = more OOD-like, no grad.
        :raises PluginError: the scorer raised or returned a wrong shape / NaN.
        """
        _check_images(images)
        images = images.detach()
        batch = images.shape[0]
        with quiet_teacher(self.teacher):
            if logits is None:
                with torch.no_grad():
                    logits = self.teacher(images)
            _check_logits(logits, batch)
            logits = logits.detach()
            with torch.enable_grad():
                scores = self.registry.call_component(
                    "scorer",
                    self.resolved.scorer.name,
                    params=self.resolved.scorer.params,
                    images=images,
                    logits=logits,
                    teacher=self.teacher,
                    normalization=self.config.normalization,
                )
        scores = self._checked_scores(scores, batch)
        self.registry.notify("dfkd_guard_batch_scored", scorer=self.resolved.scorer.name, scores=scores, logits=logits)
        return scores

    def _checked_scores(self, scores: Any, batch: int) -> torch.Tensor:
        plugin = self.registry.provider("scorer", self.resolved.scorer.name)
        if not isinstance(scores, torch.Tensor):
            raise PluginError(plugin, "dfkd_guard_score", f"returned {type(scores).__name__}, wanted a tensor ({batch},)")
        if tuple(scores.shape) != (batch,):
            raise PluginError(plugin, "dfkd_guard_score", f"returned shape {tuple(scores.shape)}, wanted ({batch},)")
        if not torch.isfinite(scores).all():
            raise PluginError(plugin, "dfkd_guard_score", "returned NaN or Inf scores")
        return scores.detach().float()

    # -- weighting ---------------------------------------------------------

    def sample_weights(self, scores: torch.Tensor, logits: torch.Tensor) -> SampleWeights:
        """KD weights and forget mask for a scored batch, as the student should use them.

        The configured weighting's split (:meth:`split`), except under
        calibration: once an adapter has fed BN inputs (:meth:`observe_bn`),
        every sample is kept until the BN prior has judged the teacher
        NTL-like, and always for an ordinary teacher.

        :param scores: float (B,) from :meth:`score` (or stored with a pooled image).
        :param logits: the teacher's (B, K) logits on the batch.
        :returns: :class:`SampleWeights`; every sample kept when the guard is disabled.
        """
        if self._bn_observed and self.bn_prior is not None and not self.bn_prior.correcting:
            _check_scores(scores)
            _check_logits(logits, scores.shape[0])
            weights = SampleWeights.keep_all(scores.shape[0], scores.device)
        else:
            weights = self.split(scores, logits)
        if self.enabled:
            self.registry.notify("dfkd_guard_batch_weighted", weighting=self.resolved.weighting.name, scores=scores, weights=weights)
        return weights

    def split(self, scores: torch.Tensor, logits: torch.Tensor) -> SampleWeights:
        """The configured weighting's KD weights and forget mask, without calibration.

        :param scores: float (B,) OOD scores.
        :param logits: the teacher's (B, K) logits on the batch.
        :raises PluginError: the weighting raised or broke the contract.
        """
        _check_scores(scores)
        batch = scores.shape[0]
        _check_logits(logits, batch)
        if not self.enabled:
            return SampleWeights.keep_all(batch, scores.device)
        name = self.resolved.weighting.name
        weights = self.registry.call_component(
            "weighting", name, params=self.resolved.weighting.params, scores=scores.detach(), logits=logits.detach()
        )
        plugin = self.registry.provider("weighting", name)
        if not isinstance(weights, SampleWeights):
            raise PluginError(plugin, "dfkd_guard_sample_weights", f"returned {type(weights).__name__}, not SampleWeights")
        problem = weights.problems(batch)
        if problem:
            raise PluginError(plugin, "dfkd_guard_sample_weights", problem)
        return weights

    # -- BN prior ----------------------------------------------------------

    def observe_bn(
        self, inputs: Sequence[torch.Tensor], scores: torch.Tensor, images: torch.Tensor | None = None
    ) -> None:
        """Feed the BN prior one scored batch: its BN-layer inputs and the OOD-like side of its scores.

        The cut is ``config.bn_prior.split`` (independent of the student's
        weighting). A no-op when de-mixing is off or the warm-up is over (no
        extra forward either way).

        :param inputs: per BN layer of the teacher (module order), the layer's
            input on the batch, float (B, C, ...), as the adapter's BN hooks recorded it.
        :param scores: float (B,) the batch's OOD scores.
        :param images: the batch itself, float (B, C, H, W) in teacher input
            units; its OOD-like images of the batches the warm-up estimates
            from go to the trap memory (if configured; ignored otherwise).
        """
        if self.bn_prior is None:
            return
        self._bn_observed = True
        if self.bn_prior.observing:
            _check_scores(scores)
            ood_like = ood_mask(scores.detach(), self.config.bn_prior.split)
            estimated = self.bn_prior.observe(inputs, ood_like)
            self._trapped_pending = self.config.bn_prior.drop_trapped and self.bn_prior.correcting
            if self.trap_memory is not None and images is not None and estimated:
                _check_images(images)
                if images.shape[0] != ood_like.shape[0]:
                    raise ValueError(f"images has batch {images.shape[0]}, scores {ood_like.shape[0]}")
                self.trap_memory.add(images[ood_like.to(images.device)])

    def take_trapped(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Which pooled images to drop at the verdict, once: the OOD-like side of the BN-prior split.

        With ``bn_prior.drop_trapped``, the first call after an NTL-like
        verdict returns bool (N,), True for the images synthesis produced in
        the OOD region (``config.bn_prior.split`` of their stored scores, cut
        over the whole pool's finite scores; images stored with a NaN score,
        unscored because they were synthesised after the verdict, are never
        trapped); every other call returns None. An adapter with
        an image pool calls it before each draw and drops the True images,
        so that what the pool replays after the correction was not
        synthesised against the mixed prior and scored OOD-like.

        :param scores: float (N,) the stored OOD scores of the pooled images.
        """
        if not self._trapped_pending:
            return None
        _check_scores(scores)
        self._trapped_pending = False
        scored = torch.isfinite(scores)
        trapped = torch.zeros_like(scores, dtype=torch.bool)
        if scored.any():
            trapped[scored] = ood_mask(scores.detach()[scored], self.config.bn_prior.split)
        logger.info("BN prior: dropping %d of %d pooled images as trapped (OOD-like, synthesised before the correction)", int(trapped.sum()), trapped.numel())
        return trapped

    def recall(self) -> torch.Tensor | None:
        """Trap-memory images for the next student batch to forget, or None.

        ``config.forget.recall`` images (float (N, C, H, W), teacher input
        units) once the BN prior has judged the teacher NTL-like; None before
        the verdict, for an ordinary teacher, and without a trap memory. Put
        them in the student's batch with KD weight 0 and in its forget set
        (the adapters' ``student_step`` does).
        """
        memory = self.trap_memory
        if memory is None or not len(memory) or self.bn_prior is None or not self.bn_prior.correcting:
            return None
        return memory.recall(self.config.forget.recall)

    def state_dict(self) -> dict[str, Any]:
        """The guard's run state (the BN prior's estimate, the trap memory), plain tensors and data."""
        return {
            "bn_observed": self._bn_observed,
            "trapped_pending": self._trapped_pending,
            "bn_prior": self.bn_prior.state_dict() if self.bn_prior is not None else None,
            "trap_memory": self.trap_memory.state_dict() if self.trap_memory is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if (state["bn_prior"] is None) != (self.bn_prior is None):
            raise ValueError("guard state was saved with a different bn_prior setting")
        if (state["trap_memory"] is None) != (self.trap_memory is None):
            raise ValueError("guard state was saved with a different forget.memory setting")
        self._bn_observed = bool(state["bn_observed"])
        self._trapped_pending = bool(state["trapped_pending"])
        if self.bn_prior is not None:
            self.bn_prior.load_state_dict(state["bn_prior"])
        if self.trap_memory is not None:
            self.trap_memory.load_state_dict(state["trap_memory"])

    # -- losses ------------------------------------------------------------

    def student_loss(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: SampleWeights | None = None
    ) -> torch.Tensor:
        """Weighted KD over kept samples plus lambda times the forgetting term.

        :param student_logits: float (B, K), with grad to the student.
        :param teacher_logits: float (B, K); detached here.
        :param weights: from :meth:`sample_weights`; None keeps every sample.
        :returns: scalar tensor with grad to the student only.
        """
        _check_logits(student_logits, None, "student_logits")
        batch = student_logits.shape[0]
        _check_logits(teacher_logits, batch, "teacher_logits")
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} differ"
            )
        if weights is None or not self.enabled:
            weights = SampleWeights.keep_all(batch, student_logits.device)
        elif (problem := weights.problems(batch)) is not None:
            raise ValueError(f"weights do not fit the batch: {problem}")
        forget = self.config.forget
        return student_loss(
            student_logits,
            teacher_logits.detach(),
            weights,
            temperature=self.config.kd_temperature,
            forget_kind=forget.kind,
            forget_weight=forget.weight,
        )

    def generator_penalty(self, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum of the configured generator penalties.

        :param images: float (B, C, H, W) in teacher input units, with grad to
            the generator or pixels being optimised.
        :param logits: the teacher's (B, K) logits on ``images`` keeping grad
            to ``images`` (the adapter's own forward); computed if None.
        :returns: scalar tensor (zero when no penalty is configured or the
            guard is disabled); grad flows to ``images`` only, never to the teacher.
        """
        _check_images(images)
        zero = images.new_zeros(())
        if not self.enabled or not self.resolved.penalties:
            return zero
        total = zero
        with quiet_teacher(self.teacher), torch.enable_grad():
            if logits is None:
                logits = self.teacher(images)
            _check_logits(logits, images.shape[0])
            for choice in self.resolved.penalties:
                value = self.registry.call_component(
                    "penalty",
                    choice.name,
                    params=choice.params,
                    images=images,
                    logits=logits,
                    teacher=self.teacher,
                    normalization=self.config.normalization,
                )
                plugin = self.registry.provider("penalty", choice.name)
                if not isinstance(value, torch.Tensor) or value.ndim != 0:
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise PluginError(plugin, "dfkd_guard_generator_penalty", f"returned {got}, wanted a scalar tensor")
                if not torch.isfinite(value):
                    raise PluginError(plugin, "dfkd_guard_generator_penalty", "returned NaN or Inf")
                total = total + choice.weight * value
        return total

    # -- observability -----------------------------------------------------

    def step_finished(self, step: int, metrics: Mapping[str, float]) -> None:
        """Tell observer plugins an adapter iteration finished."""
        self.registry.notify("dfkd_guard_step_finished", step=step, metrics=dict(metrics))


def _params(params: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.model_dump().items())

