"""``dfkd-guard demo``: the OOD trap and the guard, on real digits, in minutes.

A one-seed slice of ``dfkd-guard bench`` (the same runs, metrics and report):
the close-set setting (ID = MNIST, OOD = MNIST-M, both from the vendored
subset), the vanilla adapter, and three teacher rows: an ordinary (SL)
teacher, a non-transferable (NTL) teacher, and the NTL teacher with the
default guard. Teachers are trained once and cached. It prints the three-row
table (IAcc, OAcc, OAgr, the trap diagnostics on the synthetic samples, s/it)
and where the report is; rerunning it reuses the finished runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import reporting

if TYPE_CHECKING:
    from .config import BenchConfig

__all__ = ["demo_config", "register", "run"]

_PROG = "dfkd-guard demo"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dfkd-guard"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="show the OOD trap of an NTL teacher and the guard on real digits"
    )
    parser.add_argument(
        "--iterations", type=reporting.positive_int(1), help="DFKD iterations per run (default: the bench's)"
    )
    parser.add_argument(
        "--teacher-steps",
        type=reporting.positive_int(1),
        help="training steps of each teacher (default: the bench's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="DFKD seed")
    parser.add_argument(
        "--workers",
        type=reporting.positive_int(1),
        default=min(3, os.cpu_count() or 1),
        help="runs trained at once (default: up to 3, one per core)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=_default_cache(), help="where trained teachers are cached"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="folder of report.md and the stored runs"
    )
    parser.set_defaults(func=run)


def demo_config(
    out: Path, cache_dir: Path, seed: int = 0, iterations: int | None = None, teacher_steps: int | None = None
) -> BenchConfig:
    """The bench configuration of the demo: mnist_m x vanilla x {SL, NTL, NTL + guard}, one seed."""
    from .config import BenchConfig

    base = BenchConfig()
    budget = base.budgets["vanilla"]
    if iterations is not None:
        budget = budget.model_copy(update={"iterations": iterations, "eval_every": max(iterations // 10, 1)})
    return base.updated(
        settings=["mnist_m"],
        adapters={"mnist_m": ["vanilla"]},
        rows=["sl", "ntl", "ntl_guard"],
        seeds=[seed],
        budgets={"vanilla": budget.model_dump()},
        teacher_steps=teacher_steps or base.teacher_steps,
        output_dir=str(out),
        teacher_cache_dir=str(cache_dir / "teachers"),
    )


def run(args: argparse.Namespace) -> int:
    """Train what is missing, write the report, print the table; returns the exit code."""
    from .report import has_matplotlib, load_rows, main_table, write_report
    from .runner import run_bench

    config = demo_config(args.out, args.cache_dir, args.seed, args.iterations, args.teacher_steps)
    summary = run_bench(config, workers=args.workers, train_progress=True)
    command = reporting.command_line(_PROG, args, ("--iterations", "--teacher-steps", "--seed", "--out"))
    path = write_report(config, command=command, plots=has_matplotlib())
    print(main_table(load_rows(config)))
    print(f"\nreport: {path} ({summary.seconds / 60:.1f} min)")
    return 0
