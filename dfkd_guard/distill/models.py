"""Networks named in a distill config: an importable constructor, its keyword arguments, a weights file.

``model = "package.module:function"`` names any callable that returns an
``nn.Module`` (a class, a factory such as ``torchvision.models:resnet18``);
``kwargs`` are passed to it. Modules are imported the usual way, with the
config file's folder first on the import path, so a ``my_models.py`` beside
the config is found as ``my_models:Teacher``. Importing a module runs its
code, as any import does: name only modules you trust. Weights are read with
``torch.load(weights_only=True)``, which never executes code from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from dfkd_guard.errors import CheckpointError, ConfigError
from dfkd_guard.imports import import_named
from dfkd_guard.serialization import FILE_FORMAT, load_weights_only, verified_content

__all__ = ["ModelSpec", "build_model", "load_state_dict_file"]


class ModelSpec(BaseModel):
    """A network to build: ``model(**kwargs)``, then ``weights`` loaded into it if given."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(description="'package.module:callable' returning an nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the callable")
    weights: str | None = Field(
        default=None, description="state-dict file (relative to the config's folder), loaded weights-only"
    )

    @field_validator("model")
    @classmethod
    def _module_and_name(cls, value: str) -> str:
        module, sep, name = value.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"expected 'package.module:callable', got {value!r}")
        return value


def _import(spec: ModelSpec, field: str, base_dir: Path) -> Any:
    module_name, _, attribute = spec.model.partition(":")
    module = import_named(module_name, base_dir, f"{field}.model")
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field}.model", f"{module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{field}.model", f"{spec.model!r} is not callable")
    return target


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save(model.state_dict())`` file or a dfkd-guard file, read weights-only.

    :raises CheckpointError: naming the file when it is missing, not loadable
        without executing code, or not a dict of tensors.
    """
    state = load_weights_only(path, "weights file")
    if isinstance(state, dict) and state.get("format") == FILE_FORMAT:
        state = verified_content(state, path, "weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, "a weights file must hold a state dict: names mapped to tensors")
    return state


def build_model(spec: ModelSpec, field: str, base_dir: Path) -> nn.Module:
    """``spec.model(**spec.kwargs)`` with ``spec.weights`` loaded (strict names and shapes).

    :param field: the config field of ``spec`` (``"teacher"``), named in errors.
    :param base_dir: the config's folder: first on the import path, and the base of ``weights``.
    :raises ConfigError: the callable cannot be imported or called, or returns no ``nn.Module``.
    :raises CheckpointError: the weights file is missing, unsafe, or does not fit the network.
    """
    factory = _import(spec, field, base_dir)
    try:
        model = factory(**spec.kwargs)
    except TypeError as exc:
        raise ConfigError(f"{field}.kwargs", f"{spec.model}(**kwargs) failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{field}.model", f"{spec.model} returned {type(model).__name__}, not an nn.Module")
    if spec.weights is not None:
        path = (base_dir / spec.weights).resolve()
        try:
            model.load_state_dict(load_state_dict_file(path))
        except RuntimeError as exc:
            raise CheckpointError(path, f"the weights do not fit {spec.model}: {exc}") from None
    return model
