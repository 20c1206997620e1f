"""Which end of a confidence score is OOD-like."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ConfidenceDirection", "OodWhen"]

OodWhen = Literal["unconfident", "confident"]


class ConfidenceDirection(BaseModel):
    """Parameters shared by confidence-based scorers.

    Textbook OOD detection assumes OOD inputs get *unconfident* predictions.
    A non-transferable teacher is the opposite: deliberately over-confident
    off its domain, more confident there than on its own domain.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ood_when: OodWhen = Field(
        default="unconfident",
        description="'unconfident': textbook direction; 'confident': NTL teachers",
    )

    def orient(self, unconfidence: torch.Tensor) -> torch.Tensor:
        """The score with higher = more OOD-like, from one where higher = less confident."""
        return unconfidence if self.ood_when == "unconfident" else -unconfidence
