"""The :class:`Guard`: the one object a DFKD loop holds.

A guard is bound to one teacher and owns everything it does to a DFKD loop.
Synthesis side::

    t_out = teacher(x)                                   # the guard records its BN-layer inputs
    loss_g = ce(t_out) + bn_weight * guard.bn_loss() + adv + guard.generator_penalty(x, t_out)

Student side, one call per batch::

    with torch.no_grad():
        t_out = teacher(x)
    batch = guard.student_batch(x, t_out)                # score, observe, calibrate, weigh, recall
    s_out = student(batch.images)
    loss_s = batch.student_loss(s_out)                   # or batch.student_loss(s_out, your_per_sample_loss)

:meth:`Guard.bn_loss` matches the teacher's BN statistics against the
guard's targets: the running statistics until the BN prior
(:mod:`dfkd_guard.bn_prior`) has judged the teacher NTL-like, its de-mixed
estimate after. :meth:`Guard.student_batch` feeds that prior (scores and
BN-layer inputs of the batch, reusing the teacher forward the loop made),
and returns the batch with KD weights, a forget mask and any trap-memory
images to forget (:mod:`dfkd_guard.trap_memory`). It is :meth:`observe`
followed by :meth:`weigh`, for loops that need them apart; they score
nothing and run no extra forward when no decision depends on scores any more
(disabled, judged ordinary, or a phase where the weighting ignores them).

Images passed to a guard are in the teacher's input units (already normalised
the way the teacher was trained); ``config.normalization`` tells the guard how
those units relate to [0, 1] pixels, the unit of every perturbation budget.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from dfkd_guard.bn_prior import BNPrior
from dfkd_guard.bn_statistics import BNRecorder, batchnorm_layers, bn_matching_loss
from dfkd_guard.components import ComponentKind
from dfkd_guard.config import GuardConfig
from dfkd_guard.errors import PluginError
from dfkd_guard.guarded_batch import GuardedBatch
from dfkd_guard.inputs import check_images, check_logits, check_scores, check_usable, teacher_logits
from dfkd_guard.plugins import PluginRegistry
from dfkd_guard.processes import Processes
from dfkd_guard.sample_weights import SampleWeights
from dfkd_guard.teacher_twin import TeacherTwin
from dfkd_guard.trap_memory import TrapMemory
from dfkd_guard.trigger_window import TriggerWindow, TriggerWindowSearch
from dfkd_guard.weightings import ood_mask

__all__ = ["Guard"]

logger = logging.getLogger("dfkd_guard")


class Guard:
    """The guard of one teacher: BN targets and loss, scores, sample weights, penalties.

    :param config: a :class:`GuardConfig`, a mapping, or a path to a
        ``.json`` / ``.toml`` file; None = the defaults.
    :param teacher: the teacher network, in eval mode while the loop runs.
        The guard never changes its weights, grad flags or train/eval mode;
        it registers forward hooks on its BatchNorm layers (and a forward
        pre-hook on the teacher) to record their inputs, removed by
        :meth:`close`, at the end of a ``with`` block, or when the guard is
        garbage-collected.
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
        self._twin = TeacherTwin(teacher)
        self.registry = PluginRegistry(plugins, load_entrypoints=load_entrypoints)
        self.resolved = config.resolve(self.registry.component_map())
        layers = batchnorm_layers(teacher)
        self._recorder: BNRecorder | None = BNRecorder(teacher, layers) if layers else None
        if self._recorder is not None:  # a guard dropped without close() leaves no hooks behind
            weakref.finalize(self, self._recorder.remove)
        #: BN-prior estimate and corrected targets; None when disabled or the teacher has no BatchNorm.
        self.bn_prior: BNPrior | None = (
            BNPrior(config.bn_prior, layers) if config.enabled and config.bn_prior.demix and layers else None
        )
        #: OOD-like warm-up images to forget after an NTL-like verdict; None without ``forget.memory``.
        self.trap_memory: TrapMemory | None = (
            TrapMemory(config.forget.memory) if self.bn_prior is not None and config.forget.memory else None
        )
        #: the patch-trigger search and relabelling; None when disabled.
        self.trigger_search: TriggerWindowSearch | None = (
            TriggerWindowSearch(config.trigger_window, config.normalization)
            if config.enabled and config.trigger_window.enabled
            else None
        )
        if (
            config.enabled
            and not layers
            and self.resolved.weighting.name == "none"
            and not self.resolved.penalties
        ):
            logger.warning(
                "dfkd_guard: the teacher (%s) has no BatchNorm layer with running statistics, so there is no BN "
                "prior to judge or correct it, and with weighting 'none' and no generator penalty this guard "
                "changes nothing against the OOD trap (it only searches for a patch trigger); to filter by OOD "
                "scores, configure a weighting (e.g. weighting.name = 'split')",
                type(teacher).__name__,
            )
        if config.enabled and config.normalization.is_identity:
            logger.info(
                "dfkd_guard: normalization is the identity, so the guard takes the teacher's inputs as [0, 1] "
                "pixels; if the teacher was trained on normalised images, give GuardConfig(normalization=...) "
                "its mean and std, or perturbation budgets (eps) will not be in pixel units"
            )

    def __repr__(self) -> str:
        c = self.resolved
        penalties = ", ".join(f"{p.name}*{p.weight:g}" for p in c.penalties) or "none"
        memory = self.trap_memory
        return (
            f"Guard(enabled={self.config.enabled}, scorer={c.scorer.name}({_params(c.scorer.params)}), "
            f"weighting={c.weighting.name}({_params(c.weighting.params)}), penalties=[{penalties}], "
            f"forget={self.config.forget.kind}*{self.config.forget.weight:g}"
            f"{f' (trap memory {len(memory)}/{memory.capacity})' if memory is not None else ''}, "
            f"tau={self.config.kd_temperature:g}, normalization={self.config.normalization!r}, "
            f"bn_prior={self.bn_prior.verdict if self.bn_prior is not None else 'off'}, "
            f"trigger_window={self._trigger_state()})"
        )

    def __enter__(self) -> Guard:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the guard's hooks from the teacher: it can still score, but BN matching and observing then raise."""
        if self._recorder is not None:
            self._recorder.remove()

    @property
    def enabled(self) -> bool:
        """False when the config turns the guard off: every sample kept, no penalty, running BN targets."""
        return self.config.enabled

    @property
    def trigger(self) -> TriggerWindow | None:
        """The patch-trigger window the guard found on synthetic images (student batches are labelled without it), or None."""
        return self.trigger_search.found if self.trigger_search is not None else None

    @property
    def intervened(self) -> bool:
        """Whether the guard has changed, or from now on changes, anything a disabled guard would return.

        True once the BN prior judged the teacher NTL-like (corrected BN
        targets, weights, recall), once a trigger was found (relabelled
        batches), with a generator penalty configured, with a weighting but no
        BN prior to gate it, or when a subclass supplies its own BN targets.
        False means every call so far returned what it returns with
        ``enabled=False``: the loop trained as an unguarded one.
        """
        if not self.enabled:
            return False
        prior = self.bn_prior
        return (
            (prior is not None and prior.correcting)
            or self.trigger is not None
            or bool(self.resolved.penalties)
            or (prior is None and self.resolved.weighting.name != "none")
            or type(self).bn_targets is not Guard.bn_targets
        )

    @property
    def scores_needed(self) -> bool:
        """Whether scoring a batch can still change anything.

        True while the BN prior is warming up, and afterwards only if the
        weighting reads scores and the teacher was judged NTL-like (or there
        is no BN prior to judge it). False when the guard is off.
        """
        if not self.enabled:
            return False
        prior = self.bn_prior
        if prior is not None and prior.observing:
            return True
        if self.resolved.weighting.name == "none":
            return False
        return prior is None or prior.correcting

    # -- teacher side: BN statistics and penalties ---------------------------

    def bn_targets(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per BN layer of the teacher (module order), the ``(mean, var)`` synthesis should match, each (C,).

        The running statistics, or the de-mixed ID moments once the BN prior
        judged the teacher NTL-like. Override in a subclass to supply targets
        of your own (e.g. moments measured on real data).
        """
        recorder = self._require_bn(recording=False)
        prior = self.bn_prior
        if prior is None:
            return [(layer.running_mean, layer.running_var) for layer in recorder.layers]  # type: ignore[misc]
        return [prior.target(i, layer) for i, layer in enumerate(recorder.layers)]

    def bn_inputs(self) -> list[torch.Tensor]:
        """Per BN layer, its input in the teacher's last forward, float (B, C, ...), with grad if that forward had it.

        :raises RuntimeError: no forward recorded yet.
        """
        return self._require_bn().recorded()

    def bn_loss(self, processes: Processes | None = None) -> torch.Tensor:
        """BN-statistics matching loss of the teacher's last forward against :meth:`bn_targets`.

        ``sum_l ||mu_l - mean_l||_2 + ||var_l - var_l*||_2`` over the teacher's
        BN layers (:func:`dfkd_guard.bn_statistics.bn_matching_loss`): the
        DeepInversion / DFQ / CMI BN term, with the guard's targets.

        :param processes: under sharded synthesis, the processes whose forwards
            together make the batch (``mu_l``, ``var_l`` of all their rows).

        :returns: scalar tensor with grad to the images of that forward.
        :raises ValueError: the teacher has no BatchNorm layer or is in train mode.
        :raises RuntimeError: no forward recorded yet.
        """
        recorder = self._require_bn()
        self._require_eval()
        return bn_matching_loss(recorder.recorded(), self.bn_targets(), processes)

    def generator_penalty(self, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum of the configured generator penalties.

        :param images: float (B, C, H, W) in teacher input units, with grad to
            the generator or pixels being optimised.
        :param logits: the teacher's (B, K) logits on ``images`` keeping grad
            to ``images`` (the loop's own forward); computed if None.
        :returns: scalar tensor (zero when no penalty is configured or the
            guard is disabled); grad flows to ``images`` only, never to the teacher.
        """
        check_images(images)
        total = images.new_zeros(())
        if not self.enabled or not self.resolved.penalties:
            return total
        self._check_usable(images)
        with self._own_forwards() as teacher, torch.enable_grad():
            images = self._as_teacher_input(images)  # differentiable: grad still reaches the generator
            if logits is None:
                logits = teacher_logits(teacher, images)
            check_logits(logits, images.shape[0], "logits", finite=True)
            logits = logits.float()
            for choice in self.resolved.penalties:
                value = self._call_on_teacher(teacher, "penalty", choice.name, choice.params, images, logits)
                plugin = self.registry.provider("penalty", choice.name)
                if not isinstance(value, torch.Tensor) or value.ndim != 0:
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise PluginError(
                        plugin, f"penalty {choice.name!r}", f"returned {got}, wanted a scalar tensor"
                    )
                if not torch.isfinite(value):
                    raise PluginError(plugin, f"penalty {choice.name!r}", "returned NaN or Inf")
                total = total + choice.weight * value
        return total

    # -- student side ----------------------------------------------------------

    def student_batch(
        self, images: torch.Tensor, teacher_logits: torch.Tensor, scores: torch.Tensor | None = None
    ) -> GuardedBatch:
        """Everything the guard decides about one student batch: :meth:`observe`, then :meth:`weigh`.

        Run the teacher on ``images`` just before (its forward records the BN
        inputs the prior needs; with another tensor the guard runs one more
        forward itself).

        :param images: float (B, C, H, W) in teacher input units.
        :param teacher_logits: float (B, K), the teacher's logits on ``images``.
        :param scores: float (B,) OOD scores stored with the images (pooled
            replay), NaN where unscored; None: scored here if needed.
        :returns: a :class:`GuardedBatch`; run the student on its ``images``.
        """
        self._check_batch(images, teacher_logits)
        scores = self._complete(images, teacher_logits, scores)
        self._observe(images, scores)
        return self._weigh(images.detach(), teacher_logits.detach(), scores)

    def score(
        self, images: torch.Tensor, logits: torch.Tensor | None = None, *, if_needed: bool = False
    ) -> torch.Tensor:
        """OOD scores of a batch with the configured scorer (NaN, and nothing run, when the guard is off).

        :meth:`student_batch` scores only when a decision needs scores
        (:attr:`scores_needed`); ``if_needed=True`` does the same here, e.g.
        for the scores a loop stores with pooled images.

        :param images: float (B, C, H, W), finite, in teacher input units.
        :param logits: the teacher's (B, K) logits on ``images`` if the caller
            already has them (saves a forward pass); detached here.
        :param if_needed: return NaN, running nothing, unless :attr:`scores_needed`.
        :returns: float (B,) on ``images.device``, higher = more OOD-like, no grad.
        :raises ValueError: ``images`` or ``logits`` do not fit.
        :raises PluginError: the scorer raised or returned a wrong shape / NaN.
        """
        check_images(images)
        if not (self.scores_needed if if_needed else self.enabled):
            return images.new_full((images.shape[0],), math.nan, dtype=torch.float32)
        self._check_usable(images)
        if logits is not None:
            check_logits(logits, images.shape[0], "logits", finite=True)
        return self._score(images, logits)

    def _score(self, images: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        """Run the scorer on checked images (and logits, if given)."""
        batch = images.shape[0]
        images = self._as_teacher_input(images.detach())
        with self._own_forwards() as teacher:
            if logits is None:
                with torch.no_grad():
                    logits = teacher_logits(teacher, images)
            logits = logits.detach().float()
            with torch.enable_grad():
                scores = self._call_on_teacher(
                    teacher, "scorer", self.resolved.scorer.name, self.resolved.scorer.params, images, logits
                )
        scores = self._checked_scores(scores, batch)
        self.registry.notify(
            "dfkd_guard_batch_scored", scorer=self.resolved.scorer.name, scores=scores, logits=logits
        )
        return scores

    def observe(
        self, images: torch.Tensor, teacher_logits: torch.Tensor, scores: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Feed one synthetic batch to the BN prior's warm-up (and the trap memory); return its scores.

        Scores the images where needed (``scores`` None, or NaN entries), then,
        while the prior is warming up, adds the batch's BN-layer inputs, split
        into ID-like and OOD-like by ``config.bn_prior.split``. A no-op
        besides scoring once the warm-up is over.

        :param images: float (B, C, H, W) in teacher input units; the teacher's
            last forward should have been on this very tensor.
        :param teacher_logits: float (B, K), the teacher's logits on ``images``.
        :param scores: float (B,) stored OOD scores, or None.
        :returns: float (B,) scores, NaN where none was needed.
        :raises ValueError: a shape does not fit, or the teacher is in train mode.
        """
        self._check_batch(images, teacher_logits)
        scores = self._complete(images, teacher_logits, scores)
        self._observe(images, scores)
        return scores

    def weigh(
        self, images: torch.Tensor, teacher_logits: torch.Tensor, scores: torch.Tensor | None = None
    ) -> GuardedBatch:
        """KD weights, forget mask and recalled trap-memory images for a batch, without observing it.

        Calibrated: every sample is kept until the BN prior has judged the
        teacher NTL-like, and always for an ordinary teacher; then (or with no
        BN prior) the configured weighting decides.

        :param images: float (B, C, H, W) in teacher input units.
        :param teacher_logits: float (B, K).
        :param scores: float (B,) OOD scores (from :meth:`observe` or stored), or None.
        :raises PluginError: the weighting raised or broke the contract.
        """
        self._check_batch(images, teacher_logits)
        images, teacher_logits = images.detach(), teacher_logits.detach()
        return self._weigh(images, teacher_logits, self._complete(images, teacher_logits, scores))

    # -- run state -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The guard's run state (the BN prior's estimate, the trap memory), plain tensors and data."""
        return {
            "bn_prior": self.bn_prior.state_dict() if self.bn_prior is not None else None,
            "trap_memory": self.trap_memory.state_dict() if self.trap_memory is not None else None,
            "trigger_window": self.trigger_search.state_dict() if self.trigger_search is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if (state["bn_prior"] is None) != (self.bn_prior is None):
            raise ValueError("guard state was saved with a different bn_prior setting")
        if (state["trap_memory"] is None) != (self.trap_memory is None):
            raise ValueError("guard state was saved with a different forget.memory setting")
        if (state.get("trigger_window") is None) != (self.trigger_search is None):
            raise ValueError("guard state was saved with a different trigger_window setting")
        if self.bn_prior is not None:
            self.bn_prior.load_state_dict(state["bn_prior"])
        if self.trigger_search is not None:
            self.trigger_search.load_state_dict(state["trigger_window"])
        if self.trap_memory is not None:
            self.trap_memory.load_state_dict(state["trap_memory"])

    def step_finished(self, step: int, metrics: Mapping[str, float]) -> None:
        """Tell observer plugins a DFKD iteration finished."""
        self.registry.notify("dfkd_guard_step_finished", step=step, metrics=dict(metrics))

    # -- internals ---------------------------------------------------------------

    @contextmanager
    def _own_forwards(self) -> Iterator[nn.Module]:
        """The module the guard's own forwards run (the teacher's hook-free twin), outside the loop's autocast."""
        with ExitStack() as stack:
            teacher = stack.enter_context(self._twin.running())
            weight = next(teacher.parameters(), None)
            if weight is not None and weight.device.type in ("cpu", "cuda"):  # float32 scores and penalties
                stack.enter_context(torch.autocast(weight.device.type, enabled=False))
            yield teacher

    def _as_teacher_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the dtype of the teacher's weights: the guard's forwards run outside autocast."""
        weight = next(self.teacher.parameters(), None)
        return images if weight is None or images.dtype == weight.dtype else images.to(weight.dtype)

    def _check_usable(self, images: torch.Tensor) -> None:
        check_usable(images, self.teacher, self.config.normalization)

    def _call_on_teacher(
        self,
        teacher: nn.Module,
        kind: ComponentKind,
        name: str,
        params: Any,
        images: torch.Tensor,
        logits: torch.Tensor,
    ) -> Any:
        """Call a scorer or penalty on ``teacher`` (the twin); if it fails, first rule out a teacher that does not return logits."""
        try:
            return self.registry.call_component(
                kind,
                name,
                params=params,
                images=images,
                logits=logits,
                teacher=teacher,
                normalization=self.config.normalization,
            )
        except PluginError:
            with torch.no_grad():  # the caller's teacher, not the plugin, when it returns a tuple
                teacher_logits(teacher, images[:1].detach(), "images[:1]")
            raise

    def _check_batch(self, images: torch.Tensor, logits: torch.Tensor) -> None:
        """A student batch's images and teacher logits, checked in full only when the guard uses them."""
        check_images(images)
        check_logits(logits, images.shape[0], finite=self.enabled)
        if self.enabled:
            self._check_usable(images)

    def _require_bn(self, recording: bool = True) -> BNRecorder:
        """The recorder; a clear error without BN layers, or (``recording``) once the guard is closed."""
        if self._recorder is None:
            raise ValueError(
                f"the teacher ({type(self.teacher).__name__}) has no BatchNorm layer with running statistics: "
                "there are no BN statistics to match (drop the BN term from the synthesis loss)"
            )
        if recording and self._recorder.removed:
            raise RuntimeError(
                "the guard is closed: its hooks are off the teacher, so it records no BN inputs "
                "(build a new Guard to go on)"
            )
        return self._recorder

    def _require_eval(self) -> None:
        recorder = self._recorder
        if self.teacher.training or (
            recorder is not None and any(layer.training for layer in recorder.layers)
        ):
            raise ValueError(
                "the teacher is in train mode: every forward moves its BatchNorm running statistics, "
                "the prior the guard corrects; call teacher.eval() before the DFKD loop"
            )

    def _inputs_of(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The BN-layer inputs of ``images``: the recorded ones, or those of a forward of the twin."""
        recorder = self._require_bn()
        if recorder.holds(images):
            return recorder.recorded()
        with self._own_forwards() as teacher, torch.no_grad():
            probe = BNRecorder(teacher, batchnorm_layers(teacher))
            try:
                teacher_logits(teacher, self._as_teacher_input(images))
                return probe.recorded()
            finally:
                probe.remove()

    def _observe(self, images: torch.Tensor, scores: torch.Tensor) -> None:
        """Add a checked batch and its completed scores to the BN prior's warm-up (and the trap memory), and
        its first rows to the trigger search."""
        search = self.trigger_search
        if search is not None and search.collecting:
            with self._own_forwards() as teacher:
                search.collect(self._as_teacher_input(images.detach()), teacher)
        prior = self.bn_prior
        if prior is not None and prior.observing:
            self._require_eval()
            ood_like = ood_mask(scores, self.config.bn_prior.split)
            if prior.observe(self._inputs_of(images), ood_like) and self.trap_memory is not None:
                self.trap_memory.add(images[ood_like.to(images.device)])

    def _weigh(self, images: torch.Tensor, logits: torch.Tensor, scores: torch.Tensor) -> GuardedBatch:
        """The calibrated weights of a checked, detached batch with completed scores, recall appended."""
        prior = self.bn_prior
        if not self.enabled or (prior is not None and not prior.correcting):
            weights = SampleWeights.keep_all(images.shape[0], images.device)
        else:
            weights = self._weighting(scores, logits)
        if self.enabled:
            self.registry.notify(
                "dfkd_guard_batch_weighted",
                weighting=self.resolved.weighting.name,
                scores=scores,
                weights=weights,
            )
        return self._batch(images, logits, scores, weights)

    def _complete(
        self, images: torch.Tensor, logits: torch.Tensor, scores: torch.Tensor | None
    ) -> torch.Tensor:
        """``scores`` with every entry the guard needs filled in (NaN elsewhere); no scorer runs when none is needed."""
        if scores is not None:
            check_scores(scores, images.shape[0])
        if not self.scores_needed:
            return (
                scores
                if scores is not None
                else images.new_full((images.shape[0],), math.nan, dtype=torch.float32)
            )
        if scores is None:
            return self._score(images, logits)
        missing = torch.isnan(scores)
        if missing.all():
            return self._score(images, logits)
        if missing.any():
            scores = scores.clone()
            scores[missing] = self._score(images[missing], logits[missing]).to(scores)
        return scores

    def _weighting(self, scores: torch.Tensor, logits: torch.Tensor) -> SampleWeights:
        name = self.resolved.weighting.name
        weights = self.registry.call_component(
            "weighting", name, params=self.resolved.weighting.params, scores=scores.detach(), logits=logits
        )
        plugin = self.registry.provider("weighting", name)
        if not isinstance(weights, SampleWeights):
            raise PluginError(
                plugin, f"weighting {name!r}", f"returned {type(weights).__name__}, not SampleWeights"
            )
        problem = weights.problems(scores.shape[0])
        if problem:
            raise PluginError(plugin, f"weighting {name!r}", problem)
        return weights

    def _batch(
        self, images: torch.Tensor, logits: torch.Tensor, scores: torch.Tensor, weights: SampleWeights
    ) -> GuardedBatch:
        if self.trigger_search is not None and self.trigger_search.found is not None:
            with self._own_forwards() as teacher:
                logits = self.trigger_search.relabel(self._as_teacher_input(images), logits, teacher).to(
                    logits
                )
        recalled = self._recall()
        if recalled is not None:
            count = recalled.shape[0]
            images = torch.cat([images, recalled.to(images)])
            logits = torch.cat([logits, logits.new_zeros((count, logits.shape[1]))])
            weights = SampleWeights(
                torch.cat([weights.kd, weights.kd.new_zeros(count)]),
                torch.cat([weights.forget, weights.forget.new_ones(count)]),
            )
        forget = self.config.forget
        return GuardedBatch(
            images,
            logits,
            scores,
            weights,
            temperature=self.config.kd_temperature,
            forget_kind=forget.kind if self.enabled else "none",
            forget_weight=forget.weight,
        )

    def _recall(self) -> torch.Tensor | None:
        memory, prior = self.trap_memory, self.bn_prior
        if memory is None or not len(memory) or prior is None or not prior.correcting:
            return None
        return memory.recall(self.config.forget.recall)

    def _checked_scores(self, scores: Any, batch: int) -> torch.Tensor:
        plugin = self.registry.provider("scorer", self.resolved.scorer.name)
        where = f"scorer {self.resolved.scorer.name!r}"
        if not isinstance(scores, torch.Tensor):
            raise PluginError(
                plugin, where, f"returned {type(scores).__name__}, wanted a float tensor ({batch},)"
            )
        if tuple(scores.shape) != (batch,):
            raise PluginError(plugin, where, f"returned shape {tuple(scores.shape)}, wanted ({batch},)")
        if not scores.is_floating_point():
            raise PluginError(plugin, where, f"returned {scores.dtype} scores, wanted a float tensor")
        if not torch.isfinite(scores).all():
            raise PluginError(plugin, where, "returned NaN or Inf scores")
        return scores.detach().float()

    def _trigger_state(self) -> str:
        search = self.trigger_search
        if search is None:
            return "off"
        if search.collecting:
            return "collecting"
        found = search.found
        if found is None:
            return "none found"
        top, left, bottom, right = found.mask
        return f"class {found.label}, rows {top}:{bottom}, columns {left}:{right} blacked out"


def _params(params: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.model_dump().items())
