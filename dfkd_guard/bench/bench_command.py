"""``dfkd-guard bench``: the benchmark table (``docs/benchmark.md``), resumable, with a Markdown report.

Rows: setting x adapter x {SL teacher, NTL teacher, NTL + guard, SL + guard};
columns: IAcc, OAcc, OAgr, ASR minus the clean target rate, and the trap
diagnostics on the synthetic samples, as mean +- std over seeds. The
configuration is a :class:`~dfkd_guard.bench.config.BenchConfig` (defaults,
``--config FILE`` in TOML or JSON, or ``--tiny``), with a few fields
overridable on the command line.

Every finished run is stored in ``<out>/runs/``; running the same command
again skips them, so an interrupted benchmark resumes, and a finished one only
rewrites ``<out>/report.md`` and ``<out>/plots/``. Trained teachers are cached
in ``<out>/teachers/`` (or the configured ``teacher_cache_dir``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import reporting
from .config import ADAPTERS

__all__ = ["register", "run", "seed_list", "setting_list"]

_PROG = "dfkd-guard bench"


def seed_list(text: str) -> tuple[int, ...]:
    """argparse ``type`` of ``--seeds``: comma-separated distinct integers."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers, got {text!r}")
    return seeds


def setting_list(text: str) -> tuple[str, ...]:
    """argparse ``type`` of ``--settings``: comma-separated distinct setting ids."""
    ids = tuple(part.strip() for part in text.split(",") if part.strip())
    if not ids or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated setting ids, got {text!r}")
    return ids


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmark table (settings x adapters x SL/NTL teachers, with and without the guard); resumable",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--config", type=Path, metavar="FILE", help="BenchConfig as .toml or .json (default: the defaults)"
    )
    source.add_argument(
        "--tiny", action="store_true", help="the seconds-long test preset (tiny models, 2 iterations)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: the config's output_dir)"
    )
    parser.add_argument("--seeds", type=seed_list, help="comma-separated DFKD seeds, e.g. 0,1,2")
    parser.add_argument(
        "--iterations", type=reporting.positive_int(1), help="DFKD iterations per run, for every adapter"
    )
    parser.add_argument(
        "--settings",
        type=setting_list,
        help="comma-separated setting ids: of the config's settings, or registered settings (default: the config's)",
    )
    parser.add_argument(
        "--adapters",
        type=reporting.name_list(ADAPTERS),
        help=f"comma-separated subset of {', '.join(ADAPTERS)}, run in every selected setting",
    )
    parser.add_argument(
        "--threads",
        type=reporting.positive_int(1),
        help="torch.set_num_threads value of this process (teacher evaluation, OOD probes); teacher training and runs always use one thread",
    )
    parser.add_argument(
        "--workers",
        type=reporting.positive_int(1),
        help="runs trained at once, one process and one thread each (default 1)",
    )
    parser.add_argument(
        "--train-progress", action="store_true", help="also show each run's training progress lines"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: rewrite the report from stored runs"
    )
    parser.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    parts = [_PROG]
    for option in (
        "--config",
        "--out",
        "--seeds",
        "--iterations",
        "--settings",
        "--adapters",
        "--threads",
        "--workers",
    ):
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            parts += [option, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    parts += [flag for flag in ("--tiny",) if getattr(args, flag[2:])]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Build the config, run what is missing, write the report; returns the exit code."""
    from .config import BenchConfig
    from .report import require_matplotlib, write_report
    from .runner import run_bench

    started, load = reporting.start_run(args.threads)
    if args.tiny:
        config = BenchConfig.tiny()
    elif args.config is not None:
        config = BenchConfig.from_file(args.config)
    else:
        config = BenchConfig()
    updates: dict[str, object] = {}
    if args.out is not None:
        updates["output_dir"] = str(args.out)
    if args.seeds is not None:
        updates["seeds"] = list(args.seeds)
    if args.iterations is not None:
        updates["budgets"] = {
            name: {**budget.model_dump(), "iterations": args.iterations}
            for name, budget in config.budgets.items()
        }
    settings = list(args.settings or config.settings)
    if args.settings:  # an id the config does not define is a registered setting with its defaults
        updates["settings"] = {
            setting: config.settings[setting].model_dump(mode="json") if setting in config.settings else {}
            for setting in settings
        }
    if args.adapters:
        adapters = reporting.parse_names(args.adapters, ADAPTERS)
        updates["adapters"] = {setting: adapters for setting in settings}
    if updates:
        config = config.updated(**updates)
    require_matplotlib()  # fail before hours of training, not after
    if not args.report_only:
        summary = run_bench(config, train_progress=args.train_progress, workers=args.workers or 1)
        reporting.progress(
            "bench", f"{len(summary.ran)} runs trained, {len(summary.skipped)} already finished"
        )
    path = write_report(config, command=_command(args), started=started, load=reporting.load_span(load))
    reporting.progress("bench", f"wrote {path}")
    print(path)
    return 0
