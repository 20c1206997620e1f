"""Backdoor triggers: the built-in ``patch``, ``checkerboard`` and ``blend`` triggers.

A trigger maps clean images ``(N, 3, 32, 32)`` in [0, 1] to triggered ones
(:mod:`dfkd_guard.bench.registry`); the bench stamps it at 32x32, before the
images are averaged down to the config's ``image_size``. Positions are in
pixels of the 32x32 image: a corner (``"bottom_right"``, ``"bottom_left"``,
``"top_right"``, ``"top_left"``, ``margin`` pixels from both borders) or
``[row, column]`` of the trigger's top-left pixel.

* ``patch``: a solid square of one value, the BadNets trigger (Gu et al. 2017).
* ``checkerboard``: a square of alternating high and low cells, a pattern
  trigger in the manner of BadNets' pixel patterns.
* ``blend``: the whole image alpha-blended with a fixed image, the blended
  injection of Chen et al. 2017: a vendored photograph or seeded uniform noise.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from .data import load_photos
from .registry import trigger

__all__ = [
    "BlendParams",
    "CheckerboardParams",
    "Corner",
    "PatchParams",
    "add_trigger",
    "blend",
    "checkerboard",
    "patch",
    "trigger_origin",
]

Corner = Literal["bottom_right", "bottom_left", "top_right", "top_left"]
#: Side of the images triggers are stamped on.
_SIDE = 32


def trigger_origin(
    height: int, width: int, size: int, position: Corner | tuple[int, int], margin: int
) -> tuple[int, int]:
    """Row and column of the top-left pixel of a ``size`` square at ``position`` in a height x width image.

    :raises ValueError: unknown corner, or the square does not fit inside the image.
    """
    if isinstance(position, str):
        if position not in get_args(Corner):
            raise ValueError(f"position must be one of {get_args(Corner)} or [row, column], got {position!r}")
        vertical, horizontal = position.split("_")
        top = margin if vertical == "top" else height - margin - size
        left = margin if horizontal == "left" else width - margin - size
    else:
        top, left = position
    if size < 1 or top < 0 or left < 0 or top + size > height or left + size > width:
        raise ValueError(
            f"a {size}-pixel trigger at {position!r} (margin {margin}) does not fit {height}x{width} images"
        )
    return top, left


def add_trigger(
    images: Tensor,
    size: int = 4,
    value: float = 1.0,
    position: Corner | tuple[int, int] = "bottom_right",
    margin: int = 1,
) -> Tensor:
    """Stamp a BadNets-style solid square trigger on a copy of ``images``.

    Args:
        images: ``(N, C, H, W)`` in ``[0, 1]``; not modified.
        size: side of the square, in pixels.
        value: pixel value written on every channel of the square.
        position: a corner, or ``(row, column)`` of the square's top-left pixel.
        margin: pixels between the square and the image border (corners only).

    Returns:
        A new tensor of the same shape and dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    top, left = trigger_origin(images.shape[2], images.shape[3], size, position, margin)
    out = images.clone()
    out[:, :, top : top + size, left : left + size] = value
    return out


class _Placed(BaseModel):
    """A square trigger of side ``size`` at ``position`` on the 32x32 image."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    size: int = Field(default=4, ge=1, le=_SIDE, description="side of the square, pixels of the 32x32 image")
    position: Corner | tuple[int, int] = Field(
        default="bottom_right",
        description="a corner (bottom_right, bottom_left, top_right, top_left) or [row, column] of the top-left pixel",
    )
    margin: int = Field(default=1, ge=0, le=_SIDE, description="pixels from both borders, for a corner")

    @model_validator(mode="after")
    def _fits(self) -> _Placed:
        trigger_origin(_SIDE, _SIDE, self.size, self.position, self.margin)
        return self


class PatchParams(_Placed):
    """Parameters of the ``patch`` trigger."""

    value: float = Field(default=1.0, ge=0.0, le=1.0, description="pixel value of the square, every channel")


@trigger("patch", PatchParams)
def patch(images: Tensor, params: PatchParams) -> Tensor:
    """A solid square of one value (BadNets); default: white, 4 pixels, bottom-right corner."""
    return add_trigger(images, params.size, params.value, params.position, params.margin)


class CheckerboardParams(_Placed):
    """Parameters of the ``checkerboard`` trigger."""

    cell: int = Field(default=1, ge=1, le=_SIDE, description="side of one square of the board, pixels")
    high: float = Field(
        default=1.0, ge=0.0, le=1.0, description="value of the cells whose row + column is even"
    )
    low: float = Field(default=0.0, ge=0.0, le=1.0, description="value of the other cells")


@trigger("checkerboard", CheckerboardParams)
def checkerboard(images: Tensor, params: CheckerboardParams) -> Tensor:
    """A square of alternating high and low cells; default: 4 pixels of 1-pixel cells, bottom-right corner."""
    top, left = trigger_origin(images.shape[2], images.shape[3], params.size, params.position, params.margin)
    index = torch.arange(params.size) // params.cell
    even = (index[:, None] + index[None, :]) % 2 == 0
    board = torch.where(even, params.high, params.low).to(images.dtype)
    out = images.clone()
    out[:, :, top : top + params.size, left : left + params.size] = board
    return out


class BlendParams(BaseModel):
    """Parameters of the ``blend`` trigger."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    alpha: float = Field(
        default=0.2, gt=0.0, le=1.0, description="weight of the blended image (Chen et al.: 0.2)"
    )
    image: Literal["photo", "noise"] = Field(
        default="photo", description="'photo': a vendored photograph; 'noise': seeded uniform noise"
    )
    photo: int = Field(default=0, ge=0, le=7, description="which of the 8 vendored photographs")
    seed: int = Field(default=0, ge=0, description="seed of the noise image")


def _blend_image(params: BlendParams) -> Tensor:
    """The (3, 32, 32) image in [0, 1] that ``blend`` mixes in."""
    if params.image == "photo":
        photo = load_photos()[params.photo : params.photo + 1]
        return F.adaptive_avg_pool2d(photo, _SIDE)[0]
    return torch.rand(3, _SIDE, _SIDE, generator=torch.Generator().manual_seed(params.seed))


@trigger("blend", BlendParams)
def blend(images: Tensor, params: BlendParams) -> Tensor:
    """``(1 - alpha) x + alpha P`` for a fixed image P (Chen et al. 2017); default: a photograph at alpha 0.2."""
    pattern = _blend_image(params).to(images.dtype)
    if images.shape[1:] != pattern.shape:
        raise ValueError(f"blend needs (N, 3, 32, 32) images, got {tuple(images.shape)}")
    return (1.0 - params.alpha) * images + params.alpha * pattern
