"""The fingerprint of a run: everything that must be the same for a checkpoint to resume it.

:func:`run_fingerprint` flattens the guard's config and components, the
adapter's class and config, the digest of the teacher's weights, the shapes
of the student and of the adapter's own networks, the optimisers' and the
scheduler's kinds and hyper-parameters, and the iteration budget into one
``{"dotted.field": value}`` dict of plain data. Every checkpoint stores it;
:func:`differences` lists what a resume would change.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from dfkd_guard.adapters.base import Synthesizer
from dfkd_guard.serialization import plain_digest

__all__ = ["EXTENSIBLE", "differences", "run_fingerprint"]

#: Fields that ``train(..., extend=True)`` may change: the budget and what the schedule derives from it.
EXTENSIBLE = ("iterations", "scheduler.")


def run_fingerprint(
    synthesizer: Synthesizer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    iterations: int,
    kd_steps: int,
) -> dict[str, Any]:
    """The run's settings as a flat dict of plain data; call it before any step or restore.

    Learning rates are the initial ones (``initial_lr`` once a scheduler set it).
    """
    guard = synthesizer.guard
    found: dict[str, Any] = {"iterations": iterations, "kd_steps": kd_steps}
    _flatten(found, "guard", guard.config.model_dump(mode="json"))
    resolved = guard.resolved
    for kind, choices in (
        ("scorer", (resolved.scorer,)),
        ("weighting", (resolved.weighting,)),
        ("penalty", resolved.penalties),
    ):
        for choice in choices:
            plugin = guard.registry.provider(kind, choice.name)  # type: ignore[arg-type]
            found[f"guard.plugins.{kind}.{choice.name}"] = f"{plugin} ({guard.registry.source_of(plugin)})"
    found["adapter.kind"] = _kind(synthesizer)
    found["adapter.image_shape"] = list(synthesizer.image_shape)
    config = getattr(synthesizer, "config", None)
    if isinstance(config, BaseModel):
        _flatten(found, "adapter.config", config.model_dump(mode="json"))
    for name, part in synthesizer.trained_parts().items():
        if isinstance(part, nn.Module):
            _module(found, f"adapter.{name}", part)
        else:
            _optimizer(found, f"adapter.{name}", part)
    found["teacher.kind"] = _kind(synthesizer.teacher)
    found["teacher.sha256"] = plain_digest(dict(synthesizer.teacher.state_dict()))
    _module(found, "student", synthesizer.student)
    _optimizer(found, "optimizer", optimizer)
    found["scheduler.kind"] = _kind(scheduler) if scheduler is not None else None
    if scheduler is not None:
        hyper = {
            k: v for k, v in scheduler.state_dict().items() if not k.startswith("_") and k != "last_epoch"
        }
        _flatten(found, "scheduler", hyper)
    return found


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"field: checkpoint X, now Y"`` for every field whose value differs (or exists on one side only).

    Kinds (``optimizer.kind``, ``adapter.kind``, ...) come first: their sub-fields differ because they do.
    """
    missing = object()
    lines = []
    for key in sorted(set(saved) | set(current), key=lambda k: (not k.endswith(".kind"), k)):
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            shown = ["absent" if v is missing else repr(v) for v in (old, new)]
            lines.append(f"{key}: checkpoint {shown[0]}, now {shown[1]}")
    return lines


def _kind(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _module(found: dict[str, Any], prefix: str, module: nn.Module) -> None:
    found[f"{prefix}.kind"] = _kind(module)
    for name, tensor in module.state_dict().items():
        found[f"{prefix}.{name}"] = [*tensor.shape, str(tensor.dtype)]


def _optimizer(found: dict[str, Any], prefix: str, optimizer: torch.optim.Optimizer) -> None:
    found[f"{prefix}.kind"] = _kind(optimizer)
    for i, group in enumerate(optimizer.param_groups):
        hyper = {k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
        hyper["lr"] = group.get("initial_lr", group["lr"])
        hyper["params"] = len(group["params"])
        _flatten(found, f"{prefix}.groups[{i}]", hyper)


def _flatten(found: dict[str, Any], prefix: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(found, f"{prefix}.{key}", item)
    else:
        found[prefix] = _plain(value)


def _plain(value: Any) -> Any:
    """``value`` as data a checkpoint can hold and ``==`` can compare."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
