"""Student-side losses, all computed from log-probabilities.

An NTL teacher emits logits near 85 on OOD-like inputs; its softmax underflows
to exact zeros, and a KL against a probability target then has NaN gradients.
Every divergence here therefore takes log-probabilities on both sides
(``log_target=True``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from dfkd_guard.sample_weights import SampleWeights

__all__ = ["kd_divergence", "uniform_divergence", "weighted_loss"]


def kd_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-sample KL(T/tau || S/tau) * tau^2.

    :param student_logits: float (B, K).
    :param teacher_logits: float (B, K); a target, usually detached.
    :returns: float (B,), >= 0.
    """
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)  # float32 under autocast too
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1) * temperature**2


def uniform_divergence(student_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(uniform || softmax(S)): zero when the student predicts uniformly.

    :param student_logits: float (B, K).
    :returns: float (B,), >= 0.
    """
    num_classes = student_logits.shape[1]
    log_s = F.log_softmax(student_logits.float(), dim=1)
    return -math.log(num_classes) - log_s.mean(dim=1)


def weighted_loss(
    per_sample: torch.Tensor,
    student_logits: torch.Tensor,
    weights: SampleWeights,
    *,
    forget_kind: Literal["uniform", "none"] = "uniform",
    forget_weight: float = 1.0,
) -> torch.Tensor:
    """A per-sample distillation loss, weighted, plus the forgetting term.

    ``sum_i w_i L_i / sum_i w_i + lambda * mean_{i in forget} KL(U || S_i)``:
    the distillation term is a weighted mean (its scale does not shrink when
    samples are dropped; it is 0 when every weight is 0), the forgetting term
    a mean over the forget set (0 when it is empty).

    :param per_sample: float (B,) the distillation loss of each sample, any
        criterion (KL at any temperature, L1 of logits, ...), with grad to the student.
    :param student_logits: float (B, K) with grad to the student (for the forgetting term).
    :param weights: KD weights (B,) in [0, 1] and forget mask (B,).
    :returns: scalar tensor.
    """
    kd_weights = weights.kd.to(per_sample.dtype)
    kd = (kd_weights * per_sample).sum()
    loss = kd / kd_weights.sum().clamp_min(torch.finfo(kd_weights.dtype).tiny)
    if forget_kind == "uniform" and forget_weight > 0 and bool(weights.forget.any()):
        loss = loss + forget_weight * uniform_divergence(student_logits[weights.forget]).mean()
    return loss
