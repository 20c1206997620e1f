"""The result of the sample-weighting hook."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SampleWeights"]


@dataclass(frozen=True)
class SampleWeights:
    """Per-sample distillation weights and the samples the student should forget.

    :param kd: float tensor (B,) in [0, 1]: weight of each sample's KD term.
    :param forget: bool tensor (B,): samples whose forgetting term applies.
    """

    kd: torch.Tensor
    forget: torch.Tensor

    @classmethod
    def keep_all(cls, batch_size: int, device: torch.device | str = "cpu") -> SampleWeights:
        """Weight 1 for every sample, nothing forgotten (the unguarded student)."""
        return cls(
            torch.ones(batch_size, device=device), torch.zeros(batch_size, dtype=torch.bool, device=device)
        )

    def problems(self, batch_size: int) -> str | None:
        """Why these weights break the contract for a batch of ``batch_size``, or None."""
        if not isinstance(self.kd, torch.Tensor) or not isinstance(self.forget, torch.Tensor):
            return "kd and forget must be tensors"
        if tuple(self.kd.shape) != (batch_size,):
            return f"kd has shape {tuple(self.kd.shape)}, wanted ({batch_size},)"
        if tuple(self.forget.shape) != (batch_size,):
            return f"forget has shape {tuple(self.forget.shape)}, wanted ({batch_size},)"
        if self.forget.dtype != torch.bool:
            return f"forget must be a bool tensor, got {self.forget.dtype}"
        if not torch.isfinite(self.kd).all():
            return "kd weights contain NaN or Inf"
        if (self.kd < 0).any() or (self.kd > 1).any():
            return f"kd weights must lie in [0, 1], got range [{self.kd.min().item():.3g}, {self.kd.max().item():.3g}]"
        return None

    @property
    def kept_fraction(self) -> float:
        """Mean KD weight: 1.0 when nothing is down-weighted."""
        return float(self.kd.float().mean()) if self.kd.numel() else 0.0

    @property
    def forgotten_fraction(self) -> float:
        """Share of samples in the forget set."""
        return float(self.forget.float().mean()) if self.forget.numel() else 0.0
