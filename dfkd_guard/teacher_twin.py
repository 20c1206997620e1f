"""A hook-free twin of the teacher, for the forwards the guard runs itself (scores, penalties, BN inputs).

The twin is a copy of the teacher's module tree that shares every parameter
and buffer tensor with it (no weight is copied), carries no hooks, stays in
eval mode and has parameters that do not require grad. Running it leaves the
caller's teacher untouched: its mode, its grad flags, the guard's BN record
and every hook a loop registered on it (forward, pre-forward, full backward)
see nothing of the guard's forwards. Gradients still flow to the inputs.

torch has no public way to run a module without its hooks, so the copy is
made with the teacher's hook tables replaced by empty ones (the module
attributes holding dictionaries whose names end in ``hooks``);
``tests/test_teacher_twin.py`` registers every public kind of hook and fails
if one fires. Global hooks (``torch.nn.modules.module.register_module_*``)
apply to every module, the twin too.

The twin is remade when the teacher's tensors or submodules were replaced
(``teacher.to(...)``, ``teacher.half()``, a new layer); updates in place
(``load_state_dict``) are shared as they happen. A teacher that cannot be
deep-copied (an attribute that refuses ``copy.deepcopy``) is run itself, in
eval mode with frozen weights and the guards' BN records paused for the
block, with a warning that its hooks fire.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from dfkd_guard.bn_statistics import recording_paused

__all__ = ["TeacherTwin"]

logger = logging.getLogger(__name__)


def _hook_free_copy(teacher: nn.Module) -> nn.Module:
    """Copy the module tree; parameters become frozen views of the teacher's, buffers are the same tensors."""
    memo: dict[int, object] = {}
    for parameter in teacher.parameters():
        memo[id(parameter)] = nn.Parameter(parameter.detach(), requires_grad=False)
    for buffer in teacher.buffers():
        memo[id(buffer)] = buffer
    for module in teacher.modules():
        for name, table in vars(module).items():
            if name.endswith("hooks") and isinstance(table, dict):
                memo[id(table)] = type(table)()
    return copy.deepcopy(teacher, memo).eval()


@contextmanager
def _scoring_mode(teacher: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters inside the block; the previous state restored on exit."""
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


class TeacherTwin:
    """The twin of one teacher, made on first use and remade when the teacher's tensors change.

    :param teacher: the caller's teacher; never modified.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self._twin: nn.Module | None = None
        self._key: tuple[int, ...] = ()

    def _current_key(self) -> tuple[int, ...]:
        tensors = itertools.chain(self.teacher.parameters(), self.teacher.buffers())
        return (*map(id, self.teacher.modules()), *(t.data_ptr() for t in tensors))

    def _module(self) -> nn.Module:
        key = self._current_key()
        if self._twin is None or key != self._key:
            try:
                self._twin = _hook_free_copy(self.teacher)
            except Exception as exc:  # noqa: BLE001 - whatever deepcopy raises, the teacher itself is run
                if self._twin is not self.teacher:
                    logger.warning(
                        "dfkd_guard: the teacher (%s) cannot be copied (%s: %s), so the guard runs it "
                        "itself: hooks registered on it fire during scoring and penalties",
                        type(self.teacher).__name__,
                        type(exc).__name__,
                        exc,
                    )
                self._twin = self.teacher
            self._key = key
        return self._twin

    @contextmanager
    def running(self) -> Iterator[nn.Module]:
        """The module to run for the guard inside the block: the twin in eval mode (or the quieted teacher)."""
        twin = self._module()
        if twin is self.teacher:
            with _scoring_mode(twin), recording_paused(twin):
                yield twin
            return
        if twin.training:  # a component may have switched it
            twin.eval()
        yield twin
