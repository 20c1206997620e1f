"""The guard's own forwards run on a hook-free twin: nothing of the caller's hooks fires, the teacher is untouched."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import pytest
import torch
from torch import nn

from dfkd_guard import Guard, GuardConfig

SCORERS = ["atesc", "msp", "energy", "entropy", "odin", "bn_deviation"]


def hook_everything(teacher: nn.Module) -> Counter[str]:
    """Register every public kind of module hook on the teacher and its layers; count their calls."""
    calls: Counter[str] = Counter()

    def count(kind: str):
        def hook(*args, **kwargs):
            calls[kind] += 1

        return hook

    for module in (teacher, teacher.body[0], teacher.body[1], teacher.head):
        module.register_forward_pre_hook(count("forward_pre"))
        module.register_forward_pre_hook(count("forward_pre_kwargs"), with_kwargs=True)
        module.register_forward_hook(count("forward"))
        module.register_forward_hook(count("forward_kwargs"), with_kwargs=True)
        module.register_forward_hook(count("forward_always"), always_call=True)
        module.register_full_backward_pre_hook(count("backward_pre"))
        module.register_full_backward_hook(count("backward"))

    def hook_the_output(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(count("tensor"))

    teacher.body[3].register_forward_hook(hook_the_output)
    return calls


@pytest.mark.parametrize("scorer", SCORERS)
def test_no_hook_of_the_caller_fires_while_the_guard_scores(teacher, images, scorer) -> None:
    calls = hook_everything(teacher)
    guard = Guard(
        GuardConfig(scorer=scorer, penalties=[{"name": "input_gradient", "weight": 1.0}]),
        teacher,
        load_entrypoints=False,
    )
    x = images.clone().requires_grad_(True)
    guard.score(images)
    guard.generator_penalty(x).backward()  # the penalty's own forwards and its backward to the images
    with torch.no_grad():
        logits = teacher(images)
    calls.clear()  # the caller's forward above fired them, as it should
    guard.observe(images.clone(), logits)  # another tensor than the last forward: the guard runs its own
    assert calls == Counter()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients still reach the inputs

    y = images.clone().requires_grad_(True)
    teacher(y).sum().backward()  # the hooks are live: the caller's own forward and backward fire all of them
    assert set(calls) == {
        "forward_pre",
        "forward_pre_kwargs",
        "forward",
        "forward_kwargs",
        "forward_always",
        "backward_pre",
        "backward",
        "tensor",
    }
    guard.close()


def test_scores_are_those_of_the_teacher_itself_and_follow_its_weights(teacher, images) -> None:
    guard = Guard(GuardConfig(scorer="atesc"), teacher, load_entrypoints=False)
    first = guard.score(images)
    torch.manual_seed(1)
    other = type(teacher)()
    other.eval()
    teacher.load_state_dict(other.state_dict())  # in place: the twin shares the tensors
    moved = guard.score(images)
    assert not torch.equal(first, moved)
    torch.testing.assert_close(
        moved, Guard(GuardConfig(scorer="atesc"), other, load_entrypoints=False).score(images), rtol=0, atol=0
    )

    teacher.double()  # new tensors: the twin is made again
    assert guard.score(images.double()).dtype == torch.float32
    torch.testing.assert_close(
        guard.score(images.double()),
        Guard(GuardConfig(scorer="atesc"), other.double(), load_entrypoints=False).score(images.double()),
        rtol=0,
        atol=0,
    )


def test_the_twin_shares_the_teachers_weights_instead_of_copying_them(teacher, images) -> None:
    guard = Guard(GuardConfig(scorer="msp"), teacher, load_entrypoints=False)
    with guard._twin.running() as twin:
        assert twin is not teacher
        pointers = {p.data_ptr() for p in teacher.parameters()} | {b.data_ptr() for b in teacher.buffers()}
        assert {p.data_ptr() for p in twin.parameters()} | {b.data_ptr() for b in twin.buffers()} == pointers
        assert not any(p.requires_grad for p in twin.parameters())
        assert not any(m.training for m in twin.modules())


class Uncopyable(nn.Module):
    """A teacher holding a lock, which deepcopy refuses."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_a_teacher_that_cannot_be_copied_is_run_itself_with_a_warning(teacher, images, caplog) -> None:
    wrapped = Uncopyable(teacher).train()
    guard = Guard(GuardConfig(scorer="atesc"), wrapped, load_entrypoints=False)
    with caplog.at_level(logging.WARNING, logger="dfkd_guard.teacher_twin"):
        scores = guard.score(images)
        guard.score(images)
    assert [r.getMessage() for r in caplog.records if "cannot be copied" in r.getMessage()] == [
        caplog.records[0].getMessage()
    ]  # said once
    assert "Uncopyable" in caplog.records[0].getMessage()
    assert all(m.training for m in wrapped.modules())  # its mode and grad flags put back
    assert all(p.requires_grad for p in wrapped.parameters())
    wrapped.eval()
    torch.testing.assert_close(
        scores, Guard(GuardConfig(scorer="atesc"), teacher, load_entrypoints=False).score(images)
    )
