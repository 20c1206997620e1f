"""``dfkd-guard bench``: tiny end-to-end run, resume, metrics with known answers, config errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from dfkd_guard.bench.config import BenchConfig, row_label
from dfkd_guard.bench.models import build_network
from dfkd_guard.bench.report import format_stat, require_matplotlib
from dfkd_guard.bench.runner import (
    EvalLabels,
    RunSpec,
    asr_minus_clean,
    dfkd_seed,
    enumerate_runs,
    final_metrics,
    prediction_metrics,
    preflight,
    row_guard,
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
    assert len(runs) == len(specs) == 21  # the oracle row runs for vanilla in oracle_settings only

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
    # the newer metrics: DAgr beside OAgr, the pool diagnostics in place of the latest batch's, phase timings
    assert {"DAgr", "pool OOD share (SL probe)", "pool collapse"} <= set(
        col
    ) and "synthetic OOD share" not in col
    assert "Images in the subset: rotated_mnist " in report and "## Overhead per phase" in report
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
    assert {"dagr", "pool_ood_share", "pool_collapse", "pool_images"} <= set(record["final"])
    assert record["disagreement_subset"]["of"] == config.test_images
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
        ({"guard": {"kd_temperature": 4}}, "guard"),
        ({"guard_variants": {"hot": {"kd_temperature": 4}}}, "guard_variants"),
        ({"kd_temperature": {"cmi": 0}}, "kd_temperature.cmi"),
        ({"kd_temperature": {"dfad": 4}}, "kd_temperature.dfad.[key]"),
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
        run_id(config.updated(guard={"trigger_window": {"rows": "lowered"}}), spec),
        run_id(config.updated(teacher_steps=21), spec),
        run_id(config, RunSpec("backdoor", "vanilla", "ntl_guard", 1)),
    }
    assert run_id(config, spec) not in changed and len(changed) == 5
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


def test_every_row_of_an_adapter_distils_at_its_temperature_guarded_or_not() -> None:
    config = BenchConfig.tiny(kd_temperature={"cmi": 4.0})
    assert config.kd_temperature == {"vanilla": 1.0, "deepinversion": 20.0, "cmi": 4.0}
    for row in ("sl", "ntl_guard"):
        assert row_guard(config, RunSpec("backdoor", "cmi", row, 0)).kd_temperature == 4.0
        assert row_guard(config, RunSpec("backdoor", "vanilla", row, 0)).kd_temperature == 1.0
    # an unguarded run at temperature 1 keeps the id it had before the temperature was per adapter
    assert "kd_temperature" not in run_config(config, RunSpec("backdoor", "vanilla", "sl", 0))["guard"]
    assert run_config(config, RunSpec("backdoor", "cmi", "sl", 0))["guard"]["kd_temperature"] == 4.0
    assert run_id(config, RunSpec("backdoor", "cmi", "sl", 0)) != run_id(
        BenchConfig.tiny(), RunSpec("backdoor", "cmi", "sl", 0)
    )


def test_no_student_starts_from_the_initial_weights_of_a_teacher() -> None:
    config = BenchConfig()
    architecture = config.component("teacher_architecture")
    torch.manual_seed(config.teacher_seed)  # as teachers.py seeds a teacher's initialisation
    teacher_start = build_network(
        architecture, config.teacher_widths, 10, config.image_size, "t"
    ).state_dict()
    for seed in (config.teacher_seed, 1, 2):
        torch.manual_seed(dfkd_seed(seed))  # as the runner seeds a run
        student = build_network(architecture, config.student_widths, 10, config.image_size, "s").state_dict()
        assert student.keys() == teacher_start.keys()
        assert not torch.equal(student["head.weight"], teacher_start["head.weight"])
    assert len({dfkd_seed(seed) for seed in range(1000)}) == 1000


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


class _TaggedProbe:
    """Stands in for an OodProbe: its OOD share says which teacher's features it was fitted on."""

    train_accuracy = 1.0

    def __init__(self, share: float) -> None:
        self.share = share

    def ood_share(self, images: torch.Tensor) -> float:
        return self.share


def test_runs_store_dagr_pool_diagnostics_on_the_sl_probe_and_phase_timings(tmp_path, monkeypatch) -> None:
    from dfkd_guard.bench import runner

    shares = {"sl": 0.25, "ntl": 0.75}
    monkeypatch.setattr(runner._Context, "probe", lambda self, setting, kind: _TaggedProbe(shares[kind]))
    config = BenchConfig.tiny(
        settings=["rotated_mnist"],
        adapters={"rotated_mnist": ["vanilla"]},
        rows=["sl", "ntl", "ntl_guard"],
        budgets={"vanilla": {"iterations": 2, "kd_steps": 2, "eval_every": 1}},
        # a verdict after the first observed batch: one iteration on each side of it
        guard={
            "scorer": {"name": "atesc", "params": {"steps": 1}},
            "bn_prior": {"skip_batches": 0, "warmup_batches": 1},
        },
    )
    out = tmp_path / "bench"
    runner.run_bench(config, out, progress=False)
    runs = {
        json.loads(p.read_text())["spec"]["row"]: json.loads(p.read_text())
        for p in (out / "runs").glob("*.json")
    }

    # the latest batch is judged by each run's own teacher's probe, the pool by the SL teacher's in every row
    assert [runs[row]["final"]["ood_share"] for row in ("sl", "ntl", "ntl_guard")] == [0.25, 0.75, 0.75]
    assert [runs[row]["final"]["pool_ood_share"] for row in ("sl", "ntl", "ntl_guard")] == [0.25] * 3
    for record in runs.values():
        # the replay pool holds every fresh student image so far: 16 per student step, 2 steps per iteration
        assert record["curves"]["pool_images"] == [32.0, 64.0]
        assert 0.0 <= record["final"]["pool_collapse"] <= 1.0
        subset = record["disagreement_subset"]
        assert subset["of"] == config.test_images and 0 <= subset["images"] <= subset["of"]
        assert (record["final"].get("dagr") is not None) == (subset["images"] > 0)
        assert record["workers"] == 1
    assert runs["ntl"]["seconds_per_iteration_phases"]["warmup"] is None  # no guard, no verdict
    assert runs["ntl"]["seconds_per_iteration_phases"]["all"] > 0
    guarded = runs["ntl_guard"]
    assert guarded["bn_prior"]["verdict"] != "warming up"
    assert set(guarded["seconds_per_iteration_phases"]) == {"warmup", "after_verdict", "all"}
    assert all(v > 0 for v in guarded["seconds_per_iteration_phases"].values())

    # vanilla without replay has an empty pool: the pool metrics measure its latest synthetic batches
    no_replay = config.updated(vanilla={**config.vanilla.model_dump(), "replay": 0}, rows=["ntl"])
    runner.run_bench(no_replay, out, progress=False)
    record = json.loads(
        runner.run_path(no_replay, RunSpec("rotated_mnist", "vanilla", "ntl", 0), out).read_text()
    )
    assert record["curves"]["pool_images"] == [16.0, 32.0] and record["final"]["pool_ood_share"] == 0.25


def _records(out) -> dict[tuple[str, str], dict]:
    records = (json.loads(p.read_text()) for p in (out / "runs").glob("*.json"))
    return {(r["spec"]["adapter"], r["spec"]["row"]): r for r in records}


def test_unguarded_rows_train_once_with_an_idle_guard_and_again_once_it_intervened(tmp_path) -> None:
    from dfkd_guard.bench.config import ADAPTERS
    from dfkd_guard.bench.runner import run_bench

    # a guard that reaches its verdict and ends its trigger search within the run, and neither acts
    idle_guard = {
        "scorer": {"name": "atesc", "params": {"steps": 1}},
        "bn_prior": {"skip_batches": 0, "warmup_batches": 1, "ntl_separation": 100.0},
        "trigger_window": {"skip_batches": 0, "per_batch": 8, "images": 16, "threshold": 1e6},
    }
    config = BenchConfig.tiny(
        settings=["rotated_mnist"],
        adapters={"rotated_mnist": ADAPTERS},
        rows=["sl", "sl_guard", "ntl", "ntl_guard"],
        budgets={name: {"iterations": 3, "kd_steps": 2, "eval_every": 1} for name in ADAPTERS},
        guard=idle_guard,
    )
    run_bench(config.updated(rows=["sl", "ntl"]), tmp_path / "alone", progress=False)
    alone = _records(tmp_path / "alone")
    summary = run_bench(config, tmp_path / "shared", progress=False)
    shared = _records(tmp_path / "shared")
    assert len(summary.ran) == 12
    for adapter in ADAPTERS:
        for row in ("sl", "ntl"):
            guarded, unguarded = shared[(adapter, f"{row}_guard")], shared[(adapter, row)]
            assert guarded["bn_prior"]["verdict"] == "ordinary"
            assert guarded["trigger_window"] is not None and not guarded["trigger_window"]["found"]
            assert unguarded["same_training_as"] == guarded["run_id"] and guarded["same_training_as"] is None
            assert unguarded["bn_prior"] is None and unguarded["trigger_window"] is None
            assert not unguarded["guarded"] and unguarded["seconds_per_iteration_phases"]["warmup"] is None
            # the idle guard's training is the unguarded one, bit for bit
            for key in ("curves", "final", "synthetic_scores"):
                assert unguarded[key] == alone[(adapter, row)][key], (adapter, row, key)
            assert unguarded["run_id"] == alone[(adapter, row)]["run_id"]

    # with a generator penalty the guard intervenes: the unguarded runs train again, without the guard, as
    # groups of their own (here on the second worker)
    acting = config.updated(guard={**idle_guard, "penalties": [{"name": "confidence", "weight": 1.0}]})
    run_bench(acting, tmp_path / "acting", progress=False, workers=2)
    retrained = _records(tmp_path / "acting")
    for adapter in ADAPTERS:
        for row in ("sl", "ntl"):
            unguarded = retrained[(adapter, row)]
            assert unguarded["same_training_as"] is None
            assert unguarded["curves"] == alone[(adapter, row)]["curves"]
