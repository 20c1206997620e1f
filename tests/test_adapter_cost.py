"""``dfkd-guard bench-adapters`` on a tiny setting: the report's shape, not timing targets."""

from __future__ import annotations

import math

import pytest

from dfkd_guard.bench.adapter_cost import ADAPTERS, GUARDS
from dfkd_guard.cli import build_parser


def table(report: str) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """Column names and cells of the result table, by (adapter, guard)."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    columns = [cell.strip() for cell in lines[0].strip().strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[(cells[0], cells[1])] = cells
    return columns, rows


def test_bench_adapters_reports_every_adapter_and_guard(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs" / "adapter_cost.md"
    args = build_parser().parse_args(
        [
            "bench-adapters",
            "--iterations",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch",
            "4",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    captured = capsys.readouterr()
    report = captured.out
    assert out.read_text(encoding="utf-8") == report
    assert "Command: `dfkd-guard bench-adapters --iterations 1 --repeats 1 --stat median" in report
    assert "Machine: " in report and "torch " in report
    assert "round 1/1" in captured.err  # progress goes to stderr

    columns, rows = table(report)
    seconds, ratio = columns.index("s / it"), columns.index("x off")
    assert len(rows) == len(ADAPTERS) * len(GUARDS)
    for adapter in ADAPTERS:
        for label, _ in GUARDS:
            cells = rows[(adapter, label)]
            values = [float(cells[seconds]), float(cells[ratio])]
            assert all(math.isfinite(v) and v > 0 for v in values), (adapter, label, values)
        assert float(rows[(adapter, "off")][ratio]) == 1.0
        pgd = float(rows[(adapter, "atesc k=3")][columns.index("PGD s / it")])
        assert math.isfinite(pgd)
        assert rows[(adapter, "energy")][columns.index("target")].split()[0] in ("ok", "MISSED")


@pytest.mark.parametrize("option", [["--adapters", "vanilla,dfad"], ["--batch", "0"], ["--repeats", "x"]])
def test_bench_adapters_rejects_bad_options(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench-adapters", *option])
    assert exc.value.code == 2
    assert option[0] in capsys.readouterr().err
