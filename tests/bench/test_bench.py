"""``dfkd-guard bench``: tiny end-to-end run, resume, metrics with known answers, config errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from dfkd_guard.bench.config import BenchConfig, row_label
from dfkd_guard.bench.report import format_stat, require_matplotlib
from dfkd_guard.bench.runner import (
    EvalLabels,
    RunSpec,
    asr_minus_clean,
    enumerate_runs,
    final_metrics,
    prediction_metrics,
    preflight,
    run_config,
    run_id,
)
from dfkd_guard.cli import main
from dfkd_guard.errors import ConfigError, DfkdGuardError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table_rows(report: str) -> list[list[str]]:
    section = report.split("## Students", 1)[1].split("\n## ", 1)[0]
    lines = [
        line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| setting")
    ]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_tiny_bench_writes_the_report_and_a_rerun_skips_finished_runs(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--tiny", "--out", str(out)]) == 0
    config = BenchConfig.tiny()
    specs = enumerate_runs(config)
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == len(specs) == 21  # the oracle row runs for vanilla in the close-set settings only

    report = (out / "report.md").read_text()
    rows = _table_rows(report)
    expected = [(s.setting, s.adapter, row_label(s.row)) for s in specs]
    assert [tuple(r[:3]) for r in rows] == expected
    header = report.split("## Students", 1)[1].splitlines()
    columns = next(line for line in header if line.startswith("| setting")).strip("|").split("|")
    col = {name.strip(): i for i, name in enumerate(columns)}
    for row in rows:
        setting = row[0]
        assert row[col["seeds"]] == "1/1"
        assert 0.0 <= float(row[col["IAcc"]]) <= 1.0 and 0.0 <= float(row[col["OAgr"]]) <= 1.0
        assert (row[col["OAcc"]] == "–") == (setting == "fashion")  # open-set: no OOD accuracy
        assert (row[col["ASR − clean"]] == "–") == (setting != "backdoor")
        if not row[2].endswith("+ guard"):
            assert float(row[col["flagged by guard"]]) == 0.0
        # two iterations end inside the BN prior's warm-up; unguarded rows have no verdict
        assert row[col["BN prior"]] == ("warming up 1" if row[2].endswith("+ guard") else "–")
    assert "| backdoor | NTL backdoor |" in report  # teacher table names the backdoor teacher
    assert "bn_deviation" in report and '"iterations": 2' in report and "- Machine: " in report
    for setting in config.settings:
        for kind in ("iacc", "trap", "scores"):
            png = out / "plots" / f"{kind}-{setting}.png"
            assert png.read_bytes()[:8] == PNG_MAGIC
            assert f"(plots/{png.name})" in report

    record = json.loads(next(p for p in runs if p.name.startswith("backdoor-cmi-ntl_guard-")).read_text())
    assert record["teacher_kind"] == "ntl_backdoor" and record["curves"]["iteration"] == [1.0, 2.0]
    assert {"iacc", "oacc", "oagr", "asr", "asr_minus_clean", "ood_share", "collapse", "flagged"} <= set(
        record["final"]
    )
    assert len(record["synthetic_scores"]["values"]) == config.cmi.batch_size

    # The SL teacher sees only MNIST, the same in every setting: one training serves the SL row of all three.
    sl = [json.loads(p.read_text()) for p in runs if "-vanilla-sl-seed" in p.name]
    assert len(sl) == 3 and all(r["shared_training"] == list(config.settings) for r in sl)
    assert len({json.dumps(r["curves"]["iacc"]) for r in sl}) == 1
    assert {r["spec"]["setting"] for r in sl} == set(config.settings)

    # A rerun trains nothing: every run file stays as it was, the report is rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in runs}
    capsys.readouterr()
    assert main(["bench", "--tiny", "--out", str(out)]) == 0
    assert "0 runs trained, 21 already finished" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "runs").glob("*.json"))} == mtimes


def test_metrics_on_hand_made_predictions() -> None:
    labels = EvalLabels(
        id_labels=torch.tensor([0, 1, 2, 3]),
        ood_labels=torch.tensor([1, 2, 3, 4]),
        ntl_ood=torch.tensor([0, 0, 5, 5]),
        close_set=True,
        target_class=0,
    )
    pred_id = torch.tensor([0, 1, 0, 3])
    pred_ood = torch.tensor([0, 0, 5, 4])  # triggered digits: 2 of 4 sent to the target class
    pred_clean = torch.tensor([0, 2, 3, 4])  # the same digits without trigger: 1 of 4 predicted as the target
    metrics = prediction_metrics(pred_id, pred_ood, labels, pred_clean)
    assert metrics == pytest.approx(
        {"iacc": 0.75, "oagr": 0.75, "oacc": 0.25, "asr": 0.5, "asr_minus_clean": 0.25}
    )

    assert asr_minus_clean(torch.tensor([7, 7, 7]), torch.tensor([1, 2, 3]), 7) == (1.0, 1.0)
    assert asr_minus_clean(torch.tensor([7, 1]), torch.tensor([7, 7]), 7) == (0.5, -0.5)
    with pytest.raises(ValueError):
        asr_minus_clean(torch.tensor([1, 2]), torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="clean"):
        prediction_metrics(pred_id, pred_ood, labels)

    open_set = EvalLabels(
        labels.id_labels, torch.tensor([9, 9, 9, 9]), torch.tensor([4, 4, 4, 4]), close_set=False
    )
    assert prediction_metrics(pred_id, torch.tensor([4, 4, 1, 1]), open_set) == {"iacc": 0.75, "oagr": 0.5}

    # A run's final value is the mean of its last 3 evaluations; missing values are skipped.
    evaluations = [{"iacc": 0.1, "asr": None}, {"iacc": 0.2}, {"iacc": 0.3}, {"iacc": 0.4, "asr": 0.5}]
    assert final_metrics(evaluations) == pytest.approx({"iacc": 0.3, "asr": 0.5})
    assert (
        format_stat([0.5, 0.7]) == "0.600 ± 0.141"
        and format_stat([0.25]) == "0.250"
        and format_stat([]) == "–"
    )


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"iterations": 0}, "iterations"),
        ({"budgets": {"cmi": {"iterations": 0, "kd_steps": 1, "eval_every": 1}}}, "budgets.cmi.iterations"),
        ({"image_size": 12}, "image_size"),
        ({"rows": ["ntl", "ntl_guard@nope"]}, "guard_variants"),
        ({"rows": ["ntl_shield"]}, "rows"),
        ({"rows": ["ntl_guard@off"], "guard_variants": {"off": {"enabled": False}}}, "guard_variants"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"settings": ["fashion"], "adapters": {"mnist_m": ["vanilla"]}}, "adapters"),
        ({"adapters": {"fashion": ["dfad"]}}, "adapters.fashion.0"),
        ({"settings": ["svhn"]}, "settings.svhn.setting"),
        ({"settings": ["mnist_m", "mnist_m"]}, "settings"),
        ({"settings": {"bad-id": {"setting": "mnist_m"}}}, "settings.bad-id.[key]"),
        ({"rows": ["ntl_guard"], "guard": {"enabled": False}}, "guard"),
        ({"cmi": {"n_neg": 0}}, "cmi.n_neg"),
        ({"guard": {"kd_temperature": -1}}, "guard.kd_temperature"),
        ({"teacher_steps": "many"}, "teacher_steps"),
        ({"kd_step": 2}, "kd_step"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(values, field) -> None:
    with pytest.raises(ConfigError) as info:
        BenchConfig.from_mapping(values)
    assert info.value.field == field


def test_config_files_and_names_checked_before_training(tmp_path, capsys) -> None:
    good = tmp_path / "bench.toml"
    good.write_text(
        'settings = ["backdoor"]\nseeds = [3, 4, 5]\n\n[adapters]\nbackdoor = ["cmi"]\n\n[cmi]\niterations = 5\n'
    )
    config = BenchConfig.from_file(good)
    assert (
        config.seeds == (3, 4, 5) and config.adapters["backdoor"] == ("cmi",) and config.cmi.iterations == 5
    )
    assert (
        BenchConfig.from_file(good).model_dump()
        == BenchConfig.from_mapping(json.loads(config.model_dump_json())).model_dump()
    )

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"budgets": {"vanilla": {"iterations": 10, "kd_steps": 1, "eval_every": 0}}}))
    with pytest.raises(ConfigError, match="bad.json: budgets.vanilla.eval_every"):
        BenchConfig.from_file(bad)
    assert main(["bench", "--config", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert "budgets.vanilla.eval_every" in capsys.readouterr().err and not (tmp_path / "never").exists()

    with pytest.raises(ConfigError) as info:
        preflight(BenchConfig.tiny(guard={"scorer": "no_such_scorer"}))
    assert info.value.field == "guard.scorer.name"
    with pytest.raises(ConfigError) as info:
        preflight(BenchConfig.tiny(guard_variants={"memory": {"forget": {"kind": "none", "memory": 64}}}))
    assert info.value.field == "guard_variants.memory.forget.memory" and "forget.kind" in str(info.value)
    with pytest.raises(ConfigError) as info:
        preflight(BenchConfig.tiny(auroc_scorers=["msp", "nope"]))
    assert info.value.field == "auroc_scorers[1]"


def test_run_ids_are_stable_and_follow_the_run_config() -> None:
    config = BenchConfig.tiny()
    spec = RunSpec("backdoor", "vanilla", "ntl_guard", 0)
    assert run_id(config, spec) == run_id(BenchConfig.tiny(), spec)
    assert run_id(config, spec).startswith("backdoor-vanilla-ntl_guard-seed0-")
    assert run_id(config.updated(output_dir="elsewhere"), spec) == run_id(config, spec)
    changed = {
        run_id(config.updated(budgets={"vanilla": {"iterations": 3, "kd_steps": 1, "eval_every": 1}}), spec),
        run_id(config.updated(guard={"scorer": "energy"}), spec),
        run_id(config.updated(teacher_steps=21), spec),
        run_id(config, RunSpec("backdoor", "vanilla", "ntl_guard", 1)),
    }
    assert run_id(config, spec) not in changed and len(changed) == 4
    # An unguarded row does not depend on the guard of the guarded rows' weighting.
    sl = RunSpec("backdoor", "vanilla", "sl", 0)
    soft = config.updated(guard={**config.guard.model_dump(mode="json"), "weighting": "soft"})
    assert run_id(soft, sl) == run_id(config, sl) and run_id(soft, spec) != run_id(config, spec)
    # nor on the library's guard defaults: a disabled guard enters the id by its normalization alone
    assert run_config(config, sl)["guard"] == {
        "enabled": False,
        "normalization": config.guard.normalization.model_dump(mode="json"),
    }
    # the trap memory's fields enter a guarded run's id only when it has a trap memory
    assert set(run_config(config, spec)["guard"]["forget"]) == {"kind", "weight"}
    memory = config.updated(guard={"forget": {"memory": 64}})
    assert run_config(memory, spec)["guard"]["forget"]["memory"] == 64 and run_id(memory, spec) != run_id(
        config, spec
    )
    assert set(run_config(memory, spec)["guard"]["forget"]) == {"kind", "weight", "memory", "recall"}


def test_missing_matplotlib_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DfkdGuardError, match=r"dfkd-guard\[bench\]"):
        require_matplotlib()


def test_parallel_workers_give_the_same_runs_and_the_oracle_and_variant_rows_run(tmp_path) -> None:
    from dfkd_guard.bench.runner import run_bench

    config = BenchConfig.tiny(
        settings=["rotated_mnist"],
        adapters={"rotated_mnist": ["vanilla"]},
        rows=["ntl", "ntl_oracle", "ntl_guard@energy"],
        guard_variants={"energy": {"scorer": "energy"}},
    )
    finals = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        summary = run_bench(config, out, progress=False, workers=workers)
        assert len(summary.ran) == 3
        finals[workers] = {
            p.name: json.loads(p.read_text())["final"] for p in sorted((out / "runs").glob("*.json"))
        }
    assert finals[1] == finals[2]
    runs = {
        p.name.split("-seed")[0]: json.loads(p.read_text())
        for p in (tmp_path / "workers1" / "runs").glob("*.json")
    }
    oracle, plain = runs["rotated_mnist-vanilla-ntl_oracle"], runs["rotated_mnist-vanilla-ntl"]
    # the oracle's BN targets changed the synthesis: other final images, other scores
    assert oracle["synthetic_scores"]["values"] != plain["synthetic_scores"]["values"]
    record = runs["rotated_mnist-vanilla-ntl_guard@energy"]
    assert record["config"]["guard"]["scorer"]["name"] == "energy" and record["guarded"]
    assert "NTL + guard [energy]" in row_label("ntl_guard@energy")

    from dfkd_guard.bench.report import write_report

    # a second config with its own report name shares the folder and its stored runs
    path = write_report(config.updated(report_name="ablation"), tmp_path / "workers1")
    assert path.name == "ablation.md" and "| NTL + guard [energy] |" in path.read_text()
    assert "(ablation-plots/iacc-rotated_mnist.png)" in path.read_text()
    assert (tmp_path / "workers1" / "ablation-plots" / "iacc-rotated_mnist.png").is_file()
