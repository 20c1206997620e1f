"""Contrastive Model Inversion adapter: reset, pool with stored scores, bounded bank, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dfkd_guard import Component, Guard, GuardConfig, hookimpl
from dfkd_guard.adapters.cmi import CMIConfig, CMISynthesizer, FeatureBank, random_resized_crop
from dfkd_guard.adapters.training import train
from dfkd_guard.bench.models import ConvNet, Generator

SHAPE = (3, 16, 16)
LATENT = 8
SMALL = CMIConfig(batch_size=8, student_batch_size=8, iterations=3, bank_size=20, n_neg=8, head_dim=16)
GUARD_ON = GuardConfig(scorer={"name": "atesc", "params": {"steps": 1}})
GUARD_OFF = GuardConfig(enabled=False)


def tiny_teacher() -> ConvNet:
    """A 4-8 CNN whose BatchNorm layers hold non-trivial running statistics."""
    model = ConvNet((4, 8)).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, *SHAPE) * 2)
    return model.eval()


def build(
    guard_config: GuardConfig = GUARD_ON,
    config: CMIConfig = SMALL,
    plugins: tuple[object, ...] = (),
    seed: int = 0,
) -> tuple[CMISynthesizer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    teacher = tiny_teacher()  # the same teacher whatever the seed: it is not part of a checkpoint
    torch.manual_seed(seed)
    student = ConvNet((4, 8))
    guard = Guard(guard_config, teacher, plugins=plugins, load_entrypoints=False)
    generator = Generator(latent_dim=LATENT, base_channels=4, img_size=SHAPE[1])
    synthesizer = CMISynthesizer(teacher, student, generator, LATENT, guard, config, image_shape=SHAPE)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    return synthesizer, optimizer


class SpyScorer:
    """A scorer plugin that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    @hookimpl
    def dfkd_guard_components(self) -> list[Component]:
        return [Component("scorer", "spy", self.score, summary="counts calls; scores = -max logit")]

    def score(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += images.shape[0]
        return -logits.max(dim=1).values


@pytest.mark.parametrize("enabled", [True, False], ids=["guard-on", "guard-off"])
def test_pool_grows_one_batch_per_round_with_scores(enabled: bool) -> None:
    synthesizer, optimizer = build(GUARD_ON if enabled else GUARD_OFF)
    result = train(synthesizer, optimizer, 3, kd_steps=2, progress=False)
    assert len(synthesizer.pool) == 3 * SMALL.batch_size
    assert synthesizer.pool.scores is not None and synthesizer.pool.images is not None
    assert torch.isfinite(synthesizer.pool.images).all()
    if enabled:
        assert torch.isfinite(synthesizer.pool.scores).all()
    else:
        assert torch.isnan(synthesizer.pool.scores).all()
    last = result.history[-1]
    for term in ("oh", "bn", "adv", "cr", "penalty", "total", "best_total"):
        assert f"synthesis/{term}" in last
    assert result.skipped == 0
    synthesizer.close()


def test_pooled_images_are_in_teacher_units() -> None:
    config = GuardConfig(enabled=False, normalization={"mean": (0.5,), "std": (0.25,)})
    synthesizer, _ = build(config)
    synthesizer.synthesize()
    images = synthesizer.pool.images
    assert images is not None
    # [0, 1] pixels normalised with mean 0.5 and std 0.25 lie in [-2, 2] and leave [0, 1]
    assert images.min() >= -2 - 1e-5 and images.max() <= 2 + 1e-5
    assert images.min() < 0
    synthesizer.close()


def test_replay_reuses_stored_scores() -> None:
    spy = SpyScorer()
    unshifted = SMALL.model_copy(update={"replay_shift": 0, "flip": False})
    synthesizer, optimizer = build(GuardConfig(scorer="spy"), unshifted, plugins=(spy,))
    train(synthesizer, optimizer, 2, kd_steps=3, progress=False)
    assert spy.calls == 2  # once per round, never during the 6 student steps
    assert spy.images == 2 * SMALL.batch_size
    batch = synthesizer.sample()
    assert spy.calls == 2
    assert batch.images.shape == (SMALL.student_batch_size, *SHAPE)
    stored = {
        tuple(img.flatten().tolist()): float(s)
        for img, s in zip(synthesizer.pool.images, synthesizer.pool.scores)
    }
    for image, score in zip(batch.images, batch.scores):
        assert stored[tuple(image.flatten().tolist())] == pytest.approx(float(score))
    synthesizer.close()


def test_replayed_images_are_shifted_copies_of_pooled_ones() -> None:
    synthesizer, _ = build(GUARD_OFF, SMALL.model_copy(update={"replay_shift": 1, "flip": False}))
    synthesizer.synthesize()
    pool = synthesizer.pool.images
    assert pool is not None
    padded = torch.nn.functional.pad(pool, (1, 1, 1, 1), mode="replicate")
    crops = {
        tuple(image[:, dy : dy + SHAPE[1], dx : dx + SHAPE[2]].flatten().tolist())
        for image in padded
        for dy in range(3)
        for dx in range(3)
    }
    batch = synthesizer.sample()
    assert all(tuple(image.flatten().tolist()) in crops for image in batch.images)
    pooled = {tuple(image.flatten().tolist()) for image in pool}
    assert any(tuple(image.flatten().tolist()) not in pooled for image in batch.images)
    synthesizer.close()


def test_generator_is_redrawn_each_round_as_pytorch_initialises_it() -> None:
    synthesizer, _ = build(GUARD_OFF, SMALL.model_copy(update={"batch_size": 4}))
    starts: list[dict[str, torch.Tensor]] = []

    def snapshot(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        starts.append({k: v.clone() for k, v in module.state_dict().items()})

    handle = synthesizer.generator.register_forward_pre_hook(snapshot)
    synthesizer.synthesize()
    synthesizer.synthesize()
    handle.remove()
    first, second = starts[0], starts[SMALL.iterations]
    convolutions = [k for k in first if k.endswith("weight") and first[k].ndim > 1]
    assert convolutions and all(not torch.equal(first[k], second[k]) for k in convolutions)
    for name in convolutions:  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear and nn.Conv2d draw them
        weight = first[name]
        bound = 1 / math.sqrt(weight.shape[1] * weight[0, 0].numel())
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    batchnorms = [k[: -len(".running_mean")] for k in first if k.endswith("running_mean")]
    assert batchnorms and all(
        torch.equal(first[f"{k}.weight"], torch.ones_like(first[f"{k}.weight"])) for k in batchnorms
    )
    synthesizer.close()


def test_generator_restarts_from_its_initial_weights_each_round() -> None:
    synthesizer, _ = build(GUARD_OFF, SMALL.model_copy(update={"generator_init": "restore"}))
    initial = {k: v.clone() for k, v in synthesizer.generator.state_dict().items()}
    seen: list[dict[str, torch.Tensor]] = []

    def snapshot(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append({k: v.clone() for k, v in module.state_dict().items()})

    handle = synthesizer.generator.register_forward_pre_hook(snapshot)
    synthesizer.synthesize()
    after_first = {k: v.clone() for k, v in synthesizer.generator.state_dict().items()}
    synthesizer.synthesize()
    handle.remove()
    assert len(seen) == 2 * SMALL.iterations
    round_starts = (seen[0], seen[SMALL.iterations])
    for start in round_starts:
        assert start.keys() == initial.keys()
        assert all(torch.equal(start[k], initial[k]) for k in initial)
    assert any(not torch.equal(after_first[k], initial[k]) for k in initial)  # the round did train G
    synthesizer.close()


def test_memory_bank_is_bounded() -> None:
    synthesizer, _ = build(GUARD_OFF)
    assert SMALL.bank_size < 4 * SMALL.batch_size
    for _ in range(4):
        synthesizer.synthesize()
    assert len(synthesizer.bank) == SMALL.bank_size
    assert synthesizer.bank.sample(SMALL.n_neg).shape[0] == SMALL.n_neg
    synthesizer.close()

    bank = FeatureBank(max_size=5, dim=2)
    for i in range(4):
        bank.add(torch.full((2, 2), float(i)))
    assert len(bank) == 5
    assert bank.features[:, 0].tolist() == [1.0, 2.0, 2.0, 3.0, 3.0]  # oldest dropped first
    assert bank.sample(100).shape == (5, 2)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        bank.add(torch.zeros(3, 4))


def test_resume_gives_the_uninterrupted_student(tmp_path: Path) -> None:
    synthesizer, optimizer = build(GUARD_ON)
    train(synthesizer, optimizer, 4, kd_steps=2, progress=False)
    expected = synthesizer.student.state_dict()
    expected_pool = synthesizer.pool.images
    synthesizer.close()

    checkpoint = tmp_path / "cmi.pt"
    first, first_optimizer = build(GUARD_ON)
    train(first, first_optimizer, 2, kd_steps=2, checkpoint_path=checkpoint, progress=False)
    first.close()
    resumed, resumed_optimizer = build(
        GUARD_ON, seed=1
    )  # other initial weights: the checkpoint replaces them
    torch.manual_seed(123)  # the checkpoint, not the caller's RNG, decides what follows
    result = train(
        resumed, resumed_optimizer, 4, kd_steps=2, checkpoint_path=checkpoint, progress=False, extend=True
    )  # continued on purpose: the first run's budget was 2
    assert len(result.history) == 4
    got = resumed.student.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert resumed.pool.images is not None and expected_pool is not None
    assert torch.equal(resumed.pool.images, expected_pool)
    resumed.close()


def test_state_dict_round_trip_restores_everything() -> None:
    synthesizer, _ = build(GUARD_OFF)
    synthesizer.synthesize()
    synthesizer.synthesize()
    state = synthesizer.state_dict()
    assert set(state) == {
        "generator",
        "initial_generator",
        "head",
        "head_optimizer",
        "bank",
        "pool",
        "skipped",
    }
    other, _ = build(GUARD_OFF, seed=5)
    other.load_state_dict(state)
    other.student.load_state_dict(
        synthesizer.student.state_dict()
    )  # the trainer's checkpoint holds the student
    for name in ("generator", "head"):
        mine, theirs = getattr(synthesizer, name).state_dict(), getattr(other, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert all(
        torch.equal(synthesizer.initial_generator[k], other.initial_generator[k]) for k in state["generator"]
    )
    assert torch.equal(synthesizer.bank.features, other.bank.features)
    torch.manual_seed(7)
    a = synthesizer.synthesize()
    torch.manual_seed(7)
    b = other.synthesize()
    assert torch.equal(a.images, b.images)
    synthesizer.close()
    other.close()


class NaNGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Generator(latent_dim=LATENT, base_channels=4, img_size=SHAPE[1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z) * float("nan")


def test_non_finite_steps_are_skipped_and_never_pooled() -> None:
    torch.manual_seed(0)
    teacher = tiny_teacher()
    guard = Guard(GUARD_OFF, teacher, load_entrypoints=False)
    synthesizer = CMISynthesizer(
        teacher, ConvNet((4, 8)), NaNGenerator(), LATENT, guard, SMALL, image_shape=SHAPE
    )
    result = synthesizer.synthesize()
    assert result.skipped == SMALL.iterations and synthesizer.skipped == SMALL.iterations
    assert result.images.shape == (0, *SHAPE)
    assert len(synthesizer.pool) == 0 and len(synthesizer.bank) == 0
    with pytest.raises(RuntimeError, match="empty"):
        synthesizer.sample()
    synthesizer.close()


def test_the_guard_close_removes_the_teacher_hooks_the_adapter_close_leaves_them() -> None:
    synthesizer, _ = build(GUARD_OFF)
    teacher, guard = synthesizer.teacher, synthesizer.guard
    assert not any(p.requires_grad for p in teacher.parameters())
    synthesizer.close()
    assert all(p.requires_grad for p in teacher.parameters())  # unfrozen as it was
    with torch.no_grad():
        teacher(torch.rand(3, *SHAPE))
    assert all(x.shape[0] == 3 for x in guard.bn_inputs())  # still recorded: the guard's hooks stay
    guard.close()
    with torch.no_grad():
        teacher(torch.rand(5, *SHAPE))
    with pytest.raises(RuntimeError, match="the guard is closed"):
        guard.bn_inputs()  # that forward went unrecorded
    # CMI's instance features are the recorded BN inputs: a closed guard cannot serve a round
    other, _ = build(GUARD_OFF)
    other.guard.close()
    with pytest.raises(RuntimeError, match="the guard is closed"):
        other.synthesize()
    other.close()


def test_random_resized_crop() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8, requires_grad=True)
    same = random_resized_crop(images, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(same, images, atol=1e-6)
    flipped = random_resized_crop(images, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    for view, image in zip(flipped, images):
        assert torch.allclose(view, image, atol=1e-6) or torch.allclose(view, image.flip(-1), atol=1e-6)
    local = random_resized_crop(images, scale=(0.25, 0.5))
    assert local.shape == images.shape
    local.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_resized_crop(torch.rand(3, 8, 8))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        CMIConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="cr_temperature"):
        CMIConfig(cr_temperature=0)
    with pytest.raises(ValueError, match="extra"):
        CMIConfig(cr_T=0.1)


def test_teacher_without_batchnorm_is_refused() -> None:
    teacher = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    ).eval()
    guard = Guard(GUARD_OFF, teacher, load_entrypoints=False)
    with pytest.raises(ValueError, match="BatchNorm"):
        CMISynthesizer(
            teacher, ConvNet((4, 8)), Generator(LATENT, 4, img_size=16), LATENT, guard, SMALL, SHAPE
        )
