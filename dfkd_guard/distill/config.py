"""The config of ``dfkd-guard distill``: which method distils which teacher into which student, and where.

In TOML (``examples/distill/digits.toml`` is a complete one)::

    method = "dfq"                 # dfq | dfad | zskt | dafl (vanilla generator) | deepinversion | cmi
    iterations = 400
    seed = 0
    device = "auto"                # cpu | cuda | cuda:N | mps | auto
    output = "runs/digits-dfq"

    [images]
    shape = [3, 32, 32]
    normalization = { mean = [0.5], std = [0.5] }

    [teacher]
    model = "my_models:Teacher"    # any 'package.module:callable' returning an nn.Module
    kwargs = { num_classes = 10 }
    weights = "teacher.pt"         # a state dict, read weights-only

    [student]
    model = "torchvision.models:resnet18"
    kwargs = { num_classes = 10 }

    [adapter]                      # the method's own settings, over its defaults (dfq: the DFQ preset)
    batch_size = 64

    [guard]                        # a GuardConfig; [guard] enabled = false runs the method unguarded

Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dfkd_guard.adapters.cmi import CMIConfig
from dfkd_guard.adapters.deepinversion import DeepInversionConfig
from dfkd_guard.adapters.vanilla import PRESETS, VanillaConfig
from dfkd_guard.config import FileConfig, GuardConfig
from dfkd_guard.distill.models import ModelSpec
from dfkd_guard.normalization import Normalization

__all__ = ["METHODS", "DistillConfig", "EvaluationSpec", "ImageSpec", "OptimizerSpec"]

Method = Literal["dfq", "dfad", "zskt", "dafl", "deepinversion", "cmi"]
METHODS: tuple[str, ...] = ("dfq", "dfad", "zskt", "dafl", "deepinversion", "cmi")
_MAX_ITERATIONS = 10_000_000


class ImageSpec(BaseModel):
    """The teacher's input: shape and how [0, 1] pixels are normalised for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    shape: tuple[StrictInt, StrictInt, StrictInt] = Field(description="(C, H, W) the teacher takes")
    normalization: Normalization = Field(
        default_factory=Normalization, description="mean / std per channel, pixel units"
    )

    @model_validator(mode="after")
    def _positive(self) -> ImageSpec:
        if min(self.shape) < 1:
            raise ValueError(f"shape must be positive, got {self.shape}")
        return self


class OptimizerSpec(BaseModel):
    """The student's optimiser and schedule (the CMI / Fast-DFKD scripts: SGD, cosine)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["sgd", "adam"] = Field(default="sgd", description="optimiser of the student")
    lr: float = Field(default=0.1, gt=0.0, le=10.0, description="initial learning rate")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0, description="L2 weight decay")
    schedule: Literal["cosine", "constant"] = Field(
        default="cosine", description="learning-rate schedule over the iterations"
    )

    def build(
        self, params: Any, iterations: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """The optimiser over ``params`` and its scheduler (None for a constant rate)."""
        optimizer: torch.optim.Optimizer
        if self.kind == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule == "constant":
            return optimizer, None
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(iterations, 1))


class EvaluationSpec(BaseModel):
    """Optional labelled images to report accuracy on (the run itself never needs data).

    Either ``data``: an ``.npz`` file (read without pickles) with ``images``
    (N, C, H, W) [0, 1] floats or uint8 pixels and ``labels`` (N,) integers;
    or ``dataset``: a ``'package.module:callable'`` returning that pair of tensors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    data: str | None = Field(default=None, description=".npz file with 'images' and 'labels'")
    dataset: str | None = Field(default=None, description="'package.module:callable' -> (images, labels)")
    every: StrictInt = Field(
        default=0, ge=0, le=_MAX_ITERATIONS, description="iterations between evaluations (0: at the end)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> EvaluationSpec:
        if (self.data is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'data' (an .npz file) and 'dataset' (a callable)")
        return self


class DistillConfig(FileConfig):
    """Everything ``dfkd-guard distill`` runs. Immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: Method = Field(
        description="dfq, dfad, zskt, dafl (vanilla generator presets), deepinversion or cmi"
    )
    teacher: ModelSpec = Field(description="the teacher to distil; its weights are never changed")
    student: ModelSpec = Field(description="the student to train (weights: a starting point, optional)")
    generator: ModelSpec = Field(
        default=ModelSpec(model="dfkd_guard.adapters.generator:Generator"),
        description="generator of dfq / dfad / zskt / dafl / cmi; latent_dim, out_channels and img_size "
        "are filled in from latent_dim and images.shape unless given",
    )
    latent_dim: StrictInt = Field(
        default=256, ge=1, le=1_000_000, description="size of the generator's code z"
    )
    images: ImageSpec = Field(description="the teacher's input shape and normalisation")
    adapter: dict[str, Any] = Field(
        default_factory=dict, description="the method's settings over its defaults (docs/adapters.md)"
    )
    guard: GuardConfig = Field(default_factory=GuardConfig, description="the guard (docs/components.md)")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="the student's optimiser")
    iterations: StrictInt = Field(default=1000, ge=1, le=_MAX_ITERATIONS, description="DFKD iterations")
    kd_steps: StrictInt = Field(default=5, ge=1, le=10_000, description="student steps per iteration")
    seed: StrictInt = Field(default=0, ge=0, description="seeds torch, numpy and Python")
    device: str = Field(
        default="auto", description="cpu, cuda, cuda:N, mps, or auto (cuda, then mps, then cpu)"
    )
    precision: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="bfloat16: synthesis and student steps under torch.autocast; the guard's scoring and "
        "the distillation losses stay float32",
    )
    output: str = Field(default="runs/distill", description="run folder: checkpoint, logs, student, report")
    checkpoint_every: StrictInt = Field(
        default=50, ge=1, le=_MAX_ITERATIONS, description="iterations between checkpoints"
    )
    log_every: StrictInt = Field(
        default=10, ge=1, le=_MAX_ITERATIONS, description="iterations between progress lines"
    )
    evaluation: EvaluationSpec | None = Field(
        default=None, description="labelled images to report accuracy on"
    )

    @field_validator("adapter")
    @classmethod
    def _adapter_fits_the_method(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method is not None:
            try:
                _adapter_config(method, value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"{where}: {first['msg']} (settings of method {method!r})") from None
        return value

    @field_validator("guard")
    @classmethod
    def _one_normalization(cls, value: GuardConfig, info: ValidationInfo) -> GuardConfig:
        images = info.data.get("images")
        if images is not None and value.normalization not in (Normalization(), images.normalization):
            raise ValueError(
                "guard.normalization differs from images.normalization; set it once, in [images]"
            )
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        _device(value)
        return value

    def adapter_config(self) -> VanillaConfig | DeepInversionConfig | CMIConfig:
        """The method's config: its defaults (the preset, for vanilla methods) updated by ``adapter``."""
        return _adapter_config(self.method, self.adapter)

    def guard_config(self) -> GuardConfig:
        """The guard's config, with the images' normalisation."""
        return self.guard.model_copy(update={"normalization": self.images.normalization})

    def torch_device(self) -> torch.device:
        """The device to run on (``auto``: CUDA if available, then MPS, then the CPU)."""
        return _device(self.device)


def _adapter_config(method: str, settings: dict[str, Any]) -> VanillaConfig | DeepInversionConfig | CMIConfig:
    if method == "deepinversion":
        return DeepInversionConfig.model_validate(settings)
    if method == "cmi":
        return CMIConfig.model_validate(settings)
    return VanillaConfig.model_validate({**PRESETS[method], **settings})


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {name!r}")
    return device
