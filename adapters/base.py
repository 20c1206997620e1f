"""What every adapter shares: typed results, the synthesizer interface, the student step.

An adapter is a :class:`Synthesizer` (one per DFKD method) with two methods,
as in the CMI / Fast-DFKD ``datafree`` package:

* :meth:`Synthesizer.synthesize` runs the method's synthesis (generator or
  pixel optimisation) and returns a :class:`SynthesisResult`;
* :meth:`Synthesizer.sample` returns the next :class:`StudentBatch`: images,
  the teacher's logits, their OOD scores and the guard's KD weights.

The guard's three hooks are called at fixed points: the generator penalty is
added to the synthesis loss before ``backward()``, each synthesised batch is
scored once, and :func:`student_step` weights the KD loss and adds the
forgetting term. A disabled guard (``GuardConfig(enabled=False)``) turns every
adapter into its unguarded method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dfkd_guard import Guard, SampleWeights
from dfkd_guard.adapters.bn_statistics import BatchNormStatistics
from dfkd_guard.adapters.pool import ImagePool

__all__ = ["SynthesisResult", "StudentBatch", "Synthesizer", "student_step"]


@dataclass(frozen=True)
class SynthesisResult:
    """What one call of :meth:`Synthesizer.synthesize` produced.

    :param images: float (B, C, H, W) in teacher input units, detached: the
        batch the round produced (the pooled one for pooled adapters; empty
        (0, C, H, W) when every step was skipped).
    :param losses: value of each synthesis loss term at the last step, by name.
    :param skipped: synthesis steps skipped because of NaN/Inf losses or images.
    """

    images: torch.Tensor
    losses: dict[str, float] = field(default_factory=dict)
    skipped: int = 0


@dataclass(frozen=True)
class StudentBatch:
    """A batch for one student step.

    :param images: float (B, C, H, W), teacher input units, detached.
    :param teacher_logits: float (B, K), detached.
    :param scores: float (B,) OOD scores, higher = more OOD-like; NaN when the guard is off.
    :param weights: KD weights and forget mask from the guard.
    """

    images: torch.Tensor
    teacher_logits: torch.Tensor
    scores: torch.Tensor
    weights: SampleWeights


class Synthesizer(ABC):
    """Base of the adapters: holds the teacher, student and guard, checks they fit.

    Random draws (latent codes, noise, augmentations) are made with the CPU
    generator and moved to ``device``, so a checkpoint's CPU RNG state resumes
    a run exactly on any device.

    :param teacher: the teacher; put in eval mode and its parameters frozen
        until :meth:`close`, which restores their ``requires_grad`` flags.
    :param student: the student being trained.
    :param guard: the guard bound to ``teacher``.
    :param image_shape: (C, H, W) of the images the teacher takes.
    :param device: where synthesis runs.
    :raises ValueError: the guard is bound to another teacher, or teacher and
        student disagree on the number of classes for ``image_shape`` inputs.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        guard: Guard,
        image_shape: tuple[int, int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        if guard.teacher is not teacher:
            raise ValueError("the guard is bound to a different teacher than the one given to the adapter")
        self.teacher = teacher.eval()
        self._teacher_grad_flags = [p.requires_grad for p in teacher.parameters()]
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.student = student
        self.guard = guard
        self.image_shape = tuple(image_shape)
        self.device = torch.device(device)
        self.num_classes = self._check_models()
        self.skipped = 0
        #: The latest :meth:`synthesize` result, recorded by the training driver.
        self.last_synthesis: SynthesisResult | None = None
        #: BN-statistics hooks of adapters that match the teacher's BN prior (targets from the guard).
        self.bn_statistics: BatchNormStatistics | None = None

    def _check_models(self) -> int:
        probe = torch.zeros(2, *self.image_shape, device=self.device)
        was_training = self.student.training
        with torch.no_grad():
            t_out = self.teacher(probe)
            self.student.eval()
            s_out = self.student(probe)
        self.student.train(was_training)
        if t_out.ndim != 2 or s_out.ndim != 2:
            raise ValueError(f"teacher and student must return logits (B, K); got {tuple(t_out.shape)} and {tuple(s_out.shape)}")
        if t_out.shape[1] != s_out.shape[1]:
            raise ValueError(
                f"the student predicts {s_out.shape[1]} classes but the teacher {t_out.shape[1]}; they must agree"
            )
        return int(t_out.shape[1])

    def __repr__(self) -> str:
        """The adapter's class, hyper-parameters (its ``config``) and guard."""
        return f"{type(self).__name__}({getattr(self, 'config', None)!r}, guard={self.guard!r})"

    def check_images(self, images: torch.Tensor, source: str) -> None:
        """Raise a clear error when synthesised images do not fit the teacher."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{source} produced images of shape {tuple(images.shape[1:])}, but the teacher takes {self.image_shape}"
            )

    def student_batch(self, images: torch.Tensor, scores: torch.Tensor | None = None) -> StudentBatch:
        """Teacher logits, scores (computed unless given) and weights for ``images``."""
        images = images.detach()
        logits, scores = self.teacher_view(images, scores)
        return StudentBatch(images, logits, scores, self.guard.sample_weights(scores, logits))

    def teacher_view(self, images: torch.Tensor, scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher logits (B, K) and scores (B,) of detached ``images`` (scores computed unless given).

        The teacher forward fires the BN hooks; their inputs go to the guard's
        BN prior with the scores (:meth:`Guard.observe_bn`).
        """
        with torch.no_grad():
            logits = self.teacher(images)
        if scores is None:
            scores = self.score(images, logits)
        if self.bn_statistics is not None and self.guard.enabled:
            self.guard.observe_bn(self.bn_statistics.recorded_inputs(), scores, images)
        return logits, scores

    def drop_trapped(self, pool: ImagePool) -> None:
        """Drop the pool's trapped images, once after an NTL-like verdict (:meth:`Guard.take_trapped`).

        Adapters with a pool call it before every draw; a no-op unless
        ``bn_prior.drop_trapped`` is on and the verdict has just come.
        """
        if len(pool) and pool.scores is not None:
            trapped = self.guard.take_trapped(pool.scores)
            if trapped is not None:
                pool.keep(~trapped)

    def score(self, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """OOD scores of a batch, or NaN for every sample when the guard is off or needs no scores."""
        if not self.guard.scores_needed:
            return torch.full((images.shape[0],), float("nan"), device=images.device)
        return self.guard.score(images, logits)

    @abstractmethod
    def synthesize(self) -> SynthesisResult:
        """Run the method's synthesis for one round."""

    @abstractmethod
    def sample(self) -> StudentBatch:
        """The next batch for a student step."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume synthesis exactly (plain tensors and data)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def close(self) -> None:
        """Remove the adapter's hooks from the teacher and unfreeze its parameters as they were.

        Subclasses that register hooks extend this and call ``super().close()``.
        """
        for p, flag in zip(self.teacher.parameters(), self._teacher_grad_flags):
            p.requires_grad_(flag)


def student_step(
    student: nn.Module, optimizer: torch.optim.Optimizer, batch: StudentBatch, guard: Guard
) -> dict[str, float]:
    """One optimiser step of the student on a guarded batch.

    Images the guard recalls from its trap memory (:meth:`Guard.recall`)
    join the batch with KD weight 0, in its forget set; their teacher logits
    are zeros, which the KD weight 0 keeps out of the loss.

    :returns: ``loss/student``, ``guard/kept`` (mean KD weight) and
        ``guard/forgotten`` (share of the forget set), over the batch with
        the recalled images.
    """
    images, logits, weights = batch.images, batch.teacher_logits, batch.weights
    recalled = guard.recall()
    if recalled is not None:
        count = recalled.shape[0]
        images = torch.cat([images, recalled.to(images)])
        logits = torch.cat([logits, logits.new_zeros((count, logits.shape[1]))])
        weights = SampleWeights(
            torch.cat([weights.kd, weights.kd.new_zeros(count)]),
            torch.cat([weights.forget, weights.forget.new_ones(count)]),
        )
    student.train()
    optimizer.zero_grad(set_to_none=True)
    loss = guard.student_loss(student(images), logits, weights)
    loss.backward()
    optimizer.step()
    return {
        "loss/student": float(loss.detach()),
        "guard/kept": weights.kept_fraction,
        "guard/forgotten": weights.forgotten_fraction,
    }
