"""Benchmark metrics: student accuracy and agreement on real data, trap diagnostics on synthetic data.

All images are float (N, 3, 32, 32) in [0, 1] (the benchmark teachers take
pixels directly); predictions are computed in eval mode, without grad, in
batches.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OodProbe",
    "accuracy",
    "agreement",
    "auroc",
    "balanced_collapse_floor",
    "collapse_rate",
    "evenly_spaced",
    "predict",
]


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes (N,) int64 on the CPU, in eval mode on the model's device; its mode is restored."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = torch.cat(
            [
                model(images[i : i + batch_size].to(device)).argmax(dim=1).cpu()
                for i in range(0, len(images), batch_size)
            ]
        )
    model.train(was_training)
    return out


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose predicted class equals ``labels`` (N,)."""
    return float((predict(model, images) == labels).float().mean())


def agreement(model: nn.Module, reference: torch.Tensor, images: torch.Tensor) -> float:
    """Share of ``images`` where ``model`` predicts the class ``reference`` (N,) holds (e.g. the NTL teacher's)."""
    return float((predict(model, images) == reference).float().mean())


def collapse_rate(predictions: torch.Tensor, num_classes: int) -> float:
    """Share of a batch's predictions (B,) that fall in its most frequent class (1 = collapsed).

    Even a batch drawn uniformly over the classes scores above 1/K:
    :func:`balanced_collapse_floor` is its expected value.
    """
    return float(torch.bincount(predictions, minlength=num_classes).max()) / max(len(predictions), 1)


@functools.lru_cache(maxsize=64)
def balanced_collapse_floor(batch: int, num_classes: int) -> float:
    """Expected :func:`collapse_rate` of ``batch`` labels drawn uniformly over ``num_classes`` (to ~1e-15).

    ``E[max count] / batch`` of a uniform multinomial, ``E[max] = sum over m of
    P(max > m)``. By Poissonisation, ``P(max <= m)`` is the chance that
    ``num_classes`` independent Poisson(``batch / num_classes``) counts are all
    at most ``m`` given that they sum to ``batch``: the ``x**batch``
    coefficient of ``(sum over j <= m of pmf(j) x**j) ** num_classes`` over
    that of the untruncated sum, in float64. The sum stops where
    ``P(max > m)`` falls below 1e-15. 64 labels over 10 classes: 0.165;
    1024: 0.115 (well under a second).
    """
    if batch < 1 or num_classes < 1:
        raise ValueError(f"need batch >= 1 and num_classes >= 1, got {batch} and {num_classes}")
    rate = batch / num_classes
    counts = np.arange(batch + 1)
    log_pmf = counts * math.log(rate) - rate - np.array([math.lgamma(j + 1) for j in counts])
    pmf = np.exp(log_pmf)

    def sum_is_batch(largest: int) -> float:
        """The ``x**batch`` coefficient of (Poisson generating function cut at ``largest``) ** K."""
        product = np.ones(1)
        for _ in range(num_classes):
            product = np.convolve(product, pmf[: largest + 1])[: batch + 1]
        return float(product[batch]) if len(product) > batch else 0.0

    total = sum_is_batch(batch)
    expected_max = 0.0
    for m in range(batch):
        exceeded = 1.0 if m * num_classes < batch else 1.0 - sum_is_batch(m) / total  # P(max > m)
        if exceeded < 1e-15:
            break
        expected_max += exceeded
    return expected_max / batch


def evenly_spaced(images: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` of ``images`` (N, ...) at evenly spaced positions, first and last included; all of them when
    N <= count. Deterministic, no random numbers: a pool sampled this way covers its whole history."""
    if len(images) <= count:
        return images
    return images[torch.linspace(0, len(images) - 1, count).round().long()]


class OodProbe:
    """A linear probe on a teacher's penultimate features, fitted on real ID vs real OOD images.

    The share of synthetic samples the probe puts on the OOD side measures how
    far a generator drifted into the OOD region (vanilla DFKD on MNIST-M in
    ``docs/benchmark.md``: 0.45 from the NTL teacher, 0.01 from the SL one).

    :param features: maps images (N, 3, 32, 32) in [0, 1] to features (N, D)
        (e.g. ``teacher.features``).
    :param id_images: real in-distribution images.
    :param ood_images: real out-of-distribution images.
    :param steps: full-batch Adam steps of the logistic regression.
    """

    def __init__(
        self,
        features: nn.Module | object,
        id_images: torch.Tensor,
        ood_images: torch.Tensor,
        steps: int = 300,
    ) -> None:
        self._features = features
        x = torch.cat([self._embed(id_images), self._embed(ood_images)])
        y = torch.cat([torch.zeros(len(id_images)), torch.ones(len(ood_images))])
        self.mean, self.std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
        x = (x - self.mean) / self.std
        generator = torch.Generator().manual_seed(0)
        self.weight = (torch.randn(x.shape[1], generator=generator) * 0.01).requires_grad_(True)
        self.bias = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.Adam([self.weight, self.bias], lr=0.05)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                F.binary_cross_entropy_with_logits(x @ self.weight + self.bias, y).backward()
                optimizer.step()
        self.weight, self.bias = self.weight.detach(), self.bias.detach()
        self.train_accuracy = float(((x @ self.weight + self.bias > 0).float() == y).float().mean())

    def _embed(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [self._features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
            )  # type: ignore[operator]

    def ood_share(self, images: torch.Tensor) -> float:
        """Share of ``images`` on the OOD side of the probe."""
        x = (self._embed(images) - self.mean) / self.std
        return float((x @ self.weight + self.bias > 0).float().mean())


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
