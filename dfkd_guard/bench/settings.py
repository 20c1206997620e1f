"""Settings of the benchmark: the built-in ones, a config's setting entry, and how it becomes data.

A setting is a bench component of kind ``setting`` (:mod:`dfkd_guard.bench.registry`)
that gives the OOD domain of one split; the ID domain is always the vendored
MNIST. Built-in: ``mnist_m``, ``rotated_mnist``, ``backdoor``, ``fashion``
(see :func:`~dfkd_guard.bench.data.build_setting`).

A config's entry (:class:`SettingSpec`, one per setting id) names a setting,
its parameters, and optionally a backdoor trigger with its target class. With
a trigger, the setting's OOD images whose label is not the target class (all
of them in an open-set setting) are stamped with the trigger at 32x32; they
keep their true labels, and the setting's NTL teacher is the NTL-backdoor
teacher (:mod:`dfkd_guard.bench.teachers`). :meth:`ResolvedSetting.build`
returns the :class:`~dfkd_guard.bench.data.Setting`, averaged down to the
config's image size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from dfkd_guard.config import ComponentChoice, config_error
from dfkd_guard.errors import ConfigError, PluginError

from .data import (
    Domain,
    Setting,
    load_digits,
    load_fashion,
    load_photos,
    make_mnist_m,
    make_rotated_mnist,
    subseed,
    to_rgb32,
)
from .registry import Resolved, default_registry, resolve, setting

__all__ = [
    "SETTINGS",
    "SPLITS",
    "FashionParams",
    "ResolvedSetting",
    "RotatedParams",
    "SettingSpec",
    "backdoor",
    "fashion",
    "mnist_m",
    "resolve_setting",
    "rotated_mnist",
]

#: The built-in settings, in the default report order.
SETTINGS: tuple[str, ...] = ("mnist_m", "rotated_mnist", "backdoor", "fashion")
SPLITS: tuple[str, ...] = ("train", "test")


# -- the built-in settings ---------------------------------------------------------


@setting("mnist_m")
def mnist_m(digits: Tensor, labels: Tensor, split: str, seed: int) -> tuple[Tensor, Tensor]:
    """MNIST-M (close-set): each digit as an inverted-colour stroke on a crop of a vendored photograph."""
    return make_mnist_m(digits, load_photos(), subseed(seed, f"mnist_m/{split}")), labels


class RotatedParams(BaseModel):
    """Parameters of the ``rotated_mnist`` setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    angle: float = Field(
        default=30.0, ge=0.0, le=180.0, description="rotation, degrees; direction seeded per digit"
    )


@setting("rotated_mnist", RotatedParams)
def rotated_mnist(
    digits: Tensor, labels: Tensor, split: str, seed: int, params: RotatedParams
) -> tuple[Tensor, Tensor]:
    """Rotated MNIST (close-set): each digit turned by `angle` degrees, clockwise or not."""
    return make_rotated_mnist(digits, subseed(seed, f"rotated/{split}"), params.angle), labels


@setting("backdoor", default_trigger="patch")
def backdoor(digits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """MNIST with a backdoor trigger (default: the 4-pixel white patch, target class 0)."""
    return to_rgb32(digits), labels


class FashionParams(BaseModel):
    """Parameters of the ``fashion`` setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str | None = Field(
        default=None, description="Fashion-MNIST IDX folder (see load_fashion); None: the vendored subset"
    )


@setting("fashion", FashionParams, close_set=False)
def fashion(split: str, params: FashionParams) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (open-set): clothing images, their labels not digits."""
    images, labels = load_fashion(split, params.root)  # type: ignore[arg-type]
    return to_rgb32(images), labels


# -- a config's setting ------------------------------------------------------------


class SettingSpec(BaseModel):
    """One setting of a bench config, under its id: ``[settings.<id>]`` in TOML.

    Every field is optional: ``[settings.mnist_m]`` (or the id in a list,
    ``settings = ["mnist_m"]``) is the registered setting of that name with its
    defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    setting: str | None = Field(
        default=None,
        description="a registered setting or 'package.module:attribute'; default: the id",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated by the setting's params model"
    )
    trigger: ComponentChoice | None = Field(
        default=None,
        description="backdoor trigger, a name or {name, params}; default: the setting's own ('backdoor': 'patch') or none",
    )
    target_class: int | None = Field(
        default=None,
        ge=0,
        le=9,
        description="the class the trigger sends images to; needs a trigger; default 0",
    )
    ntl_loss: ComponentChoice | None = Field(
        default=None, description="the NTL teachers' loss in this setting; default: the config's ntl_loss"
    )


@dataclass(frozen=True)
class ResolvedSetting:
    """A setting entry whose setting and trigger exist and whose parameters are validated.

    :param id: the setting's id in the config (names runs, teachers and plots).
    :param setting: the setting component and its parameters.
    :param trigger: the backdoor trigger and its parameters; None: no backdoor.
    :param target_class: the backdoor's target class; None without a trigger.
    """

    id: str
    setting: Resolved
    trigger: Resolved | None
    target_class: int | None

    @property
    def close_set(self) -> bool:
        """The OOD labels are digit labels."""
        return self.setting.component.close_set

    def record(self) -> dict[str, Any]:
        """What the setting is, with every parameter (JSON data)."""
        return {
            "id": self.id,
            "setting": self.setting.record(),
            "close_set": self.close_set,
            "trigger": self.trigger.record() if self.trigger is not None else None,
            "target_class": self.target_class,
        }

    def describe(self) -> dict[str, Any]:
        """:meth:`record` with the summary and source of the setting and the trigger."""
        return {
            **self.record(),
            "setting": self.setting.describe(),
            "trigger": self.trigger.describe() if self.trigger is not None else None,
        }

    def is_plain(self) -> bool:
        """Whether this is the registered setting named like the id, with its defaults (trigger included)."""
        default = self.setting.component.default_trigger
        trigger_plain = (
            self.trigger is None
            if default is None
            else self.trigger is not None and self.trigger.is_default(default)
        )
        return self.setting.is_default(self.id) and trigger_plain and self.target_class in (None, 0)

    def build(self, seed: int, image_size: int = 32, root: str | Path | None = None) -> Setting:
        """The setting's ID and OOD train / test domains, images ``(N, 3, image_size, image_size)``.

        :param seed: the config's ``data_seed``, passed to the setting.
        :param image_size: 32 or a divisor of 32 (32x32 images averaged over squares).
        :param root: MNIST IDX folder; None: the vendored subset.
        :raises PluginError: the setting or the trigger raised, or broke its contract.
        """
        if image_size < 1 or 32 % image_size:
            raise ValueError(f"image_size must divide 32, got {image_size}")
        factor = 32 // image_size
        domains: dict[str, Domain] = {}
        clean: Tensor | None = None
        for split in SPLITS:
            digits, labels = load_digits(split, root)  # type: ignore[arg-type]
            domains[f"id_{split}"] = Domain(f"mnist/{split}", to_rgb32(digits), labels)
            images, ood_labels = self._ood(digits, labels, split, seed)
            if self.trigger is not None:
                keep = (
                    ood_labels != self.target_class
                    if self.close_set
                    else torch.ones_like(ood_labels, dtype=bool)
                )
                images, ood_labels = images[keep], ood_labels[keep]
                if split == "test":
                    clean = images
                images = _triggered(self.trigger, images)
            domains[f"ood_{split}"] = Domain(f"{self.id}/{split}", images, ood_labels)
        small = {key: _downsampled(domain, factor) for key, domain in domains.items()}
        return Setting(
            name=self.id,
            **small,
            close_set=self.close_set,
            target_class=self.target_class,
            clean_ood_test=_pooled(clean, factor) if clean is not None else None,
            trigger=self.trigger.name if self.trigger is not None else None,
        )

    def _ood(self, digits: Tensor, labels: Tensor, split: str, seed: int) -> tuple[Tensor, Tensor]:
        name = self.setting.name
        try:
            result = self.setting(digits=digits.clone(), labels=labels.clone(), split=split, seed=seed)
        except Exception as exc:  # re-raised naming the setting
            raise PluginError(name, "setting", f"raised {exc!r} building split {split!r}") from exc
        if not (
            isinstance(result, (tuple, list))
            and len(result) == 2
            and all(isinstance(t, Tensor) for t in result)
        ):
            raise PluginError(
                name, "setting", f"returned {type(result).__name__}, not (images, labels) tensors"
            )
        images, ood_labels = result
        if images.is_floating_point():
            images = images.float()
        if not (ood_labels.is_floating_point() or ood_labels.is_complex() or ood_labels.dtype == torch.bool):
            ood_labels = ood_labels.long()
        problem = _image_problem(images, None)
        if problem is None and (ood_labels.dtype != torch.int64 or ood_labels.shape != (len(images),)):
            problem = (
                f"labels must be integers ({len(images)},), got {ood_labels.dtype} {tuple(ood_labels.shape)}"
            )
        if problem is None and self.close_set and bool(((ood_labels < 0) | (ood_labels > 9)).any()):
            problem = "a close-set setting's labels must be digits 0..9"
        if problem is not None:
            raise PluginError(name, "setting", f"split {split!r}: {problem}")
        return images, ood_labels


def _triggered(trigger: Resolved, images: Tensor) -> Tensor:
    """``images`` with the trigger stamped on (a copy), its contract checked."""
    try:
        triggered = trigger(images=images.clone())
    except Exception as exc:  # re-raised naming the trigger
        raise PluginError(trigger.name, "trigger", f"raised {exc!r}") from exc
    if isinstance(triggered, Tensor) and triggered.is_floating_point():
        triggered = triggered.float()
    problem = _image_problem(triggered, tuple(images.shape))
    if problem is None and torch.equal(triggered, images):
        problem = "left the images unchanged"
    if problem is not None:
        raise PluginError(trigger.name, "trigger", problem)
    return triggered


def _image_problem(images: Any, shape: tuple[int, ...] | None) -> str | None:
    """What is wrong with images that should be float32 (M, 3, 32, 32) in [0, 1] (of ``shape``); None if nothing."""
    if not isinstance(images, Tensor):
        return f"returned {type(images).__name__}, not a tensor"
    if (
        images.dtype != torch.float32
        or images.ndim != 4
        or images.shape[1:] != (3, 32, 32)
        or not len(images)
    ):
        return f"images must be float32 (M>=1, 3, 32, 32), got {images.dtype} {tuple(images.shape)}"
    if shape is not None and tuple(images.shape) != shape:
        return f"images must keep their shape {shape}, got {tuple(images.shape)}"
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0.0 or float(images.max()) > 1.0:
        return "images must be finite and in [0, 1]"
    return None


def _pooled(images: Tensor, factor: int) -> Tensor:
    """``images`` averaged over ``factor`` x ``factor`` pixel squares."""
    return images if factor == 1 else F.avg_pool2d(images, factor)


def _downsampled(domain: Domain, factor: int) -> Domain:
    return Domain(domain.name, _pooled(domain.images, factor), domain.labels)


def resolve_setting(
    id: str, spec: SettingSpec, field: str, import_dir: Path | None = None
) -> ResolvedSetting:
    """Find the setting and trigger of ``spec`` and validate their parameters.

    :param id: the setting's id in the config; the setting's name when ``spec.setting`` is None.
    :param field: the dotted config field of ``spec`` (``"settings.mine"``), for errors.
    :param import_dir: folder first on the import path for ``module:attribute`` names.
    :raises ConfigError: naming ``<field>.setting``, ``<field>.params.<parameter>``,
        ``<field>.trigger...`` or ``<field>.target_class``.
    """
    name = spec.setting or id
    component, source = default_registry().find("setting", name, f"{field}.setting", import_dir)
    try:
        params = component.params.model_validate(spec.params)
    except ValidationError as exc:
        raise config_error(exc, prefix=f"{field}.params") from exc
    choice = spec.trigger or component.default_trigger
    trigger = resolve("trigger", choice, f"{field}.trigger", import_dir) if choice is not None else None
    if trigger is None and spec.target_class is not None:
        raise ConfigError(
            f"{field}.target_class", f"setting {name!r} has no trigger to send to a target class"
        )
    target = None if trigger is None else spec.target_class or 0
    return ResolvedSetting(id, Resolved(name, component, params, source), trigger, target)
