"""Split rules and soft weights give the expected masks."""

from __future__ import annotations

import pytest
import torch

from dfkd_guard import ConfigError, Guard, GuardConfig, SampleWeights
from dfkd_guard.weightings import SplitParams, ood_mask, otsu_cut, two_means_cut


def weights_for(teacher, weighting: dict, scores: torch.Tensor, scorer: object = "msp") -> SampleWeights:
    """The weighting's decision on stored scores (no BN prior: nothing calibrates it)."""
    config = GuardConfig(scorer=scorer, weighting=weighting, bn_prior={"demix": False})
    with Guard(config, teacher, load_entrypoints=False) as guard:
        return guard.weigh(torch.zeros(len(scores), 3, 8, 8), torch.zeros(len(scores), 4), scores).weights


def test_flip_rule_forgets_samples_whose_prediction_survives(teacher) -> None:
    margins = torch.tensor([-2.0, 0.5, -0.1, 3.0])
    w = weights_for(
        teacher,
        {"name": "split", "params": {"rule": "flip"}},
        margins,
        scorer={"name": "atesc", "params": {"measure": "margin"}},
    )
    assert w.forget.tolist() == [False, True, False, True]
    assert w.kd.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_flip_rule_refuses_unsigned_builtin_scores(teacher) -> None:
    with pytest.raises(ConfigError, match="weighting.params.rule"):
        Guard(
            GuardConfig(scorer="atesc", weighting={"name": "split", "params": {"rule": "flip"}}),
            teacher,
            load_entrypoints=False,
        )


def test_threshold_and_quantile_rules() -> None:
    scores = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.2])
    assert ood_mask(scores, SplitParams(rule="threshold", threshold=0.5)).tolist() == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert ood_mask(scores, SplitParams(rule="quantile", quantile=0.5)).tolist() == [
        False,
        True,
        False,
        True,
        False,
    ]
    # The 0.7 quantile of the five scores is 0.56 (linear interpolation): two lie above it.
    assert ood_mask(scores, SplitParams(rule="quantile", quantile=0.7)).tolist() == [
        False,
        True,
        False,
        True,
        False,
    ]
    assert ood_mask(scores, SplitParams(rule="quantile", quantile=0.3)).tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]


def test_threshold_rule_needs_a_threshold(teacher) -> None:
    with pytest.raises(ConfigError, match=r"^weighting\.params: .*needs a threshold"):
        weights_for(teacher, {"name": "split", "params": {"rule": "threshold"}}, torch.zeros(3))


def test_batch_adaptive_rules_find_the_gap_of_a_bimodal_batch() -> None:
    g = torch.Generator().manual_seed(0)
    low = torch.randn(30, generator=g) * 0.1
    high = 5 + torch.randn(20, generator=g) * 0.1
    scores = torch.cat([low, high])[torch.randperm(50, generator=g)]
    truth = scores > 2.5
    for rule in ("two_means", "otsu"):
        assert torch.equal(ood_mask(scores, SplitParams(rule=rule)), truth)


def test_otsu_is_the_exact_optimum_on_a_small_example() -> None:
    # Splits of [0, 1, 2, 10]: {0,1,2 | 10} has the largest between-class variance.
    assert otsu_cut(torch.tensor([10.0, 0.0, 2.0, 1.0])) == pytest.approx(6.0)
    # Ties are never split apart.
    assert otsu_cut(torch.tensor([1.0, 1.0, 1.0, 2.0])) == pytest.approx(1.5)


def test_two_means_and_otsu_keep_everything_on_constant_scores() -> None:
    scores = torch.full((8,), 0.3)
    assert two_means_cut(scores) is None and otsu_cut(scores) is None
    for rule in ("two_means", "otsu"):
        assert not ood_mask(scores, SplitParams(rule=rule)).any()


def test_soft_weights_fall_with_the_score_and_forget_nothing(teacher) -> None:
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    w = weights_for(teacher, {"name": "soft", "params": {"width": 0.5}}, scores)
    assert not w.forget.any()
    assert torch.all(w.kd[:-1] > w.kd[1:])
    assert w.kd[2] == pytest.approx(0.5)
    expected = torch.sigmoid(-(scores - 2.0) / (0.5 * scores.std()))
    torch.testing.assert_close(w.kd, expected)


def test_none_weighting_and_disabled_guard_keep_all(teacher) -> None:
    scores = torch.tensor([0.0, 9.0])
    assert weights_for(teacher, "none", scores).kd.tolist() == [1.0, 1.0]
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    w = guard.student_batch(torch.zeros(2, 3, 8, 8), torch.zeros(2, 4), scores).weights
    assert w.kd.tolist() == [1.0, 1.0] and not w.forget.any()
