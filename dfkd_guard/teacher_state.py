"""Run the teacher for the guard without leaving a trace on it.

Adapters keep state on their teacher: its train/eval mode, which parameters
require grad, and forward hooks whose last recorded output they read later
(DeepInversion's BatchNorm-statistics hooks). :func:`quiet_teacher` gives the
guard a teacher in eval mode with frozen weights and no forward hooks, and
puts every one of those things back when it exits, even on error.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["quiet_teacher"]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")


@contextmanager
def quiet_teacher(teacher: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, parameters frozen, module forward hooks suspended.

    Forward hooks registered on the teacher's modules before entry do not fire
    inside the block; hooks registered inside the block are dropped on exit.
    Gradients with respect to inputs still flow (use ``torch.enable_grad()``
    if the caller may be in ``no_grad``).

    :param teacher: any module; its submodules are handled too.
    :yields: the same module.
    """
    modules = list(teacher.modules())
    training = [m.training for m in modules]
    params = list(teacher.parameters())
    requires_grad = [p.requires_grad for p in params]
    saved_hooks = [{name: getattr(m, name) for name in _HOOK_DICTS} for m in modules]
    try:
        for module in modules:
            module.training = False
            for name in _HOOK_DICTS:
                setattr(module, name, OrderedDict())
        for p in params:
            p.requires_grad_(False)
        yield teacher
    finally:
        for module, was_training, hooks in zip(modules, training, saved_hooks):
            module.training = was_training
            for name, value in hooks.items():
                setattr(module, name, value)
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)

