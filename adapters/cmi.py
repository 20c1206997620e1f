"""Contrastive Model Inversion (Fang et al., IJCAI 2021): diverse inversion through a contrastive prior.

Each :meth:`CMISynthesizer.synthesize` round redraws the generator's weights
(PyTorch's default initialisation; ``generator_init="restore"`` restarts from
its construction-time weights instead), draws fresh latent codes ``z`` and
optimises generator and codes jointly (Adam, betas 0.5/0.999) for
``iterations`` steps on ``x = normalize(G(z))``, whose losses see the global
view ``x~``, ``x`` shifted by up to ``view_shift`` pixels and flipped:

``oh * CE(T(x~), y) + bn * BN(x~) + adv * ADV(x~) + cr * CR(x~)``

* ``CE``: cross-entropy to target classes ``y`` (random, or balanced);
* ``BN``: BatchNorm-statistics matching of the teacher (DeepInversion prior);
* ``ADV``: ``-mean_i m_i * KL(T(x_i) || S(x_i))`` with ``m_i = 1`` where
  student and teacher agree on the argmax (CMI's masked adversarial term);
* ``CR``: the contrastive term. Each sample's *instance feature* is the
  per-sample channel mean and variance of every teacher BatchNorm input,
  concatenated over layers. The global view and a local view (a random
  resized crop of ``x``, flipped at random) both pass through the teacher; an
  MLP head projects both views of the batch and of up to ``n_neg`` features
  drawn from a memory bank of past rounds, and InfoNCE asks each local
  projection to pick its own global projection among all of them
  (temperature ``cr_temperature``).

The guard's generator penalty is added before ``backward()``. The lowest-loss
batch of the round, ``x`` itself, goes into an
:class:`~dfkd_guard.adapters.pool.ImagePool` with its OOD score (computed
once) and its features into the memory bank; the student replays the pool,
each image shifted by up to ``replay_shift`` pixels (and flipped) every time it
is drawn, its stored score kept. The head and the bank persist across rounds.

Differences from the public code (zju-vipa/CMI, ``datafree/synthesis/contrastive.py``),
all deliberate: the redrawn weights follow PyTorch's initialisation, not the
code's N(0, 0.02) (with 40 steps a round, not 200, a generator drawn that way
had not yet learnt; ``docs/adapter_fidelity.md``); the instance feature holds channel means *and* variances
(``features="mean"`` gives the code's means only); the views are whole-pixel
shifts with repeated edges instead of zero-padded crops; every random draw,
including the redrawn generator weights, comes from the global CPU torch
generator (checkpointed by :func:`~dfkd_guard.adapters.training.train`).

Defaults are CMI's CIFAR-10 hyper-parameters (zju-vipa/CMI
``scripts/cmi/scratch_cmi_cifar10_wrn402_wrn161.sh``: adv 0.5, bn 1, oh 1,
cr 0.8, cr_T 0.1, lr_g 1e-3, g_steps 200, synthesis batch 256, batch 128; and
``datafree_kd.py``: bank 40960, 4096 negatives, head 256), with sizes scaled
for CPU as each :class:`CMIConfig` field says.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from dfkd_guard import Guard, GuardedBatch
from dfkd_guard.adapters.base import LowestLoss, SynthesisResult, Synthesizer, loss_terms, to_device
from dfkd_guard.adapters.pool import ImagePool
from dfkd_guard.adapters.views import random_shift
from dfkd_guard.losses import kd_divergence
from dfkd_guard.processes import Processes

__all__ = [
    "CMIConfig",
    "CMISynthesizer",
    "FeatureBank",
    "ProjectionHead",
    "random_resized_crop",
    "redraw_default_init",
]


class CMIConfig(BaseModel):
    """Hyper-parameters of CMI. Defaults: the CMI CIFAR-10 script, sizes scaled for CPU (noted per field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(
        default=64, ge=1, description="images synthesised per round (CMI 256; /4 for CPU)"
    )
    student_batch_size: int = Field(
        default=64, ge=1, description="images per student step, from the pool (CMI 128; /2)"
    )
    iterations: int = Field(
        default=20, ge=1, description="steps on G and z per round (CMI g_steps 200; /10 for CPU)"
    )
    generator_lr: float = Field(
        default=1e-2, gt=0, description="Adam lr of G and z (CMI lr_g 1e-3; x10 for 1/10 the steps)"
    )
    head_lr: float | None = Field(
        default=None, gt=0, description="Adam lr of the head; None = generator_lr (as CMI)"
    )
    head_dim: int = Field(
        default=256, ge=1, description="output size of the projection head (CMI head_dim 256)"
    )
    oh: float = Field(default=1.0, ge=0, description="weight of CE(T(x), y) (CMI oh 1.0)")
    bn: float = Field(default=1.0, ge=0, description="weight of the BN-statistics prior (CMI bn 1.0)")
    adv: float = Field(default=0.5, ge=0, description="weight of the masked adversarial term (CMI adv 0.5)")
    cr: float = Field(default=0.8, ge=0, description="weight of the contrastive term (CMI cr 0.8)")
    cr_temperature: float = Field(default=0.1, gt=0, description="InfoNCE temperature (CMI cr_T 0.1)")
    bank_size: int = Field(
        default=10240, ge=1, description="features in the memory bank (CMI 40960 = 160 batches; /4)"
    )
    n_neg: int = Field(
        default=1024, ge=1, description="bank negatives drawn per step (CMI 4096 = 16 batches; /4)"
    )
    pool_size: int | None = Field(
        default=None, ge=1, description="images kept in the pool; None = all, as CMI"
    )
    targets: Literal["random", "balanced"] = Field(
        default="random", description="CE targets: random (CMI) or equal counts"
    )
    features: Literal["mean_var", "mean"] = Field(
        default="mean_var", description="per BN input: channel mean+var, or mean"
    )
    crop_scale: tuple[float, float] = Field(
        default=(0.25, 1.0), description="area range of the local crop (CMI 0.25-1)"
    )
    flip: bool = Field(
        default=True,
        description="flip the local view, the global view and replayed images horizontally with probability 1/2 (CMI)",
    )
    view_shift: int = Field(
        default=4,
        ge=0,
        description="random translation of the global view, pixels (CMI: pad 4 and crop at 32)",
    )
    replay_shift: int = Field(
        default=4,
        ge=0,
        description="random translation of each replayed image, pixels (CMI: pad 4 and crop at 32)",
    )
    generator_init: Literal["redraw", "restore"] = Field(
        default="redraw",
        description="each round: redraw G's weights (PyTorch's initialisation) or restore its construction-time ones",
    )

    @model_validator(mode="after")
    def _check_scale(self) -> CMIConfig:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        return self


class ProjectionHead(nn.Module):
    """MLP ``Linear -> ReLU -> Linear`` whose outputs are L2-normalised.

    :param in_dim: size of the instance features.
    :param out_dim: size of the projections.
    :param hidden_dim: hidden width; None = ``in_dim`` (as CMI).

    Shapes: input (N, in_dim), output (N, out_dim) with unit rows.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


class FeatureBank:
    """A bounded first-in-first-out store of past instance features, on the CPU.

    :param max_size: rows kept; the oldest are dropped first.
    :param dim: feature size.
    """

    def __init__(self, max_size: int, dim: int) -> None:
        if max_size < 1 or dim < 1:
            raise ValueError(f"max_size and dim must be >= 1, got {max_size} and {dim}")
        self.max_size = max_size
        self.features = torch.empty(0, dim)

    def __len__(self) -> int:
        return self.features.shape[0]

    def add(self, features: torch.Tensor) -> None:
        """Append float (N, dim) features, detached; keep the newest ``max_size``."""
        if features.ndim != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"bank holds (N, {self.features.shape[1]}) features, got {tuple(features.shape)}"
            )
        self.features = torch.cat([self.features, features.detach().float().cpu()])[-self.max_size :]

    def sample(self, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Up to ``k`` distinct rows at random (all of them when fewer are stored), (min(k, N), dim)."""
        index = torch.randperm(len(self))[:k]
        return to_device(self.features[index], device)

    def state_dict(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "features": self.features.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        features = state["features"]
        if features.ndim != 2 or features.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"bank holds (N, {self.features.shape[1]}) features, the state has {tuple(features.shape)}"
            )
        self.max_size = int(state["max_size"])
        self.features = features.clone()


def random_resized_crop(
    images: torch.Tensor,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """A random crop of each image, resized back to its size (bilinear), differentiable.

    Per sample: area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
    crop sides clamped to the image, position uniform, horizontal flip with
    probability 1/2 when ``flip``. Random numbers come from the global CPU
    torch generator, whatever the device.

    :param images: float (B, C, H, W).
    :returns: float (B, C, H, W), with grad to ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    area = torch.empty(batch).uniform_(*scale)
    log_ratio = torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp() * height / width  # width fraction / height fraction
    crop_w = (area * aspect).sqrt().clamp(max=1.0)
    crop_h = (area / aspect).sqrt().clamp(max=1.0)
    centre = (torch.rand(batch, 2) * 2 - 1) * (1 - torch.stack([crop_w, crop_h], dim=1))
    sign = torch.where(torch.rand(batch) < 0.5, -1.0, 1.0) if flip else torch.ones(batch)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = crop_w * sign
    theta[:, 1, 1] = crop_h
    theta[:, :, 2] = centre
    theta = to_device(theta, images.device).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def redraw_default_init(module: nn.Module) -> None:
    """Draw new weights, in place, from the CPU generator, as PyTorch initialises layers: Linear and convolution
    weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), BatchNorm weights 1 and biases 0; other layers keep
    theirs. Buffers (BatchNorm running statistics) are left as they are."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
                bound = 1 / math.sqrt(layer.weight.shape[1] * layer.weight[0, 0].numel())  # torch's fan_in
                layer.weight.copy_((torch.rand(layer.weight.shape) * 2 - 1) * bound)
                if layer.bias is not None:
                    layer.bias.copy_((torch.rand(layer.bias.shape) * 2 - 1) * bound)
            elif isinstance(layer, nn.modules.batchnorm._NormBase) and layer.affine:
                layer.weight.fill_(1.0)
                layer.bias.zero_()


def _clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class CMISynthesizer(Synthesizer):
    """A per-round re-initialised generator with a contrastive prior, and an image pool.

    :param teacher: the teacher; set to eval mode, its parameters frozen. Needs
        BatchNorm layers (they give the instance features).
    :param student: the student.
    :param generator: maps ``(B, latent_dim)`` codes to [0, 1] pixel images
        (B, C, H, W); normalised with the guard's normalisation. Each round
        starts from its weights at construction, redrawn (``generator_init``).
    :param latent_dim: size of ``z``.
    :param guard: the guard bound to ``teacher`` (``enabled=False`` for unguarded CMI).
    :param config: hyper-parameters.
    :param image_shape: (C, H, W) the teacher takes.
    :param device: where synthesis runs.
    :param processes: under ``torchrun``, the processes sharing each round:
        each optimises its rows of the codes with the same generator (its and
        the head's gradients averaged); the BN prior sees every row, the
        contrastive loss each process's own.
    :raises ValueError: the teacher has no BatchNorm layer, or the generator's
        images do not fit the teacher.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        generator: nn.Module,
        latent_dim: int,
        guard: Guard,
        config: CMIConfig | None = None,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        device: torch.device | str = "cpu",
        *,
        processes: Processes | None = None,
    ) -> None:
        super().__init__(teacher, student, guard, image_shape, device, processes=processes)
        self.config = config or CMIConfig()
        self.generator = generator.to(self.device)
        self.latent_dim = latent_dim
        self.initial_generator = _clone_state(self.generator.state_dict())
        self.require_batchnorm("CMI's instance features are BN-layer statistics")
        pixels = self.probe_generator(self.generator, torch.zeros(2, latent_dim, device=self.device))
        with torch.no_grad():
            self.teacher(self.guard.config.normalization.normalize(pixels))
            feature_dim = self._instance_features().shape[1]
        self.head = ProjectionHead(feature_dim, self.config.head_dim).to(self.device)
        self.head_optimizer = torch.optim.Adam(
            self.head.parameters(), lr=self.config.head_lr or self.config.generator_lr
        )
        self.bank = FeatureBank(self.config.bank_size, 2 * feature_dim)
        self.pool = ImagePool(self.config.pool_size)

    def _images(self, z: torch.Tensor) -> torch.Tensor:
        return self.guard.config.normalization.normalize(self.generator(z))

    def _instance_features(self) -> torch.Tensor:
        """(B, D) per-sample channel statistics of every BN input of the last teacher forward."""
        parts = []
        for x in self.guard.bn_inputs():
            if x.ndim <= 2:  # BatchNorm1d on (B, C): the sample itself is its mean
                parts.append(x)
                continue
            flat = x.flatten(2)
            parts.append(flat.mean(dim=2))
            if self.config.features == "mean_var":
                parts.append(flat.var(dim=2, unbiased=False))
        return torch.cat(parts, dim=1)

    def _targets(self, batch_size: int) -> torch.Tensor:
        """This process's rows of ``batch_size`` target classes."""
        if self.config.targets == "balanced":
            targets = torch.arange(batch_size) % self.num_classes
        else:
            targets = torch.randint(self.num_classes, (batch_size,))
        return to_device(self.processes.own(targets), self.device)

    def _adversarial(self, s_out: torch.Tensor, t_out: torch.Tensor) -> torch.Tensor:
        agree = (s_out.argmax(dim=1) == t_out.argmax(dim=1)).to(t_out.dtype)
        return -(kd_divergence(s_out, t_out) * agree).mean()

    def _contrastive(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """InfoNCE of local against global projections, current batch plus bank negatives."""
        cached = self.bank.sample(self.config.n_neg, self.device)
        cached_local, cached_global = cached.chunk(2, dim=1)
        projected = self.head(torch.cat([local, cached_local, global_, cached_global]))
        p_local, p_global = projected.chunk(2)
        logits = p_local @ p_global.detach().T / self.config.cr_temperature
        losses = F.cross_entropy(
            logits, torch.arange(logits.shape[0], device=logits.device), reduction="none"
        )
        batch = local.shape[0]
        if cached.shape[0] == 0:
            return losses.mean()
        # the current batch and the cached rows are averaged separately (as CMI), so
        # a large bank does not dilute the generator's gradient
        return losses[:batch].mean() + losses[batch:].mean()

    def reset_generator(self) -> None:
        """Start a round's generator: its construction-time weights and buffers, then, with
        ``generator_init="redraw"``, fresh weights in every Linear, convolution and BatchNorm layer."""
        self.generator.load_state_dict(self.initial_generator)
        if self.config.generator_init == "redraw":
            redraw_default_init(self.generator)

    def synthesize(self) -> SynthesisResult:
        """One round: reset G, optimise G and z, pool the best batch with its scores."""
        c = self.config
        self.student.eval()
        self.reset_generator()
        self.generator.train()
        z = to_device(self.processes.own(torch.randn(c.batch_size, self.latent_dim)), self.device)
        z.requires_grad_()
        targets = self._targets(c.batch_size)
        optimizer = torch.optim.Adam(
            [{"params": self.generator.parameters()}, {"params": [z]}], lr=c.generator_lr, betas=(0.5, 0.999)
        )
        lowest, last, skipped = LowestLoss(), {}, 0
        normalize = self.guard.config.normalization.normalize
        for _ in range(c.iterations):
            optimizer.zero_grad(set_to_none=True)
            self.head_optimizer.zero_grad(set_to_none=True)
            pixels = self.generator(z)
            images = normalize(pixels)
            view = normalize(random_shift(pixels, c.view_shift, c.flip))
            t_out = self.teacher(view)
            parts: dict[str, torch.Tensor] = {}
            if c.bn:
                parts["bn"] = self.guard.bn_loss(self.processes)
            global_features = self._instance_features()
            self.teacher(normalize(random_resized_crop(pixels, c.crop_scale, flip=c.flip)))
            local_features = self._instance_features()
            if c.oh:
                parts["oh"] = F.cross_entropy(t_out, targets)
            if c.adv:
                parts["adv"] = self._adversarial(self.student(view), t_out)
            if c.cr:
                parts["cr"] = self._contrastive(local_features, global_features)
            weights = {"oh": c.oh, "bn": c.bn, "adv": c.adv, "cr": c.cr}
            penalty = self.guard.generator_penalty(view, t_out)
            total = sum((weights[k] * v for k, v in parts.items()), penalty)
            if not self.processes.all_true(torch.isfinite(total) & torch.isfinite(images).all()):
                skipped += 1  # the step's one host sync: every process skips it
                continue
            features = torch.cat([local_features, global_features], dim=1).detach()
            lowest.offer(total, images, features, valid=torch.isfinite(features).all())
            total.backward()
            self.processes.average_gradients([*self.generator.parameters(), *self.head.parameters()])
            optimizer.step()
            self.head_optimizer.step()
            last = {**parts, "penalty": penalty, "total": total}
        self.processes.average_buffers(self.generator)
        self.skipped += skipped
        terms, kept = loss_terms(last), lowest.best()
        images = torch.empty(0, *self.image_shape, device=self.device)
        features = torch.empty(0, self.bank.features.shape[1], device=self.device)
        if kept is not None:
            terms["best_total"], (images, features) = kept
        scores = (
            self.guard.score(images, if_needed=True) if len(images) else torch.empty(0, device=self.device)
        )
        images, scores, features = (self.processes.gather(t) for t in (images, scores, features))
        if not len(images):
            return SynthesisResult(torch.empty(0, *self.image_shape), terms, skipped)
        self.pool.add(images, scores)
        self.bank.add(features)
        return SynthesisResult(images, terms, skipped)

    def sample(self) -> GuardedBatch:
        """A random pool batch, each image shifted at random, with its stored scores: replay never rescores."""
        c = self.config
        images, scores, _ = self.pool.sample(c.student_batch_size, self.device)
        return self.guarded_batch(random_shift(images, c.replay_shift, c.flip), scores)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": _clone_state(self.generator.state_dict()),
            "initial_generator": _clone_state(self.initial_generator),
            "head": _clone_state(self.head.state_dict()),
            "head_optimizer": copy.deepcopy(self.head_optimizer.state_dict()),
            "bank": self.bank.state_dict(),
            "pool": self.pool.state_dict(),
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["initial_generator"])  # checks keys and shapes
        self.initial_generator = {
            k: v.detach().clone().to(self.device) for k, v in state["initial_generator"].items()
        }
        self.generator.load_state_dict(state["generator"])
        self.head.load_state_dict(state["head"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.bank.load_state_dict(state["bank"])
        self.pool.load_state_dict(state["pool"])
        self.skipped = int(state["skipped"])
