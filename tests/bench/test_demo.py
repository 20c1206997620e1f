"""``dfkd-guard demo`` end to end on a tiny budget: real digits, real teachers, three DFKD runs, a report."""

from __future__ import annotations

import re

from dfkd_guard.cli import main


def test_demo_prints_three_rows_and_writes_the_report(tmp_path, capsys) -> None:
    args = ["demo", "--iterations", "2", "--teacher-steps", "20", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert [row.split("|")[1].strip() for row in rows] == ["SL teacher", "NTL teacher", "NTL teacher + guard"]
    for row in rows:
        values = [float(v) for v in row.split("|")[2:-1]]
        assert all(0.0 <= v <= 1.0 for v in values[:-1]) and values[-1] > 0
    unguarded_flagged = float(rows[1].split("|")[7])
    assert unguarded_flagged == 0.0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| NTL teacher + guard |" in report and re.search(r"Date: \d{4}-\d{2}-\d{2}", report)
    assert len(list((tmp_path / "cache" / "teachers").glob("teacher-*.pt"))) == 2
    # A second run loads both teachers from the cache instead of training them.
    assert main(args) == 0
    assert capsys.readouterr().out.count("teacher cache hit") == 2
