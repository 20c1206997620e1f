"""What the guard does with the trap after an NTL-like verdict: the trap memory (FIFO storage of warm-up
OOD-like images, cyclic recall, the student step) and the pooled images it tells adapters to drop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.base import StudentBatch, student_step
from dfkd_guard.errors import ConfigError
from dfkd_guard.losses import uniform_divergence
from dfkd_guard.sample_weights import SampleWeights
from dfkd_guard.trap_memory import TrapMemory
from tests.test_bn_prior import TwoLayer, batch


def numbered(first: int, count: int) -> torch.Tensor:
    """(count, 1, 1, 1) images whose single pixel is their number."""
    return torch.arange(first, first + count, dtype=torch.float32).view(count, 1, 1, 1)


def values(images: torch.Tensor) -> list[int]:
    return [int(v) for v in images.flatten()]


def test_the_memory_keeps_the_latest_images_and_recalls_them_in_turn() -> None:
    memory = TrapMemory(5)
    memory.add(numbered(0, 3))
    assert len(memory) == 3
    assert values(memory.recall(2)) == [0, 1] and values(memory.recall(2)) == [2, 0]  # round the stored ones
    memory.add(numbered(3, 6))  # 9 images in all: 0-3 are overwritten, oldest first
    assert len(memory) == 5 and sorted(values(memory.recall(5))) == [4, 5, 6, 7, 8]
    assert len(memory.recall(50)) == 5  # never more than stored
    memory.add(numbered(100, 0))  # an empty batch changes nothing
    assert len(memory) == 5


def test_the_memory_state_round_trips_mid_cycle() -> None:
    memory = TrapMemory(4)
    memory.add(numbered(0, 3))
    memory.recall(2)
    copy = TrapMemory(4)
    copy.load_state_dict(memory.state_dict())
    assert len(copy) == 3
    for _ in range(3):
        assert values(copy.recall(2)) == values(memory.recall(2))
    copy.add(numbered(10, 2))
    memory.add(numbered(10, 2))
    assert values(copy.recall(4)) == values(memory.recall(4))
    with pytest.raises(ValueError, match="capacity 4, this memory 8"):
        TrapMemory(8).load_state_dict(memory.state_dict())


def test_the_memory_rejects_bad_use() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        TrapMemory(0)
    memory = TrapMemory(4)
    with pytest.raises(ValueError, match="cannot recall 2 images from a trap memory of 0"):
        memory.recall(2)
    memory.add(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"holds images \(3, 4, 4\), got \(1, 4, 4\)"):
        memory.add(torch.zeros(2, 1, 4, 4))


def memory_guard(a: float, **forget: int) -> Guard:
    config = GuardConfig(
        scorer="msp",
        forget={"kind": "uniform", "memory": 8, "recall": 3, **forget},
        bn_prior={"skip_batches": 1, "warmup_batches": 4, "momentum": 0.5},
    )
    return Guard(config, TwoLayer(a).eval(), load_entrypoints=False)


def warm_up(guard: Guard, two_domains: bool) -> list[torch.Tensor]:
    """Five observed batches (one skipped, four estimated from); returns each batch's images."""
    generator = torch.Generator().manual_seed(0)
    ood = torch.arange(8) % 2 == 0
    scores = ood.float()  # OOD-like samples score high
    seen = []
    for i in range(5):
        assert guard.recall() is None  # nothing to forget before the verdict
        images = numbered(10 * i, 8)
        guard.observe_bn([batch(ood & two_domains, generator)], scores, images)
        seen.append(images)
    return seen


def test_an_ntl_like_verdict_recalls_the_ood_like_images_of_the_warm_up() -> None:
    guard = memory_guard(0.4)
    seen = warm_up(guard, two_domains=True)
    assert guard.bn_prior is not None and guard.bn_prior.verdict == "ntl-like"
    # the skipped first batch stays out; of the others, the OOD-like (even) images, the latest 8
    stored = [v for images in seen[1:] for v in values(images)[::2]][-8:]
    assert guard.trap_memory is not None and len(guard.trap_memory) == 8
    recalled = [v for _ in range(3) for v in values(guard.recall())]
    assert recalled[:8] == stored and len(recalled) == 9
    assert "trap memory 8/8" in repr(guard)
    # the warm-up is over: later batches do not enter the memory
    guard.observe_bn([torch.zeros(8, 4, 6, 6)], torch.ones(8), numbered(500, 8))
    assert 500 not in values(guard.trap_memory.recall(8))


def test_an_ordinary_teacher_recalls_nothing() -> None:
    guard = memory_guard(1.0)
    warm_up(guard, two_domains=False)
    assert guard.bn_prior is not None and guard.bn_prior.verdict == "ordinary"
    assert guard.recall() is None


def test_the_guard_state_carries_the_memory() -> None:
    guard = memory_guard(0.4)
    warm_up(guard, two_domains=True)
    guard.recall()
    resumed = memory_guard(0.4)
    resumed.load_state_dict(guard.state_dict())
    assert values(resumed.recall()) == values(guard.recall())
    with pytest.raises(ValueError, match="different forget.memory setting"):
        Guard(GuardConfig(scorer="msp"), TwoLayer(0.4), load_entrypoints=False).load_state_dict(guard.state_dict())


def test_a_student_step_forgets_the_recalled_images() -> None:
    guard = memory_guard(0.4, recall=2)
    warm_up(guard, two_domains=True)
    student = nn.Sequential(nn.Flatten(), nn.Linear(1, 10))
    seen: list[torch.Tensor] = []
    student.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3)
    images = torch.full((4, 1, 1, 1), -1.0)
    kept = StudentBatch(images, torch.randn(4, 10), torch.zeros(4), SampleWeights.keep_all(4))
    metrics = student_step(student, optimizer, kept, guard)
    assert seen[0].shape == (6, 1, 1, 1) and (seen[0][:4] == -1).all() and (seen[0][4:] >= 0).all()
    assert metrics["guard/kept"] == pytest.approx(4 / 6) and metrics["guard/forgotten"] == pytest.approx(2 / 6)
    # the forgetting term pulls the student's answers on the recalled images toward uniform
    assert guard.trap_memory is not None
    recalled = guard.trap_memory.recall(8)
    with torch.no_grad():
        before = uniform_divergence(student(recalled)).mean()
    for _ in range(100):
        student_step(student, optimizer, kept, guard)
    with torch.no_grad():
        after = uniform_divergence(student(recalled)).mean()
    assert after < 0.5 * before


@pytest.mark.parametrize(("a", "drop", "dropped"), [(0.4, True, True), (0.4, False, False), (1.0, True, False)])
def test_the_guard_names_the_trapped_pool_images_once_after_an_ntl_like_verdict(a: float, drop: bool, dropped: bool) -> None:
    config = GuardConfig(scorer="msp", bn_prior={"skip_batches": 1, "warmup_batches": 4, "momentum": 0.5, "drop_trapped": drop})
    guard = Guard(config, TwoLayer(a).eval(), load_entrypoints=False)
    pool_scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.85, float("nan")])  # NaN: pooled unscored, after the verdict
    generator = torch.Generator().manual_seed(0)
    ood = torch.arange(8) % 2 == 0
    for _ in range(5):
        assert guard.take_trapped(pool_scores) is None  # nothing before the verdict
        guard.observe_bn([batch(ood & (a < 1), generator)], ood.float())
    resumed = Guard(config, TwoLayer(a).eval(), load_entrypoints=False)
    resumed.load_state_dict(guard.state_dict())
    for current in (guard, resumed):  # a checkpoint taken between the verdict and the drop still drops
        trapped = current.take_trapped(pool_scores)
        if dropped:
            assert trapped is not None and trapped.tolist() == [False, True, False, True, True, False]
        else:
            assert trapped is None
        assert current.take_trapped(pool_scores) is None  # once


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"forget": {"kind": "none", "memory": 16}}, "forget.memory", "needs a forgetting term"),
        ({"forget": {"memory": 16}, "bn_prior": {"demix": False}}, "forget.memory", "set bn_prior.demix = true"),
        ({"bn_prior": {"demix": False, "drop_trapped": True}}, "bn_prior.drop_trapped", "named by the BN prior's verdict"),
    ],
)
def test_a_memory_or_drop_without_forgetting_or_warm_up_is_a_config_error(config: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Guard(config, TwoLayer(0.4), load_entrypoints=False)
    assert info.value.field == field
