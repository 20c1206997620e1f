"""Files that are written atomically, read without executing code, and prove their integrity.

Everything dfkd-guard writes (run checkpoints, cached teachers) is a plain
dictionary of tensors, numbers, strings, lists and dicts. :func:`save_atomic`
wraps it with its SHA-256 digest (:func:`plain_digest`), saves it with
``torch.save`` to a temporary file in the target folder, flushes it to disk
and renames it over the target (``os.replace`` is atomic on one filesystem):
a process killed while writing leaves the previous file intact, and the
temporary files such kills leave behind are removed by the next save of the
same file. :func:`load_plain` reads with ``torch.load(weights_only=True)``,
which refuses pickled code, and verifies the digest, so a truncated,
corrupted or bit-flipped file is a :class:`~dfkd_guard.errors.CheckpointError`
naming the file, never a result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from dfkd_guard.errors import CheckpointError

__all__ = [
    "FILE_FORMAT",
    "load_plain",
    "load_weights_only",
    "non_finite_tensors",
    "plain_digest",
    "save_atomic",
    "save_weights_atomic",
    "verified_content",
    "write_json_atomic",
]

#: Marks a file written by :func:`save_atomic`; its value is the layout version.
FILE_FORMAT = "dfkd_guard.plain/1"


def _stale_temp_files(path: Path) -> list[Path]:
    """Temporary files that :func:`_write_atomic` left beside ``path`` when killed mid-write."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if pattern.match(p.name)]


def _write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, rename it over ``path``.

    Temporary files of earlier writes of ``path`` that were killed are removed first
    (one writer per file, as for every checkpoint).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_temp_files(path):
        stale.unlink(missing_ok=True)
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


def plain_digest(value: Any) -> str:
    """SHA-256 hex digest of plain data: dicts (in order), lists, tuples, tensors, str, int, float, bool, None.

    Tensors contribute their dtype, shape and bytes; floats their exact bits,
    so any changed value, key, type or order changes the digest.

    :raises TypeError: ``value`` holds anything else.
    """
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        digest.update(f"d{len(value)}".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'l' if isinstance(value, list) else 't'}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, bool) or value is None:
        digest.update(f"b{value}".encode())
    elif isinstance(value, int):
        digest.update(f"i{value};".encode())
    elif isinstance(value, float):
        digest.update(b"f" + struct.pack("<d", value))
    elif isinstance(value, str):
        encoded = value.encode("utf-8", "surrogatepass")
        digest.update(f"s{len(encoded)}:".encode() + encoded)
    else:
        raise TypeError(f"not plain data: {type(value).__name__}")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` and its digest with ``torch.save`` so that ``path`` is always old or new, never partial.

    :raises TypeError: ``state`` is not plain data (see :func:`plain_digest`).
    """
    wrapped = {"format": FILE_FORMAT, "sha256": plain_digest(state), "content": state}
    _write_atomic(path, lambda handle: torch.save(wrapped, handle))


def save_weights_atomic(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a plain state dict, as ``torch.save(model.state_dict())`` would, atomically (no digest).

    For files meant for other tools: ``model.load_state_dict(torch.load(path, weights_only=True))``.
    """
    plain = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
    _write_atomic(path, lambda handle: torch.save(plain, handle))


def write_json_atomic(data: Any, path: str | Path) -> None:
    """Write ``data`` as JSON (NaN refused) so that ``path`` is always either old or new, never partial."""
    text = json.dumps(data, indent=1, allow_nan=False)
    _write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def load_weights_only(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU: tensors and plain data, never code.

    :param what: how the error message names the file's role.
    :raises CheckpointError: naming the file: missing, or not loadable as plain
        data (truncated, corrupt, or a pickle that would execute code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, f"no {what} there")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and torch errors alike become one named error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"not a loadable {what} of plain tensors and data ({reason})") from None


def verified_content(loaded: Any, path: str | Path, what: str) -> dict[str, Any]:
    """The content of what :func:`load_weights_only` read from a :func:`save_atomic` file, its digest checked.

    :raises CheckpointError: naming the file: not written by :func:`save_atomic`,
        or its content does not match its digest.
    """
    if not isinstance(loaded, dict) or loaded.get("format") != FILE_FORMAT:
        raise CheckpointError(
            path, f"not a {what} written by this version of dfkd-guard (no {FILE_FORMAT!r} header)"
        )
    content = loaded.get("content")
    if not isinstance(content, dict):
        raise CheckpointError(path, f"a {what} must hold a dict, got {type(content).__name__}")
    try:
        actual = plain_digest(content)
    except TypeError as exc:
        raise CheckpointError(path, f"the {what} holds {exc}") from None
    if actual != loaded.get("sha256"):
        raise CheckpointError(
            path, f"the {what} is corrupt: its content does not match the SHA-256 digest stored with it"
        )
    return content


def load_plain(path: str | Path, what: str = "dfkd-guard checkpoint") -> dict[str, Any]:
    """Read a dict written by :func:`save_atomic` onto the CPU and verify its digest.

    :param what: how the error message names the file's role.
    :raises CheckpointError: naming the file and the reason (see
        :func:`load_weights_only` and :func:`verified_content`).
    """
    return verified_content(load_weights_only(path, what), path, what)


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the floating-point tensors in ``state`` (nested dicts / lists) that hold NaN or Inf."""
    found: list[str] = []
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() and not bool(torch.isfinite(state).all()):
            found.append(prefix or "<tensor>")
    elif isinstance(state, dict):
        for key, item in state.items():
            found += non_finite_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, item in enumerate(state):
            found += non_finite_tensors(item, f"{prefix}[{i}]")
    elif isinstance(state, float) and not math.isfinite(state):
        found.append(prefix)
    return found
