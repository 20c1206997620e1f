"""The student loss equals its formula and sends gradients to the student only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dfkd_guard import Guard, GuardConfig, SampleWeights
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


def test_student_loss_equals_its_formula(teacher) -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    kd = torch.tensor([1.0, 0.5, 0.0, 1.0, 0.0, 0.25])
    forget = torch.tensor([False, False, True, False, True, False])
    config = GuardConfig(kd_temperature=2.0, forget={"kind": "uniform", "weight": 0.7})
    guard = Guard(config, teacher, load_entrypoints=False)
    loss = guard.student_loss(s, t, SampleWeights(kd, forget))
    per_kd = kd_divergence(s, t, 2.0)
    expected = (kd * per_kd).sum() / kd.sum() + 0.7 * uniform_divergence(s[forget]).mean()
    torch.testing.assert_close(loss, expected)
    no_forget = Guard({**config.model_dump(), "forget": {"kind": "none"}}, teacher, load_entrypoints=False)
    torch.testing.assert_close(no_forget.student_loss(s, t, SampleWeights(kd, forget)), (kd * per_kd).sum() / kd.sum())


def test_student_loss_is_finite_on_saturated_teacher_logits(teacher) -> None:
    s = torch.randn(4, 4, requires_grad=True)
    t = torch.zeros(4, 4)
    t[:, 1] = 90.0  # softmax underflows: a probability-target KL would give NaN gradients
    loss = Guard(None, teacher, load_entrypoints=False).student_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_all_weights_zero_gives_only_the_forgetting_term(teacher) -> None:
    s = torch.randn(3, 4)
    w = SampleWeights(torch.zeros(3), torch.ones(3, dtype=torch.bool))
    loss = Guard({"forget": {"kind": "uniform"}}, teacher, load_entrypoints=False).student_loss(s, torch.randn(3, 4), w)
    torch.testing.assert_close(loss, uniform_divergence(s).mean())


def test_gradients_reach_the_student_only(teacher, images) -> None:
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))
    guard = Guard(GuardConfig(scorer="energy"), teacher, load_entrypoints=False)
    with torch.no_grad():
        t_logits = teacher(images)
    weights = guard.sample_weights(guard.score(images, t_logits), t_logits)
    guard.student_loss(student(images), teacher(images), weights).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_weights_of_another_batch_are_refused(teacher) -> None:
    import pytest

    guard = Guard(None, teacher, load_entrypoints=False)
    with pytest.raises(ValueError, match=r"weights do not fit the batch: kd has shape \(3,\), wanted \(4,\)"):
        guard.student_loss(torch.randn(4, 4), torch.randn(4, 4), SampleWeights.keep_all(3))
    with pytest.raises(ValueError, match=r"teacher_logits must be a float tensor \(4, K\), got \(5, 4\)"):
        guard.student_loss(torch.randn(4, 4), torch.randn(5, 4))
