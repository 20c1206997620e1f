"""Report metrics that measure what they name: the collapse floor, OAgr over the SL student, DAgr, the pool
diagnostics, the guard's overhead per phase, ASR beside IAcc."""

from __future__ import annotations

import math

import pytest
import torch

from dfkd_guard.bench.metrics import balanced_collapse_floor, collapse_rate, evenly_spaced
from dfkd_guard.bench.report import (
    RowSummary,
    _add_excess_over_sl,
    main_table,
    overhead_table,
    shown_columns,
    targets_table,
)
from dfkd_guard.bench.runner import EvalLabels, prediction_metrics, seconds_per_iteration_phases


def test_the_balanced_collapse_floor_is_exact_and_matches_sampling() -> None:
    assert balanced_collapse_floor(1, 10) == 1.0
    assert balanced_collapse_floor(2, 2) == 0.75  # counts (2, 0) or (1, 1), equally likely
    assert balanced_collapse_floor(3, 2) == 0.75  # max 3 with probability 1/4, else 2
    generator = torch.Generator().manual_seed(0)
    sampled = [collapse_rate(torch.randint(10, (64,), generator=generator), 10) for _ in range(4000)]
    floor = balanced_collapse_floor(64, 10)
    assert abs(sum(sampled) / len(sampled) - floor) < 0.003 and 0.16 < floor < 0.17  # not 1/K
    assert floor == pytest.approx(0.16477632416762142, abs=1e-15)  # the exact rational, by integer counting


def test_the_collapse_floor_of_a_pool_sample_matches_sampling() -> None:
    generator = torch.Generator().manual_seed(0)
    sampled = [collapse_rate(torch.randint(10, (1024,), generator=generator), 10) for _ in range(400)]
    floor = balanced_collapse_floor(1024, 10)
    assert abs(sum(sampled) / len(sampled) - floor) < 0.002 and 0.11 < floor < 0.12


def test_evenly_spaced_covers_the_whole_pool_without_random_numbers() -> None:
    pool = torch.arange(10).float()[:, None]
    state = torch.random.get_rng_state()
    assert evenly_spaced(pool, 4).flatten().tolist() == [0.0, 3.0, 6.0, 9.0]  # first and last included
    assert torch.equal(torch.random.get_rng_state(), state)
    assert evenly_spaced(pool, 10) is pool and evenly_spaced(pool, 50) is pool


def test_dagr_tells_a_copy_of_the_sl_teacher_from_a_copy_of_the_ntl_teacher() -> None:
    # on MNIST-M the NTL teacher predicts one class nearly everywhere, and so may an ordinary student
    ntl = torch.tensor([3, 3, 3, 3, 3, 3, 3, 3])
    sl = torch.tensor([3, 3, 3, 3, 1, 2, 5, 7])  # the teachers disagree on the last 4 images
    labels = EvalLabels(torch.tensor([0, 1]), torch.tensor([3, 3, 3, 3, 1, 2, 5, 7]), ntl, True, sl_ood=sl)
    id_preds = torch.tensor([0, 1])
    like_sl, like_ntl = prediction_metrics(id_preds, sl, labels), prediction_metrics(id_preds, ntl, labels)
    assert like_sl["oagr"] == 0.5 and like_sl["dagr"] == 0.0  # OAgr credits half of the SL copy; DAgr none
    assert like_ntl["oagr"] == 1.0 and like_ntl["dagr"] == 1.0
    mixed = torch.tensor([0, 0, 0, 0, 3, 2, 3, 7])  # NTL's class on 2 of the 4 disputed images
    assert prediction_metrics(id_preds, mixed, labels)["dagr"] == 0.5

    agreeing = EvalLabels(torch.tensor([0, 1]), sl, sl.clone(), True, sl_ood=sl)  # no disputed image
    assert math.isnan(prediction_metrics(id_preds, sl, agreeing)["dagr"])
    without_sl = EvalLabels(torch.tensor([0, 1]), sl, ntl, True)
    assert "dagr" not in prediction_metrics(id_preds, sl, without_sl)


def _run(seed: int, **final: float) -> dict:
    return {
        "spec": {"seed": seed},
        "final": dict(final),
        "machine": "CPU | 2 cores",
        "finished": "2026-01-01",
    }


def _timed(seed: int, **phases: float | None) -> dict:
    return {**_run(seed), "seconds_per_iteration_phases": phases}


def test_phase_medians_split_at_the_verdict_iteration() -> None:
    seconds = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]
    judged = ["warming up", "warming up", "ntl-like", "ntl-like", "ntl-like", "ntl-like"]
    # the third iteration began warming up and reached the verdict: it is the warm-up's
    assert seconds_per_iteration_phases(seconds, judged) == {"warmup": 2.0, "after_verdict": 20.0, "all": 6.5}
    ended_warming_up = seconds_per_iteration_phases(seconds, ["warming up"] * 6)
    assert ended_warming_up == {"warmup": 6.5, "after_verdict": None, "all": 6.5}
    assert seconds_per_iteration_phases(seconds, [None] * 6) == {
        "warmup": None,
        "after_verdict": None,
        "all": 6.5,
    }
    with pytest.raises(ValueError):
        seconds_per_iteration_phases(seconds, judged[:-1])


def test_asr_of_near_chance_students_is_left_out_and_counted() -> None:
    row = RowSummary(
        "backdoor",
        "deepinversion",
        "ntl",
        3,
        [
            _run(0, iacc=0.9, asr_minus_clean=0.8),
            _run(1, iacc=0.12, asr_minus_clean=0.0),
            _run(2, iacc=0.7, asr_minus_clean=0.6),
        ],
    )
    assert row.values("asr_minus_clean") == [0.8, 0.6] and row.left_out("asr_minus_clean") == 1
    assert row.values("iacc") == [0.9, 0.12, 0.7]  # only ASR depends on the floor
    cells = [c.strip() for c in main_table([row]).splitlines()[2].strip("|").split("|")]
    assert cells[7] == "0.700 ± 0.141 ‡1"


def _judged(run: dict, verdict: str) -> dict:
    return {**run, "bn_prior": {"verdict": verdict}}


def _row(row: str, *runs: dict) -> RowSummary:
    return RowSummary("s", "vanilla", row, len(runs), list(runs))


def _targets(rows: list[RowSummary]) -> dict[str, tuple[str, str]]:
    lines = targets_table(rows).splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {c[2]: (c[3], c[4]) for c in cells}


def test_targets_are_judged_from_the_runs() -> None:
    sl = _row("sl", _run(0, iacc=0.96), _run(1, iacc=0.97))
    sl_guard = _row(
        "sl_guard", _judged(_run(0, iacc=0.96), "ordinary"), _judged(_run(1, iacc=0.97), "ordinary")
    )
    ntl = _row("ntl", _run(0, iacc=0.80, asr_minus_clean=0.9), _run(1, iacc=0.85, asr_minus_clean=0.9))
    guarded = _row(
        "ntl_guard",
        _judged(_run(0, iacc=0.90, asr_minus_clean=0.02), "ntl-like"),
        _judged(_run(1, iacc=0.84, asr_minus_clean=0.01), "ntl-like"),
    )
    oracle = _row("ntl_oracle", _run(0, iacc=0.93), _run(1, iacc=0.93))
    targets = _targets([sl, sl_guard, ntl, guarded, oracle])
    assert targets["verdict on the SL teacher ordinary"] == ("ordinary 2", "met")
    assert targets["verdict on the NTL teacher ntl-like (its student 0.825, the SL one 0.965)"] == (
        "ntl-like 2",
        "met",
    )
    assert targets["NTL + guard IAcc >= 95% of the oracle's"] == ("93.5%", "not met")  # 0.87 / 0.93
    assert targets["NTL + guard IAcc above NTL on every seed"] == ("1 of 2 seeds", "not met")  # +0.10, -0.01
    assert targets["NTL + guard IAcc not below NTL by more than 0.01"] == ("+0.045", "met")
    assert targets["backdoor: ASR − clean <= 0.03 at <= 0.02 IAcc cost"] == (
        "0.015 at -0.045 IAcc cost",
        "met",
    )
    assert targets["SL + guard IAcc within 0.005 of SL"] == ("+0.000", "met")

    # a teacher whose unguarded student is as good as the SL one does not trap: "ordinary" is the right verdict
    harmless = _row("ntl", _run(0, iacc=0.96), _run(1, iacc=0.955))
    judged_ntl = _row(
        "ntl_guard", _judged(_run(0, iacc=0.96), "ntl-like"), _judged(_run(1, iacc=0.955), "ordinary")
    )
    targets = _targets([sl, harmless, judged_ntl])
    assert targets["verdict on the NTL teacher ordinary (its student 0.958, the SL one 0.965)"] == (
        "ntl-like 1, ordinary 1",
        "not met",
    )
    assert "NTL + guard IAcc above NTL on every seed" not in targets


def test_overhead_is_each_phase_of_a_guarded_run_over_its_unguarded_run_of_the_same_seed() -> None:
    ntl = _row("ntl", _timed(0, all=0.1), _timed(1, all=0.2), _timed(2, all=0.4))
    guarded = _row(
        "ntl_guard",
        _timed(0, warmup=0.3, after_verdict=0.1, all=0.2),
        _timed(1, warmup=0.4, after_verdict=0.3, all=0.35),
        _timed(3, warmup=9.0, after_verdict=9.0, all=9.0),  # no unguarded run of seed 3
    )
    ended_warming_up = _row("ntl_guard@slow", _timed(0, warmup=0.2, after_verdict=None, all=0.2))
    untimed = _row("sl_guard", _run(0))  # records stored before phase timings
    lines = overhead_table([ntl, guarded, ended_warming_up, _row("sl", _run(0)), untimed]).splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    # warm-up: 0.3 / 0.1 and 0.4 / 0.2, mean 2.5, std 0.707; after the verdict: 1 and 1.5
    assert cells[0] == ["s", "vanilla", "NTL + guard / NTL", "2", "2.50 ± 0.707", "1.25 ± 0.354"]
    assert cells[1] == ["s", "vanilla", "NTL + guard [slow] / NTL", "1", "2.00", "–"]
    assert len(cells) == 2


def test_newer_metrics_are_shown_where_runs_measured_them_and_the_pool_replaces_the_latest_batch() -> None:
    old = _row("ntl", _run(0, iacc=0.9, ood_share=0.4, collapse=0.3))
    names = [metric for metric, _ in shown_columns([old])]
    assert "ood_share" in names and "collapse" in names
    assert not {"dagr", "pool_ood_share", "pool_collapse"} & set(names)  # a committed report stays as it was

    # DAgr measured on an empty subset (the teachers never disagree): the column is there, its cell "–"
    final = {
        "iacc": 0.9,
        "ood_share": 0.4,
        "collapse": 0.3,
        "dagr": None,
        "pool_ood_share": 0.5,
        "pool_collapse": 0.6,
    }
    new = _row("ntl", {**_run(1), "final": final})
    names = [metric for metric, _ in shown_columns([old, new])]
    assert names.index("dagr") == names.index("oagr_excess") + 1  # beside OAgr and OAgr − SL
    assert {"pool_ood_share", "pool_collapse"} <= set(names) and not {"ood_share", "collapse"} & set(names)
    header, _, _, line = main_table([old, new]).splitlines()
    assert (
        "| DAgr |" in header and "pool OOD share (SL probe)" in header and "synthetic OOD share" not in header
    )
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[names.index("dagr") + 3] == "–" and cells[names.index("pool_ood_share") + 3] == "0.500"


def test_oagr_and_dagr_excess_are_paired_with_the_sl_student_of_the_same_seed() -> None:
    sl = RowSummary("s", "vanilla", "sl", 2, [_run(0, oagr=0.8, dagr=0.5), _run(1, oagr=0.6)])
    ntl = RowSummary(
        "s", "vanilla", "ntl", 3, [_run(0, oagr=0.99, dagr=0.9), _run(1, oagr=0.98), _run(2, oagr=0.97)]
    )
    other = RowSummary("s", "cmi", "ntl", 1, [_run(0, oagr=0.9)])  # no SL row of its adapter
    _add_excess_over_sl([sl, ntl, other])
    assert sl.by_seed("oagr_excess") == {0: 0.0, 1: 0.0}
    assert ntl.by_seed("oagr_excess") == {0: 0.99 - 0.8, 1: 0.98 - 0.6}  # seed 2 has no SL run
    assert other.values("oagr_excess") == []
    assert ntl.by_seed("dagr_excess") == {0: 0.9 - 0.5}  # seed 1 stored no DAgr
