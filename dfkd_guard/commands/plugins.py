"""``dfkd-guard plugins``: every registered component and where it comes from.

Entry points that failed to load are listed too, as ``FAILED`` rows; they do
not change the exit code. A ``-p`` module that fails to import is an error.
"""

from __future__ import annotations

import argparse
import importlib

from dfkd_guard.errors import PluginError
from dfkd_guard.plugins import PluginRegistry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plugins", help="list registered scorers, weightings and penalties")
    parser.add_argument(
        "-p",
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="also register this importable module",
    )
    parser.add_argument(
        "--no-entrypoints", action="store_true", help="skip plugins from the dfkd_guard entry points"
    )
    parser.add_argument(
        "--params", action="store_true", help="also list each component's parameters and defaults"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    modules = []
    for name in args.plugin:
        try:
            modules.append(importlib.import_module(name))
        except Exception as exc:  # re-raised naming the module, whatever its import raised
            raise PluginError(name, "import", f"cannot import plugin module: {exc!r}") from exc
    registry = PluginRegistry(modules, load_entrypoints=False if args.no_entrypoints else None)
    rows = [("KIND", "NAME", "SOURCE", "PLUGIN", "SUMMARY")]
    for rc in registry.components():
        c = rc.component
        rows.append((c.kind, c.name, rc.source, rc.plugin_name, c.summary))
    rows += [("FAILED", "-", "entry point", name, reason) for name, reason in registry.failed_entrypoints]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
        if args.params and row[0] not in ("KIND", "FAILED"):
            model = registry.component_map()[(row[0], row[1])].params
            for field_name, field in model.model_fields.items():
                print(f"    {field_name} = {field.default!r}: {field.description or ''}")
    return 0
