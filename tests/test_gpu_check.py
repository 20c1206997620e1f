"""scripts/gpu_check.sh's script runs every adapter guard off and on (here on the CPU, tiny)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_prints_one_row_per_adapter(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--device", "cpu", "--iterations", "2", "--warmup", "1", "--batch-size", "2", "--inner", "1"]
    assert module.main([*argv, "--guard-warmup", "1"]) == 0
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "s/it" not in line
    ]
    assert [row.split("|")[1].strip() for row in rows] == ["dfq", "deepinversion", "cmi"]
    assert all(row.rstrip().endswith("x |") for row in rows)
