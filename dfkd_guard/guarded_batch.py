"""What the guard hands a student step: the batch to train on, its weights, and the loss that applies them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from dfkd_guard.losses import kd_divergence, weighted_loss
from dfkd_guard.sample_weights import SampleWeights

__all__ = ["GuardedBatch"]


@dataclass(frozen=True)
class GuardedBatch:
    """A student batch as the guard decided it (:meth:`dfkd_guard.Guard.student_batch`).

    ``images`` may be longer than the batch the caller passed: images the
    guard recalls from its trap memory are appended, with zero teacher logits,
    KD weight 0 and in the forget set. Run the student on ``images`` and
    compute the loss with :meth:`student_loss`.

    :param images: float (N, C, H, W), teacher input units, detached; the
        caller's B images first, then N - B recalled ones.
    :param teacher_logits: float (N, K), detached; zeros for recalled images.
    :param scores: float (B,) OOD scores of the caller's images, higher =
        more OOD-like; NaN where the guard needed no score.
    :param weights: KD weights (N,) in [0, 1] and forget mask (N,).
    :param temperature: the guard's KD temperature (for the KL convenience).
    :param forget_kind: the forgetting term, ``"uniform"`` or ``"none"``.
    :param forget_weight: lambda, the forgetting term's multiplier.
    """

    images: torch.Tensor
    teacher_logits: torch.Tensor
    scores: torch.Tensor
    weights: SampleWeights
    temperature: float = 1.0
    forget_kind: Literal["uniform", "none"] = "none"
    forget_weight: float = 1.0

    def student_loss(
        self, student_logits: torch.Tensor, per_sample: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The guarded student loss: weighted distillation plus the forgetting term.

        :param student_logits: float (N, K), the student on :attr:`images`, with grad.
        :param per_sample: float (N,) your own distillation criterion per
            sample (e.g. ``(s - t).abs().mean(1)`` for DFAD's L1, or a KL at
            your temperature, ``reduction="none"`` summed over classes);
            None: ``KL(T/tau || S/tau) * tau^2`` at the guard's ``kd_temperature``.
        :returns: scalar tensor with grad to the student.
        :raises ValueError: a shape does not match the batch.
        """
        rows = self.images.shape[0]
        if not isinstance(student_logits, torch.Tensor) or tuple(student_logits.shape) != tuple(
            self.teacher_logits.shape
        ):
            got = (
                tuple(student_logits.shape)
                if isinstance(student_logits, torch.Tensor)
                else type(student_logits).__name__
            )
            raise ValueError(
                f"student_logits must have shape {tuple(self.teacher_logits.shape)} (the batch's), got {got}"
            )
        if per_sample is None:
            per_sample = kd_divergence(student_logits, self.teacher_logits, self.temperature)
        elif not isinstance(per_sample, torch.Tensor) or tuple(per_sample.shape) != (rows,):
            got = (
                tuple(per_sample.shape) if isinstance(per_sample, torch.Tensor) else type(per_sample).__name__
            )
            raise ValueError(
                f"per_sample must be a float tensor ({rows},), one loss per image of the batch, got {got}"
            )
        return weighted_loss(
            per_sample,
            student_logits,
            self.weights,
            forget_kind=self.forget_kind,
            forget_weight=self.forget_weight,
        )

    def shard(self, rank: int, world: int) -> GuardedBatch:
        """Every ``world``-th sample from ``rank`` on: this process's part of a data-parallel student step.

        :param rank: this process, 0 <= rank < world.
        :param world: the number of processes sharing the batch.
        """
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
        part = slice(rank, None, world)
        return dataclasses.replace(
            self,
            images=self.images[part],
            teacher_logits=self.teacher_logits[part],
            scores=self.scores[part],
            weights=SampleWeights(self.weights.kd[part], self.weights.forget[part]),
        )

    @property
    def kept_fraction(self) -> float:
        """Mean KD weight over :attr:`images`: 1.0 when nothing is down-weighted."""
        return self.weights.kept_fraction

    @property
    def forgotten_fraction(self) -> float:
        """Share of :attr:`images` in the forget set."""
        return self.weights.forgotten_fraction
