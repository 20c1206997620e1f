"""Report metrics that measure what they name: the collapse floor, OAgr over the SL student, ASR beside IAcc."""

from __future__ import annotations

import torch

from dfkd_guard.bench.metrics import balanced_collapse_floor, collapse_rate
from dfkd_guard.bench.report import RowSummary, _add_oagr_excess, main_table, targets_table


def test_the_balanced_collapse_floor_is_exact_and_matches_sampling() -> None:
    assert balanced_collapse_floor(1, 10) == 1.0
    assert balanced_collapse_floor(2, 2) == 0.75  # counts (2, 0) or (1, 1), equally likely
    assert balanced_collapse_floor(3, 2) == 0.75  # max 3 with probability 1/4, else 2
    generator = torch.Generator().manual_seed(0)
    sampled = [collapse_rate(torch.randint(10, (64,), generator=generator), 10) for _ in range(4000)]
    floor = balanced_collapse_floor(64, 10)
    assert abs(sum(sampled) / len(sampled) - floor) < 0.003 and 0.16 < floor < 0.17  # not 1/K


def _run(seed: int, **final: float) -> dict:
    return {
        "spec": {"seed": seed},
        "final": dict(final),
        "machine": "CPU | 2 cores",
        "finished": "2026-01-01",
    }


def test_oagr_excess_is_paired_with_the_sl_student_of_the_same_seed() -> None:
    sl = RowSummary("s", "vanilla", "sl", 2, [_run(0, oagr=0.8), _run(1, oagr=0.6)])
    ntl = RowSummary("s", "vanilla", "ntl", 3, [_run(0, oagr=0.99), _run(1, oagr=0.98), _run(2, oagr=0.97)])
    other = RowSummary("s", "cmi", "ntl", 1, [_run(0, oagr=0.9)])  # no SL row of its adapter
    _add_oagr_excess([sl, ntl, other])
    assert sl.by_seed("oagr_excess") == {0: 0.0, 1: 0.0}
    assert ntl.by_seed("oagr_excess") == {0: 0.99 - 0.8, 1: 0.98 - 0.6}  # seed 2 has no SL run
    assert other.values("oagr_excess") == []


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
