"""The ``dfkd-guard`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit code. Modules are imported when the command
line is built, so heavy imports belong inside ``func``.

A user error (:class:`~dfkd_guard.errors.DfkdGuardError`, ``ValueError``,
``OSError``) from any command is one line on stderr,
``dfkd-guard: error: ...``, and exit code 2; with ``DFKD_GUARD_DEBUG`` set the
traceback is printed above that line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from dfkd_guard import __version__
from dfkd_guard.errors import DfkdGuardError
from dfkd_guard.plugins import debug_mode

__all__ = ["COMMAND_MODULES", "main"]

#: Modules providing sub-commands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "dfkd_guard.commands.plugins",
    "dfkd_guard.commands.check_config",
    "dfkd_guard.commands.distill",
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
    """Run the command line; returns the process exit code (2 for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (DfkdGuardError, ValueError, OSError) as exc:
        if debug_mode():
            traceback.print_exc()
        print(f"dfkd-guard: error: {one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return 2


def one_line(message: str) -> str:
    """``message`` with its lines joined by ``"; "`` (blank lines and surrounding spaces dropped)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
