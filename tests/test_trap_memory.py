"""What the guard does with the trap after an NTL-like verdict: the trap memory (FIFO storage of warm-up
OOD-like images, cyclic recall, the student step)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfkd_guard import Guard, GuardConfig, GuardedBatch
from dfkd_guard.adapters.base import student_step
from dfkd_guard.errors import ConfigError
from dfkd_guard.losses import uniform_divergence
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


OOD = torch.arange(8) % 2 == 0
SCORES = OOD.float()  # OOD-like (even) samples score high


def guarded(guard: Guard, images: torch.Tensor) -> GuardedBatch:
    """The guard's student batch for ``images`` (the teacher's BN layer sees the images themselves)."""
    with torch.no_grad():
        return guard.student_batch(images, guard.teacher(images), SCORES[: len(images)])


def warm_up(guard: Guard, two_domains: bool) -> tuple[list[torch.Tensor], GuardedBatch]:
    """Five observed batches (one skipped, four estimated from); each batch's images, and the last guarded batch."""
    generator = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(5):
        images = batch(OOD & two_domains, generator)
        last = guarded(guard, images)
        seen.append(images)
    return seen, last


def test_an_ntl_like_verdict_recalls_the_ood_like_images_of_the_warm_up() -> None:
    guard = memory_guard(0.4)
    seen, last = warm_up(guard, two_domains=True)
    assert guard.bn_prior is not None and guard.bn_prior.verdict == "ntl-like"
    # the skipped first batch stays out; of the others, the OOD-like (even) images, the latest 8
    stored = torch.cat([images[::2] for images in seen[1:]])[-8:]
    assert guard.trap_memory is not None and len(guard.trap_memory) == 8
    # the batch that completed the warm-up already carries 3 of them, the next batches the following ones
    generator = torch.Generator().manual_seed(1)
    later = [guarded(guard, batch(OOD, generator)) for _ in range(2)]
    recalled = torch.cat([b.images[8:] for b in (last, *later)])
    assert torch.equal(recalled[:8], stored) and torch.equal(recalled[8], stored[0])
    assert (
        (last.weights.kd[8:] == 0).all()
        and last.weights.forget[8:].all()
        and not last.weights.forget[:8].any()
    )
    assert (last.teacher_logits[8:] == 0).all() and last.scores.shape == (8,)
    assert "trap memory 8/8" in repr(guard)
    # the warm-up is over: later batches do not enter the memory
    assert not any(
        torch.equal(image, other)
        for b in later
        for image in b.images[:8]
        for other in guard.trap_memory.recall(8)
    )


def test_nothing_is_recalled_before_the_verdict_or_for_an_ordinary_teacher() -> None:
    for a, two_domains, verdict in ((0.4, True, "ntl-like"), (1.0, False, "ordinary")):
        guard = memory_guard(a)
        generator = torch.Generator().manual_seed(0)
        for _ in range(4):
            assert guarded(guard, batch(OOD & two_domains, generator)).images.shape[0] == 8
        _, last = warm_up(guard, two_domains)
        assert guard.bn_prior is not None and guard.bn_prior.verdict == verdict
        assert last.images.shape[0] == (11 if verdict == "ntl-like" else 8)


def test_the_guard_state_carries_the_memory() -> None:
    guard = memory_guard(0.4)
    warm_up(guard, two_domains=True)
    resumed = memory_guard(0.4)
    resumed.load_state_dict(guard.state_dict())
    images = batch(OOD, torch.Generator().manual_seed(2))
    assert torch.equal(guarded(resumed, images).images, guarded(guard, images).images)
    with pytest.raises(ValueError, match="different forget.memory setting"):
        Guard(GuardConfig(scorer="msp"), TwoLayer(0.4), load_entrypoints=False).load_state_dict(
            guard.state_dict()
        )


def test_a_student_step_forgets_the_recalled_images() -> None:
    guard = memory_guard(0.4, recall=2)
    warm_up(guard, two_domains=True)
    student = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    seen: list[torch.Tensor] = []
    student.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3)
    images = batch(torch.zeros(4, dtype=torch.bool), torch.Generator().manual_seed(3))
    metrics = student_step(student, optimizer, guarded(guard, images))
    assert seen[0].shape == (6, 4, 6, 6) and torch.equal(seen[0][:4], images)
    assert metrics["guard/kept"] == pytest.approx(4 / 6) and metrics["guard/forgotten"] == pytest.approx(
        2 / 6
    )
    # the forgetting term pulls the student's answers on the recalled images toward uniform
    assert guard.trap_memory is not None
    recalled = guard.trap_memory.recall(8)
    with torch.no_grad():
        before = uniform_divergence(student(recalled)).mean()
    for _ in range(100):
        student_step(student, optimizer, guarded(guard, images))
    with torch.no_grad():
        after = uniform_divergence(student(recalled)).mean()
    assert after < 0.5 * before


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"forget": {"kind": "none", "memory": 16}}, "forget.memory", "needs a forgetting term"),
        (
            {"forget": {"memory": 16}, "bn_prior": {"demix": False}},
            "forget.memory",
            "set bn_prior.demix = true",
        ),
    ],
)
def test_a_memory_without_forgetting_or_warm_up_is_a_config_error(
    config: dict, field: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Guard(config, TwoLayer(0.4), load_entrypoints=False)
    assert info.value.field == field
