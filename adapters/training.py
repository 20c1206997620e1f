"""One training driver for every adapter: iterations, progress, checkpoints, exact resume.

Each iteration calls ``synthesizer.synthesize()`` once, then runs
``kd_steps`` student steps on ``synthesizer.sample()`` batches, steps the
scheduler, and reports the iteration's metrics to the guard's observers.
Every ``checkpoint_every`` iterations the whole state (synthesizer, guard, student,
optimiser, scheduler, RNG states, history, step counter) is written
atomically with its digest and the run's fingerprint
(:mod:`dfkd_guard.adapters.fingerprint`); a run started with an existing
checkpoint resumes from it and ends with the same student as an
uninterrupted run (CPU, same seed). A checkpoint of a different run (any
fingerprint field differs), a corrupt one, or one whose weights are not
finite is refused with a :class:`~dfkd_guard.errors.CheckpointError` naming
the file and the differing fields. ``extend=True`` continues a run on purpose
with more iterations, replaying the scheduler on the new budget.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from dfkd_guard import GuardedBatch
from dfkd_guard.adapters.base import Synthesizer, student_step
from dfkd_guard.adapters.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from dfkd_guard.adapters.fingerprint import EXTENSIBLE, differences, run_fingerprint
from dfkd_guard.errors import CheckpointError
from dfkd_guard.serialization import non_finite_tensors

__all__ = ["TrainResult", "train"]

CHECKPOINT_FORMAT = 8  # 4: the vanilla replay pool holds teacher logits; 5: the guard state holds the trap memory; 7: the guard state is the BN prior and the trap memory alone (0.2); 8: the run fingerprint


@dataclass
class TrainResult:
    """History of a run.

    :param history: one dict of scalar metrics per iteration (means over its student steps).
    :param evaluations: ``(iteration, metrics)`` from the ``evaluate`` callback.
    :param skipped: synthesis steps skipped and synthetic samples dropped
        because of non-finite values (the synthesizer's running count).
    :param seconds_per_iteration: wall time of the iterations run in this process,
        without evaluations and checkpoint writes.
    :param iteration_seconds: wall time of each iteration run in this process, in order (the
        run's last ``len(iteration_seconds)`` iterations), timed as ``seconds_per_iteration``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    skipped: int = 0
    seconds_per_iteration: float = math.nan
    iteration_seconds: list[float] = field(default_factory=list)


def train(
    synthesizer: Synthesizer,
    optimizer: torch.optim.Optimizer,
    iterations: int,
    *,
    kd_steps: int = 1,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 50,
    evaluate: Callable[[], dict[str, float]] | None = None,
    evaluate_every: int = 0,
    progress: TextIO | bool = True,
    log_every: int = 10,
    label: str = "",
    extend: bool = False,
    student_update: Callable[[GuardedBatch], dict[str, float]] | None = None,
    write_checkpoints: bool = True,
    run_settings: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``synthesizer.student`` for ``iterations`` DFKD iterations.

    :param optimizer: the student's optimiser.
    :param kd_steps: student steps per iteration.
    :param scheduler: stepped once per iteration.
    :param checkpoint_path: where to checkpoint; resumes from it when it exists.
    :param checkpoint_every: iterations between checkpoints (and one at the end).
    :param evaluate: called every ``evaluate_every`` iterations and at the end;
        returns scalar metrics (e.g. student accuracy on a held-out set).
    :param progress: a one-line progress display: True for standard error
        (looked up at call time), a stream, or False for silence.
    :param log_every: iterations between progress lines.
    :param label: prefix of every progress line (e.g. the run's name when several runs share a terminal).
    :param extend: resume a checkpoint whose run had a different ``iterations``
        (and so a different schedule, e.g. a cosine ``T_max``): the scheduler
        given here is replayed to the checkpoint's iteration, as if this budget
        had been set from the start. Every other difference is still refused.
    :param student_update: one student step on a guarded batch, returning its metrics;
        default :func:`student_step` of ``synthesizer.student`` with ``optimizer``
        over ``synthesizer.processes`` (each process trains its shard of the batch).
    :param write_checkpoints: False: only read ``checkpoint_path`` (the
        processes of a data-parallel run but the first).
    :param run_settings: settings of the caller's own that a resume must keep
        (e.g. the numeric precision), added to the fingerprint as ``run.<name>``.
    :raises CheckpointError: the checkpoint is corrupt, not finite, or from a
        different run; the message names the file and each differing field.
    """
    if iterations < 0 or kd_steps < 1 or checkpoint_every < 1:
        raise ValueError(
            f"need iterations >= 0, kd_steps >= 1, checkpoint_every >= 1; got {iterations}, {kd_steps}, {checkpoint_every}"
        )
    stream: TextIO | None = sys.stderr if progress is True else (progress or None)
    prefix = f"[{label}] " if label else ""
    result = TrainResult()
    start = 0
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    fingerprint = run_fingerprint(synthesizer, optimizer, scheduler, iterations, kd_steps)
    fingerprint.update({f"run.{name}": value for name, value in (run_settings or {}).items()})
    if path is not None and path.exists():
        state = load_checkpoint(path)
        _check_same_run(state, path, fingerprint, extend)
        start = _restore(state, path, synthesizer, optimizer, scheduler, result, replay_schedule=extend)
        _say(stream, f"{prefix}resumed from {path} at iteration {start}/{iterations}")
    if student_update is None:
        student, processes = synthesizer.student, synthesizer.processes

        def student_update(batch: GuardedBatch) -> dict[str, float]:
            return student_step(student, optimizer, batch, processes)

    busy = 0.0  # seconds spent in iterations, without evaluation and checkpoint writes
    for step in range(start, iterations):
        began = time.perf_counter()
        synthesis = synthesizer.last_synthesis = synthesizer.synthesize()
        sums: dict[str, float] = {}
        for _ in range(kd_steps):
            for key, value in student_update(synthesizer.sample()).items():
                sums[key] = sums.get(key, 0.0) + value / kd_steps
        if scheduler is not None:
            scheduler.step()
        metrics = {**{f"synthesis/{k}": v for k, v in synthesis.losses.items()}, **sums}
        result.skipped = synthesizer.skipped
        metrics["synthesis/skipped"] = float(result.skipped)
        result.history.append(metrics)
        synthesizer.guard.step_finished(step, metrics)
        result.iteration_seconds.append(time.perf_counter() - began)
        busy += result.iteration_seconds[-1]
        done = step + 1
        if evaluate is not None and ((evaluate_every and done % evaluate_every == 0) or done == iterations):
            result.evaluations.append((done, evaluate()))
        if stream is not None and (done % log_every == 0 or done == iterations):
            rate = busy / (done - start)
            shown = " | ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k in _SHOWN)
            eta = _duration(rate * (iterations - done))
            _say(stream, f"{prefix}iter {done}/{iterations} | {shown} | {rate:.2f} s/it | eta {eta}")
        if write_checkpoints and path is not None and (done % checkpoint_every == 0 or done == iterations):
            save_atomic(_state(done, fingerprint, synthesizer, optimizer, scheduler, result), path)
    if iterations > start:
        result.seconds_per_iteration = busy / (iterations - start)
    return result


_SHOWN = ("loss/student", "guard/forgotten", "synthesis/total", "synthesis/skipped")


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _say(stream: TextIO | None, line: str) -> None:
    if stream is not None:
        print(line, file=stream, flush=True)


def _state(
    done: int,
    fingerprint: dict[str, Any],
    synthesizer: Synthesizer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    result: TrainResult,
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "iteration": done,
        "fingerprint": fingerprint,
        "synthesizer": synthesizer.state_dict(),
        "guard": synthesizer.guard.state_dict(),
        "student": synthesizer.student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "history": result.history,
        "evaluations": [[i, m] for i, m in result.evaluations],
    }


def _check_same_run(state: dict[str, Any], path: Path, fingerprint: dict[str, Any], extend: bool) -> None:
    """Refuse a checkpoint of another format or run (``extend``: a longer budget is allowed)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            path, f"checkpoint format {state.get('format')!r}, this version reads {CHECKPOINT_FORMAT}"
        )
    saved = state.get("fingerprint")
    if not isinstance(saved, dict):
        raise CheckpointError(path, "the checkpoint has no run fingerprint")
    changed = differences(saved, fingerprint)
    if extend:
        changed = [
            line for line in changed if not line.startswith(EXTENSIBLE) or line.startswith("scheduler.kind")
        ]
        done, wanted = int(state["iteration"]), fingerprint["iterations"]
        if wanted < done:
            raise CheckpointError(
                path, f"cannot extend to {wanted} iterations: the checkpoint has done {done}", ("iterations",)
            )
    if changed:
        fields = tuple(line.split(":", 1)[0] for line in changed)
        shown = "; ".join(changed[:8]) + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
        hint = (
            " (to continue it on purpose with more iterations: train(..., extend=True), or dfkd-guard distill --extend)"
            if all(f.startswith(EXTENSIBLE) for f in fields)
            else ""
        )
        raise CheckpointError(
            path,
            f"the checkpoint belongs to a different run; {len(changed)} setting(s) differ: {shown}. "
            f"Use another checkpoint path for a new run{hint}",
            fields,
        )


def _restore(
    state: dict[str, Any],
    path: Path,
    synthesizer: Synthesizer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    result: TrainResult,
    replay_schedule: bool,
) -> int:
    done = int(state["iteration"])
    fresh_schedule = scheduler.state_dict() if scheduler is not None else None
    initial_lrs = [group["lr"] for group in optimizer.param_groups]
    try:
        synthesizer.load_state_dict(state["synthesizer"])
        synthesizer.guard.load_state_dict(state["guard"])
        synthesizer.student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and not replay_schedule:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        result.history = list(state["history"])
        result.evaluations = [(int(i), dict(m)) for i, m in state["evaluations"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"cannot restore the run from it: {type(exc).__name__}: {exc}") from exc
    if scheduler is not None and replay_schedule:
        for group, lr in zip(optimizer.param_groups, initial_lrs):
            group["lr"] = lr
        scheduler.load_state_dict(fresh_schedule)  # type: ignore[arg-type]
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": no step is taken
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(done):
                scheduler.step()
    bad = non_finite_tensors(
        {
            "student": synthesizer.student.state_dict(),
            "optimizer": optimizer.state_dict()["state"],
            **{f"adapter.{name}": part.state_dict() for name, part in synthesizer.trained_parts().items()},
        }
    )
    if bad:
        raise CheckpointError(
            path,
            f"it holds NaN or Inf in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; refusing to resume",
        )
    result.skipped = synthesizer.skipped
    return done
