"""``dfkd-guard check-config FILE``: validate a guard config against the registered plugins."""

from __future__ import annotations

import argparse
import json

from dfkd_guard.config import GuardConfig
from dfkd_guard.plugins import PluginRegistry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check-config", help="validate a .toml / .json guard config")
    parser.add_argument("path", help="config file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = GuardConfig.from_file(args.path)
    resolved = config.resolve(PluginRegistry().component_map(), source=args.path)
    summary = {
        "scorer": {"name": resolved.scorer.name, "params": resolved.scorer.params.model_dump(mode="json")},
        "weighting": {
            "name": resolved.weighting.name,
            "params": resolved.weighting.params.model_dump(mode="json"),
        },
        "penalties": [
            {"name": p.name, "weight": p.weight, "params": p.params.model_dump(mode="json")}
            for p in resolved.penalties
        ],
        "forget": config.forget.model_dump(mode="json"),
        "kd_temperature": config.kd_temperature,
        "normalization": config.normalization.model_dump(mode="json"),
        "enabled": config.enabled,
    }
    print(json.dumps(summary, indent=2, allow_nan=False))  # validation refuses NaN and Inf; never print them
    return 0
