"""DeepInversion (Yin et al. CVPR 2020): optimise pixels to invert the teacher.

Each :meth:`DeepInversionSynthesizer.synthesize` round starts a batch from
noise (pixels N(0.5, 0.2) clamped to [0, 1], normalised; or N(0, 1) in teacher
input units, ``init``) and runs ``iterations`` Adam steps (betas 0.5/0.99) on

``CE(T(x~), y) + bn * BN(x~) + tv * TV(x) + l2 * ||x||_2 + competition * (1 - JS(T(x~), S(x~)))``

where ``x~`` is ``x`` randomly rolled by up to ``jitter`` pixels and flipped,
``y`` are random target classes, ``BN`` is the BatchNorm-statistics prior,
``TV`` the L2 total variation over horizontal, vertical and both diagonal
neighbours, and the last term the Adaptive DeepInversion competition
(Jensen-Shannon divergence between teacher and student; off by default). The
guard's generator penalty is added before ``backward()``; ``x`` is clamped to
the pixel range after every step. The batch with the lowest loss of the round
goes into an :class:`~dfkd_guard.adapters.pool.ImagePool` with its OOD score,
computed once; the student replays the pool, each image shifted by up to
``replay_shift`` pixels (and flipped) every time it is drawn, its stored score
kept.

Defaults are the paper's CIFAR-10 parameters (NVlabs/DeepInversion
``cifar10/README.md``: ``r_feature_weight=10``, ``di_lr=0.05``; its script's
``di_var_scale=2.5e-5``, ``di_l2_scale=0``, 2000 iterations, batch 256, jitter 2),
except what follows the zju-vipa ``datafree`` package, whose student code the
CMI paper's DeepInversion baseline used: Adam's betas (0.5, 0.99), flips, random
targets, clamping to the pixel range, and the augmentation of replayed images
(``RandomCrop(32, padding=4)``: ``replay_shift=4``). The initialisation in
pixels is ours: the published N(0, 1) assumes a teacher whose input is
normalised to unit scale (``docs/adapter_fidelity.md``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfkd_guard import Guard, GuardedBatch
from dfkd_guard.adapters.base import LowestLoss, SynthesisResult, Synthesizer, loss_terms, to_device
from dfkd_guard.adapters.pool import ImagePool
from dfkd_guard.adapters.views import random_shift
from dfkd_guard.processes import Processes

__all__ = ["DeepInversionConfig", "DeepInversionSynthesizer", "js_divergence", "total_variation"]


class DeepInversionConfig(BaseModel):
    """Hyper-parameters of DeepInversion. Defaults: the paper's CIFAR-10 values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=256, ge=1, description="images synthesised per round")
    student_batch_size: int = Field(
        default=256, ge=1, description="images per student step, drawn from the pool"
    )
    iterations: int = Field(default=2000, ge=1, description="Adam steps on the pixels per round")
    lr: float = Field(default=0.05, gt=0, description="Adam learning rate on the pixels")
    oh: float = Field(default=1.0, ge=0, description="weight of CE(T(x), y)")
    bn: float = Field(default=10.0, ge=0, description="weight of the BN-statistics prior")
    tv: float = Field(default=2.5e-5, ge=0, description="weight of the L2 total variation")
    l2: float = Field(default=0.0, ge=0, description="weight of ||x||_2")
    competition: float = Field(
        default=0.0, ge=0, description="Adaptive DeepInversion: weight of 1 - JS(T, S)"
    )
    competition_temperature: float = Field(
        default=3.0, gt=0, description="softmax temperature of the JS term"
    )
    jitter: int = Field(default=2, ge=0, description="maximum random roll, pixels")
    flip: bool = Field(default=True, description="random horizontal flip of the whole batch")
    init: Literal["pixels", "teacher_units"] = Field(
        default="pixels",
        description="start: pixels N(0.5, 0.2) clamped to [0, 1] and normalised, or N(0, 1) in teacher input units",
    )
    clip_to_pixel_range: bool = Field(default=True, description="clamp x to [0, 1] pixels after every step")
    replay_shift: int = Field(
        default=4, ge=0, description="random translation of each replayed image, pixels (flipped too if flip)"
    )
    pool_size: int | None = Field(default=None, ge=1, description="images kept in the pool; None = all")


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Sum of the L2 norms of differences to the right, lower, and both diagonal neighbours."""
    diffs = (
        images[:, :, :, :-1] - images[:, :, :, 1:],
        images[:, :, :-1, :] - images[:, :, 1:, :],
        images[:, :, 1:, :-1] - images[:, :, :-1, 1:],
        images[:, :, :-1, :-1] - images[:, :, 1:, 1:],
    )
    return sum((torch.norm(d) for d in diffs), images.new_zeros(()))


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats) between two softmax distributions, from log-probabilities."""
    log_p = F.log_softmax(logits_p / temperature, dim=1)
    log_q = F.log_softmax(logits_q / temperature, dim=1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(dim=1)
    kl_qm = F.kl_div(log_m, log_q, reduction="none", log_target=True).sum(dim=1)
    return (0.5 * (kl_pm + kl_qm)).mean()


class DeepInversionSynthesizer(Synthesizer):
    """Pixel optimisation against the teacher, with an image pool for the student.

    :param teacher: the teacher (eval mode, frozen until :meth:`close`).
    :param student: the student (used by the competition term and for KD).
    :param guard: the guard bound to ``teacher``.
    :param config: hyper-parameters.
    :param image_shape: (C, H, W) the teacher takes.
    :param device: where synthesis runs.
    :param processes: under ``torchrun``, the processes sharing each round:
        each optimises its rows of the batch; the BN prior sees them all.
    :raises ValueError: the teacher has no BatchNorm layer while ``bn > 0``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        guard: Guard,
        config: DeepInversionConfig | None = None,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        device: torch.device | str = "cpu",
        *,
        processes: Processes | None = None,
    ) -> None:
        super().__init__(teacher, student, guard, image_shape, device, processes=processes)
        self.config = config or DeepInversionConfig()
        if self.config.bn > 0:
            self.require_batchnorm("BN-statistics matching needs them (set bn = 0 to run without)")
        self.pool = ImagePool(self.config.pool_size)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        j = self.config.jitter
        if j:
            dx, dy = (int(v) for v in torch.randint(-j, j + 1, (2,)))
            images = torch.roll(images, shifts=(dx, dy), dims=(2, 3))
        if self.config.flip and bool(torch.rand(()) < 0.5):
            images = torch.flip(images, dims=(3,))
        return images

    def _initial_inputs(self) -> torch.Tensor:
        """This process's rows of (batch_size, C, H, W) starting images, in teacher input units."""
        noise = torch.randn(self.config.batch_size, *self.image_shape)
        noise = to_device(self.processes.own(noise), self.device)
        if self.config.init == "teacher_units":
            return noise
        return self.guard.config.normalization.normalize((0.5 + 0.2 * noise).clamp(0, 1))

    def synthesize(self) -> SynthesisResult:
        """One round: optimise a fresh batch, pool the best one with its scores (every process's rows)."""
        c = self.config
        self.student.eval()
        inputs = self._initial_inputs().requires_grad_(True)
        targets = torch.randint(self.num_classes, (c.batch_size,))
        targets = to_device(self.processes.own(targets), self.device)
        optimizer = torch.optim.Adam([inputs], lr=c.lr, betas=(0.5, 0.99))
        low, high = (
            self.guard.config.normalization.input_range(inputs) if c.clip_to_pixel_range else (None, None)
        )
        lowest, last, skipped = LowestLoss(), {}, 0
        for _ in range(c.iterations):
            optimizer.zero_grad(set_to_none=True)
            view = self._augment(inputs)
            t_out = self.teacher(view)
            parts = {"oh": F.cross_entropy(t_out, targets)}
            if c.bn:
                parts["bn"] = self.guard.bn_loss(self.processes)
            if c.tv:
                parts["tv"] = total_variation(inputs)
            if c.l2:
                parts["l2"] = torch.norm(inputs)
            if c.competition:
                parts["competition"] = 1.0 - js_divergence(
                    t_out, self.student(view), c.competition_temperature
                ).clamp(0, 1)
            weights = {"oh": c.oh, "bn": c.bn, "tv": c.tv, "l2": c.l2, "competition": c.competition}
            penalty = self.guard.generator_penalty(view, t_out)
            total = sum((weights[k] * v for k, v in parts.items()), penalty)
            if not self.processes.all_true(torch.isfinite(total)):
                skipped += 1  # the step's one host sync: every process skips it
                continue
            lowest.offer(total, inputs)
            total.backward()
            optimizer.step()
            if low is not None:
                with torch.no_grad():
                    inputs.copy_(torch.maximum(torch.minimum(inputs, high), low))
            last = {**parts, "penalty": penalty, "total": total}
        self.skipped += skipped
        terms, kept = loss_terms(last), lowest.best()
        best = torch.empty(0, *self.image_shape, device=self.device)
        if kept is not None and torch.isfinite(kept[1][0]).all():
            best = kept[1][0]
        scores = self.guard.score(best, if_needed=True) if len(best) else torch.empty(0, device=self.device)
        best, scores = self.processes.gather(best), self.processes.gather(scores)
        if not len(best):
            return SynthesisResult(torch.empty(0, *self.image_shape), terms, skipped)
        self.pool.add(best, scores)
        return SynthesisResult(best, terms, skipped)

    def sample(self) -> GuardedBatch:
        """A random pool batch, each image shifted at random, with its stored scores: replay never rescores."""
        c = self.config
        images, scores, _ = self.pool.sample(c.student_batch_size, self.device)
        return self.guarded_batch(random_shift(images, c.replay_shift, c.flip), scores)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.skipped = int(state["skipped"])
