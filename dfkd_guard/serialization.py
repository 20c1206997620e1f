"""Files that are written atomically and read without executing code.

Everything dfkd-guard writes (run checkpoints, cached teachers) is a plain
dictionary of tensors, numbers, strings, lists and dicts, saved with
``torch.save`` to a temporary file in the target folder, flushed to disk and
renamed over the target (``os.replace`` is atomic on one filesystem): a
process killed while writing leaves the previous file intact. Reading uses
``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = ["load_plain", "save_atomic", "write_json_atomic"]


def _write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` so that ``path`` is always either old or new, never partial."""
    _write_atomic(path, lambda handle: torch.save(state, handle))


def write_json_atomic(data: Any, path: str | Path) -> None:
    """Write ``data`` as JSON (NaN refused) so that ``path`` is always either old or new, never partial."""
    text = json.dumps(data, indent=1, allow_nan=False)
    _write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def load_plain(path: str | Path, what: str = "dfkd-guard checkpoint") -> dict[str, Any]:
    """Read a dict written by :func:`save_atomic` onto the CPU.

    :param what: how the error message names the file's role.
    :raises ValueError: naming the file, when it is not a dict of plain data
        (for instance a pickle that would execute code).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a loadable {what} of plain tensors and data: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: a {what} must hold a dict, got {type(state).__name__}")
    return state
