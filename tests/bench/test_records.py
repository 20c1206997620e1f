"""Committed bench records: export, byte-for-byte re-derivation of reports, statistics over seeds, machines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dfkd_guard.bench.config import BenchConfig
from dfkd_guard.bench.records import (
    INVOCATIONS,
    compact_json,
    read_invocation,
    record_names,
    report_command,
    stored_config,
    stored_report_names,
)
from dfkd_guard.bench.report import (
    RowSummary,
    guard_effect_table,
    main_table,
    rederive_report,
    render_report,
    report_rows,
)
from dfkd_guard.bench.seed_statistics import paired_differences, student_t_cdf, student_t_quantile, summarize
from dfkd_guard.cli import main
from dfkd_guard.errors import DfkdGuardError

BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
TINY = ["--tiny", "--settings", "rotated_mnist", "--adapters", "vanilla", "--seeds", "0,1,2"]


def committed_report_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` with stored runs: each must re-derive its reports."""
    return sorted(path.parent for path in root.glob("**/runs") if path.is_dir())


def assert_rederives(folder: Path) -> None:
    """Every report with an invocation record in ``folder`` is what its stored config and records give."""
    names = stored_report_names(folder)
    assert names, f"{folder} has runs/ but no invocations/<report>.json: export it with --export-to"
    for name in names:
        report = folder / f"{name}.md"
        assert report.is_file(), (
            f"{report} is missing; write it: dfkd-guard bench --out {folder} --rederive {name}"
        )
        assert rederive_report(folder, name) == report.read_text(encoding="utf-8"), (
            f"{report} is not what its records give: dfkd-guard bench --out {folder} --rederive {name}"
        )


def test_committed_reports_are_rederived_from_their_records() -> None:
    folders = committed_report_folders(BENCHMARKS)
    # the default table's records are committed: without them this test would check nothing
    bench = BENCHMARKS / "bench"
    table = json.loads((bench / "invocations" / "report.json").read_text(encoding="utf-8"))["runs"]
    assert bench in folders and len(table) >= 72
    assert all((bench / "runs" / f"{run}.json").is_file() for run in table.values())
    for folder in folders:
        assert_rederives(folder)


@pytest.mark.parametrize(
    ("df", "quantile"),
    [
        (1, 12.7062),
        (2, 4.3027),
        (3, 3.1824),
        (4, 2.7764),
        (5, 2.5706),
        (10, 2.2281),
        (30, 2.0423),
        (100, 1.9840),
    ],
)
def test_student_t_quantiles_match_the_published_table(df: int, quantile: float) -> None:
    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-4)
    assert student_t_quantile(0.025, df) == pytest.approx(-quantile, abs=1e-4)
    assert student_t_cdf(quantile, df) == pytest.approx(0.975, abs=1e-5)


def test_summaries_and_paired_differences() -> None:
    assert student_t_cdf(0.0, 3) == 0.5 and student_t_quantile(0.995, 2) == pytest.approx(9.9248, abs=1e-4)
    assert student_t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-4)  # the normal's
    summary = summarize([1.0, 2.0, 3.0])  # std 1: 2 ± 4.303 / sqrt(3)
    assert (summary.n, summary.mean, summary.std) == (3, 2.0, 1.0)
    assert summary.interval == pytest.approx((-0.4841, 4.4841), abs=1e-4) and summary.covers_zero
    single = summarize([0.5])
    assert (single.std, single.interval, single.covers_zero) == (None, None, False)
    assert not summarize([0.1, 0.1]).covers_zero and summarize([0.0, 0.0]).covers_zero
    # pairs are the seeds both rows have
    assert paired_differences({0: 0.9, 1: 0.8, 3: 0.5}, {1: 0.5, 0: 0.6, 2: 0.1}) == pytest.approx([0.3, 0.3])
    with pytest.raises(ValueError):
        summarize([])


def _record(seed: int, iacc: float, cpu: str = "CPU A") -> dict:
    return {
        "spec": {"seed": seed},
        "final": {"iacc": iacc},
        "machine": f"{cpu} | 2 logical cores | torch 2, 1 threads | Python 3 | load average 1.00, 1.00, 1.00 | 2026-01-01 00:00 UTC",
        "finished": "2026-01-01T00:00:00+00:00",
    }


def test_guard_effect_is_paired_by_seed_and_says_when_it_is_not_significant() -> None:
    ntl = RowSummary("s", "vanilla", "ntl", 3, [_record(0, 0.5), _record(1, 0.7), _record(2, 0.6)])
    guarded = RowSummary("s", "vanilla", "ntl_guard", 3, [_record(0, 0.8), _record(1, 0.9), _record(2, 0.9)])
    variant = RowSummary(
        "s", "vanilla", "ntl_guard@v", 3, [_record(0, 0.6), _record(1, 0.6), _record(2, 0.7, cpu="CPU B")]
    )
    sl = RowSummary("s", "vanilla", "sl", 3, [_record(0, 0.9), _record(1, 0.9)])
    alone = RowSummary("s", "vanilla", "sl_guard", 3, [_record(0, 0.95), _record(2, 0.5)])
    lines = guard_effect_table([ntl, guarded, variant, sl, alone]).splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    # differences 0.3, 0.2, 0.3: mean 0.267, std 0.0577, t(0.975, 2) = 4.303
    assert cells[0][:5] == ["s", "vanilla", "NTL + guard − NTL", "3", "+0.267 [+0.123, +0.410]"]
    # differences 0.1, -0.1, 0.1 cover 0; seed 2 of the variant ran on another CPU
    assert cells[1][2:4] == ["NTL + guard [v] − NTL", "3 †"] and cells[1][4].endswith("not significant")
    assert cells[2][2:5] == ["SL + guard − SL", "1", "+0.050 (one pair)"]  # seed 0 alone is in both
    assert cells[0][5] == "–"  # no OAcc in these records
    assert len(cells) == 3

    table = main_table([ntl, variant])
    assert "| 3/3 |" in table.splitlines()[2] and "| 3/3 † |" in table.splitlines()[3]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny bench output (3 seeds, one setting, the vanilla adapter) and its export to a folder to commit."""
    root = tmp_path_factory.mktemp("bench")
    out, committed = root / "out", root / "docs" / "benchmarks" / "bench"
    assert main(["bench", *TINY, "--out", str(out)]) == 0
    # a later command that trains nothing: the stored command (without --threads) stays the report's
    export = ["--threads", "1", "--report-only", "--export-to", str(committed)]
    assert main(["bench", *TINY, "--out", str(out), *export]) == 0
    return out, committed


def test_exported_records_rewrite_the_report_byte_for_byte(exported: tuple[Path, Path]) -> None:
    out, committed = exported
    report = (out / "report.md").read_text(encoding="utf-8")
    assert (committed / "report.md").read_text(encoding="utf-8") == report
    assert (
        f"- Command: `dfkd-guard bench --out {out} --seeds 0,1,2 --settings rotated_mnist --adapters vanilla --tiny`"
        in report
    )
    assert "- Date: 20" in report and "(15 runs)" in report and "load average" not in report
    assert "| rotated_mnist | vanilla | NTL + guard − NTL | 3 |" in report
    assert '"output_dir"' not in report and '"seeds": [\n    0,\n    1,\n    2\n  ]' in report

    # one compact file per record, the same data; the invocation record holds the command and config
    assert sorted(p.name for p in committed.iterdir()) == [
        "invocations",
        "plots",
        "report.md",
        "runs",
        "teacher_metrics",
    ]
    for kind in ("runs", "teacher_metrics"):
        names = sorted(p.name for p in (out / kind).glob("*.json"))
        assert names and names == sorted(p.name for p in (committed / kind).glob("*.json"))
        for name in names:
            text = (committed / kind / name).read_text(encoding="utf-8")
            data = json.loads((out / kind / name).read_text(encoding="utf-8"))
            assert text == compact_json(data) and text.count("\n") == 1
    assert stored_config(committed, "report") == BenchConfig.tiny().updated(
        settings=["rotated_mnist"], adapters={"rotated_mnist": ["vanilla"]}, seeds=[0, 1, 2]
    )

    # the committed folder alone rewrites the report, later, from anywhere: the same bytes
    shutil.rmtree(committed / "plots")
    assert main(["bench", "--out", str(committed), "--rederive", "report"]) == 0
    assert (committed / "report.md").read_text(encoding="utf-8") == report
    assert (committed / "plots" / "iacc-rotated_mnist.png").is_file()
    # and the check of the committed folders accepts it
    assert committed_report_folders(committed.parent) == [committed]
    assert_rederives(committed)


def test_a_changed_record_or_a_missing_report_fails_the_check(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "bench"
    shutil.copytree(exported[1], folder)
    (folder / "report.md").unlink()
    with pytest.raises(AssertionError, match="report.md is missing"):
        assert_rederives(folder)
    shutil.rmtree(folder / "invocations")
    with pytest.raises(AssertionError, match="no invocations"):
        assert_rederives(folder)

    # a run stored from another CPU: listed with its count, its row marked
    shutil.copytree(exported[1], folder, dirs_exist_ok=True)
    run = next((folder / "runs").glob("rotated_mnist-vanilla-ntl-seed1-*.json"))
    record = json.loads(run.read_text(encoding="utf-8"))
    record["machine"] = record["machine"].replace(record["machine"].split(" | ")[0], "Other CPU", 1)
    run.write_text(compact_json(record), encoding="utf-8")
    with pytest.raises(AssertionError, match="not what its records give"):
        assert_rederives(folder)
    report = render_report(stored_config(folder, "report"), folder)
    assert "- Machines (a cell marked † has runs of different CPU models):\n  - " in report
    assert "\n  - Other CPU | " in report and ": 14 runs\n" in report and ": 1 run\n" in report
    assert "| rotated_mnist | vanilla | NTL | " in report and "| 3/3 † |" in report
    assert "| rotated_mnist | vanilla | NTL + guard − NTL | 3 † |" in report


def test_rederive_takes_no_config_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--rederive", "report"]) == 2
    assert "--rederive needs --out" in capsys.readouterr().err
    assert main(["bench", "--tiny", "--out", str(tmp_path), "--rederive", "report"]) == 2
    assert "not --tiny" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path), "--rederive", "report"]) == 2
    assert "no invocation record of report 'report'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "path", sorted(BENCHMARKS.glob("**/*.toml")), ids=lambda path: str(path.relative_to(BENCHMARKS))
)
def test_committed_bench_configs_are_valid(path: Path) -> None:
    # a committed config that no longer reads would leave its report without a command to rerun it
    BenchConfig.from_file(path)


def _configs_with_committed_reports() -> list[tuple[str, BenchConfig, Path]]:
    """The default config with the default table's invocation record, and each committed config whose report
    has an invocation record in a committed folder, with that record."""
    pairs = [
        ("the default config", BenchConfig(), BENCHMARKS / "default_table" / INVOCATIONS / "report.json")
    ]
    for path in sorted(BENCHMARKS.glob("**/*.toml")):
        config = BenchConfig.from_file(path)
        records = sorted(BENCHMARKS.glob(f"**/{INVOCATIONS}/{config.report_name}.json"))
        pairs += [(str(path.relative_to(BENCHMARKS)), config, record) for record in records]
    return pairs


def test_committed_configs_name_the_runs_their_committed_reports_read() -> None:
    # a config whose ids moved (a default changed under it) would train its report's runs again, and differently
    pairs = _configs_with_committed_reports()
    assert len(pairs) >= 10 and pairs[0][2].is_file()
    problems = [
        f"{name} does not name the runs of {record.relative_to(BENCHMARKS)}"
        for name, config, record in pairs
        if record_names(config)["runs"] != json.loads(record.read_text(encoding="utf-8"))["runs"]
    ]
    assert not problems, "\n".join(problems)


def test_report_rows_are_the_rows_its_report_shows(tmp_path: Path) -> None:
    bench = BENCHMARKS / "bench"
    rows = report_rows(bench, "report")
    assert main_table(rows) in (bench / "report.md").read_text(encoding="utf-8")
    with pytest.raises(DfkdGuardError, match=r"invocations.*report\.json"):
        report_rows(tmp_path, "report")


def test_a_stored_config_reads_guard_fields_it_predates_with_the_values_its_runs_ran_with() -> None:
    # the default table was stored before trigger_window.rows existed (the relabelling was then "carrying")
    bench = BENCHMARKS / "bench"
    stored = read_invocation(bench, "report")
    assert "rows" not in stored["config"]["guard"]["trigger_window"]
    config = stored_config(bench, "report")
    assert config.guard.trigger_window.rows == "carrying" != BenchConfig().guard.trigger_window.rows
    assert record_names(config)["runs"] == stored["runs"]  # the ids its records were stored under
    assert report_command(config, bench, "another command") == stored["command"]  # the same config


def test_a_report_keeps_its_command_whichever_folder_its_config_is_read_from() -> None:
    # trigger_blend's invocation was stored with import_dir "docs/benchmarks", run from the repository root
    bench = BENCHMARKS / "bench"
    stored = read_invocation(bench, "trigger_blend")
    config = BenchConfig.from_file((BENCHMARKS / "trigger_blend.toml").resolve())
    assert str(config.import_dir) != stored["config"]["import_dir"]
    assert report_command(config, bench, "another command") == stored["command"]
