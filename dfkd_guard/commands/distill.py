"""``dfkd-guard distill CONFIG``: distil your own teacher with one DFKD method, guarded, into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a teacher of your own from a .toml / .json config (docs/distill.md)",
        description="Run the DFKD method a config names, with the guard, checkpointing into its run folder; "
        "running it again resumes the run.",
    )
    parser.add_argument("config", type=Path, help="distill config (.toml or .json)")
    parser.add_argument("--output", type=Path, help="run folder (default: the config's 'output')")
    parser.add_argument(
        "--extend",
        action="store_true",
        help="continue a finished or interrupted run with the config's larger 'iterations'",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfkd_guard.distill.config import DistillConfig
    from dfkd_guard.distill.run import distill

    config = DistillConfig.from_file(args.config)
    result = distill(
        config,
        args.config.resolve().parent,
        output=args.output,
        extend=args.extend,
        progress=not args.quiet,
    )
    if not result.processes.first:
        return 0
    summary = result.summary
    accuracy = summary.get("student_accuracy")
    shown = f", student accuracy {accuracy:.4f}" if accuracy is not None else ""
    processes = f" on {summary['processes']} processes" if summary["processes"] > 1 else ""
    print(
        f"{summary['method']}: {summary['iterations']} iterations{processes}, guard {summary['guard']}{shown}"
    )
    print(f"run folder: {result.output} (student.pt, metrics.jsonl, summary.json, report.md)")
    return 0
