"""Pixel-scale bookkeeping between [0, 1] images and what the teacher sees.

Teachers are trained on normalised images ``(x - mean) / std`` where ``x`` is in
[0, 1]. Perturbation budgets (``eps``, step sizes) are given in pixel units of
[0, 1] images and are converted here into the teacher's input units.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Normalization"]


class Normalization(BaseModel):
    """Per-channel normalisation applied to [0, 1] images before the teacher.

    The identity (mean 0, std 1) means the teacher takes [0, 1] images directly.
    A single value applies to every channel.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: tuple[float, ...] = Field(default=(0.0,), description="per-channel mean, pixel units")
    std: tuple[float, ...] = Field(default=(1.0,), description="per-channel std, pixel units, > 0")

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0 in every channel, got {self.std}")
        return self

    def _per_channel(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        channels = like.shape[1]
        if len(values) not in (1, channels):
            raise ValueError(
                f"normalisation has {len(values)} channels but images have {channels} "
                f"(shape {tuple(like.shape)})"
            )
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

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
