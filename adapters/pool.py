"""An in-memory pool of synthetic images, each stored with its OOD score (and, optionally, teacher logits).

Pooled adapters (DeepInversion, CMI) add each synthesised batch once and
replay random batches from the pool for many student steps; the score is
computed when the image is added, so replay never calls the scorer. The
vanilla adapter's replay also stores the teacher's logits, so a replayed
image costs no teacher forward either.
"""

from __future__ import annotations

import torch

from dfkd_guard.adapters.base import to_device

__all__ = ["ImagePool"]


class ImagePool:
    """Images (N, C, H, W), their scores (N,) and optional teacher logits (N, K), on the CPU, in insertion order.

    Whether the pool holds logits is fixed by its first :meth:`add`.

    :param max_size: keep at most this many images (oldest dropped first); None = unbounded.
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be >= 1 or None, got {max_size}")
        self.max_size = max_size
        self.images: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.images is None else self.images.shape[0]

    def add(self, images: torch.Tensor, scores: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Add a batch.

        :param images: float (B, C, H, W), finite.
        :param scores: float (B,) OOD scores (NaN when the guard is off).
        :param logits: float (B, K) teacher logits of ``images``; given with every batch or with none.
        :raises ValueError: shapes disagree with each other or with the pool, images are not
            finite, or logits are given to a pool without them (or missing from one with them).
        """
        if images.ndim != 4 or scores.shape != (images.shape[0],):
            raise ValueError(
                f"pool needs images (B, C, H, W) and scores (B,), got {tuple(images.shape)} and {tuple(scores.shape)}"
            )
        if logits is not None and (logits.ndim != 2 or logits.shape[0] != images.shape[0]):
            raise ValueError(
                f"pool needs logits (B, K) for {images.shape[0]} images, got {tuple(logits.shape)}"
            )
        if not torch.isfinite(images).all():
            raise ValueError("refusing to add non-finite images to the pool")
        images, scores = images.detach().cpu(), scores.detach().float().cpu()
        logits = logits.detach().float().cpu() if logits is not None else None
        if self.images is None or self.scores is None:
            self.images, self.scores = images.clone(), scores.clone()
            self.logits = logits.clone() if logits is not None else None
        else:
            if images.shape[1:] != self.images.shape[1:]:
                raise ValueError(
                    f"pool holds images of shape {tuple(self.images.shape[1:])}, got {tuple(images.shape[1:])}"
                )
            if (logits is None) != (self.logits is None):
                raise ValueError(
                    f"pool holds {'no ' if self.logits is None else ''}logits; add() got {'none' if logits is None else 'some'}"
                )
            self.images = torch.cat([self.images, images])
            self.scores = torch.cat([self.scores, scores])
            if self.logits is not None and logits is not None:
                self.logits = torch.cat([self.logits, logits])
        if self.max_size is not None and len(self) > self.max_size:
            self.images = self.images[-self.max_size :]
            self.scores = self.scores[-self.max_size :]
            if self.logits is not None:
                self.logits = self.logits[-self.max_size :]

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A random batch (with replacement across calls, without within one): images, stored scores
        and stored logits (None when the pool holds none)."""
        if self.images is None or self.scores is None:
            raise RuntimeError("the image pool is empty: call synthesize() before sample()")
        index = torch.randperm(len(self))[:batch_size]
        logits = to_device(self.logits[index], device) if self.logits is not None else None
        return to_device(self.images[index], device), to_device(self.scores[index], device), logits

    def state_dict(self) -> dict[str, object]:
        return {
            "max_size": self.max_size,
            "images": self.images,
            "scores": self.scores,
            "logits": self.logits,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.max_size = state["max_size"]  # type: ignore[assignment]
        self.images = state["images"]  # type: ignore[assignment]
        self.scores = state["scores"]  # type: ignore[assignment]
        self.logits = state["logits"]  # type: ignore[assignment]
