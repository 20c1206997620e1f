"""Run the teacher for the guard without changing its mode or its parameters' grad flags.

Scoring and penalties need the teacher in eval mode with frozen weights
(gradients flow to the inputs only). :func:`scoring_mode` sets both for the
duration of a block and puts back exactly what was there, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["scoring_mode"]


@contextmanager
def scoring_mode(teacher: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters inside the block; the previous state restored on exit.

    Gradients with respect to inputs still flow (use ``torch.enable_grad()``
    if the caller may be in ``no_grad``).

    :param teacher: any module; its submodules are handled too.
    :yields: the same module.
    """
    modules = list(teacher.modules())
    training = [m.training for m in modules]
    params = list(teacher.parameters())
    requires_grad = [p.requires_grad for p in params]
    try:
        for module in modules:
            module.training = False
        for p in params:
            p.requires_grad_(False)
        yield teacher
    finally:
        for module, was_training in zip(modules, training):
            module.training = was_training
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)
