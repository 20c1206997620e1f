"""Atomic checkpoints that load without executing code, and RNG state capture.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and
dicts, written with ``torch.save`` to a temporary file in the target folder,
flushed to disk and renamed over the target (``os.replace`` is atomic on one
filesystem): a run killed while writing leaves the previous checkpoint
intact. Loading uses ``torch.load(weights_only=True)``, which refuses pickled
code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_atomic", "load_checkpoint", "rng_state", "set_rng_state"]


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is always either old or new, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_atomic` onto the CPU.

    :raises ValueError: naming the file, when it is not a checkpoint of plain
        data (for instance a pickle that would execute code).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable dfkd-guard checkpoint of plain tensors and data: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: checkpoint must hold a dict, got {type(state).__name__}")
    return state


def rng_state() -> dict[str, Any]:
    """The CPU random states of torch, numpy and Python, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
