"""A setting and a trigger of our own for ``dfkd-guard bench`` (see README.md beside this file).

* setting ``inverted``: MNIST with inverted grey levels, dark digits on a
  light background of a random tint per image (close-set: the labels are the
  digits);
* trigger ``cross``: a plus sign of one value near a corner.

A bench config names them ``"my_settings:inverted"`` and ``"my_settings:cross"``:
the bench imports this module with the config file's folder first on the
import path.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dfkd_guard.bench.data import subseed, to_rgb32
from dfkd_guard.bench.registry import setting, trigger
from dfkd_guard.bench.triggers import trigger_origin


class InvertedParams(BaseModel):
    """Parameters of the ``inverted`` setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    background: float = Field(default=0.8, gt=0.0, le=1.0, description="brightest background level")


@setting("inverted", InvertedParams)
def inverted(
    digits: Tensor, labels: Tensor, split: str, seed: int, params: InvertedParams
) -> tuple[Tensor, Tensor]:
    """MNIST with inverted grey levels: dark digits on a light background, tinted per image (close-set)."""
    images = to_rgb32(digits)  # (N, 3, 32, 32) in [0, 1], the digit bright on black
    generator = torch.Generator().manual_seed(subseed(seed, f"inverted/{split}"))
    tint = 0.5 + 0.5 * torch.rand(len(images), 3, 1, 1, generator=generator)  # a colour per image
    return params.background * tint * (1.0 - images), labels


class CrossParams(BaseModel):
    """Parameters of the ``cross`` trigger."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    size: int = Field(default=5, ge=3, le=15, description="length of each arm, pixels of the 32x32 image")
    value: float = Field(default=1.0, ge=0.0, le=1.0, description="pixel value of the cross, every channel")
    corner: Literal["top_left", "top_right", "bottom_left", "bottom_right"] = Field(
        default="top_left", description="where the cross is, 1 pixel from both borders"
    )


@trigger("cross", CrossParams)
def cross(images: Tensor, params: CrossParams) -> Tensor:
    """A plus sign of one value near a corner of the image."""
    top, left = trigger_origin(images.shape[2], images.shape[3], params.size, params.corner, margin=1)
    middle = params.size // 2
    out = images.clone()
    out[:, :, top + middle, left : left + params.size] = params.value
    out[:, :, top : top + params.size, left + middle] = params.value
    return out
