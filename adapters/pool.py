"""An in-memory pool of synthetic images, each stored with its OOD score.

Pooled adapters (DeepInversion, CMI) add each synthesised batch once and
replay random batches from the pool for many student steps; the score is
computed when the image is added, so replay never calls the scorer.
"""

from __future__ import annotations

import torch

__all__ = ["ImagePool"]


class ImagePool:
    """Images (N, C, H, W) and their scores (N,), on the CPU, in insertion order.

    :param max_size: keep at most this many images (oldest dropped first); None = unbounded.
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be >= 1 or None, got {max_size}")
        self.max_size = max_size
        self.images: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.images is None else self.images.shape[0]

    def add(self, images: torch.Tensor, scores: torch.Tensor) -> None:
        """Add a batch.

        :param images: float (B, C, H, W), finite.
        :param scores: float (B,) OOD scores (NaN when the guard is off).
        :raises ValueError: shapes disagree with each other or with the pool, or images are not finite.
        """
        if images.ndim != 4 or scores.shape != (images.shape[0],):
            raise ValueError(f"pool needs images (B, C, H, W) and scores (B,), got {tuple(images.shape)} and {tuple(scores.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("refusing to add non-finite images to the pool")
        images, scores = images.detach().cpu(), scores.detach().float().cpu()
        if self.images is None or self.scores is None:
            self.images, self.scores = images.clone(), scores.clone()
        else:
            if images.shape[1:] != self.images.shape[1:]:
                raise ValueError(f"pool holds images of shape {tuple(self.images.shape[1:])}, got {tuple(images.shape[1:])}")
            self.images = torch.cat([self.images, images])
            self.scores = torch.cat([self.scores, scores])
        if self.max_size is not None and len(self) > self.max_size:
            self.images = self.images[-self.max_size :]
            self.scores = self.scores[-self.max_size :]

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (with replacement across calls, without within one) and its stored scores."""
        if self.images is None or self.scores is None:
            raise RuntimeError("the image pool is empty: call synthesize() before sample()")
        index = torch.randperm(len(self))[:batch_size]
        return self.images[index].to(device), self.scores[index].to(device)

    def state_dict(self) -> dict[str, object]:
        return {"max_size": self.max_size, "images": self.images, "scores": self.scores}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.max_size = state["max_size"]  # type: ignore[assignment]
        self.images = state["images"]  # type: ignore[assignment]
        self.scores = state["scores"]  # type: ignore[assignment]
