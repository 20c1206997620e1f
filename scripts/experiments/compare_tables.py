"""Two record folders of the same bench config, side by side: what changes with the machine.

For every row both folders' ``report`` invocations name, IAcc as mean ±
sample std over seeds in each folder and the difference of the means; then
each folder's guard-effect table (the report's: every guarded row minus its
unguarded row, paired over seeds, with 95% intervals). Prints Markdown.

    python scripts/experiments/compare_tables.py FOLDER_A FOLDER_B [--report report]

Not part of the library: docs/benchmarks/default_table_intel_xeon/README.md
quotes its output.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from dfkd_guard.bench.config import row_label
from dfkd_guard.bench.report import format_stat, guard_effect_table, report_rows
from dfkd_guard.errors import DfkdGuardError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--report", default="report", help="invocation record name in both folders")
    args = parser.parse_args()
    try:
        first, second = report_rows(args.first, args.report), report_rows(args.second, args.report)
    except DfkdGuardError as error:
        raise SystemExit(str(error)) from None
    for name, folder, rows in (("A", args.first, first), ("B", args.second, second)):
        cpus = sorted({cpu for row in rows for cpu in row.cpu_models()})
        print(f"{name}: {folder} ({', '.join(cpus)})")
    print("\n| setting | adapter | teacher | IAcc A | IAcc B | B − A |\n|---|---|---|---:|---:|---:|")
    by_key = {(r.setting, r.adapter, r.row): r for r in second}
    for a in first:
        b = by_key.get((a.setting, a.adapter, a.row))
        if b is None or not a.values("iacc") or not b.values("iacc"):
            continue
        shift = statistics.fmean(b.values("iacc")) - statistics.fmean(a.values("iacc"))
        cells = [
            a.setting,
            a.adapter,
            row_label(a.row),
            format_stat(a.values("iacc")),
            format_stat(b.values("iacc")),
        ]
        print(f"| {' | '.join(cells)} | {shift:+.3f} |")
    for name, rows in (("A", first), ("B", second)):
        print(f"\nGuard effect in {name}, paired over seeds:\n\n{guard_effect_table(rows)}")


if __name__ == "__main__":
    main()
