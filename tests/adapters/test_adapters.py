"""Every adapter runs real DFKD steps on a real (tiny) teacher, guard on and off, calling the hooks where it should."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from dfkd_guard import Guard, GuardConfig, SampleWeights, hookimpl, penalty, scorer
from dfkd_guard.adapters.checkpoint import load_checkpoint, save_atomic
from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer
from dfkd_guard.adapters.pool import ImagePool
from dfkd_guard.adapters.training import train
from dfkd_guard.adapters.vanilla import PRESETS, VanillaConfig, VanillaSynthesizer
from dfkd_guard.bench.models import ConvNet, Generator
from dfkd_guard.weightings import SplitParams, ood_mask
from tests.adapters.adapter_factory import ADAPTERS, ITERATIONS, make_adapter

ROOT = Path(__file__).resolve().parents[2]


class Spy:
    """Counts every guard hook call; its scorer and penalty are cheap real functions.

    ``weighed`` logs, per weighted batch, the BN prior's verdict at that moment
    (once :attr:`guard` is set), the scores and the weights.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.scored_sizes: list[int] = []
        self.guard: Guard | None = None
        self.weighed: list[tuple[str, torch.Tensor, SampleWeights]] = []
        calls, sizes = self.calls, self.scored_sizes

        @scorer("spy")
        def spy_score(logits: torch.Tensor) -> torch.Tensor:
            """negative max logit, counted"""
            calls["score"] += 1
            sizes.append(logits.shape[0])
            return -logits.max(dim=1).values

        @penalty("spy")
        def spy_penalty(logits: torch.Tensor) -> torch.Tensor:
            """mean max logit, counted"""
            calls["penalty"] += 1
            return logits.max(dim=1).values.mean()

        self.components = [spy_score, spy_penalty]

    @hookimpl
    def dfkd_guard_components(self):
        return self.components

    @hookimpl
    def dfkd_guard_batch_weighted(self, scores, weights):
        self.calls["weights"] += 1
        prior = self.guard.bn_prior if self.guard is not None else None
        self.weighed.append((prior.verdict if prior is not None else "off", scores, weights))

    @hookimpl
    def dfkd_guard_step_finished(self):
        self.calls["step"] += 1


def spy_guard(teacher: nn.Module, enabled: bool = True) -> tuple[Guard, Spy]:
    spy = Spy()
    # the student-side split, and no de-mixing: its calibration would keep every sample until its warm-up ends
    config = GuardConfig(
        enabled=enabled,
        scorer="spy",
        weighting="split",
        forget={"kind": "uniform"},
        penalties=[{"name": "spy", "weight": 0.1}],
        bn_prior={"demix": False},
    )
    return Guard(config, teacher, plugins=[spy], load_entrypoints=False), spy


# Synthesis steps per synthesize() call and scorer calls per iteration, for kd_steps=2.
EXPECTED = {
    "vanilla": {"penalty": 1, "score": 2},  # fresh G(z) per student step, scored each time
    "deepinversion": {"penalty": 3, "score": 1},  # one pooled batch per round, scored once
    "cmi": {"penalty": 3, "score": 1},
}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_hooks_are_called_where_they_should_be(teacher, adapter) -> None:
    torch.manual_seed(0)
    guard, spy = spy_guard(teacher)
    synthesizer, optimizer, scheduler = make_adapter(adapter, teacher, guard)
    result = train(synthesizer, optimizer, 3, kd_steps=2, scheduler=scheduler, progress=False)
    synthesizer.close()
    assert spy.calls["penalty"] == 3 * EXPECTED[adapter]["penalty"]
    assert spy.calls["score"] == 3 * EXPECTED[adapter]["score"]
    assert spy.calls["weights"] == 3 * 2
    assert spy.calls["step"] == 3
    assert len(result.history) == 3
    assert all(torch.isfinite(torch.tensor(h["loss/student"])) for h in result.history)
    assert 0.0 < result.history[-1]["guard/forgotten"] < 1.0  # the split really splits
    assert synthesizer.last_synthesis is not None and synthesizer.last_synthesis.images.shape[1:] == (
        3,
        32,
        32,
    )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_disabled_guard_calls_no_method_hook_and_keeps_every_sample(teacher, adapter) -> None:
    torch.manual_seed(0)
    guard, spy = spy_guard(teacher, enabled=False)
    synthesizer, optimizer, scheduler = make_adapter(adapter, teacher, guard)
    result = train(synthesizer, optimizer, 2, kd_steps=2, scheduler=scheduler, progress=False)
    assert spy.calls["score"] == 0 and spy.calls["penalty"] == 0 and spy.calls["weights"] == 0
    assert spy.calls["step"] == 2
    assert all(h["guard/kept"] == 1.0 and h["guard/forgotten"] == 0.0 for h in result.history)
    assert not guard.scores_needed
    batch = synthesizer.sample()
    assert torch.isnan(batch.scores).all() and batch.scores.shape == (batch.images.shape[0],)
    assert batch.kept_fraction == 1.0 and batch.forgotten_fraction == 0.0
    assert torch.isnan(guard.score(batch.images)).all()
    assert spy.calls["score"] == 0  # the scorer never ran
    synthesizer.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_no_scorer_runs_after_an_ordinary_verdict_with_the_default_weighting(teacher, adapter) -> None:
    torch.manual_seed(0)
    spy = Spy()
    # two observed batches decide, and no teacher separates its groups by 100 (NTL ones: about 1): ordinary
    prior = {"skip_batches": 0, "warmup_batches": 2, "ntl_separation": 100.0}
    guard = Guard(GuardConfig(scorer="spy", bn_prior=prior), teacher, plugins=[spy], load_entrypoints=False)
    assert guard.resolved.weighting.name == "none" and guard.scores_needed
    synthesizer, _, _ = make_adapter(adapter, teacher, guard)
    for _ in range(2):
        synthesizer.synthesize()
        batch = synthesizer.sample()
        assert torch.isfinite(batch.scores).all()  # the warm-up needs every score
    assert guard.bn_prior is not None and guard.bn_prior.verdict == "ordinary"
    assert not guard.scores_needed
    scored = spy.calls["score"]
    assert scored == 2  # vanilla: each fresh batch; pooled: each round's batch, once
    fresh = 16 if adapter == "vanilla" else 0
    for _ in range(2):
        synthesizer.synthesize()
        batch = synthesizer.sample()
        assert batch.kept_fraction == 1.0 and batch.forgotten_fraction == 0.0
        assert torch.isnan(batch.scores[:fresh]).all()  # fresh vanilla images go unscored
    if adapter != "vanilla":
        assert torch.isnan(synthesizer.pool.scores[-8:]).all()  # the rounds after the verdict pool NaN
    assert spy.calls["score"] == scored
    synthesizer.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_sample_is_kept_until_an_ntl_like_verdict_then_the_split_applies(teacher, adapter) -> None:
    torch.manual_seed(0)
    spy = Spy()
    # three observed batches decide, and a separation threshold of 0 always judges NTL-like
    config = GuardConfig(
        scorer="spy",
        weighting="split",
        forget={"kind": "uniform"},
        bn_prior={"skip_batches": 0, "warmup_batches": 3, "ntl_separation": 0.0},
    )
    guard = spy.guard = Guard(config, teacher, plugins=[spy], load_entrypoints=False)
    synthesizer, optimizer, scheduler = make_adapter(adapter, teacher, guard)
    result = train(synthesizer, optimizer, 5, kd_steps=1, scheduler=scheduler, progress=False)
    synthesizer.close()
    # the third batch's observation reaches the verdict, and that batch is already weighted
    assert [verdict for verdict, _, _ in spy.weighed] == ["warming up"] * 2 + ["ntl-like"] * 3
    assert guard.bn_prior is not None and guard.bn_prior.verdict == "ntl-like"
    for metrics in result.history[:2]:
        assert metrics["guard/kept"] == 1.0 and metrics["guard/forgotten"] == 0.0
    for metrics in result.history[2:]:
        assert 0.0 < metrics["guard/kept"] < 1.0
        assert metrics["guard/kept"] + metrics["guard/forgotten"] == pytest.approx(1.0)
    for verdict, scores, weights in spy.weighed:
        assert torch.isfinite(scores).all()
        if verdict == "ntl-like":
            ood = ood_mask(scores, SplitParams())
            assert ood.any() and not ood.all()
            assert torch.equal(weights.forget, ood) and torch.equal(weights.kd, (~ood).float())
        else:
            assert weights.kd.eq(1.0).all() and not weights.forget.any()


@pytest.mark.parametrize("adapter", ["deepinversion", "cmi"])
def test_pool_stores_scores_and_replay_never_rescores(teacher, adapter) -> None:
    torch.manual_seed(0)
    guard, spy = spy_guard(teacher)
    synthesizer, _, _ = make_adapter(adapter, teacher, guard)
    synthesizer.synthesize()
    synthesizer.synthesize()
    pool = synthesizer.pool
    assert len(pool) == 16 and torch.isfinite(pool.scores).all()
    with torch.no_grad():
        expected = -teacher(pool.images).max(dim=1).values
    torch.testing.assert_close(pool.scores, expected)
    calls = spy.calls["score"]
    for _ in range(5):
        batch = synthesizer.sample()
        assert batch.scores.shape == (8,)
    assert spy.calls["score"] == calls
    synthesizer.close()


def test_vanilla_replay_adds_pooled_images_with_their_fresh_logits_and_scores(teacher) -> None:
    torch.manual_seed(0)
    guard, spy = spy_guard(teacher)
    config = VanillaConfig(batch_size=8, replay=4, pool_size=12)
    synthesizer = VanillaSynthesizer(
        teacher, ConvNet((4, 8, 16)), Generator(latent_dim=8, base_channels=8), 8, guard, config
    )
    synthesizer.synthesize()
    first = synthesizer.sample()
    assert first.images.shape[0] == 8 and len(synthesizer.pool) == 8  # nothing to replay yet
    torch.testing.assert_close(synthesizer.pool.images, first.images)
    scored = list(spy.scored_sizes)
    forwarded: list[int] = []
    hook = teacher.register_forward_pre_hook(lambda module, inputs: forwarded.append(inputs[0].shape[0]))
    second = synthesizer.sample()
    hook.remove()
    assert spy.scored_sizes == scored + [8]  # only the fresh half is scored
    assert 4 not in forwarded  # replayed images reuse their stored logits
    assert second.images.shape[0] == 12 and second.weights.kd.shape == (12,)
    replayed = second.images[8:]
    stored = [int((first.images == image).flatten(1).all(dim=1).nonzero()) for image in replayed]
    torch.testing.assert_close(second.scores[8:], first.scores[stored])
    torch.testing.assert_close(second.teacher_logits[8:], first.teacher_logits[stored])
    assert len(synthesizer.pool) == 12  # 16 added, the 4 oldest dropped
    synthesizer.close()


def test_pool_keeps_logits_aligned_with_images_and_refuses_mixed_batches() -> None:
    pool = ImagePool(max_size=5)
    images, scores, logits = torch.rand(4, 3, 2, 2), torch.arange(4.0), torch.arange(8.0).view(4, 2)
    pool.add(images, scores, logits)
    pool.add(images[:2] + 1, scores[:2] + 10, logits[:2] + 100)  # the oldest image is dropped
    assert len(pool) == 5
    sampled_images, sampled_scores, sampled_logits = pool.sample(5)
    for image, score, logit in zip(sampled_images, sampled_scores, sampled_logits):
        index = int((pool.images == image).flatten(1).all(dim=1).nonzero())
        assert score == pool.scores[index] and torch.equal(logit, pool.logits[index])
    with pytest.raises(ValueError, match="pool holds logits; add\\(\\) got none"):
        pool.add(images, scores)
    with pytest.raises(ValueError, match="logits \\(B, K\\) for 4 images"):
        ImagePool().add(images, scores, logits[:3])
    bare = ImagePool()
    bare.add(images, scores)
    assert bare.sample(2)[2] is None
    with pytest.raises(ValueError, match="pool holds no logits"):
        bare.add(images, scores, logits)


def test_pool_scores_are_nan_when_the_guard_is_off(teacher) -> None:
    guard, _ = spy_guard(teacher, enabled=False)
    synthesizer, _, _ = make_adapter("deepinversion", teacher, guard)
    synthesizer.synthesize()
    assert len(synthesizer.pool) == 8 and torch.isnan(synthesizer.pool.scores).all()
    synthesizer.close()


def test_scoring_does_not_overwrite_the_bn_statistics_of_the_adapter_forward(teacher) -> None:
    config = GuardConfig(scorer={"name": "atesc", "params": {"steps": 3}}, penalties=["input_gradient"])
    guard = Guard(config, teacher, load_entrypoints=False)
    assert guard.scores_needed  # the BN prior is warming up
    batch = torch.rand(8, 3, 32, 32, requires_grad=True)
    other = torch.rand(5, 3, 32, 32) * 0.2
    teacher(batch)  # the adapter's forward
    inputs = guard.bn_inputs()
    loss = guard.bn_loss().item()
    forwards: list[int] = []
    counter = teacher.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    scores = guard.score(other)  # PGD: several forwards of the teacher's twin
    guard.generator_penalty(other.clone().requires_grad_(True))  # the guard runs the twin itself
    counter.remove()
    assert torch.isfinite(scores).all() and forwards == []  # none of them reached the teacher's hooks
    after = guard.bn_inputs()
    assert len(after) == len(inputs) and all(a is b for a, b in zip(after, inputs))
    assert all(x.shape[0] == 8 for x in after)
    assert guard.bn_loss().item() == loss
    guard.bn_loss().backward()  # still the graph of the adapter's forward
    assert batch.grad is not None and batch.grad.abs().sum() > 0
    guard.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapter_close_unfreezes_the_teacher_and_guard_close_stops_the_recording(teacher, adapter) -> None:
    torch.manual_seed(0)
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    assert all(p.requires_grad for p in teacher.parameters())
    synthesizer, _, _ = make_adapter(adapter, teacher, guard)
    assert not any(p.requires_grad for p in teacher.parameters())
    synthesizer.synthesize()
    synthesizer.close()
    assert all(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        teacher(torch.rand(3, 3, 32, 32))
    assert all(x.shape[0] == 3 for x in guard.bn_inputs())  # the guard's hooks outlive the adapter
    guard.close()
    with pytest.raises(RuntimeError, match="the guard is closed"):
        guard.bn_inputs()
    with torch.no_grad():
        teacher(torch.rand(3, 3, 32, 32))
    with pytest.raises(RuntimeError, match="the guard is closed"):
        guard.bn_inputs()  # no hook left to record that forward
    with pytest.raises(RuntimeError, match="the guard is closed"):
        guard.bn_loss()


def test_vanilla_close_removes_its_activation_hook(teacher) -> None:
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    config = VanillaConfig(batch_size=4, **PRESETS["dafl"])
    synthesizer = VanillaSynthesizer(teacher, ConvNet((4, 8, 16)), Generator(8, 8), 8, guard, config)
    assert "act" in synthesizer.synthesize().losses
    synthesizer._features = None
    with torch.no_grad():
        teacher(torch.rand(3, 3, 32, 32))
    assert synthesizer._features is not None and synthesizer._features.shape[0] == 3
    synthesizer.close()
    synthesizer._features = None
    with torch.no_grad():
        teacher(torch.rand(3, 3, 32, 32))
    assert synthesizer._features is None  # the hook no longer fires
    guard.close()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_vanilla_presets_run_with_their_published_terms(teacher, preset) -> None:
    torch.manual_seed(0)
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    config = VanillaConfig(batch_size=8, **PRESETS[preset])
    synthesizer = VanillaSynthesizer(teacher, ConvNet((4, 8, 16)), Generator(8, 8), 8, guard, config)
    terms = synthesizer.synthesize().losses
    synthesizer.close()
    active = {name for name in ("oh", "bn", "adv", "balance", "act") if getattr(config, name) > 0}
    assert active <= set(terms)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())


def test_vanilla_student_learns_from_the_teacher(teacher, setting) -> None:
    torch.manual_seed(0)
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    student = ConvNet((4, 8, 16))
    config = VanillaConfig(
        batch_size=64, generator_lr=1e-2, bn=10.0
    )  # DESIGN 7: what DFKD needs at this size
    synthesizer = VanillaSynthesizer(teacher, student, Generator(16, 16), 16, guard, config)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    images, labels = setting.id_test.images[:500], setting.id_test.labels[:500]

    def accuracy() -> dict[str, float]:
        student.eval()
        with torch.no_grad():
            return {"acc": float((student(images).argmax(1) == labels).float().mean())}

    before = accuracy()["acc"]
    result = train(synthesizer, optimizer, 60, kd_steps=2, evaluate=accuracy, progress=False)
    synthesizer.close()
    after = result.evaluations[-1][1]["acc"]
    assert after > max(before + 0.1, 0.18), (before, after)  # real digits, never seen: well above chance


def test_deepinversion_reduces_its_loss_and_keeps_the_best_batch(teacher) -> None:
    torch.manual_seed(0)
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    short = DeepInversionSynthesizer(
        teacher, ConvNet((4, 8, 16)), guard, DeepInversionConfig(batch_size=8, iterations=1, lr=0.1)
    )
    torch.manual_seed(0)
    first = short.synthesize().losses["total"]
    short.close()
    torch.manual_seed(0)
    long = DeepInversionSynthesizer(
        teacher, ConvNet((4, 8, 16)), guard, DeepInversionConfig(batch_size=8, iterations=30, lr=0.1)
    )
    last = long.synthesize().losses["total"]
    assert last < first
    long.close()


@pytest.mark.parametrize("init", ["pixels", "teacher_units"])
def test_deepinversion_starts_and_stays_in_the_pixel_range(teacher, init) -> None:
    normalization = {"mean": (0.5,), "std": (0.25,)}
    guard = Guard(GuardConfig(enabled=False, normalization=normalization), teacher, load_entrypoints=False)
    config = DeepInversionConfig(batch_size=16, iterations=3, lr=0.5, init=init)
    synthesizer = DeepInversionSynthesizer(
        teacher, ConvNet((4, 8, 16)), guard, config, image_shape=(3, 16, 16)
    )
    torch.manual_seed(0)
    start = synthesizer._initial_inputs()
    if init == "pixels":  # pixels 0.5 +- 0.2 in [0, 1], normalised by (p - 0.5) / 0.25: in [-2, 2], std 0.8
        assert start.min() >= -2 and start.max() <= 2 and 0.7 < float(start.std()) < 0.9
    else:
        assert float(start.std()) == pytest.approx(1.0, abs=0.05)
    synthesizer.synthesize()
    pooled = synthesizer.pool.images
    assert pooled is not None and pooled.min() >= -2 - 1e-6 and pooled.max() <= 2 + 1e-6  # clipped every step
    synthesizer.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_killed_run_resumes_to_the_same_student(adapter, teacher_file, tmp_path) -> None:
    def run(checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "tests.adapters.run_adapter",
            adapter,
            str(teacher_file),
            str(checkpoint),
            str(out),
            *extra,
        ]
        return subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)

    straight = run(tmp_path / "a.ckpt", tmp_path / "a.pt")
    assert straight.returncode == 0, straight.stderr
    killed = run(
        tmp_path / "b.ckpt", tmp_path / "b.pt", "--kill-at", "2"
    )  # after iteration 3; last checkpoint at 2
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "b.pt").exists()
    assert load_checkpoint(tmp_path / "b.ckpt")["iteration"] == 2
    resumed = run(tmp_path / "b.ckpt", tmp_path / "b.pt")
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(tmp_path / "b.ckpt")["iteration"] == ITERATIONS
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_refuse_pickled_code(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.ckpt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match=rf"{path.name}: not a loadable dfkd-guard checkpoint"):
        load_checkpoint(path)
    save_atomic({"x": torch.ones(2)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["evil.ckpt"]  # no temp file left behind


# ----------------------------------------------------------------------------- bad input


def test_teacher_without_batchnorm_is_refused_by_bn_matching() -> None:
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    guard = Guard(GuardConfig(enabled=False), flat, load_entrypoints=False)
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        DeepInversionSynthesizer(
            flat, ConvNet((4, 8, 16)), guard, DeepInversionConfig(batch_size=4, iterations=1)
        )
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        VanillaSynthesizer(
            flat, ConvNet((4, 8, 16)), Generator(8, 8), 8, guard, VanillaConfig(batch_size=4, bn=1.0)
        )
    # Without the BN term the same teacher is fine.
    DeepInversionSynthesizer(
        flat, ConvNet((4, 8, 16)), guard, DeepInversionConfig(batch_size=4, iterations=1, bn=0)
    ).close()
    vanilla = VanillaSynthesizer(
        flat, ConvNet((4, 8, 16)), Generator(8, 8), 8, guard, VanillaConfig(batch_size=4, bn=0)
    )
    assert "bn" not in vanilla.synthesize().losses
    vanilla.close()
    flat(torch.rand(2, 3, 32, 32))
    for ask in (guard.bn_loss, guard.bn_inputs, guard.bn_targets):
        with pytest.raises(ValueError, match=r"the teacher \(Sequential\) has no BatchNorm layer"):
            ask()


def test_generator_of_the_wrong_shape_is_refused(teacher) -> None:
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    small = Generator(latent_dim=8, base_channels=8, img_size=16)
    with pytest.raises(
        ValueError,
        match=r"the generator produced images of shape \(3, 16, 16\), but the teacher takes \(3, 32, 32\)",
    ):
        VanillaSynthesizer(teacher, ConvNet((4, 8, 16)), small, 8, guard)


def test_student_with_other_classes_is_refused(teacher) -> None:
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    with pytest.raises(ValueError, match="the student predicts 5 classes but the teacher 10"):
        VanillaSynthesizer(teacher, ConvNet((4, 8, 16), num_classes=5), Generator(8, 8), 8, guard)


def test_guard_of_another_teacher_is_refused(teacher) -> None:
    guard = Guard(GuardConfig(enabled=False), ConvNet((4, 8, 16)), load_entrypoints=False)
    with pytest.raises(ValueError, match="bound to a different teacher"):
        VanillaSynthesizer(teacher, ConvNet((4, 8, 16)), Generator(8, 8), 8, guard)


def test_nan_synthesis_is_skipped_and_never_reaches_the_pool(teacher) -> None:
    torch.manual_seed(0)
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    synthesizer = DeepInversionSynthesizer(
        teacher, ConvNet((4, 8, 16)), guard, DeepInversionConfig(batch_size=4, iterations=2)
    )
    synthesizer.synthesize()
    size = len(synthesizer.pool)
    handle = teacher.head.register_forward_hook(lambda m, i, o: o * float("nan"))
    result = synthesizer.synthesize()
    handle.remove()
    assert result.skipped == 2 and synthesizer.skipped == 2
    assert len(synthesizer.pool) == size and torch.isfinite(synthesizer.pool.images).all()
    synthesizer.close()


def test_vanilla_drops_and_counts_non_finite_generator_samples(teacher) -> None:
    class Holes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Generator(8, 8)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            x = self.inner(z)
            return torch.where(torch.arange(len(x)).view(-1, 1, 1, 1) % 4 == 0, float("nan"), x)

    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    synthesizer = VanillaSynthesizer(
        teacher, ConvNet((4, 8, 16)), Holes(), 8, guard, VanillaConfig(batch_size=8)
    )
    assert synthesizer.synthesize().skipped == 1
    batch = synthesizer.sample()
    assert batch.images.shape[0] == 6 and torch.isfinite(batch.images).all()
    assert synthesizer.skipped == 1 + 2
    synthesizer.close()
