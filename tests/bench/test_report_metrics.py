"""Report metrics that measure what they name: the collapse floor, OAgr over the SL student, ASR beside IAcc."""

from __future__ import annotations

import torch

from dfkd_guard.bench.metrics import balanced_collapse_floor, collapse_rate
from dfkd_guard.bench.report import RowSummary, _add_oagr_excess, main_table


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
