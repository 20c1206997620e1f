"""BN-prior de-mixing: moments, the fitted mixture weight, the corrected targets, calibration."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.bench.oracle import measure_bn_moments
from dfkd_guard.bn_prior import BNPrior, BNPriorConfig
from dfkd_guard.bn_statistics import BatchNorm, layer_moments

CHANNELS = 4
MU_ID = torch.tensor([1.0, -1.0, 0.5, 2.0])
MU_OOD = torch.tensor([4.0, 3.0, -2.0, 0.0])
SD_ID, SD_OOD = 1.0, 0.5


def mixed_layer(a: float) -> nn.BatchNorm2d:
    """A BN layer whose running moments are the a : (1 - a) mixture of the ID and OOD Gaussians."""
    layer = nn.BatchNorm2d(CHANNELS)
    mean = a * MU_ID + (1 - a) * MU_OOD
    second = a * (SD_ID**2 + MU_ID**2) + (1 - a) * (SD_OOD**2 + MU_OOD**2)
    layer.running_mean.copy_(mean)
    layer.running_var.copy_(second - mean**2)
    return layer


def batch(ood: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, C, 6, 6) features: samples flagged ``ood`` ~ N(MU_OOD, 0.25), the others ~ N(MU_ID, 1)."""
    noise = torch.randn(len(ood), CHANNELS, 6, 6, generator=generator)
    mean = torch.where(ood[:, None], MU_OOD, MU_ID)[:, :, None, None]
    sd = torch.where(ood, SD_OOD, SD_ID)[:, None, None, None]
    return mean + sd * noise


def warm_up(prior: BNPrior, batches: int = 40, one_domain: bool = False) -> None:
    """Feed batches split half/half; with ``one_domain`` both halves are ID samples (an ordinary teacher's split)."""
    generator = torch.Generator().manual_seed(0)
    split = torch.arange(32) % 2 == 0
    for _ in range(batches):
        features = batch(split & (not one_domain), generator)
        prior.observe([features], split)


def test_layer_moments_are_per_sample_channel_means_and_second_moments() -> None:
    x = torch.randn(3, 2, 4, 5)
    mean, second = layer_moments(x)
    assert mean.shape == second.shape == (3, 2)
    torch.testing.assert_close(mean, x.mean(dim=(2, 3)))
    torch.testing.assert_close(second, (x**2).mean(dim=(2, 3)))


def test_an_ntl_mixture_is_removed() -> None:
    layer = mixed_layer(0.4)
    config = BNPriorConfig(skip_batches=0, warmup_batches=40, momentum=0.5)
    prior = BNPrior(config, [layer])
    assert prior.target(0, layer)[0] is layer.running_mean  # uncorrected while warming up
    warm_up(prior)
    assert prior.verdict == "ntl-like" and prior.correcting
    assert prior.weights == [pytest.approx(0.4, abs=0.03)]
    assert prior.separation is not None and prior.separation[0] > 1.0
    mean, var = prior.target(0, layer)
    torch.testing.assert_close(mean, MU_ID, atol=0.1, rtol=0)
    torch.testing.assert_close(var, torch.full((CHANNELS,), SD_ID**2), atol=0.15, rtol=0)
    # the running statistics themselves are far from the ID moments
    assert (layer.running_mean - MU_ID).abs().max() > 1.0


def test_an_ordinary_teacher_is_left_alone() -> None:
    layer = mixed_layer(1.0)
    prior = BNPrior(BNPriorConfig(skip_batches=0, warmup_batches=40, momentum=0.5), [layer])
    warm_up(prior, one_domain=True)
    assert prior.verdict == "ordinary" and not prior.correcting
    assert prior.separation is not None and prior.separation[0] < 0.05
    mean, var = prior.target(0, layer)
    assert mean is layer.running_mean and var is layer.running_var


def test_observing_stops_after_the_warm_up_and_state_round_trips() -> None:
    layer = mixed_layer(0.4)
    prior = BNPrior(BNPriorConfig(skip_batches=0, warmup_batches=5), [layer])
    warm_up(prior, batches=8)
    assert prior.observed == 5 and not prior.observing
    copy = BNPrior(BNPriorConfig(skip_batches=0, warmup_batches=5), [layer])
    copy.load_state_dict(prior.state_dict())
    assert copy.verdict == prior.verdict and copy.weights == prior.weights
    for got, want in zip(copy.target(0, layer), prior.target(0, layer)):
        torch.testing.assert_close(got, want)


def test_the_first_batches_are_skipped() -> None:
    layer = mixed_layer(0.4)
    prior = BNPrior(BNPriorConfig(skip_batches=3, warmup_batches=40, momentum=0.5), [layer])
    junk = torch.full((32, CHANNELS, 6, 6), 100.0)  # would wreck the estimate if it were used
    for _ in range(3):
        assert not prior.observe([junk], torch.arange(32) % 2 == 0)
    assert prior.seen == 3 and prior.observed == 0
    warm_up(prior)
    assert prior.weights == [pytest.approx(0.4, abs=0.03)]


def test_batches_with_an_empty_group_are_not_counted() -> None:
    prior = BNPrior(BNPriorConfig(skip_batches=0, warmup_batches=2), [mixed_layer(0.5)])
    assert not prior.observe([torch.randn(4, CHANNELS, 2, 2)], torch.zeros(4, dtype=torch.bool))
    assert prior.observed == 0
    assert prior.observe([torch.randn(4, CHANNELS, 2, 2)], torch.tensor([True, False, True, False]))


def test_observe_rejects_the_wrong_number_of_layers() -> None:
    prior = BNPrior(BNPriorConfig(), [mixed_layer(0.5)])
    with pytest.raises(ValueError, match="2 BN layers, the teacher has 1"):
        prior.observe([torch.randn(4, CHANNELS, 2, 2)] * 2, torch.tensor([True, False, True, False]))


def test_the_oracle_measures_the_moments_of_real_images() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 2, 3), nn.BatchNorm2d(2)
    )
    net.train()
    images = torch.rand(30, 3, 8, 8)
    moments = measure_bn_moments(net, images, batch_size=7)
    assert net.training  # mode restored
    first = net[0](images)
    torch.testing.assert_close(moments[0][0], first.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(moments[0][1], first.var(dim=(0, 2, 3), unbiased=False))
    second = net[3](net[2](net[1].eval()(first)))
    torch.testing.assert_close(moments[1][1], second.var(dim=(0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)


class TwoLayer(nn.Module):
    """A one-BN-layer teacher whose BN running moments are an ID/OOD mixture."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.bn = mixed_layer(a)
        self.head = nn.Linear(CHANNELS, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(x).mean(dim=(2, 3)))


@pytest.mark.parametrize(("a", "verdict"), [(0.4, "ntl-like"), (1.0, "ordinary")])
def test_the_guard_calibrates_forgetting_by_the_verdict(a: float, verdict: str, caplog) -> None:
    teacher = TwoLayer(a).eval()
    two_domains = verdict == "ntl-like"
    config = GuardConfig(
        scorer="msp", weighting="split", bn_prior={"skip_batches": 0, "warmup_batches": 10, "momentum": 0.5}
    )
    guard = Guard(config, teacher, load_entrypoints=False)
    generator = torch.Generator().manual_seed(0)
    ood = torch.arange(32) % 2 == 0
    scores = ood.float() + 0.01 * torch.rand(32, generator=generator)  # OOD-like samples score high
    with Guard(config.model_copy(update={"bn_prior": BNPriorConfig(demix=False)}), teacher) as no_prior:
        x = batch(ood, generator)
        assert (
            no_prior.weigh(x, teacher(x), scores).forgotten_fraction == 0.5
        )  # the configured split does split
    with caplog.at_level(logging.INFO, logger="dfkd_guard"), torch.no_grad():
        for i in range(10):
            x = batch(ood & two_domains, generator)  # the teacher's BN layer sees x itself
            forgotten = guard.student_batch(x, teacher(x), scores).forgotten_fraction
            # nothing before the verdict; the 10th batch completes the warm-up and is weighed after it
            assert forgotten == (0.5 if i == 9 and two_domains else 0.0)
    assert guard.bn_prior is not None and guard.bn_prior.verdict == verdict
    with torch.no_grad():
        x = batch(ood, generator)
        after = guard.student_batch(x, teacher(x), scores)
    assert after.forgotten_fraction == (0.5 if verdict == "ntl-like" else 0.0)
    assert {"ntl-like": "NTL-like teacher", "ordinary": "ordinary teacher"}[verdict] in caplog.text
    assert f"bn_prior={verdict}" in repr(guard)
    # after the warm-up, scores only matter while an NTL-like teacher's batches are split
    assert guard.scores_needed == (verdict == "ntl-like")


def test_the_guard_reuses_the_loops_teacher_forward_and_runs_its_own_otherwise() -> None:
    teacher = TwoLayer(0.4).eval()
    calls = []

    def count(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(module, BatchNorm):  # the teacher's BN layer, or its twin's (the guard's own forwards)
            calls.append(args[0].shape[0])

    handle = register_module_forward_hook(count)  # a global hook: it sees the twin too
    config = GuardConfig(scorer="msp", bn_prior={"skip_batches": 0, "warmup_batches": 5})
    guard = Guard(config, teacher, load_entrypoints=False)
    x = batch(torch.arange(8) % 2 == 0, torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            logits = teacher(x)
            guard.student_batch(x, logits)  # msp reads the logits: no forward of the guard's own
            assert len(calls) == 1 and guard.bn_prior is not None and guard.bn_prior.observed == 1
            guard.student_batch(x.clone(), logits)  # another tensor: the guard runs the teacher's twin
            assert len(calls) == 2 and guard.bn_prior.observed == 2
    finally:
        handle.remove()


def test_no_scores_are_needed_after_the_warm_up_when_the_weighting_ignores_them() -> None:
    teacher = TwoLayer(0.4).eval()
    config = GuardConfig(scorer="msp", weighting="none", bn_prior={"skip_batches": 0, "warmup_batches": 3})
    guard = Guard(config, teacher, load_entrypoints=False)
    generator = torch.Generator().manual_seed(0)
    ood = torch.arange(32) % 2 == 0
    scores = ood.float()
    with torch.no_grad():
        for _ in range(3):
            assert guard.scores_needed
            x = batch(ood, generator)
            guard.observe(x, teacher(x), scores)
        assert guard.bn_prior is not None and guard.bn_prior.correcting and not guard.scores_needed
        x = batch(ood, generator)
        assert torch.isnan(guard.student_batch(x, teacher(x)).scores).all()  # nothing scored


def test_the_teacher_must_be_in_eval_mode() -> None:
    teacher = TwoLayer(0.4).train()
    guard = Guard(GuardConfig(scorer="msp"), teacher, load_entrypoints=False)
    x = batch(torch.arange(8) % 2 == 0, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="train mode"):
        guard.student_batch(x, teacher(x))
    with pytest.raises(ValueError, match="train mode"):
        guard.bn_loss()


def test_demix_off_or_guard_off_has_no_prior() -> None:
    teacher = TwoLayer(0.5)
    assert Guard(GuardConfig(bn_prior={"demix": False}), teacher, load_entrypoints=False).bn_prior is None
    assert Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False).bn_prior is None
    assert Guard(GuardConfig(), nn.Linear(3, 2), load_entrypoints=False).bn_prior is None  # no BatchNorm


def test_a_guard_that_can_change_nothing_on_a_teacher_without_batchnorm_says_so(caplog) -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    with caplog.at_level(logging.WARNING, logger="dfkd_guard"):
        Guard(GuardConfig(), plain, load_entrypoints=False)
    assert "(Sequential) has no BatchNorm layer" in caplog.text and "changes nothing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dfkd_guard"):
        Guard(GuardConfig(weighting={"name": "split"}), plain, load_entrypoints=False)
        Guard(GuardConfig(enabled=False), plain, load_entrypoints=False)
        Guard(GuardConfig(), TwoLayer(0.5), load_entrypoints=False)
    assert "BatchNorm" not in caplog.text
