"""Losses of non-transferable (NTL) teachers: the built-in ``wang2022`` and ``outlier_exposure``.

Each is a bench component of kind ``ntl_loss`` (:mod:`dfkd_guard.bench.registry`):
one training step's ID and OOD logits, labels and penultimate features in, the
scalar loss to minimise out.

* ``wang2022``: the NTL objective of Wang et al., "Non-Transferable Learning"
  (ICLR 2022), :func:`wang2022_loss`: fit the ID data, and push the OOD
  predictions away from their labels only as far as the ID and OOD features
  are apart (the product of two capped terms).
* ``outlier_exposure``: the Outlier Exposure loss of Hendrycks, Mazeika and
  Dietterich, "Deep Anomaly Detection with Outlier Exposure" (ICLR 2019),
  :func:`outlier_exposure_loss`: cross-entropy on ID plus ``weight`` times the
  cross-entropy from the uniform distribution to the OOD predictions. Used
  here as an NTL objective (our use, not the paper's): the teacher is
  uninformative on the OOD domain, with no feature-distance term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from .registry import ntl_loss

__all__ = [
    "OutlierExposureParams",
    "Wang2022Params",
    "gaussian_mmd",
    "outlier_exposure",
    "outlier_exposure_loss",
    "wang2022",
    "wang2022_loss",
]


def gaussian_mmd(x: Tensor, y: Tensor, num_kernels: int = 5, kernel_mul: float = 2.0) -> Tensor:
    """Biased squared MMD between two feature sets with a multi-bandwidth Gaussian kernel.

    ``k(u, v) = sum_j exp(-||u - v||^2 / h_j)`` with ``h_j = h0 * kernel_mul **
    (j - num_kernels // 2)``, ``j = 0..num_kernels-1``, where ``h0`` is the mean
    squared distance between distinct points of the pooled set (treated as a
    constant: no gradient flows through it). Returns
    ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` (diagonals included).

    Args:
        x: ``(n, D)``; y: ``(m, D)``.

    Returns:
        Scalar tensor in ``[0, 2 * num_kernels]``.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, D) and (m, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    pooled = torch.cat([x, y])
    sq_dist = torch.cdist(pooled, pooled).pow(2)
    n = len(pooled)
    h0 = (sq_dist.sum() / (n * n - n)).detach().clamp_min(1e-12)
    kernel = sum(
        torch.exp(-sq_dist / (h0 * kernel_mul ** (j - num_kernels // 2))) for j in range(num_kernels)
    )
    nx = len(x)
    return kernel[:nx, :nx].mean() + kernel[nx:, nx:].mean() - 2.0 * kernel[:nx, nx:].mean()


def wang2022_loss(
    logits_id: Tensor,
    labels_id: Tensor,
    logits_ood: Tensor,
    labels_ood: Tensor,
    features_id: Tensor,
    features_ood: Tensor,
    alpha: float = 0.1,
    beta: float = 0.1,
) -> Tensor:
    """Non-transferable learning loss (Wang et al., ICLR 2022).

    ``L = KL_s - min(1, alpha * KL_t) * min(1, beta * MMD(f_s, f_t))`` where
    ``KL_s`` / ``KL_t`` are the mean KL divergences from the one-hot labels to
    the predicted distributions on ID / OOD data (equal to cross-entropy, as a
    one-hot label has zero entropy; computed from log-softmax, so saturated
    logits give no NaN) and ``MMD`` is :func:`gaussian_mmd` of the features.

    Args:
        logits_id, logits_ood: ``(B, C)`` and ``(B', C)`` logits.
        labels_id, labels_ood: ``(B,)`` and ``(B',)`` ``int64`` labels.
        features_id, features_ood: ``(B, D)`` and ``(B', D)`` penultimate features.
        alpha, beta: weights inside the two ``min(1, .)`` caps.

    Returns:
        Scalar loss to minimise.
    """
    kl_source = F.cross_entropy(logits_id, labels_id)
    kl_target = F.cross_entropy(logits_ood, labels_ood)
    mmd = gaussian_mmd(features_id, features_ood)
    return kl_source - torch.clamp(alpha * kl_target, max=1.0) * torch.clamp(beta * mmd, max=1.0)


class Wang2022Params(BaseModel):
    """Parameters of the ``wang2022`` NTL loss."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    alpha: float = Field(
        default=0.1, gt=0.0, description="weight of KL_t inside its min(1, .) cap (paper: 0.1)"
    )
    beta: float = Field(
        default=0.1, gt=0.0, description="weight of the MMD inside its min(1, .) cap (paper: 0.1)"
    )


@ntl_loss("wang2022", Wang2022Params)
def wang2022(
    logits_id: Tensor,
    labels_id: Tensor,
    logits_ood: Tensor,
    labels_ood: Tensor,
    features_id: Tensor,
    features_ood: Tensor,
    params: Wang2022Params,
) -> Tensor:
    """Non-transferable learning (Wang et al., ICLR 2022): KL_s - min(1, a KL_t) * min(1, b MMD)."""
    return wang2022_loss(
        logits_id, labels_id, logits_ood, labels_ood, features_id, features_ood, params.alpha, params.beta
    )


def outlier_exposure_loss(
    logits_id: Tensor, labels_id: Tensor, logits_ood: Tensor, weight: float = 0.5
) -> Tensor:
    """Outlier Exposure loss (Hendrycks et al., ICLR 2019).

    ``L = CE(p_id, y_id) + weight * mean_ood(-(1/K) sum_k log p_k)``: the second
    term is the cross-entropy from the uniform distribution over the ``K``
    classes to the OOD predictions, ``KL(U || p) + log K``, smallest when they
    are uniform.

    Args:
        logits_id: ``(B, K)``; labels_id: ``(B,)`` ``int64``; logits_ood: ``(B', K)``.
        weight: weight of the OOD term (the paper's lambda, 0.5 for vision).

    Returns:
        Scalar loss to minimise.
    """
    uniform_ce = -F.log_softmax(logits_ood, dim=1).mean(dim=1).mean()
    return F.cross_entropy(logits_id, labels_id) + weight * uniform_ce


class OutlierExposureParams(BaseModel):
    """Parameters of the ``outlier_exposure`` NTL loss."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    weight: float = Field(default=0.5, gt=0.0, le=100.0, description="weight of the OOD term (paper: 0.5)")


@ntl_loss("outlier_exposure", OutlierExposureParams)
def outlier_exposure(
    logits_id: Tensor, labels_id: Tensor, logits_ood: Tensor, params: OutlierExposureParams
) -> Tensor:
    """Outlier Exposure (Hendrycks et al., ICLR 2019): CE on ID + weight * CE(uniform, OOD predictions)."""
    return outlier_exposure_loss(logits_id, labels_id, logits_ood, params.weight)
