"""The ``dfkd-guard`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit code. Modules are imported when the command
line is built, so heavy imports belong inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dfkd_guard import __version__
from dfkd_guard.errors import DfkdGuardError

__all__ = ["COMMAND_MODULES", "main"]

#: Modules providing sub-commands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "dfkd_guard.commands.plugins",
    "dfkd_guard.commands.check_config",
    "dfkd_guard.bench.demo",
    "dfkd_guard.bench.scorer_cost",
    "dfkd_guard.bench.adapter_cost",
    "dfkd_guard.bench.bench_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfkd-guard",
        description="Guard data-free knowledge distillation against non-transferable teachers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DfkdGuardError as exc:
        print(f"dfkd-guard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
