"""The student loss equals its formula and sends gradients to the student only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dfkd_guard import Guard, GuardConfig, GuardedBatch, SampleWeights
from dfkd_guard.losses import kd_divergence, uniform_divergence


def test_kd_divergence_matches_the_probability_formula() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    tau = 3.0
    p_t, p_s = F.softmax(t / tau, 1), F.softmax(s / tau, 1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1) * tau**2
    torch.testing.assert_close(kd_divergence(s, t, tau), expected)


def test_uniform_divergence_matches_its_formula() -> None:
    s = torch.randn(6, 5)
    p_s = F.softmax(s, 1)
    expected = (0.2 * (math.log(0.2) - p_s.log())).sum(1)
    torch.testing.assert_close(uniform_divergence(s), expected)
    assert uniform_divergence(torch.zeros(2, 5)).abs().max() < 1e-6


def batch_of(s: torch.Tensor, t: torch.Tensor, weights: SampleWeights, **config: object) -> GuardedBatch:
    """A guarded batch of len(s) images with teacher logits ``t`` and the given weights."""
    forget = config.get("forget", {"kind": "none"})
    return GuardedBatch(
        torch.zeros(len(s), 1, 2, 2),
        t,
        torch.full((len(s),), math.nan),
        weights,
        temperature=float(config.get("kd_temperature", 1.0)),
        forget_kind=forget["kind"],
        forget_weight=forget.get("weight", 1.0),
    )


def test_student_loss_equals_its_formula() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    kd = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.0, 0.25])
    forget = torch.tensor([False, False, True, False, True, False])
    batch = batch_of(
        s, t, SampleWeights(kd, forget), kd_temperature=2.0, forget={"kind": "uniform", "weight": 0.7}
    )
    per_kd = kd_divergence(s, t, 2.0)
    expected = (kd * per_kd).sum() / kd.sum() + 0.7 * uniform_divergence(s[forget]).mean()
    torch.testing.assert_close(batch.student_loss(s), expected)
    no_forget = batch_of(s, t, SampleWeights(kd, forget), kd_temperature=2.0)
    torch.testing.assert_close(no_forget.student_loss(s), (kd * per_kd).sum() / kd.sum())


def test_a_criterion_of_your_own_is_weighted_the_same_way() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    kd = torch.tensor([1.0, 0.0, 0.5, 1.0])
    forget = torch.tensor([False, True, False, False])
    batch = batch_of(s, t, SampleWeights(kd, forget), forget={"kind": "uniform", "weight": 2.0})
    l1 = (s - t).abs().mean(dim=1)  # DFAD's criterion, per sample
    expected = (kd * l1).sum() / kd.sum() + 2.0 * uniform_divergence(s[forget]).mean()
    torch.testing.assert_close(batch.student_loss(s, l1), expected)


def test_student_loss_is_finite_on_saturated_teacher_logits() -> None:
    s = torch.randn(4, 4, requires_grad=True)
    t = torch.zeros(4, 4)
    t[:, 1] = 90.0  # softmax underflows: a probability-target KL would give NaN gradients
    loss = batch_of(s, t, SampleWeights.keep_all(4)).student_loss(s)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_all_weights_zero_gives_only_the_forgetting_term() -> None:
    s = torch.randn(3, 4)
    w = SampleWeights(torch.zeros(3), torch.ones(3, dtype=torch.bool))
    loss = batch_of(s, torch.randn(3, 4), w, forget={"kind": "uniform"}).student_loss(s)
    torch.testing.assert_close(loss, uniform_divergence(s).mean())


def test_gradients_reach_the_student_only(teacher, images) -> None:
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))
    guard = Guard(GuardConfig(scorer="energy", weighting="split"), teacher, load_entrypoints=False)
    with torch.no_grad():
        t_logits = teacher(images)
    batch = guard.student_batch(images, t_logits)
    batch.student_loss(student(batch.images)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_shapes_of_another_batch_are_refused() -> None:
    import pytest

    batch = batch_of(torch.randn(4, 4), torch.randn(4, 4), SampleWeights.keep_all(4))
    with pytest.raises(ValueError, match=r"student_logits must have shape \(4, 4\)"):
        batch.student_loss(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"per_sample must be a float tensor \(4,\)"):
        batch.student_loss(torch.randn(4, 4), torch.randn(4, 4))
