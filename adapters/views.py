"""Randomly translated (and flipped) views of an image batch: the augmentation of pooled adapters.

The published DFKD code augments every pooled image each time the student
draws it (the ``datafree`` package: ``RandomCrop(32, padding=4)`` and a flip),
and CMI computes its inversion losses on such a view of the generator's
output. :func:`random_shift` is that translation, per image, differentiable
and on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dfkd_guard.adapters.base import to_device

__all__ = ["random_shift"]


def random_shift(images: torch.Tensor, max_shift: int, flip: bool = False) -> torch.Tensor:
    """Each image moved by its own random whole-pixel offset, edges repeated into the gap.

    Per image: horizontal and vertical offsets uniform in ``[-max_shift,
    max_shift]``, and, when ``flip``, a horizontal mirror with probability
    1/2. Random numbers come from the global CPU torch generator, whatever the
    device, so a seeded run draws the same views on CPU and GPU.

    :param images: float (B, C, H, W).
    :param max_shift: largest offset, pixels, >= 0 (0 and no flip: ``images`` itself).
    :returns: float (B, C, H, W), with grad to ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if not max_shift and not flip:
        return images
    batch, channels, height, width = images.shape
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2))
    rows = offsets[:, :1] + torch.arange(height)  # (B, H) rows of the padded image
    cols = offsets[:, 1:] + torch.arange(width)  # (B, W)
    if flip:
        mirrored = torch.rand(batch) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    padded = F.pad(images, (max_shift,) * 4, mode="replicate") if max_shift else images
    rows, cols = to_device(rows, images.device), to_device(cols, images.device)
    index_b = torch.arange(batch, device=images.device)[:, None, None, None]
    index_c = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[index_b, index_c, rows[:, None, :, None], cols[:, None, None, :]]
