"""The metrics of every DFKD iteration, one JSON object per line, written by an observer plugin.

:class:`RunLog` implements the ``dfkd_guard_step_finished`` hook
(:mod:`dfkd_guard.hookspecs`): given to a guard as a plugin, it appends the
iteration's metrics and the guard's BN-prior state (verdict, mean
separation, fitted mixture weights) to ``metrics.jsonl``, and to TensorBoard
when ``tensorboard`` is installed. On a resumed run it first drops the lines
of iterations after the checkpoint, so the file tells one uninterrupted run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dfkd_guard import Guard, hookimpl

__all__ = ["RunLog"]


class RunLog:
    """Observer plugin writing ``path`` (JSON lines) and, if available, TensorBoard events beside it.

    :param path: the JSONL file; lines of iterations after ``resumed_at`` are dropped.
    :param resumed_at: the iteration the run resumes from (0: a new run).
    :param tensorboard: also write TensorBoard events to ``path.parent / "tensorboard"``
        when ``torch.utils.tensorboard`` can be imported.
    """

    def __init__(self, path: Path, resumed_at: int = 0, tensorboard: bool = True) -> None:
        self.path = path
        self.guard: Guard | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_at and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["iteration"] <= resumed_at:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    break  # a line cut by a kill ends what can be kept
        path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        self._writer = _tensorboard_writer(path.parent / "tensorboard") if tensorboard else None

    def watch(self, guard: Guard) -> None:
        """Report ``guard``'s BN-prior state with every line."""
        self.guard = guard

    @hookimpl
    def dfkd_guard_step_finished(self, step: int, metrics: dict[str, float]) -> None:
        record: dict[str, Any] = {"iteration": step + 1}
        record.update({k: (v if math.isfinite(v) else None) for k, v in metrics.items()})
        prior = self.guard.bn_prior if self.guard is not None else None
        if prior is not None:
            record["guard/verdict"] = prior.verdict
            if prior.separation is not None:
                record["guard/separation"] = sum(prior.separation) / len(prior.separation)
                record["guard/mixture_weights"] = prior.weights
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self._writer.add_scalar(key, value, step + 1)

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any."""
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))
