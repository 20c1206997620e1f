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
in ``<out>/teachers/`` (or the configured ``teacher_cache_dir``). A training
invocation stores its command and config in ``<out>/invocations/``;
``--export-to`` copies the records of a report into a folder to commit, and
``--rederive`` rewrites a report from such a folder alone
(:mod:`dfkd_guard.bench.records`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from dfkd_guard.errors import DfkdGuardError

from . import reporting
from .config import ADAPTERS

if TYPE_CHECKING:
    from .config import BenchConfig

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
    parser.add_argument(
        "--export-to",
        type=Path,
        metavar="FOLDER",
        help="also copy the run and teacher records of this report into FOLDER as compact JSON, with its "
        "command and config (invocations/), and write the report there from them: a folder to commit",
    )
    parser.add_argument(
        "--rederive",
        metavar="NAME",
        help="train nothing: rewrite report NAME of --out from the config and command stored with it "
        "(invocations/NAME.json) and the stored records; takes no config option",
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


#: Options that --rederive refuses: it takes the config, and writes the report, where --out has them.
_NOT_WITH_REDERIVE = ("config", "tiny", "seeds", "iterations", "settings", "adapters", "export_to")


def run(args: argparse.Namespace) -> int:
    """Build the config, run what is missing, write the report (and export it); returns the exit code."""
    from .records import export_records, read_invocation, stored_config, write_invocation
    from .report import require_matplotlib, write_report
    from .runner import run_bench

    reporting.start_run(args.threads)
    if args.rederive is not None:
        if args.out is None:
            raise DfkdGuardError("--rederive needs --out FOLDER")
        given = [f"--{name.replace('_', '-')}" for name in _NOT_WITH_REDERIVE if getattr(args, name)]
        if given:
            raise DfkdGuardError(f"--rederive takes the config stored in --out, not {', '.join(given)}")
        config = stored_config(args.out, args.rederive)
        require_matplotlib()
        path = write_report(config, args.out, invocation=read_invocation(args.out, args.rederive))
    else:
        config = _config(args)
        require_matplotlib()  # fail before hours of training, not after
        command = _command(args)
        if not args.report_only:
            summary = run_bench(config, train_progress=args.train_progress, workers=args.workers or 1)
            write_invocation(config, config.output_dir, command)
            reporting.progress(
                "bench", f"{len(summary.ran)} runs trained, {len(summary.skipped)} already finished"
            )
        path = write_report(config, command=command)
        if args.export_to is not None:
            export_records(config, config.output_dir, args.export_to, command)
            exported = write_report(config, args.export_to, command=command)
            if exported.read_bytes() != path.read_bytes():
                raise DfkdGuardError(f"{exported} differs from {path}, the report it was exported from")
            reporting.progress("bench", f"exported the records of {path.name} to {args.export_to}")
    reporting.progress("bench", f"wrote {path}")
    print(path)
    return 0


def _config(args: argparse.Namespace) -> BenchConfig:
    """The config of the command line: defaults, ``--config`` or ``--tiny``, with the options applied."""
    from .config import BenchConfig

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
    return config.updated(**updates) if updates else config
