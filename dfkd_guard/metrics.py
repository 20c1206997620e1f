"""Evaluation metrics for scorers."""

from __future__ import annotations

import torch

__all__ = ["auroc"]


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of a score separating positives (higher) from negatives.

    Equals the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic).

    :param negatives: float (N,) scores of the negative class (e.g. real ID).
    :param positives: float (M,) scores of the positive class (e.g. real OOD).
    :returns: AUROC in [0, 1]; 0.5 is chance, below 0.5 the score points the wrong way.
    """
    if negatives.ndim != 1 or positives.ndim != 1 or not len(negatives) or not len(positives):
        raise ValueError(
            f"auroc needs two non-empty 1-D score tensors, got {tuple(negatives.shape)} and {tuple(positives.shape)}"
        )
    scores = torch.cat([negatives, positives]).double()
    ranks = _average_ranks(scores)
    n_neg, n_pos = len(negatives), len(positives)
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_neg * n_pos))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = values.argsort()
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=values.dtype)
    unique, inverse = torch.unique(sorted_values, return_inverse=True)
    if len(unique) < len(values):
        sums = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, ranks[order])
        counts = torch.bincount(inverse, minlength=len(unique)).to(values.dtype)
        ranks[order] = (sums / counts)[inverse]
    return ranks
