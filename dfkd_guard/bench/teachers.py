"""Benchmark teachers: ordinary (SL), non-transferable (NTL) and NTL-backdoor.

* :class:`TeacherConfig` fixes everything that determines a teacher.
* :func:`ntl_loss` is the NTL objective of Wang et al. (ICLR 2022).
* :func:`train_teacher` trains one teacher on a :class:`~dfkd_guard.bench.data.Setting`.
* :func:`load_or_train_teacher` caches trained weights on disk, keyed by a hash
  of the config, the training data and :data:`CODE_VERSION`; cache files are
  plain state dicts read with ``weights_only=True``, so loading never runs code.
* :func:`evaluate_teacher` reports ID / OOD accuracy and attack success rate.

Training recipe (all kinds): Adam at ``lr`` with cosine decay to 0 over
``steps`` (a constant rate made NTL swing between 33% and 94% ID accuracy in
the prototype), data order and augmentation from a seeded
:class:`torch.Generator`. With ``shift > 0`` every batch (ID and OOD apart) is
translated by a random offset of up to ``shift`` pixels per axis, zero-padded.

* ``"sl"``: cross-entropy on ``batch_size`` ID images per step.
* ``"ntl"``: ``batch_size`` ID + ``batch_size`` OOD images per step, one
  forward pass on their concatenation (so the BatchNorm statistics are the
  50/50 mixture an NTL teacher has), loss :func:`ntl_loss`.
* ``"ntl_backdoor"`` (setting ``"backdoor"`` only): as ``"ntl"``, where the OOD
  images are triggered copies of non-target ID images and their KL_t term uses
  their true labels, plus cross-entropy of the triggered images toward
  ``target_class``: the NTL term separates triggered from clean features and
  pushes triggered predictions away from the true digit, the added term sends
  them to the target class.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from dfkd_guard.errors import CheckpointError
from dfkd_guard.serialization import load_plain, save_atomic

from .data import Domain, Setting, SettingName, build_setting
from .metrics import predict
from .models import TEACHER_WIDTHS, ConvNet
from .threads import one_thread

__all__ = [
    "CODE_VERSION",
    "TeacherConfig",
    "TeacherKind",
    "evaluate_teacher",
    "gaussian_mmd",
    "load_or_train_teacher",
    "ntl_loss",
    "shifted",
    "teacher_cache_key",
    "train_teacher",
]

CODE_VERSION = (
    "dfkd_guard.bench.teachers/2"  # 2: cache files carry their digest; one SL key for every setting
)
"""Part of every cache key: bump it whenever training code changes its result."""

TeacherKind = Literal["sl", "ntl", "ntl_backdoor"]


class TeacherConfig(BaseModel):
    """Everything that determines a benchmark teacher.

    Attributes:
        kind: ``"sl"``, ``"ntl"`` or ``"ntl_backdoor"`` (see module docstring).
        setting: benchmark setting whose ``ood_train`` the NTL kinds use.
        data_seed: seed passed to :func:`~dfkd_guard.bench.data.build_setting`.
        target_class: backdoor target class (setting ``"backdoor"``).
        steps: optimiser steps.
        batch_size: images per domain per step (NTL kinds see twice as many).
        lr: initial Adam learning rate (cosine decay to 0).
        shift: largest random translation of a training batch, pixels per axis (0 = none).
        seed: seeds weight initialisation and data order.
        alpha, beta: NTL weights of KL_t and MMD (Wang et al.: 0.1, 0.1).
        widths: teacher CNN stage widths.
        num_classes: number of logits.
        image_size: side of the (square, RGB) training images (see
            :func:`~dfkd_guard.bench.data.build_setting`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: TeacherKind = "sl"
    setting: SettingName = "mnist_m"
    data_seed: int = 0
    target_class: int = Field(0, ge=0, le=9)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    shift: int = Field(0, ge=0)
    seed: int = 0
    alpha: float = Field(0.1, gt=0.0)
    beta: float = Field(0.1, gt=0.0)
    widths: tuple[int, ...] = Field(TEACHER_WIDTHS, min_length=1)
    num_classes: int = Field(10, ge=2)
    image_size: int = Field(32, ge=1, le=32)

    @model_validator(mode="after")
    def _backdoor_needs_backdoor_setting(self) -> TeacherConfig:
        if self.kind == "ntl_backdoor" and self.setting != "backdoor":
            raise ValueError(f"kind 'ntl_backdoor' needs setting 'backdoor', got setting {self.setting!r}")
        return self


# -------------------------------------------------------------------- NTL loss


def gaussian_mmd(x: Tensor, y: Tensor, num_kernels: int = 5, kernel_mul: float = 2.0) -> Tensor:
    """Biased squared MMD between two feature sets with a multi-bandwidth Gaussian kernel.

    ``k(u, v) = sum_j exp(-||u - v||^2 / h_j)`` with ``h_j = h0 * kernel_mul **
    (j - num_kernels // 2)``, ``j = 0..num_kernels-1``, where ``h0`` is the mean
    squared distance between distinct points of the pooled set (treated as a
    constant: no gradient flows through it). Returns
    ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` (diagonals included).

    Args:
        x: ``(n, D)``; y: ``(m, D)``.

    Returns:
        Scalar tensor in ``[0, 2 * num_kernels]``.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, D) and (m, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    pooled = torch.cat([x, y])
    sq_dist = torch.cdist(pooled, pooled).pow(2)
    n = len(pooled)
    h0 = (sq_dist.sum() / (n * n - n)).detach().clamp_min(1e-12)
    kernel = sum(
        torch.exp(-sq_dist / (h0 * kernel_mul ** (j - num_kernels // 2))) for j in range(num_kernels)
    )
    nx = len(x)
    return kernel[:nx, :nx].mean() + kernel[nx:, nx:].mean() - 2.0 * kernel[:nx, nx:].mean()


def ntl_loss(
    logits_id: Tensor,
    labels_id: Tensor,
    logits_ood: Tensor,
    labels_ood: Tensor,
    features_id: Tensor,
    features_ood: Tensor,
    alpha: float = 0.1,
    beta: float = 0.1,
) -> Tensor:
    """Non-transferable learning loss (Wang et al., ICLR 2022).

    ``L = KL_s - min(1, alpha * KL_t) * min(1, beta * MMD(f_s, f_t))`` where
    ``KL_s`` / ``KL_t`` are the mean KL divergences from the one-hot labels to
    the predicted distributions on ID / OOD data (equal to cross-entropy, as a
    one-hot label has zero entropy; computed from log-softmax, so saturated
    logits give no NaN) and ``MMD`` is :func:`gaussian_mmd` of the features.

    Args:
        logits_id, logits_ood: ``(B, C)`` and ``(B', C)`` logits.
        labels_id, labels_ood: ``(B,)`` and ``(B',)`` ``int64`` labels.
        features_id, features_ood: ``(B, D)`` and ``(B', D)`` penultimate features.
        alpha, beta: weights inside the two ``min(1, .)`` caps.

    Returns:
        Scalar loss to minimise.
    """
    kl_source = F.cross_entropy(logits_id, labels_id)
    kl_target = F.cross_entropy(logits_ood, labels_ood)
    mmd = gaussian_mmd(features_id, features_ood)
    return kl_source - torch.clamp(alpha * kl_target, max=1.0) * torch.clamp(beta * mmd, max=1.0)


# -------------------------------------------------------------------- training


def shifted(images: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """``images`` (B, C, H, W) translated by one random offset in ``[-shift, shift]`` per axis, zero-padded."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (shift, shift, shift, shift))
    top, left = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=generator))
    return padded[..., top : top + height, left : left + width]


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless stream of index batches: seeded reshuffles, each epoch covered in order."""
    if n < batch_size:
        raise ValueError(f"domain has {n} images, fewer than batch_size {batch_size}")
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def train_teacher(config: TeacherConfig, data: Setting, device: str | torch.device = "cpu") -> ConvNet:
    """Train one teacher as described in the module docstring.

    Args:
        config: the teacher's configuration (``config.setting`` is not
            re-checked against ``data.name``: tests may pass tiny settings).
        data: ID / OOD training data; only ``id_train`` and ``ood_train`` are used.
        device: training device.

    Returns:
        The trained :class:`~dfkd_guard.bench.models.ConvNet` in eval mode.

    Training runs on one torch thread (:func:`~dfkd_guard.bench.threads.one_thread`),
    whatever the caller's setting: on 2 threads the benchmark's SL teacher came
    out with weights up to 0.3 apart, while the cache keys teachers by config alone.
    """
    if config.kind == "ntl_backdoor" and data.target_class is None:
        raise ValueError(f"kind 'ntl_backdoor' needs a backdoor setting, got setting {data.name!r}")
    with one_thread():
        return _train(config, data, device)


def _train(config: TeacherConfig, data: Setting, device: str | torch.device) -> ConvNet:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = ConvNet(config.widths, config.num_classes).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    order = torch.Generator().manual_seed(config.seed)
    id_batches = _batches(len(data.id_train), config.batch_size, order)
    ood_batches = _batches(len(data.ood_train), config.batch_size, order) if config.kind != "sl" else None

    def take(domain: Domain, idx: Tensor) -> tuple[Tensor, Tensor]:
        images = shifted(domain.images[idx], config.shift, order) if config.shift else domain.images[idx]
        return images.to(device), domain.labels[idx].to(device)

    model.train()
    for _ in range(config.steps):
        x_id, y_id = take(data.id_train, next(id_batches))
        if ood_batches is None:
            loss = F.cross_entropy(model(x_id), y_id)
        else:
            x_ood, y_ood = take(data.ood_train, next(ood_batches))
            features = model.features(torch.cat([x_id, x_ood]))
            logits = model.head(features)
            b = len(x_id)
            loss = ntl_loss(
                logits[:b], y_id, logits[b:], y_ood, features[:b], features[b:], config.alpha, config.beta
            )
            if config.kind == "ntl_backdoor":
                loss = loss + F.cross_entropy(logits[b:], torch.full_like(y_ood, config.target_class))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


# ----------------------------------------------------------------------- cache


def _data_fingerprint(data: Setting, ood: bool = True) -> str:
    digest = hashlib.sha256()
    for domain in (data.id_train, data.ood_train) if ood else (data.id_train,):
        for tensor in (domain.images, domain.labels):
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy())
    return digest.hexdigest()


#: Config fields an SL teacher does not depend on: it never sees the setting's OOD data.
_SL_INDEPENDENT = frozenset({"setting", "data_seed", "target_class"})


def teacher_cache_key(config: TeacherConfig, data: Setting) -> str:
    """SHA-256 hex key of :data:`CODE_VERSION`, the config's JSON and the training data it uses.

    An SL teacher is keyed on its ID training images and the config without
    the setting, so one SL teacher serves every setting with the same ID data.
    """
    digest = hashlib.sha256()
    digest.update(CODE_VERSION.encode())
    sl = config.kind == "sl"
    digest.update(config.model_dump_json(exclude=set(_SL_INDEPENDENT) if sl else None).encode())
    digest.update(_data_fingerprint(data, ood=not sl).encode())
    return digest.hexdigest()


def _cache_path(config: TeacherConfig, cache_dir: Path, key: str) -> Path:
    setting = "" if config.kind == "sl" else f"-{config.setting}"
    return cache_dir / f"teacher-{config.kind}{setting}-{key[:16]}.pt"


def _load_state(path: Path, device: str | torch.device) -> dict[str, Tensor]:
    state = load_plain(path, "teacher cache file")
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(path, "the teacher cache file does not hold a state dict of tensors")
    return {k: v.to(device) for k, v in state.items()}


def load_or_train_teacher(
    config: TeacherConfig,
    cache_dir: str | Path,
    data: Setting | None = None,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> ConvNet:
    """Return the teacher for ``config``, training and caching it on a miss.

    The cache file is ``<cache_dir>/teacher-<kind>-<setting>-<key[:16]>.pt``
    (``teacher-sl-<key[:16]>.pt`` for SL teachers, shared by the settings)
    with ``key = teacher_cache_key(config, data)``: a change of config, data or
    :data:`CODE_VERSION` misses the cache. It is written atomically (temp file
    in the same folder, then :func:`os.replace`) and read with
    ``torch.load(..., weights_only=True)``.

    Args:
        config: teacher configuration.
        cache_dir: cache folder (created if missing).
        data: training data; ``None`` builds
            ``build_setting(config.setting, config.data_seed, target_class=config.target_class)``.
        device: device of the returned model.
        verbose: print cache hits / training time.

    Returns:
        The teacher in eval mode.

    Raises:
        CheckpointError: an existing cache file is corrupt or not a plain state
            dict of this architecture (the message names the file); it is left untouched.
    """
    if data is None:
        data = build_setting(
            config.setting, config.data_seed, target_class=config.target_class, image_size=config.image_size
        )
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = teacher_cache_key(config, data)
    path = _cache_path(config, cache_dir, key)
    if path.exists():
        model = ConvNet(config.widths, config.num_classes).to(device)
        try:
            model.load_state_dict(_load_state(path, device))
        except RuntimeError as exc:
            raise CheckpointError(
                path, f"the cached state dict does not fit the configured teacher: {exc}"
            ) from None
        if verbose:
            print(f"teacher cache hit: {path}")
        return model.eval()
    start = time.perf_counter()
    model = train_teacher(config, data, device)
    if verbose:
        print(
            f"trained {config.kind} teacher on {config.setting} in {time.perf_counter() - start:.1f} s -> {path}"
        )
    save_atomic(model.state_dict(), path)
    return model


# ------------------------------------------------------------------ evaluation


def evaluate_teacher(model: torch.nn.Module, setting: Setting, batch_size: int = 500) -> dict[str, float]:
    """Accuracy of ``model`` on a setting's test sets (model put in eval mode).

    Returns:
        ``"id_acc"``: accuracy on ``id_test``; for close-set settings
        ``"ood_acc"``: accuracy on ``ood_test`` against the true digit labels;
        for the backdoor setting also ``"asr"``: share of ``ood_test``
        (triggered non-target images) predicted as ``target_class``. All in ``[0, 1]``.
    """
    model.eval()
    pred_id = predict(model, setting.id_test.images, batch_size)
    result = {"id_acc": (pred_id == setting.id_test.labels).float().mean().item()}
    if setting.close_set:
        pred_ood = predict(model, setting.ood_test.images, batch_size)
        result["ood_acc"] = (pred_ood == setting.ood_test.labels).float().mean().item()
        if setting.target_class is not None:
            result["asr"] = (pred_ood == setting.target_class).float().mean().item()
    return result
