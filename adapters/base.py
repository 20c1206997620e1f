"""What every adapter shares: typed results, the synthesizer interface, the student step.

An adapter is a :class:`Synthesizer` (one per DFKD method) with two methods,
as in the CMI / Fast-DFKD ``datafree`` package:

* :meth:`Synthesizer.synthesize` runs the method's synthesis (generator or
  pixel optimisation) and returns a :class:`SynthesisResult`;
* :meth:`Synthesizer.sample` returns the next student batch as the guard
  decided it (:class:`~dfkd_guard.GuardedBatch`).

Adapters use the guard exactly as a hand-written loop does, through its
public calls: :meth:`~dfkd_guard.Guard.bn_loss` and
:meth:`~dfkd_guard.Guard.generator_penalty` in the synthesis loss,
:meth:`~dfkd_guard.Guard.score` (``if_needed=True``) when an image is pooled, and
:meth:`~dfkd_guard.Guard.student_batch` for every student batch;
:func:`student_step` trains on it. A disabled guard
(``GuardConfig(enabled=False)``) turns every adapter into its unguarded method.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dfkd_guard import Guard, GuardedBatch
from dfkd_guard.bn_statistics import batchnorm_layers
from dfkd_guard.inputs import check_images, check_logits, teacher_logits
from dfkd_guard.processes import Processes

__all__ = ["LowestLoss", "SynthesisResult", "Synthesizer", "loss_terms", "student_step", "to_device"]


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


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU tensor on ``device``; to a GPU through pinned memory, so the host does not wait for the copy."""
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class LowestLoss:
    """The tensors of the step with the lowest loss so far, tracked on their device (no host sync per step)."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.tensors: tuple[torch.Tensor, ...] = ()

    def offer(self, loss: torch.Tensor, *tensors: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Keep ``tensors`` (detached copies) if ``loss`` (a finite scalar) is lower than every earlier one and ``valid``."""
        loss = loss.detach()
        if self.loss is None:
            self.loss = torch.full_like(loss, math.inf)
            self.tensors = tuple(t.detach().clone() for t in tensors)
        better = loss < self.loss if valid is None else (loss < self.loss) & valid
        self.tensors = tuple(torch.where(better, t.detach(), kept) for t, kept in zip(tensors, self.tensors))
        self.loss = torch.where(better, loss, self.loss)

    def best(self) -> tuple[float, tuple[torch.Tensor, ...]] | None:
        """The lowest loss and its tensors, or None when no offer was kept (one host sync)."""
        if self.loss is None or not bool(torch.isfinite(self.loss)):
            return None
        return float(self.loss), self.tensors


def loss_terms(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss terms as floats for the result (read once per round, after the steps: one host sync)."""
    if not parts:
        return {}
    values = torch.stack([v.detach().float() for v in parts.values()]).tolist()
    return dict(zip(parts, values))


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
    :param processes: the processes that share synthesis under ``torchrun``:
        each synthesises its rows of every batch and what a round produced is
        gathered (:class:`~dfkd_guard.Processes`); alone by default.
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
        *,
        processes: Processes | None = None,
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
        self.processes = processes or Processes()
        self.num_classes = self._check_models()
        self.skipped = 0
        #: The latest :meth:`synthesize` result, recorded by the training driver.
        self.last_synthesis: SynthesisResult | None = None

    def _check_models(self) -> int:
        probe = torch.zeros(2, *self.image_shape, device=self.device)
        was_training = self.student.training
        with torch.no_grad():
            t_out = teacher_logits(self.teacher, probe)
            self.student.eval()
            try:
                s_out = self.student(probe)
            finally:
                self.student.train(was_training)
        check_logits(
            s_out, 2, f"the student's ({type(self.student).__name__}) output on {self.image_shape} images"
        )
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
        check_images(images, f"the images {source} produced")
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{source} produced images of shape {tuple(images.shape[1:])}, but the teacher takes {self.image_shape}"
            )

    def probe_generator(self, generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """``generator(z)`` in eval mode without grad (its mode restored), checked to be images that fit the teacher.

        :param z: latent codes (B, latent_dim) on ``device``.
        :returns: float (B, C, H, W) pixels.
        """
        was_training = generator.training
        generator.eval()
        try:
            with torch.no_grad():
                pixels = generator(z)
        finally:
            generator.train(was_training)
        self.check_images(pixels, "the generator")
        return pixels

    def guarded_batch(self, images: torch.Tensor, scores: torch.Tensor | None = None) -> GuardedBatch:
        """The teacher's logits on ``images`` and the guard's decision on them (:meth:`Guard.student_batch`).

        :param images: float (B, C, H, W), teacher input units.
        :param scores: float (B,) scores stored with pooled images, or None.
        """
        images = images.detach()
        with torch.no_grad():
            logits = self.teacher(images)
        return self.guard.student_batch(images, logits, scores)

    def labelled(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits (B, K) and the guard's scores (B,) of ``images`` (NaN where no decision needs
        one, :meth:`Guard.score` ``if_needed``), each process computing its rows, gathered in rank order.

        :param images: float (B, C, H, W) in teacher input units, the same on every process.
        """
        own = self.processes.own(images)
        with torch.no_grad():
            logits = self.teacher(own)
        scores = self.guard.score(own, logits, if_needed=True)
        return self.processes.gather(logits), self.processes.gather(scores)

    def require_batchnorm(self, why: str) -> None:
        """Raise a ValueError naming the teacher when it has no BatchNorm layer with running statistics."""
        if not batchnorm_layers(self.teacher):
            raise ValueError(
                f"the teacher ({type(self.teacher).__name__}) has no BatchNorm layer with running statistics; {why}"
            )

    def trained_parts(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        """The adapter's own networks and optimisers (generator, heads), by attribute name."""
        return {
            name: value
            for name, value in sorted(vars(self).items())
            if not name.startswith("_")
            and name not in ("teacher", "student")
            and isinstance(value, (nn.Module, torch.optim.Optimizer))
        }

    @abstractmethod
    def synthesize(self) -> SynthesisResult:
        """Run the method's synthesis for one round."""

    @abstractmethod
    def sample(self) -> GuardedBatch:
        """The next batch for a student step."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume synthesis exactly (plain tensors and data)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def close(self) -> None:
        """Unfreeze the teacher's parameters as they were (the guard's own hooks stay until ``guard.close()``).

        Subclasses that register hooks extend this and call ``super().close()``.
        """
        for p, flag in zip(self.teacher.parameters(), self._teacher_grad_flags):
            p.requires_grad_(flag)


def student_step(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: GuardedBatch,
    processes: Processes | None = None,
) -> dict[str, float]:
    """One optimiser step of the student on a guarded batch (:meth:`GuardedBatch.student_loss`).

    :param processes: the processes sharing the step (default: this one alone). Each trains its shard of
        ``batch`` (:meth:`GuardedBatch.shard`); the gradients and the BatchNorm running statistics are
        averaged over the processes, so every process holds the same student.
    :returns: ``loss/student``, ``guard/kept`` (mean KD weight) and
        ``guard/forgotten`` (share of the forget set), over this process's
        batch with any recalled trap-memory images.
    """
    processes = processes if processes is not None else Processes()
    if processes.world > 1:
        batch = batch.shard(processes.rank, processes.world)
    student.train()
    optimizer.zero_grad(set_to_none=True)
    loss = batch.student_loss(student(batch.images))
    loss.backward()
    processes.average_gradients(student.parameters())
    optimizer.step()
    processes.average_buffers(student)
    return {
        "loss/student": float(loss.detach()),
        "guard/kept": batch.kept_fraction,
        "guard/forgotten": batch.forgotten_fraction,
    }
