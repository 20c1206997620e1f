"""Pixel-scale bookkeeping between [0, 1] images and what the teacher sees.

Teachers are trained on normalised images ``(x - mean) / std`` where ``x`` is in
[0, 1]. Perturbation budgets (``eps``, step sizes) are given in pixel units of
[0, 1] images and are converted here into the teacher's input units.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, field_validator, model_validator

__all__ = ["Normalization"]


class Normalization(BaseModel):
    """Per-channel normalisation applied to [0, 1] images before the teacher.

    The identity (mean 0, std 1) means the teacher takes [0, 1] images directly.
    A single value applies to every channel. Accepts what users already have:
    ``{"mean": [...], "std": [...]}``, a ``(mean, std)`` pair, or any object
    with ``mean`` and ``std`` attributes, such as ``torchvision.transforms.Normalize``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    mean: tuple[StrictFloat, ...] = Field(
        default=(0.0,), min_length=1, description="per-channel mean, pixel units, finite"
    )
    std: tuple[StrictFloat, ...] = Field(
        default=(1.0,), min_length=1, description="per-channel std, pixel units, finite, > 0"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_transform(cls, value: Any) -> Any:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return {"mean": value[0], "std": value[1]}
        if not isinstance(value, (dict, BaseModel)) and hasattr(value, "mean") and hasattr(value, "std"):
            return {"mean": value.mean, "std": value.std}
        return value

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _channel_values(cls, value: Any) -> Any:
        return _floats(value)

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0 in every channel, got {self.std}")
        return self

    @property
    def is_identity(self) -> bool:
        """True when images are taken as [0, 1] pixels unchanged (mean 0, std 1 in every channel)."""
        return all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)

    def _per_channel(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        channels = like.shape[1]
        if len(values) not in (1, channels):
            raise ValueError(
                f"normalisation has {len(values)} channels but images have {channels} "
                f"(shape {tuple(like.shape)})"
            )
        return _channel_tensor(tuple(values), like.dtype, like.device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher input ``(x - mean) / std`` from [0, 1] pixel images (B, C, H, W)."""
        return (images - self._per_channel(self.mean, images)) / self._per_channel(self.std, images)

    def pixel_to_input(self, amount: float, like: torch.Tensor) -> torch.Tensor:
        """A pixel-unit length (e.g. ``eps = 8/255``) in the teacher's input units.

        :returns: tensor broadcastable to ``like`` (1, C, 1, 1): ``amount / std``.
        """
        return amount / self._per_channel(self.std, like)

    def input_range(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-input values of pixel 0 and pixel 1, each (1, C, 1, 1)."""
        mean = self._per_channel(self.mean, like)
        std = self._per_channel(self.std, like)
        return (0.0 - mean) / std, (1.0 - mean) / std


@functools.lru_cache(maxsize=64)
def _channel_tensor(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Channel values as a (1, C, 1, 1) tensor, made once per dtype and device: no copy to a GPU per call.

    Callers only read it (it is shared).
    """
    return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)


def _floats(values: Any) -> Any:
    """A number, sequence, tensor or array of channel values as a tuple of floats.

    Anything else (strings, booleans) is left for validation to refuse.
    """
    if hasattr(values, "tolist") and hasattr(values, "reshape"):  # tensors, NumPy arrays and scalars
        values = values.reshape(-1).tolist()
    if _is_number(values):
        return (float(values),)
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        return tuple(float(v) if _is_number(v) else v for v in values)
    return values


def _is_number(value: Any) -> bool:
    """A real number (Python or NumPy) that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
