"""Checks of what a caller passes to the guard, so that a bad tensor is the caller's named error.

Every public entry point of :class:`~dfkd_guard.Guard` checks its tensors
here before any plugin sees them: a plugin is blamed only for what it did.
The checks that read every value (finiteness) run only when the guard will
use the values, so a disabled guard costs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from dfkd_guard.normalization import Normalization

__all__ = ["check_images", "check_logits", "check_scores", "check_usable", "teacher_logits"]


def _described(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"a {type(value).__name__}"


def check_images(images: object, name: str = "images") -> None:
    """``images`` is a non-empty float tensor (B, C, H, W); a ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (B, C, H, W), got {_described(images)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)})")


def check_usable(
    images: torch.Tensor, teacher: nn.Module, normalization: Normalization, name: str = "images"
) -> None:
    """Images the guard is about to use fit the normalisation and the teacher, and are finite.

    :raises ValueError: naming ``name``: the channel count differs from the
        normalisation's, the dtype or device from the teacher's weights
        (outside autocast), or a value is NaN / Inf.
    """
    channels = images.shape[1]
    if len(normalization.mean) not in (1, channels):
        raise ValueError(
            f"{name} have {channels} channels but config.normalization has {len(normalization.mean)} "
            f"(mean {normalization.mean}); give one value per channel of the teacher's input"
        )
    weight = next(teacher.parameters(), None)
    if weight is not None:
        if images.device != weight.device:
            raise ValueError(f"{name} are on {images.device} but the teacher's weights on {weight.device}")
        if images.dtype != weight.dtype and not torch.is_autocast_enabled(images.device.type):
            raise ValueError(
                f"{name} are {images.dtype} but the teacher's weights {weight.dtype}; "
                f"convert them (images.to({weight.dtype})) or run under torch.autocast"
            )
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(f"{name} contain {bad} NaN or Inf values; the guard takes finite images only")


def check_logits(logits: object, batch: int, name: str = "teacher_logits", finite: bool = False) -> None:
    """``logits`` is a float tensor (batch, K), finite when ``finite``; a ``ValueError`` naming ``name`` otherwise."""
    if (
        not isinstance(logits, torch.Tensor)
        or logits.ndim != 2
        or logits.shape[0] != batch
        or not logits.is_floating_point()
    ):
        raise ValueError(
            f"{name} must be a float tensor ({batch}, K), the teacher's logits on the images, "
            f"got {_described(logits)}"
        )
    if finite and not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} contain NaN or Inf")


def check_scores(scores: object, batch: int) -> None:
    """``scores`` is a float tensor (batch,) (NaN allowed: unscored); a ``ValueError`` otherwise."""
    if (
        not isinstance(scores, torch.Tensor)
        or tuple(scores.shape) != (batch,)
        or not scores.is_floating_point()
    ):
        raise ValueError(f"scores must be a float tensor ({batch},), one per image, got {_described(scores)}")


def teacher_logits(teacher: nn.Module, images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Run the teacher on images the caller passed; its failures and non-logit outputs name the images.

    :returns: float (B, K) logits.
    :param name: how the message names ``images``.
    :raises ValueError: the teacher raised on ``images`` (shape, dtype and
        device in the message), or returned something other than (B, K)
        logits, such as a tuple (wrap it in :class:`~dfkd_guard.LogitsOf`).
    """
    try:
        output = teacher(images)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"the teacher ({type(teacher).__name__}) failed on {name}, {_described(images)}: {exc}"
        ) from exc
    if isinstance(output, (tuple, list, dict)):
        raise ValueError(
            f"the teacher ({type(teacher).__name__}) returned a {type(output).__name__}; the guard needs "
            "(B, K) logits: bind it to dfkd_guard.LogitsOf(teacher, output=...) and call that in the loop"
        )
    check_logits(output, images.shape[0], f"the teacher's ({type(teacher).__name__}) output")
    return output
