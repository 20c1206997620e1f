"""Vanilla generator DFKD: a persistent generator G(z) trained against the student.

One generator step minimises a weighted sum of the DFQ-family terms on a
fresh batch ``x = normalize(G(z))``, ``z ~ N(0, I)``:

* ``oh``: one-hot cross-entropy ``CE(T(x), argmax T(x))`` (DAFL, DFQ);
* ``bn``: BatchNorm-statistics matching of the teacher (DeepInversion prior, DFQ);
* ``adv``: adversarial ``-D(S(x), T(x))``, with ``D`` = KL(T || S) or the
  mean L1 distance of the logits (DFAD);
* ``balance``: KL(mean softmax(T(x)) || uniform), class balance (DFQ, DAFL);
* ``act``: ``-mean |f_T(x)|`` of the teacher's penultimate features (DAFL);

plus the guard's generator penalty. The student then learns by KD on fresh
``G(z).detach()`` batches, weighted by the guard. DFAD, ZSKT and DAFL are
weightings of the same terms: see :data:`PRESETS`.

With ``replay > 0`` each student batch also carries ``replay`` earlier
student images from an :class:`~dfkd_guard.adapters.pool.ImagePool` (with the
teacher logits and scores they got when they were fresh), a memory bank
against the student forgetting what the generator has moved away from
(Binici et al., WACV 2022; Fast-DFKD replays its pool the same way).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dfkd_guard import Guard, GuardedBatch
from dfkd_guard.adapters.base import SynthesisResult, Synthesizer, loss_terms, to_device
from dfkd_guard.adapters.pool import ImagePool
from dfkd_guard.losses import kd_divergence
from dfkd_guard.processes import Processes

__all__ = ["PRESETS", "VanillaConfig", "VanillaSynthesizer"]


class VanillaConfig(BaseModel):
    """Hyper-parameters of vanilla generator DFKD. Defaults: DFQ's term weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=64, ge=1, description="synthetic batch size (generator and student)")
    generator_lr: float = Field(default=1e-3, gt=0, description="Adam learning rate of G")
    generator_steps: int = Field(default=1, ge=1, description="generator updates per synthesize()")
    oh: float = Field(default=1.0, ge=0, description="weight of the one-hot CE term")
    bn: float = Field(default=1.0, ge=0, description="weight of the BN-statistics term")
    adv: float = Field(default=1.0, ge=0, description="weight of the adversarial term")
    balance: float = Field(default=20.0, ge=0, description="weight of the class-balance term")
    act: float = Field(default=0.0, ge=0, description="weight of the activation term")
    adv_distance: Literal["kl", "l1"] = Field(default="kl", description="D of the adversarial term")
    replay: int = Field(
        default=0,
        ge=0,
        description="earlier student images replayed in each student batch (0 = fresh images only, as DFAD / DFQ)",
    )
    pool_size: int = Field(default=4096, ge=1, description="latest student images kept for replay")


#: Published term weights of the methods this adapter covers.
PRESETS: dict[str, dict[str, Any]] = {
    "dfq": {"oh": 1.0, "bn": 1.0, "adv": 1.0, "balance": 20.0, "act": 0.0, "adv_distance": "kl"},
    "dfad": {"oh": 0.0, "bn": 0.0, "adv": 1.0, "balance": 0.0, "act": 0.0, "adv_distance": "l1"},
    "zskt": {"oh": 0.0, "bn": 0.0, "adv": 1.0, "balance": 0.0, "act": 0.0, "adv_distance": "kl"},
    "dafl": {"oh": 1.0, "bn": 0.0, "adv": 0.0, "balance": 20.0, "act": 0.001, "adv_distance": "kl"},
}


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            "the activation term needs the teacher's penultimate features: the teacher has no nn.Linear head"
        )
    return linears[-1]


class VanillaSynthesizer(Synthesizer):
    """A persistent generator trained with the DFQ-family loss.

    :param teacher: the teacher (eval mode, frozen until :meth:`close`).
    :param student: the student.
    :param generator: maps ``(B, latent_dim)`` normal codes to [0, 1] pixel
        images (B, C, H, W); normalised with the guard's normalisation.
    :param latent_dim: size of ``z``.
    :param guard: the guard bound to ``teacher`` (``enabled=False`` for unguarded DFKD).
    :param config: the term weights and sizes (see :data:`PRESETS`).
    :param image_shape: (C, H, W) the teacher takes.
    :param device: where synthesis runs.
    :param processes: under ``torchrun``, the processes sharing each batch: G's
        gradients and BatchNorm statistics are averaged over them, so every
        process holds the same generator.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        generator: nn.Module,
        latent_dim: int,
        guard: Guard,
        config: VanillaConfig | None = None,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        device: torch.device | str = "cpu",
        *,
        processes: Processes | None = None,
    ) -> None:
        super().__init__(teacher, student, guard, image_shape, device, processes=processes)
        self.config = config or VanillaConfig()
        self.generator = generator.to(self.device)
        self.latent_dim = latent_dim
        self.optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=self.config.generator_lr, betas=(0.5, 0.999)
        )
        self.pool = ImagePool(self.config.pool_size)
        if self.config.bn > 0:
            self.require_batchnorm("BN-statistics matching needs them (set bn = 0 to run without)")
        self._features: torch.Tensor | None = None
        self._feature_hook = (
            _last_linear(self.teacher).register_forward_pre_hook(self._keep_features)
            if self.config.act > 0
            else None
        )
        self.probe_generator(self.generator, to_device(torch.randn(2, self.latent_dim), self.device))

    def _keep_features(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._features = inputs[0]

    def _images(self, batch_size: int) -> torch.Tensor:
        """``normalize(G(z))`` for this process's rows of ``batch_size`` fresh codes; G's BatchNorm in train mode."""
        self.generator.train()
        z = to_device(self.processes.own(torch.randn(batch_size, self.latent_dim)), self.device)
        return self.guard.config.normalization.normalize(self.generator(z))

    def synthesize(self) -> SynthesisResult:
        """``generator_steps`` updates of G on fresh latent codes."""
        c = self.config
        self.student.eval()
        last: dict[str, torch.Tensor] = {}
        images = torch.empty(0, *self.image_shape)
        skipped = 0
        for _ in range(c.generator_steps):
            self.optimizer.zero_grad(set_to_none=True)
            images = self._images(c.batch_size)
            t_out = self.teacher(images)
            s_out = self.student(images)
            parts = {
                "oh": F.cross_entropy(t_out, t_out.argmax(dim=1)) if c.oh else None,
                "bn": self.guard.bn_loss(self.processes) if c.bn else None,
                "adv": -self._distance(s_out, t_out) if c.adv else None,
                "balance": self._imbalance(t_out) if c.balance else None,
                "act": -self._features.abs().mean() if self._features is not None and c.act else None,
            }
            weights = {"oh": c.oh, "bn": c.bn, "adv": c.adv, "balance": c.balance, "act": c.act}
            loss = sum((weights[k] * v for k, v in parts.items() if v is not None), images.new_zeros(()))
            penalty = self.guard.generator_penalty(images, t_out)
            total = loss + penalty
            if not self.processes.all_true(torch.isfinite(total) & torch.isfinite(images).all()):
                skipped += 1  # the step's one host sync: every process skips it
                continue
            total.backward()
            self.processes.average_gradients(self.generator.parameters())
            self.optimizer.step()
            last = {**{k: v for k, v in parts.items() if v is not None}, "penalty": penalty, "total": total}
        self.processes.average_buffers(self.generator)
        self.skipped += skipped
        return SynthesisResult(images.detach(), loss_terms(last), skipped)

    def _distance(self, s_out: torch.Tensor, t_out: torch.Tensor) -> torch.Tensor:
        if self.config.adv_distance == "l1":
            return (s_out - t_out).abs().mean()
        return kd_divergence(s_out, t_out).mean()

    @staticmethod
    def _imbalance(t_out: torch.Tensor) -> torch.Tensor:
        mean_p = F.softmax(t_out, dim=1).mean(dim=0)
        return (mean_p * mean_p.clamp_min(1e-12).log()).sum() + math.log(t_out.shape[1])

    def sample(self) -> GuardedBatch:
        """A fresh generator batch, scored and weighted, plus ``replay`` pooled images.

        Non-finite samples are dropped and counted. Replayed images keep the
        teacher logits and scores they got when fresh (no teacher forward; the
        teacher is frozen) and are weighted together with the fresh ones; the
        fresh ones then join the pool. Under several processes each one
        generates, labels and scores its rows; the guard sees the gathered batch.

        G stays in train mode (batch statistics in its BatchNorm), as in DFAD and
        DFQ: its running statistics lag a generator trained at a high learning
        rate, and eval-mode batches would differ from the ones synthesis shaped
        (``docs/adapters.md``).
        """
        with torch.no_grad():
            images = self._images(self.config.batch_size)
        self.processes.average_buffers(self.generator)
        images = self.processes.gather(images)
        finite = torch.isfinite(images).flatten(1).all(dim=1)
        if not finite.all():
            self.skipped += int((~finite).sum())
            images = images[finite]
            if images.shape[0] == 0:
                raise RuntimeError("the generator produced only non-finite images; lower generator_lr")
        logits, scores = self.labelled(images)
        if not self.config.replay:
            return self.guard.student_batch(images, logits, scores)
        scores = self.guard.observe(images, logits, scores)
        fresh_images, fresh_logits, fresh_scores = images, logits, scores
        if len(self.pool):
            old_images, old_scores, old_logits = self.pool.sample(self.config.replay, self.device)
            assert old_logits is not None  # every batch of this pool comes with its logits
            images = torch.cat([images, old_images])
            logits = torch.cat([logits, old_logits])
            scores = torch.cat([scores, old_scores])
        self.pool.add(fresh_images, fresh_scores, fresh_logits)
        return self.guard.weigh(images, logits, scores)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "pool": self.pool.state_dict(),
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.pool.load_state_dict(state["pool"])
        self.skipped = int(state["skipped"])

    def close(self) -> None:
        super().close()
        if self._feature_hook is not None:
            self._feature_hook.remove()
            self._feature_hook = None
