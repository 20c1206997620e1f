"""Benchmark teachers: ordinary (SL), non-transferable (NTL) and NTL-backdoor.

* :class:`TeacherConfig` fixes everything that determines a teacher.
* :func:`train_teacher` trains one teacher on a :class:`~dfkd_guard.bench.data.Setting`.
* :func:`load_or_train_teacher` caches trained weights on disk, keyed by a hash
  of the config, the training data and :data:`CODE_VERSION`; cache files are
  plain state dicts read with ``weights_only=True``, so loading never runs code.
* :func:`evaluate_teacher` reports ID / OOD accuracy and attack success rate.

Training recipe (all kinds): the config's architecture (a bench component,
:mod:`dfkd_guard.bench.models`), Adam at ``lr`` with cosine decay to 0 over
``steps`` (a constant rate made NTL swing between 33% and 94% ID accuracy in
the prototype), data order and augmentation from a seeded
:class:`torch.Generator`. With ``shift > 0`` every batch (ID and OOD apart) is
translated by a random offset of up to ``shift`` pixels per axis, zero-padded.

* ``"sl"``: cross-entropy on ``batch_size`` ID images per step.
* ``"ntl"``: ``batch_size`` ID + ``batch_size`` OOD images per step, one
  forward pass on their concatenation (so the BatchNorm statistics are the
  50/50 mixture an NTL teacher has), loss: the config's NTL loss
  (:mod:`dfkd_guard.bench.ntl_losses`; default ``wang2022``).
* ``"ntl_backdoor"`` (a setting with a trigger): as ``"ntl"``, where the OOD
  images are triggered copies of non-target images and the NTL loss sees
  their true labels, plus cross-entropy of the triggered images toward
  ``target_class``: the NTL term separates triggered from clean features and
  pushes triggered predictions away from the true digit, the added term sends
  them to the target class.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dfkd_guard.config import ComponentChoice
from dfkd_guard.errors import CheckpointError, PluginError
from dfkd_guard.serialization import load_plain, save_atomic

from .data import Domain, Setting, build_setting
from .metrics import predict
from .models import TEACHER_WIDTHS, BenchNet, build_network
from .registry import Resolved, resolve
from .threads import one_thread

__all__ = [
    "CODE_VERSION",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_NTL_LOSS",
    "SETTING_ID",
    "TeacherConfig",
    "TeacherKind",
    "cache_path",
    "evaluate_teacher",
    "load_or_train_teacher",
    "shifted",
    "teacher_cache_key",
    "train_teacher",
]

CODE_VERSION = (
    "dfkd_guard.bench.teachers/3"  # 3: keys hash TeacherConfig.identity(); file names say what they hold
)
"""Part of every cache key: bump it whenever training code changes its result."""

TeacherKind = Literal["sl", "ntl", "ntl_backdoor"]
#: What a setting id looks like (names runs, teachers, plots and cache files).
SETTING_ID = r"^[A-Za-z][A-Za-z0-9_]*$"
DEFAULT_NTL_LOSS = "wang2022"
DEFAULT_ARCHITECTURE = "convnet"


class TeacherConfig(BaseModel):
    """Everything that determines a benchmark teacher, but its training data.

    Attributes:
        kind: ``"sl"``, ``"ntl"`` or ``"ntl_backdoor"`` (see module docstring).
        setting: id of the setting the NTL kinds are trained on (the name of
            their data); with no data given, the registered setting of this
            name is built (:func:`~dfkd_guard.bench.data.build_setting`).
        data_seed: seed passed to the setting.
        target_class: backdoor target class (``"ntl_backdoor"``).
        steps: optimiser steps.
        batch_size: images per domain per step (NTL kinds see twice as many).
        lr: initial Adam learning rate (cosine decay to 0).
        shift: largest random translation of a training batch, pixels per axis (0 = none).
        seed: seeds weight initialisation and data order.
        ntl_loss: the NTL kinds' loss, a registered name or ``{name, params}``.
        architecture: the network, a registered name or ``{name, params}``.
        widths: stage widths of the network.
        num_classes: number of logits.
        image_size: side of the (square, RGB) training images (see
            :func:`~dfkd_guard.bench.data.build_setting`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: TeacherKind = "sl"
    setting: str = Field("mnist_m", pattern=SETTING_ID)
    data_seed: int = 0
    target_class: int = Field(0, ge=0, le=9)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    shift: int = Field(0, ge=0)
    seed: int = 0
    ntl_loss: ComponentChoice = ComponentChoice(name=DEFAULT_NTL_LOSS)
    architecture: ComponentChoice = ComponentChoice(name=DEFAULT_ARCHITECTURE)
    widths: tuple[int, ...] = Field(TEACHER_WIDTHS, min_length=1)
    num_classes: int = Field(10, ge=2)
    image_size: int = Field(32, ge=1, le=32)

    def resolved_loss(self) -> Resolved:
        """The NTL loss and its validated parameters (raises ConfigError naming ``ntl_loss``)."""
        return resolve("ntl_loss", self.ntl_loss, "ntl_loss")

    def resolved_architecture(self) -> Resolved:
        """The architecture and its validated parameters (raises ConfigError naming ``architecture``)."""
        return resolve("architecture", self.architecture, "architecture")

    def identity(self) -> dict[str, Any]:
        """What determines the teacher as JSON data, every parameter with its value (defaults included).

        The layout is version 0.3's where that version could say it: the NTL
        loss of Wang et al. as its weights ``alpha`` and ``beta``, the bench
        CNN with no entry; any other loss or architecture under ``ntl_loss`` /
        ``architecture`` with its parameters. So the runs of 0.3 keep their ids.
        """
        identity = self.model_dump(mode="json", exclude={"ntl_loss", "architecture"})
        loss = self.resolved_loss()
        if loss.name == DEFAULT_NTL_LOSS:
            identity.update(loss.params.model_dump(mode="json"))
        else:
            identity["ntl_loss"] = loss.record()
        network = self.resolved_architecture()
        if not network.is_default(DEFAULT_ARCHITECTURE):
            identity["architecture"] = network.record()
        return identity


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


def _network(config: TeacherConfig) -> BenchNet:
    return build_network(
        config.resolved_architecture(), config.widths, config.num_classes, config.image_size, "architecture"
    )


def train_teacher(config: TeacherConfig, data: Setting, device: str | torch.device = "cpu") -> BenchNet:
    """Train one teacher as described in the module docstring.

    Args:
        config: the teacher's configuration (``config.setting`` is not
            re-checked against ``data.name``: tests may pass tiny settings).
        data: ID / OOD training data; only ``id_train`` and ``ood_train`` are used.
        device: training device.

    Returns:
        The trained network (:class:`~dfkd_guard.bench.models.BenchNet`) in eval mode.

    Raises:
        ValueError: ``"ntl_backdoor"`` on data without the config's target class.
        PluginError: the NTL loss raised or returned no finite scalar with grad.

    Training runs on one torch thread (:func:`~dfkd_guard.bench.threads.one_thread`),
    whatever the caller's setting: on 2 threads the benchmark's SL teacher came
    out with weights up to 0.3 apart, while the cache keys teachers by config alone.
    """
    if config.kind == "ntl_backdoor" and data.target_class != config.target_class:
        raise ValueError(
            f"kind 'ntl_backdoor' with target class {config.target_class} needs a backdoor setting with that "
            f"target, got setting {data.name!r} with target class {data.target_class}"
        )
    with one_thread():
        return _train(config, data, device)


def _train(config: TeacherConfig, data: Setting, device: str | torch.device) -> BenchNet:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = _network(config).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    order = torch.Generator().manual_seed(config.seed)
    id_batches = _batches(len(data.id_train), config.batch_size, order)
    ntl = (
        (config.resolved_loss(), _batches(len(data.ood_train), config.batch_size, order))
        if config.kind != "sl"
        else None
    )

    def take(domain: Domain, idx: Tensor) -> tuple[Tensor, Tensor]:
        images = shifted(domain.images[idx], config.shift, order) if config.shift else domain.images[idx]
        return images.to(device), domain.labels[idx].to(device)

    model.train()
    for step in range(config.steps):
        x_id, y_id = take(data.id_train, next(id_batches))
        if ntl is None:
            loss = F.cross_entropy(model(x_id), y_id)
        else:
            loss_fn, ood_batches = ntl
            x_ood, y_ood = take(data.ood_train, next(ood_batches))
            features = model.features(torch.cat([x_id, x_ood]))
            logits = model.head(features)
            b = len(x_id)
            loss = _ntl_step(loss_fn, step, logits[:b], y_id, logits[b:], y_ood, features[:b], features[b:])
            if config.kind == "ntl_backdoor":
                loss = loss + F.cross_entropy(logits[b:], torch.full_like(y_ood, config.target_class))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


def _ntl_step(
    loss_fn: Resolved,
    step: int,
    logits_id: Tensor,
    labels_id: Tensor,
    logits_ood: Tensor,
    labels_ood: Tensor,
    features_id: Tensor,
    features_ood: Tensor,
) -> Tensor:
    """The NTL loss of one step, its contract checked (a finite scalar with grad)."""
    try:
        loss = loss_fn(
            logits_id=logits_id,
            labels_id=labels_id,
            logits_ood=logits_ood,
            labels_ood=labels_ood,
            features_id=features_id,
            features_ood=features_ood,
        )
    except Exception as exc:  # re-raised naming the loss
        raise PluginError(loss_fn.name, "ntl_loss", f"raised {exc!r} at step {step}") from exc
    if not isinstance(loss, Tensor) or loss.ndim != 0 or not loss.requires_grad:
        raise PluginError(loss_fn.name, "ntl_loss", f"returned {loss!r}, not a scalar tensor with grad")
    if not bool(torch.isfinite(loss)):
        raise PluginError(loss_fn.name, "ntl_loss", f"returned {float(loss)} at step {step}")
    return loss


# ----------------------------------------------------------------------- cache


def _data_fingerprint(data: Setting, ood: bool = True) -> str:
    digest = hashlib.sha256()
    for domain in (data.id_train, data.ood_train) if ood else (data.id_train,):
        for tensor in (domain.images, domain.labels):
            digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy())
    return digest.hexdigest()


#: Identity fields an SL teacher does not depend on: it never sees the setting's OOD data nor an NTL loss.
_SL_INDEPENDENT = frozenset({"setting", "data_seed", "target_class", "alpha", "beta", "ntl_loss"})


def teacher_cache_key(config: TeacherConfig, data: Setting) -> str:
    """SHA-256 hex key of :data:`CODE_VERSION`, the config's :meth:`~TeacherConfig.identity` and its training data.

    The data's tensors carry everything the setting changes (its parameters,
    its trigger); the identity the NTL loss and the architecture with their
    parameters. An SL teacher is keyed on its ID training images and the
    identity without the setting and the loss, so one SL teacher serves every
    setting with the same ID data.
    """
    sl = config.kind == "sl"
    identity = {k: v for k, v in config.identity().items() if not (sl and k in _SL_INDEPENDENT)}
    digest = hashlib.sha256()
    digest.update(CODE_VERSION.encode())
    digest.update(json.dumps(identity, sort_keys=True, allow_nan=False).encode())
    digest.update(_data_fingerprint(data, ood=not sl).encode())
    return digest.hexdigest()


def _file_part(name: str) -> str:
    """``name`` fit for a file name: ``module:attribute`` as ``module.attribute``, other odd characters as ``_``."""
    return re.sub(r"[^A-Za-z0-9_.+]", "_", name.replace(":", "."))


def cache_path(config: TeacherConfig, data: Setting, cache_dir: Path, key: str) -> Path:
    """``teacher-<kind>[-<setting>[+<trigger>]-<ntl loss>]-<architecture>-<key[:16]>.pt`` in ``cache_dir``.

    The setting is the data's (the one trained on); SL teachers name no setting nor loss.
    """
    parts = [config.kind]
    if config.kind != "sl":
        setting = data.name + (f"+{data.trigger}" if data.trigger is not None else "")
        parts += [setting, config.resolved_loss().name]
    parts += [config.resolved_architecture().name, key[:16]]
    return cache_dir / ("teacher-" + "-".join(_file_part(part) for part in parts) + ".pt")


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
) -> BenchNet:
    """Return the teacher for ``config``, training and caching it on a miss.

    The cache file is :func:`cache_path`, e.g.
    ``teacher-ntl-mnist_m-wang2022-convnet-<key[:16]>.pt``
    (``teacher-sl-convnet-<key[:16]>.pt`` for SL teachers, shared by the settings)
    with ``key = teacher_cache_key(config, data)``: a change of config, data or
    :data:`CODE_VERSION` misses the cache. It is written atomically (temp file
    in the same folder, then :func:`os.replace`) and read with
    ``torch.load(..., weights_only=True)``.

    Args:
        config: teacher configuration.
        cache_dir: cache folder (created if missing).
        data: training data; ``None`` builds the registered setting ``config.setting``
            (with the target class of an ``"ntl_backdoor"`` teacher).
        device: device of the returned model.
        verbose: print cache hits / training time.

    Returns:
        The teacher in eval mode.

    Raises:
        ValueError: an NTL teacher's ``config.setting`` is not ``data.name`` (the
            file would name another setting than the one trained on).
        CheckpointError: an existing cache file is corrupt or not a plain state
            dict of this architecture (the message names the file); it is left untouched.
    """
    if data is None:
        target = config.target_class if config.kind == "ntl_backdoor" else None
        data = build_setting(config.setting, config.data_seed, config.image_size, target_class=target)
    if config.kind != "sl" and data.name != config.setting:
        raise ValueError(
            f"the {config.kind} teacher of setting {config.setting!r} was given the data of setting {data.name!r}"
        )
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_path(config, data, cache_dir, teacher_cache_key(config, data))
    if path.exists():
        model = _network(config).to(device)
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
            f"trained {config.kind} teacher on {data.name} in {time.perf_counter() - start:.1f} s -> {path}"
        )
    save_atomic(model.state_dict(), path)
    return model


# ------------------------------------------------------------------ evaluation


def evaluate_teacher(model: torch.nn.Module, setting: Setting, batch_size: int = 500) -> dict[str, float]:
    """Accuracy of ``model`` on a setting's test sets (model put in eval mode).

    Returns:
        ``"id_acc"``: accuracy on ``id_test``; for close-set settings
        ``"ood_acc"``: accuracy on ``ood_test`` against the true digit labels;
        for backdoor settings (with a trigger) ``"asr"``: share of ``ood_test``
        (triggered non-target images) predicted as ``target_class``. All in ``[0, 1]``.
    """
    model.eval()
    pred_id = predict(model, setting.id_test.images, batch_size)
    result = {"id_acc": (pred_id == setting.id_test.labels).float().mean().item()}
    if setting.close_set or setting.target_class is not None:
        pred_ood = predict(model, setting.ood_test.images, batch_size)
        if setting.close_set:
            result["ood_acc"] = (pred_ood == setting.ood_test.labels).float().mean().item()
        if setting.target_class is not None:
            result["asr"] = (pred_ood == setting.target_class).float().mean().item()
    return result
