"""``dfkd-guard demo`` end to end on a tiny budget: real digits, real teachers, three DFKD runs, a report."""

from __future__ import annotations

import re

from dfkd_guard.cli import main


def test_demo_prints_three_rows_and_writes_the_report(tmp_path, capfd) -> None:
    args = [
        "demo",
        "--iterations",
        "2",
        "--teacher-steps",
        "20",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "2",
    ]
    assert main(args) == 0
    captured = capfd.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("| mnist_m")]
    assert [row.split("|")[3].strip() for row in rows] == ["SL", "NTL", "NTL + guard"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[4:-1]]
        iacc, oacc, oagr = (float(c) for c in cells[:3])
        assert all(0.0 <= v <= 1.0 for v in (iacc, oacc, oagr))
        assert cells[-1] == "1/1"  # one seed stored
    assert "[mnist_m/vanilla/NTL + guard/seed 0] iter 2/2" in captured.err  # per-run progress lines
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| mnist_m | vanilla | NTL + guard |" in report and re.search(r"Date: \d{4}-\d{2}-\d{2}", report)
    assert "Command: `dfkd-guard demo --iterations 2 --teacher-steps 20 --seed 0" in report
    assert len(list((tmp_path / "cache" / "teachers").glob("teacher-*.pt"))) == 2
    # A second run trains nothing: the teachers come from the cache, the runs from the stored results.
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "finished before, skipped" in err and "iter " not in err
