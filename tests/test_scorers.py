"""Built-in scorers against known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd_guard import Guard, GuardConfig, Normalization


def make_guard(teacher: nn.Module, scorer: str, **params: object) -> Guard:
    return Guard(GuardConfig(scorer={"name": scorer, "params": params}), teacher, load_entrypoints=False)


class Linear2(nn.Module):
    """Two-class linear classifier on flattened images: robustness has a closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], 2)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


@pytest.fixture
def linear_setup() -> tuple[Linear2, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 12, generator=g)
    model = Linear2(weight, torch.zeros(2))
    images = torch.rand(40, 3, 2, 2, generator=g)
    diff = weight[1] - weight[0]
    # Signed margin of the predicted class and the L-inf flip radius = |margin| / ||w1 - w0||_1.
    logits = model(images)
    margin = (logits.max(1).values - logits.min(1).values).detach()
    radius = margin / diff.abs().sum()
    return model, images, radius


def test_atesc_margin_is_the_closed_form_on_a_linear_model(linear_setup) -> None:
    model, images, radius = linear_setup
    eps = 0.05
    guard = make_guard(model, "atesc", eps=eps, steps=2, step_size=eps, measure="margin")
    scores = guard.score(images)
    l1 = (model.linear.weight[1] - model.linear.weight[0]).abs().sum()
    # A sign step of size eps reaches the worst-case corner of the L-inf ball exactly.
    expected = (radius - eps) * l1
    torch.testing.assert_close(scores, expected.detach(), atol=1e-4, rtol=1e-4)
    # The flip rule: a prediction flips exactly when the flip radius is below eps.
    assert torch.equal(scores < 0, radius < eps)


def test_atesc_kl_ranks_samples_by_flip_radius(linear_setup) -> None:
    model, images, radius = linear_setup
    eps = 0.01
    guard = make_guard(model, "atesc", eps=eps, steps=3)
    scores = guard.score(images)
    far = radius > 4 * eps  # the KL of a shifted sigmoid decreases monotonically away from the boundary
    assert far.sum() >= 10
    order_by_score = scores[far].argsort()
    order_by_radius = radius[far].argsort()
    assert torch.equal(order_by_score, order_by_radius)


def test_atesc_budget_is_in_pixel_units(linear_setup) -> None:
    model, images, radius = linear_setup
    std = 0.5
    norm = Normalization(mean=(0.0,), std=(std,))
    guard_px = Guard(
        GuardConfig(
            scorer={"name": "atesc", "params": {"eps": 0.05, "steps": 1, "measure": "margin"}},
            normalization=norm,
        ),
        model,
        load_entrypoints=False,
    )
    l1 = (model.linear.weight[1] - model.linear.weight[0]).abs().sum()
    # In input units the radius is eps / std.
    expected = (radius - 0.05 / std) * l1
    torch.testing.assert_close(guard_px.score(images), expected.detach(), atol=1e-4, rtol=1e-4)


def test_atesc_clip_keeps_perturbed_pixels_in_range() -> None:
    from dfkd_guard.normalization import Normalization as N
    from dfkd_guard.scorers.atesc import AtescParams, pgd_perturbation

    # Class 0 wins at x = 1 but loses as pixels grow, so the attack pushes pixels up.
    model = Linear2(torch.ones(2, 12) * torch.tensor([[-1.0], [1.0]]), torch.tensor([30.0, 0.0]))
    images = torch.ones(4, 3, 2, 2)  # at the top of the pixel range
    targets = model(images).argmax(1)
    delta = pgd_perturbation(
        model, images, targets, AtescParams(eps=0.1, steps=2, clip_to_pixel_range=True), N()
    )
    assert (images + delta).max() <= 1.0
    unclipped = pgd_perturbation(model, images, targets, AtescParams(eps=0.1, steps=2), N())
    assert (images + unclipped).max() > 1.0


def test_msp_energy_entropy_equal_their_formulas(teacher, images) -> None:
    logits = torch.randn(12, 4) * 3
    p = F.softmax(logits, 1)
    expected = {
        "msp": -p.max(1).values,
        "energy": -2.0 * torch.logsumexp(logits / 2.0, 1),
        "entropy": -(p * p.log()).sum(1),
    }
    for name, value in expected.items():
        params = {"temperature": 2.0} if name == "energy" else {}
        torch.testing.assert_close(make_guard(teacher, name, **params).score(images, logits), value)
        flipped = make_guard(teacher, name, ood_when="confident", **params).score(images, logits)
        torch.testing.assert_close(flipped, -value)


def test_logit_scorers_reuse_given_logits_without_a_forward(teacher, images) -> None:
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    logits = torch.randn(12, 4)
    make_guard(teacher, "energy").score(images, logits)
    assert calls == []  # hooks are suspended, so count forwards directly:
    forwards = []
    original = teacher.forward
    teacher.forward = lambda x: forwards.append(1) or original(x)  # type: ignore[method-assign]
    make_guard(teacher, "energy").score(images, logits)
    assert forwards == []
    make_guard(teacher, "atesc", steps=2).score(images, logits)
    assert len(forwards) == 3  # two PGD steps and one measurement, no clean forward


def test_entropy_is_stable_on_saturated_logits(teacher, images) -> None:
    logits = torch.zeros(12, 4)
    logits[:, 0] = 90.0  # an NTL teacher on OOD: softmax underflows to exact zeros
    scores = make_guard(teacher, "entropy").score(images, logits)
    assert torch.isfinite(scores).all()
    assert scores.abs().max() < 1e-30


def test_odin_matches_its_definition(teacher, images) -> None:
    guard = make_guard(teacher, "odin", temperature=10.0, eps=0.01)
    x = images.clone().requires_grad_(True)
    with torch.no_grad():
        y = teacher(images).argmax(1)
    loss = F.cross_entropy(teacher(x) / 10.0, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        msp = F.softmax(teacher(images - 0.01 * grad.sign()) / 10.0, 1).max(1).values
    torch.testing.assert_close(guard.score(images), -msp)


def test_bn_deviation_is_zero_at_the_running_mean() -> None:
    bn = nn.BatchNorm2d(3)
    bn.running_mean.copy_(torch.tensor([0.2, 0.4, 0.6]))
    bn.running_var.copy_(torch.tensor([0.5, 1.0, 2.0]))
    model = nn.Sequential(bn, nn.Flatten(), nn.Linear(3 * 4, 2)).eval()
    at_mean = bn.running_mean.view(1, 3, 1, 1).expand(2, 3, 2, 2).clone()
    shifted = at_mean + torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    scores = make_guard(model, "bn_deviation").score(torch.cat([at_mean, shifted]))
    expected_shift = 1.0 / (0.5 + bn.eps) / 3
    torch.testing.assert_close(scores, torch.tensor([0.0, 0.0, expected_shift, expected_shift]))
    assert not model[0]._forward_pre_hooks  # its recording hooks are gone


def test_bn_deviation_needs_batchnorm(images) -> None:
    from dfkd_guard import PluginError

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 4))
    with pytest.raises(PluginError, match=r"dfkd_guard.scorers.bn_deviation.*BatchNorm"):
        make_guard(model, "bn_deviation").score(images)


def test_scores_are_deterministic_and_do_not_touch_the_rng(teacher, images) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = make_guard(teacher, "atesc").score(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, make_guard(teacher, "atesc").score(images))
    assert math.isfinite(float(first.sum()))
