"""Run checkpoints: atomic plain-data files (:mod:`dfkd_guard.serialization`) plus RNG states.

The CPU random states of torch, numpy and Python are stored as plain data so
that a checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfkd_guard.serialization import load_plain, save_atomic

__all__ = ["load_checkpoint", "rng_state", "save_atomic", "set_rng_state"]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a run checkpoint; a ``ValueError`` names the file if it is not plain data."""
    return load_plain(path, "dfkd-guard checkpoint")


def rng_state() -> dict[str, Any]:
    """The CPU random states of torch, numpy and Python, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
