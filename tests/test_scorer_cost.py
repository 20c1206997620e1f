"""``dfkd-guard bench-scorers`` on a tiny setting: the report's shape, not timing targets."""

from __future__ import annotations

import math

import pytest

from dfkd_guard.bench.scorer_cost import SCORERS
from dfkd_guard.cli import build_parser


def table_rows(report: str, teacher: str) -> dict[str, list[str]]:
    """Cells of the Markdown table's rows for ``teacher``, by scorer label."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == teacher:
            rows[cells[1]] = cells
    return rows


def test_bench_scorers_reports_every_scorer(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs" / "scorer_cost.md"
    args = build_parser().parse_args(
        [
            "bench-scorers",
            "--batch",
            "8",
            "--repeats",
            "1",
            "--teachers",
            "small",
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
    assert "Command: `dfkd-guard bench-scorers --batch 8 --repeats 1" in report
    assert "Machine: " in report and "torch " in report
    assert "round 1/1" in captured.err  # progress goes to stderr

    header = next(line for line in report.splitlines() if line.startswith("| teacher |"))
    columns = [cell.strip() for cell in header.strip().strip("|").split("|")]
    per_forward, per_fwd_bwd = columns.index("x forward"), columns.index("x k fwd+bwd")

    rows = table_rows(report, "small")
    assert "resnet18" not in report.split("| teacher |", 1)[1]
    for label, _, steps in SCORERS:
        assert label in rows, f"no row for scorer {label!r}"
        ratios = [float(rows[label][per_forward])]
        if steps is not None:
            ratios.append(float(rows[label][per_fwd_bwd]))
        else:
            assert rows[label][per_fwd_bwd] == "-"
        assert all(math.isfinite(r) and r > 0 for r in ratios), (label, ratios)
    assert {label for label, _, _ in SCORERS} >= {
        "msp",
        "energy",
        "entropy",
        "odin",
        "bn_deviation",
        "atesc k=5",
    }


@pytest.mark.parametrize("option", [["--teachers", "small,vgg"], ["--batch", "0"], ["--repeats", "x"]])
def test_bench_scorers_rejects_bad_options(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench-scorers", *option])
    assert exc.value.code == 2
    assert option[0] in capsys.readouterr().err
