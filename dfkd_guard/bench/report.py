"""The report of ``dfkd-guard bench``: tables and plots from the stored runs.

:func:`write_report` reads the runs of a :class:`~dfkd_guard.bench.config.BenchConfig`
from ``<out>/runs/`` and the teacher records from ``<out>/teacher_metrics/``
(see :mod:`dfkd_guard.bench.runner`), and writes ``<out>/report.md``:

* what each setting is (its setting, parameters, trigger and target class,
  NTL loss) and the teachers' and students' architectures;
* the main table: one row per setting x adapter x teacher row, each metric
  as mean +- sample standard deviation over the seeds found (a run's value is
  the mean of its last 3 evaluations), and the 95% confidence interval of each
  mean (:mod:`dfkd_guard.bench.seed_statistics`);
* the guard's effect: each guarded row minus its unguarded row, paired by
  seed, with the interval of the mean difference;
* the guard's overhead per phase (runs that store their phase timings): per
  guarded row, its median seconds per iteration before and after the BN-prior
  verdict over the unguarded row's median, paired by seed;
* the teachers' own accuracy and each scorer's AUROC on real ID vs real OOD
  test images;
* the plots in ``<out>/plots/``, per setting: ``iacc-<setting>.png`` (IAcc
  over iterations), ``trap-<setting>.png`` (synthetic OOD share and class
  collapse over iterations: of the pool where the runs measured it, else of
  the latest batch), ``scores-<setting>.png`` (histograms of the guard
  scorer's scores on real ID, real OOD and the final synthetic batches);
* the exact configuration (JSON, without where files go), the command, when
  the runs finished and the machines they ran on (rows whose seeds ran on
  different CPU models are marked).

The report is a function of the stored records and the config alone
(:func:`render_report`): the command comes from the invocation record
(:mod:`dfkd_guard.bench.records`), dates and machines from the run records.

Plots need matplotlib (``pip install 'dfkd-guard[bench]'``); it is imported
only here, inside the functions that draw.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfkd_guard.errors import DfkdGuardError

from . import reporting
from .config import BenchConfig, row_label
from .metrics import balanced_collapse_floor
from .records import (
    config_record,
    read_invocation,
    report_command,
    run_key,
    stored_config,
    teacher_record_paths,
)
from .runner import (
    FINAL_WINDOW,
    POOL_SAMPLE,
    enumerate_runs,
    ntl_kind,
    run_file,
    run_path,
    teacher_components,
    teacher_kind,
    teacher_record_file,
)
from .seed_statistics import CONFIDENCE, paired_differences, summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "COLUMNS",
    "EFFECT_COLUMNS",
    "MIXED_CPUS",
    "NEWER_COLUMNS",
    "PHASES",
    "PLOT_KINDS",
    "POOL_REPLACES",
    "RowSummary",
    "format_interval",
    "format_stat",
    "guard_effect_table",
    "has_matplotlib",
    "interval_table",
    "load_rows",
    "main_table",
    "overhead_table",
    "plot_folder",
    "plot_paths",
    "rederive_report",
    "render_report",
    "report_rows",
    "require_matplotlib",
    "settings_table",
    "shown_columns",
    "targets_table",
    "write_plots",
    "write_report",
]

#: Main-table columns: (metric key in a run's ``final``, header); :func:`shown_columns` picks a report's.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("iacc", "IAcc"),
    ("oacc", "OAcc"),
    ("oagr", "OAgr"),
    ("oagr_excess", "OAgr − SL"),
    ("dagr", "DAgr"),
    ("dagr_excess", "DAgr − SL"),
    ("asr_minus_clean", "ASR − clean"),
    ("ood_share", "synthetic OOD share"),
    ("collapse", "collapse"),
    ("pool_ood_share", "pool OOD share (SL probe)"),
    ("pool_collapse", "pool collapse"),
    ("flagged", "flagged by guard"),
)
#: Columns of metrics that runs stored before them lack: shown only where a run measured them.
NEWER_COLUMNS = frozenset({"dagr", "dagr_excess", "pool_ood_share", "pool_collapse"})
#: Latest-batch trap diagnostics and the pool ones that replace them in a report with the latter.
POOL_REPLACES = {"ood_share": "pool_ood_share", "collapse": "pool_collapse"}
#: Columns of the guard-effect table (the headline metrics), as in :data:`COLUMNS`.
EFFECT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("iacc", "IAcc"),
    ("oacc", "OAcc"),
    ("asr_minus_clean", "ASR − clean"),
)
#: The plots of every setting: ``<kind>-<setting>.png``.
PLOT_KINDS = ("iacc", "trap", "scores")
#: Marks a table cell whose runs ran on different CPU models.
MIXED_CPUS = "†"
#: Runs whose student has a lower IAcc are left out of ASR − clean: a near-chance student sends few
#: images anywhere, so a low ASR says nothing about the backdoor.
ASR_IACC_FLOOR = 0.5
#: Marks an ASR − clean cell from which runs under :data:`ASR_IACC_FLOOR` were left out.
BELOW_IACC_FLOOR = "‡"

_TEACHER_LABELS = {"sl": "SL", "ntl": "NTL", "ntl_backdoor": "NTL backdoor"}


@dataclass
class RowSummary:
    """The stored runs of one table row (all seeds of one setting x adapter x teacher row)."""

    setting: str
    adapter: str
    row: str
    expected: int
    records: list[dict[str, Any]] = field(default_factory=list)

    def _counted(self, metric: str) -> list[dict[str, Any]]:
        """The runs whose value of ``metric`` the table shows: ASR − clean only above :data:`ASR_IACC_FLOOR`."""
        if metric != "asr_minus_clean":
            return self.records
        return [r for r in self.records if (r["final"].get("iacc") or 0.0) >= ASR_IACC_FLOOR]

    def values(self, metric: str) -> list[float]:
        """The metric's final value in every stored run that has it (and counts for it)."""
        return [v for r in self._counted(metric) if (v := r["final"].get(metric)) is not None]

    def by_seed(self, metric: str) -> dict[int, float]:
        """The metric's final value per seed, in the stored runs that have it (and count for it)."""
        return {
            r["spec"]["seed"]: v for r in self._counted(metric) if (v := r["final"].get(metric)) is not None
        }

    def left_out(self, metric: str) -> int:
        """Runs that have a value of ``metric`` the table leaves out (ASR − clean of near-chance students)."""
        return sum(r["final"].get(metric) is not None for r in self.records) - len(self.values(metric))

    def cpu_models(self, seeds: set[int] | None = None) -> set[str]:
        """The CPU models the stored runs (of ``seeds``, default all) ran on."""
        return {_cpu_model(r["machine"]) for r in self.records if seeds is None or r["spec"]["seed"] in seeds}

    def _timed(self) -> list[dict[str, Any]]:
        """The runs whose timing is their own: not those made from a guarded run's training (``same_training_as``)."""
        return [r for r in self.records if not r.get("same_training_as")]

    def seconds_per_iteration(self) -> list[float]:
        return [v for r in self._timed() if (v := r.get("seconds_per_iteration")) is not None]

    def phase_seconds(self, phase: str) -> dict[int, float]:
        """Per seed, the median seconds per iteration of ``phase`` (``warmup``, ``after_verdict``, ``all``;
        ``seconds_per_iteration_phases`` of :mod:`~dfkd_guard.bench.runner`), in the runs that have it
        and timed their own training."""
        return {
            r["spec"]["seed"]: v
            for r in self._timed()
            if (v := (r.get("seconds_per_iteration_phases") or {}).get(phase)) is not None
        }

    def verdicts(self) -> str:
        """The guard's BN-prior verdicts over the seeds, e.g. ``ntl-like 2, ordinary 1``; ``–`` without a guard."""
        counts = Counter(prior["verdict"] for r in self.records if (prior := r.get("bn_prior")) is not None)
        return ", ".join(f"{verdict} {n}" for verdict, n in sorted(counts.items())) or "–"

    def mean_curve(self, metric: str) -> tuple[list[float], list[float]]:
        """Evaluation iterations and the metric's mean over the runs at each (missing values skipped)."""
        by_iteration: dict[float, list[float]] = {}
        for record in self.records:
            curves = record["curves"]
            for i, v in zip(curves["iteration"], curves.get(metric, [])):
                if v is not None:
                    by_iteration.setdefault(i, []).append(v)
        xs = sorted(by_iteration)
        return xs, [statistics.fmean(by_iteration[x]) for x in xs]


def load_rows(
    config: BenchConfig, out: Path | None = None, run_ids: Mapping[str, str] | None = None
) -> list[RowSummary]:
    """The table rows of ``config`` in order, each with the run records found on disk.

    :param run_ids: the id of each run by :func:`~dfkd_guard.bench.records.run_key` (an
        invocation record's ``runs``); None: the ids this version gives ``config``'s runs.
    """
    out = Path(out or config.output_dir)
    rows: dict[tuple[str, str, str], RowSummary] = {}
    for spec in enumerate_runs(config):
        key = (spec.setting, spec.adapter, spec.row)
        summary = rows.setdefault(key, RowSummary(spec.setting, spec.adapter, spec.row, 0))
        summary.expected += 1
        if run_ids is None:
            path = run_path(config, spec, out)
        else:
            path = run_file(out, run_ids[run_key(spec.setting, spec.adapter, spec.row, spec.seed)])
        if path.is_file():
            summary.records.append(json.loads(path.read_text(encoding="utf-8")))
    _add_excess_over_sl(list(rows.values()))
    return list(rows.values())


def _add_excess_over_sl(rows: list[RowSummary]) -> None:
    """Give every run ``oagr_excess`` and ``dagr_excess``: its OAgr (DAgr) minus that of the SL-teacher student
    of its setting, adapter and seed.

    An ordinary student agrees with the NTL teacher on many OOD images too (both
    may map a domain to one class), even on those where the SL teacher does not
    (a student is not its teacher's copy), so OAgr and DAgr alone cannot show
    inherited behaviour; the excess over the SL-teacher student can. None where
    that student's value is not stored; absent where the run's is absent.
    """
    for metric in ("oagr", "dagr"):
        sl = {(r.setting, r.adapter): r.by_seed(metric) for r in rows if r.row == "sl"}
        for r in rows:
            reference = sl.get((r.setting, r.adapter), {})
            for record in (record for record in r.records if metric in record["final"]):
                value, base = record["final"][metric], reference.get(record["spec"]["seed"])
                record["final"][f"{metric}_excess"] = None if value is None or base is None else value - base


def _cpu_model(machine: str) -> str:
    """The CPU model of a run record's ``machine`` line (:func:`reporting.machine_line`)."""
    return machine.split(" | ", 1)[0]


def _mixed(cpu_models: set[str]) -> str:
    return f" {MIXED_CPUS}" if len(cpu_models) > 1 else ""


def _below_floor(row: RowSummary, metric: str) -> str:
    left_out = row.left_out(metric)
    return f" {BELOW_IACC_FLOOR}{left_out}" if left_out else ""


def format_stat(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std, 3 significant digits) over seeds; the mean alone for one value; ``–`` for none."""
    if not values:
        return "–"
    summary = summarize(values)
    if summary.std is None:
        return reporting.format_number(summary.mean)
    return f"{reporting.format_number(summary.mean)} ± {reporting.format_number(summary.std)}"


def format_interval(values: Sequence[float]) -> str:
    """``[low, high]``, the 95% Student-t interval of the mean over seeds; ``–`` for fewer than two values."""
    interval = summarize(values).interval if values else None
    if interval is None:
        return "–"
    return f"[{reporting.format_number(interval[0])}, {reporting.format_number(interval[1])}]"


def _table(header: Sequence[str], align: str, lines: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", align] + ["| " + " | ".join(cells) + " |" for cells in lines]
    )


def _measured(rows: list[RowSummary], metric: str) -> bool:
    """Whether some run measured ``metric``: it is in the run's ``final``, with a value or None."""
    return any(metric in record["final"] for r in rows for record in r.records)


def shown_columns(rows: list[RowSummary]) -> list[tuple[str, str]]:
    """The :data:`COLUMNS` of a report: a :data:`NEWER_COLUMNS` one only where some run measured it,
    and the pool trap diagnostics in place of the latest batch's where some run measured them
    (:data:`POOL_REPLACES`)."""
    return [
        (metric, title)
        for metric, title in COLUMNS
        if (metric not in NEWER_COLUMNS or _measured(rows, metric))
        and (metric not in POOL_REPLACES or not _measured(rows, POOL_REPLACES[metric]))
    ]


def main_table(rows: list[RowSummary]) -> str:
    """The students table in Markdown: one line per row summary, metrics as mean ± std over seeds.

    The seeds cell of a row whose runs ran on different CPU models is marked :data:`MIXED_CPUS`.
    """
    columns = shown_columns(rows)
    header = (
        ["setting", "adapter", "teacher"] + [title for _, title in columns] + ["BN prior", "s/it", "seeds"]
    )
    lines = []
    for r in rows:
        cells = [r.setting, r.adapter, row_label(r.row)]
        cells += [format_stat(r.values(metric)) + _below_floor(r, metric) for metric, _ in columns]
        cells += [r.verdicts(), format_stat(r.seconds_per_iteration())]
        cells.append(f"{len(r.records)}/{r.expected}{_mixed(r.cpu_models())}")
        lines.append(cells)
    return _table(header, "|---|---|---|" + "---:|" * len(columns) + "---|---:|---:|", lines)


def interval_table(rows: list[RowSummary]) -> str:
    """The 95% confidence interval of every mean of :func:`main_table`, in Markdown."""
    columns = shown_columns(rows)
    header = ["setting", "adapter", "teacher"] + [title for _, title in columns] + ["seeds"]
    lines = [
        [r.setting, r.adapter, row_label(r.row)]
        + [format_interval(r.values(metric)) + _below_floor(r, metric) for metric, _ in columns]
        + [f"{len(r.records)}{_mixed(r.cpu_models())}"]
        for r in rows
    ]
    return _table(header, "|---|---|---|" + "---:|" * (len(columns) + 1), lines)


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _effect_cell(differences: list[float]) -> str:
    """Mean paired difference, its interval and ``not significant`` where the interval covers 0."""
    if not differences:
        return "–"
    summary = summarize(differences)
    if summary.interval is None:
        return f"{_signed(summary.mean)} (one pair)"
    low, high = summary.interval
    verdict = " not significant" if summary.covers_zero else ""
    return f"{_signed(summary.mean)} [{_signed(low)}, {_signed(high)}]{verdict}"


def guard_effect_table(rows: list[RowSummary]) -> str:
    """Every guarded row minus its unguarded row (same setting and adapter), paired by seed, in Markdown.

    ``ntl_guard`` and ``ntl_guard@<variant>`` are compared with ``ntl``,
    ``sl_guard`` and ``sl_guard@<variant>`` with ``sl``; per metric of
    :data:`EFFECT_COLUMNS`, the mean difference over the seeds both rows have
    and its 95% interval. The pairs cell is marked :data:`MIXED_CPUS` when the
    paired runs ran on different CPU models.
    """
    lines = []
    for r, baseline in _guarded_pairs(rows):
        seeds = {x["spec"]["seed"] for x in r.records} & {x["spec"]["seed"] for x in baseline.records}
        cells = [r.setting, r.adapter, f"{row_label(r.row)} − {row_label(baseline.row)}"]
        cells.append(f"{len(seeds)}{_mixed(r.cpu_models(seeds) | baseline.cpu_models(seeds))}")
        cells += [
            _effect_cell(paired_differences(r.by_seed(metric), baseline.by_seed(metric)))
            for metric, _ in EFFECT_COLUMNS
        ]
        lines.append(cells)
    header = ["setting", "adapter", "guarded − unguarded", "pairs"] + [title for _, title in EFFECT_COLUMNS]
    return _table(header, "|---|---|---|---:|" + "---:|" * len(EFFECT_COLUMNS), lines)


#: Phases of :func:`overhead_table`: (key in a run's ``seconds_per_iteration_phases``, header).
PHASES: tuple[tuple[str, str], ...] = (("warmup", "warm-up"), ("after_verdict", "after verdict"))


def _guarded_pairs(rows: list[RowSummary]) -> list[tuple[RowSummary, RowSummary]]:
    """Every guarded row with its unguarded row of the same setting and adapter (``ntl_guard@v``: ``ntl``)."""
    by_key = {(r.setting, r.adapter, r.row): r for r in rows}
    pairs = []
    for r in rows:
        baseline = by_key.get((r.setting, r.adapter, r.row.split("_guard")[0])) if "_guard" in r.row else None
        if baseline is not None:
            pairs.append((r, baseline))
    return pairs


def overhead_table(rows: list[RowSummary]) -> str:
    """The guard's overhead per BN-prior phase, in Markdown.

    Per guarded row and seed: its median seconds per iteration in each of
    :data:`PHASES` over the median of its unguarded row's run of the same seed
    over the whole run (an unguarded run has no phases); the cells are mean ±
    std of these ratios over the seeds. Rows whose runs stored no phase timings
    are left out; the pairs cell is marked :data:`MIXED_CPUS` as in
    :func:`guard_effect_table`.
    """
    lines = []
    for guarded, baseline in _guarded_pairs(rows):
        unguarded = baseline.phase_seconds("all")
        seeds = set(guarded.phase_seconds("all")) & set(unguarded)
        if not seeds:
            continue
        cells = [guarded.setting, guarded.adapter, f"{row_label(guarded.row)} / {row_label(baseline.row)}"]
        cells.append(f"{len(seeds)}{_mixed(guarded.cpu_models(seeds) | baseline.cpu_models(seeds))}")
        for phase, _ in PHASES:
            seconds = guarded.phase_seconds(phase)
            cells.append(format_stat([seconds[s] / unguarded[s] for s in sorted(seeds) if s in seconds]))
        lines.append(cells)
    header = ["setting", "adapter", "guarded / unguarded", "pairs"] + [title for _, title in PHASES]
    return _table(header, "|---|---|---|---:|" + "---:|" * len(PHASES), lines)


#: The guard's targets (docs/bn_prior.md), checked on every setting x adapter of a report.
ORACLE_SHARE = 0.95  # NTL + guard IAcc >= this share of the oracle row's
MAX_IACC_LOSS = 0.01  # no guarded row below its unguarded row by more than this (mean paired IAcc)
SL_TOLERANCE = 0.005  # SL + guard within this of SL
MAX_ASR = 0.03  # backdoor: ASR - clean with the guard at most this ...
MAX_ASR_IACC_COST = 0.02  # ... at this much IAcc at most against the unguarded NTL student
TRAP_MARGIN = 0.02  # a teacher traps DFKD when its unguarded student is below the SL student's IAcc by more


def _verdicts_all(row: RowSummary, verdict: str) -> bool:
    return bool(row.records) and all((r.get("bn_prior") or {}).get("verdict") == verdict for r in row.records)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _target_lines(group: dict[str, RowSummary]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met) for one setting x adapter; met None where it cannot be judged."""
    lines: list[tuple[str, str, bool | None]] = []
    ntl, guarded, sl, sl_guarded, oracle = (
        group.get(k) for k in ("ntl", "ntl_guard", "sl", "sl_guard", "ntl_oracle")
    )
    if sl_guarded is not None and sl_guarded.records:
        lines.append(
            (
                "verdict on the SL teacher ordinary",
                sl_guarded.verdicts(),
                _verdicts_all(sl_guarded, "ordinary"),
            )
        )
    ntl_iacc = _mean(ntl.values("iacc")) if ntl is not None else None
    sl_iacc = _mean(sl.values("iacc")) if sl is not None else None
    trapped = None if ntl_iacc is None or sl_iacc is None else ntl_iacc < sl_iacc - TRAP_MARGIN
    if guarded is not None and guarded.records and trapped is not None:
        expected = "ntl-like" if trapped else "ordinary"
        target = (
            f"verdict on the NTL teacher {expected} (its student {ntl_iacc:.3f}, the SL one {sl_iacc:.3f})"
        )
        lines.append((target, guarded.verdicts(), _verdicts_all(guarded, expected)))
    if guarded is not None and oracle is not None:
        mine, best = _mean(guarded.values("iacc")), _mean(oracle.values("iacc"))
        if mine is not None and best:
            share = mine / best
            lines.append(
                (
                    f"NTL + guard IAcc >= {ORACLE_SHARE:.0%} of the oracle's",
                    f"{share:.1%}",
                    share >= ORACLE_SHARE,
                )
            )
    gains = paired_differences(guarded.by_seed("iacc"), ntl.by_seed("iacc")) if guarded and ntl else []
    if gains and trapped:
        above = sum(g > 0 for g in gains)
        lines.append(
            (
                "NTL + guard IAcc above NTL on every seed",
                f"{above} of {len(gains)} seeds",
                above == len(gains),
            )
        )
    if gains:
        gain = statistics.fmean(gains)
        target = f"NTL + guard IAcc not below NTL by more than {MAX_IACC_LOSS:g}"
        lines.append((target, f"{gain:+.3f}", gain >= -MAX_IACC_LOSS))
    if guarded is not None and any(r["final"].get("asr_minus_clean") is not None for r in guarded.records):
        asr = _mean(guarded.values("asr_minus_clean"))
        cost = -statistics.fmean(gains) if gains else 0.0
        met = None if asr is None else asr <= MAX_ASR and cost <= MAX_ASR_IACC_COST
        measured = "no student with IAcc >= 0.5" if asr is None else f"{asr:.3f} at {cost:+.3f} IAcc cost"
        target = f"backdoor: ASR − clean <= {MAX_ASR:g} at <= {MAX_ASR_IACC_COST:g} IAcc cost"
        lines.append((target, measured, met))
    changes = paired_differences(sl_guarded.by_seed("iacc"), sl.by_seed("iacc")) if sl_guarded and sl else []
    if changes:
        change = statistics.fmean(changes)
        target = f"SL + guard IAcc within {SL_TOLERANCE:g} of SL"
        lines.append((target, f"{change:+.3f}", abs(change) <= SL_TOLERANCE))
    return lines


def targets_table(rows: list[RowSummary]) -> str:
    """The guard's targets for every setting x adapter, judged from the stored runs, in Markdown."""
    groups: dict[tuple[str, str], dict[str, RowSummary]] = {}
    for r in rows:
        groups.setdefault((r.setting, r.adapter), {})[r.row] = r
    lines = []
    for (setting, adapter), group in groups.items():
        for target, measured, met in _target_lines(group):
            verdict = "not judged" if met is None else ("met" if met else "not met")
            lines.append([setting, adapter, target, measured, verdict])
    return _table(["setting", "adapter", "target", "measured", "met"], "|---|---|---|---:|---|", lines)


def _named(record: dict[str, Any] | None) -> str:
    """``name(p=v, ...)`` of a component record, ``–`` for None."""
    if record is None:
        return "–"
    params = ", ".join(f"{k}={json.dumps(v)}" for k, v in record["params"].items())
    return f"`{record['name']}({params})`"


def settings_table(config: BenchConfig) -> str:
    """What every setting of ``config`` is, and the networks, in Markdown."""
    lines = [
        "| setting | is | trigger | target class | NTL loss |",
        "|---|---|---|---:|---|",
    ]
    for setting_id in config.settings:
        setting = config.setting(setting_id).record()
        loss = teacher_components(config, setting_id, ntl_kind(config, setting_id))["ntl_loss"]
        target = "–" if setting["target_class"] is None else str(setting["target_class"])
        lines.append(
            f"| {setting_id} | {_named(setting['setting'])}{'' if setting['close_set'] else ' (open-set)'} | "
            f"{_named(setting['trigger'])} | {target} | {_named(loss)} |"
        )
    teacher, student = config.component("teacher_architecture"), config.component("student_architecture")
    widths = "-".join(map(str, config.teacher_widths)), "-".join(map(str, config.student_widths))
    networks = (
        f"Teachers: {_named(teacher.record())}, widths {widths[0]}; "
        f"students: {_named(student.record())}, widths {widths[1]}."
    )
    lines += ["", networks]
    return "\n".join(lines)


def _teacher_records(config: BenchConfig, out: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    paths = (
        teacher_record_paths(config, out)
        if names is None
        else [teacher_record_file(out, name) for name in names]
    )
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths if path.is_file()]


def _teacher_tables(config: BenchConfig, records: list[dict[str, Any]]) -> str:
    def cell(value: float | None) -> str:
        return "–" if value is None else reporting.format_number(value)

    lines = ["| setting | teacher | ID acc | OOD acc | ASR |", "|---|---|---:|---:|---:|"]
    for r in records:
        acc = r["accuracy"]
        lines.append(
            f"| {r['setting']} | {_TEACHER_LABELS[r['kind']]} | {cell(acc.get('id_acc'))} | "
            f"{cell(acc.get('ood_acc'))} | {cell(acc.get('asr'))} |"
        )
    scorers = list(config.auroc_scorers)
    lines += [
        "",
        (
            "AUROC of each scorer separating real ID (negative) from real OOD (positive) test images "
            f"({config.auroc_images} of each; higher score = more OOD-like, below 0.5 = the score points the other way):"
        ),
        "",
        "| setting | teacher | " + " | ".join(scorers) + " |",
        "|---|---|" + "---:|" * len(scorers),
    ]
    for r in records:
        cells = [cell(r["auroc"].get(name)) for name in scorers]
        lines.append(f"| {r['setting']} | {_TEACHER_LABELS[r['kind']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------


def has_matplotlib() -> bool:
    """True when matplotlib, needed for the plots, can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> None:
    """Raise a clear :class:`DfkdGuardError` when matplotlib, needed for the plots, is missing."""
    if not has_matplotlib():
        raise DfkdGuardError(
            "the bench report draws its plots with matplotlib, which is not installed: "
            "pip install 'dfkd-guard[bench]'"
        )


def _figure(rows: int, cols: int, width: float = 4.2, height: float = 3.2) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    figure.subplots(rows, cols, squeeze=False)
    return figure


def _curves_figure(rows: list[RowSummary], setting: str, metrics: Sequence[tuple[str, str]]) -> Figure:
    adapters = list(dict.fromkeys(r.adapter for r in rows))
    figure = _figure(len(metrics), len(adapters))
    axes = figure.axes
    for m, (metric, title) in enumerate(metrics):
        for a, adapter in enumerate(adapters):
            ax = axes[m * len(adapters) + a]
            for r in rows:
                if r.adapter != adapter:
                    continue
                xs, ys = r.mean_curve(metric)
                if xs:
                    ax.plot(xs, ys, marker="o" if len(xs) < 10 else None, label=row_label(r.row))
            ax.set_title(adapter)
            ax.set_ylabel(title)
            ax.set_xlabel("DFKD iteration")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize="small")
    figure.suptitle(f"setting {setting} (mean over seeds)")
    return figure


def _scores_figure(
    config: BenchConfig, setting: str, rows: list[RowSummary], teachers: list[dict[str, Any]]
) -> Figure:
    figure = _figure(1, max(len(teachers), 1))
    for ax, record in zip(figure.axes, teachers):
        kind = record["kind"]
        series = {
            "real ID": record["guard_scores"]["real_id"],
            "real OOD": record["guard_scores"]["real_ood"],
        }
        for guarded, name in ((False, "synthetic"), (True, "synthetic, guarded run")):
            values = [
                v
                for r in rows
                if teacher_kind(config, r.row, setting) == kind and ("_guard" in r.row) == guarded
                for rec in r.records
                for v in rec["synthetic_scores"]["values"]
            ]
            if values:
                series[name] = values
        finite = [v for vs in series.values() for v in vs if math.isfinite(v)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
        bins = [low + (high - low) * i / 30 for i in range(31)] if high > low else 30
        for name, values in series.items():
            if values:
                ax.hist(
                    values,
                    bins=bins,
                    density=True,
                    histtype="step",
                    linewidth=1.5,
                    label=f"{name} ({len(values)})",
                )
        ax.set_title(f"{_TEACHER_LABELS[kind]} teacher")
        ax.set_xlabel(f"{record['guard_scores']['scorer']} score (higher = more OOD-like)")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    figure.suptitle(f"setting {setting}: guard scorer on real and synthetic images")
    return figure


def plot_folder(config: BenchConfig) -> str:
    """Folder of the report's plots: ``plots``, or ``<report_name>-plots`` for another report name."""
    return "plots" if config.report_name == "report" else f"{config.report_name}-plots"


def plot_paths(config: BenchConfig) -> list[str]:
    """The plots of ``config``'s report, relative to its folder: :data:`PLOT_KINDS` per setting."""
    return [
        f"{plot_folder(config)}/{kind}-{setting}.png" for setting in config.settings for kind in PLOT_KINDS
    ]


def write_plots(
    config: BenchConfig, rows: list[RowSummary], teachers: list[dict[str, Any]], out: Path
) -> list[Path]:
    """Draw the plots of every setting (:func:`plot_paths`) under ``out``; returns the files written."""
    figures = []
    for setting in config.settings:
        in_setting = [r for r in rows if r.setting == setting]
        trap = (
            [("pool_ood_share", "pool OOD share (SL probe)"), ("pool_collapse", "pool class collapse")]
            if _measured(in_setting, "pool_ood_share")
            else [("ood_share", "synthetic OOD share (probe)"), ("collapse", "class collapse")]
        )
        drawn = {
            "iacc": _curves_figure(in_setting, setting, [("iacc", "IAcc (real MNIST test)")]),
            "trap": _curves_figure(in_setting, setting, trap),
            "scores": _scores_figure(
                config, setting, in_setting, [t for t in teachers if t["setting"] == setting]
            ),
        }
        figures += [drawn[kind] for kind in PLOT_KINDS]
    written = []
    for relative, figure in zip(plot_paths(config), figures, strict=True):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


# -- the report ----------------------------------------------------------------------


_METRICS_TEXT = """\
Metrics on held-out real test images; each run's value is the mean of its last 3 evaluations,
each cell the mean ± sample standard deviation over seeds (the mean alone for one seed).

- IAcc: student accuracy on MNIST. OAcc: on the OOD domain (close-set settings; backdoor settings:
  triggered images against their true labels). OAgr: share of OOD test images where the student
  predicts what the setting's NTL teacher predicts. OAgr − SL: OAgr minus that of the SL-teacher
  student of the same adapter and seed, the agreement an ordinary student does not have (an
  ordinary student may map a whole domain to the NTL teacher's class too, so OAgr alone cannot
  show inherited behaviour).
{dagr}- ASR − clean: share of triggered non-target images the student sends to the target class, minus
  the share of the same images without trigger it sends there (backdoor settings only), over the
  runs whose student has IAcc >= {floor}: ‡n marks a cell with n runs left out below it.
{trap}- BN prior: the guard's verdict on the teacher, per seed (ntl-like: BN targets corrected;
  ordinary: left alone; warming up: the run ended before the warm-up did).
- s/it: wall time per DFKD iteration, without evaluations. seeds: runs stored / expected;
  † where they ran on different CPU models (see the machines above).
"""

_SHARED_TEXT = """\
- Runs made from their guarded twin's training ({pairs}): the guard never intervened there (its
  verdict ordinary, no trigger found), so every call it answered returned what a disabled guard returns
  and that training is the unguarded one, bit for bit; the run records name it (`same_training_as`).
  Their s/it is the guarded training's, left out of the s/it column and the overhead section.
"""

_DAGR_TEXT = """\
- DAgr: OAgr on the disagreement subset alone, the OOD test images on which the SL teacher predicts
  another class than the setting's NTL teacher: near 0 for a student that behaves like the SL
  teacher, near 1 for one that inherited the NTL teacher's behaviour (– where the teachers never
  disagree). Images in the subset: {subsets}. A student is not its teacher's copy: SL-teacher
  students may score high too, and DAgr − SL (DAgr minus that of the SL-teacher student of the same
  adapter and seed) is the part they do not have.
"""

_BATCH_TEXT = """\
- On the adapter's latest synthetic batch: synthetic OOD share (OOD side of a linear probe on the
  run's teacher features, fitted on real ID vs OOD train images), collapse (share of the teacher's
  predictions in the most frequent class; a batch drawn uniformly over MNIST's 10 classes scores
  {floors}, not 0.1); flagged by guard: share of student samples forgotten.
"""

_POOL_TEXT = """\
- On what the student distilled, up to {sample} images evenly spaced over the adapter's pool
  (DeepInversion, CMI: every pooled image; vanilla: its replay pool of the latest student images, or
  without replay its latest synthetic batches): pool OOD share (OOD side of a linear probe on the SL
  teacher's features, fitted on real ID vs OOD train images: the same probe for every row of a
  setting), pool collapse (share of the run's teacher's predictions in the most frequent class);
  flagged by guard: share of student samples forgotten. The runs also store both diagnostics on the
  latest synthetic batch alone. Images drawn uniformly over MNIST's 10 classes score a pool
  collapse of {floors}, not 0.1.
"""

#: The ID domain of every setting is MNIST.
_ID_CLASSES = 10


def _floors(sizes: set[int]) -> str:
    """The balanced collapse floor of each sample size, e.g. ``0.165 on average for 64 images``."""
    return ", ".join(
        f"{reporting.format_number(balanced_collapse_floor(n, _ID_CLASSES))} on average for {n} images"
        for n in sorted(sizes)
    )


def _disagreement_subsets(rows: list[RowSummary]) -> str:
    """Per setting, the size of DAgr's subset out of the OOD test images, e.g. ``mnist_m 812 of 1000``."""
    subsets: dict[str, set[tuple[int, int]]] = {}
    for r in rows:
        for record in r.records:
            if (subset := record.get("disagreement_subset")) is not None:
                subsets.setdefault(r.setting, set()).add((subset["images"], subset["of"]))
    return ", ".join(
        f"{setting} " + " / ".join(f"{n} of {total}" for n, total in sorted(sizes))
        for setting, sizes in subsets.items()
    )


def _metrics_text(rows: list[RowSummary]) -> str:
    """The legend of the main table: the DAgr subsets' sizes, and the balanced collapse floor of each
    sample size the shown collapse column measured (batch sizes, or the final evaluations' pool samples)."""
    metrics = {metric for metric, _ in shown_columns(rows)}
    records = [record for r in rows for record in r.records]
    if "pool_collapse" in metrics:
        sizes = {
            int(n)
            for record in records
            for n in record["curves"].get("pool_images", [])[-FINAL_WINDOW:]
            if n  # None (no value) and 0 (an empty pool) have no floor
        }
        trap = _POOL_TEXT.format(sample=POOL_SAMPLE, floors=_floors(sizes) or "more than 0.1")
    else:
        sizes = {record["config"]["adapter_config"]["batch_size"] for record in records}
        trap = _BATCH_TEXT.format(floors=_floors(sizes) or "more than 0.1")
    dagr = _DAGR_TEXT.format(subsets=_disagreement_subsets(rows)) if "dagr" in metrics else ""
    shared_rows = dict.fromkeys(
        r.row for r in rows if any(record.get("same_training_as") for record in r.records)
    )
    pairs = ", ".join(f"{row_label(row)} from {row_label(row)} + guard" for row in shared_rows)
    shared = _SHARED_TEXT.format(pairs=pairs) if pairs else ""
    return _METRICS_TEXT.format(floor=ASR_IACC_FLOOR, dagr=dagr, trap=trap) + shared


_INTERVALS_TEXT = f"""\
Each mean of the table above with its {CONFIDENCE:.0%} confidence interval: mean ± t · std / √n, t the
two-sided {CONFIDENCE:.0%} quantile of Student's t with n − 1 degrees of freedom, n the seeds (– for one seed).
"""

_EFFECT_TEXT = f"""\
Each guarded row minus its unguarded row of the same setting and adapter (NTL + guard − NTL,
SL + guard − SL, a variant − the unguarded row of its teacher), seed by seed: the mean of the paired
differences and its {CONFIDENCE:.0%} confidence interval (Student t over the pairs); "not significant"
where the interval covers 0.
"""


_OVERHEAD_TEXT = """\
Per guarded row, seed by seed: the guarded run's median seconds per iteration during the guard's
BN-prior warm-up (the iterations that began before the verdict) and after the verdict, each over
the median seconds per iteration of the unguarded run of the same seed over all its iterations (an
unguarded run has no phases); the mean ± sample standard deviation of these ratios over the pairs
(– where a phase has no iteration, e.g. after the verdict of a run that ended warming up).
"""

_PARALLEL_TEXT = """\
The runs trained up to {workers} at a time, in parallel worker processes on one shared machine: an
iteration's time includes what the runs beside it did, which differs between a guarded run and
its unguarded pair.
"""


def _overhead_section(rows: list[RowSummary]) -> str:
    """The "Overhead per phase" section; empty when no run stored its phase timings."""
    records = [record for r in rows for record in r.records if record.get("seconds_per_iteration_phases")]
    if not records:
        return ""
    workers = max(record.get("workers", 1) for record in records)
    parallel = f"\n{_PARALLEL_TEXT.format(workers=workers)}" if workers > 1 else ""
    return f"## Overhead per phase\n\n{_OVERHEAD_TEXT}{parallel}\n{overhead_table(rows)}\n\n"


_TARGETS_TEXT = f"""\
The guard's targets, judged from the runs above (means over seeds; paired differences seed by seed):
the SL teacher judged ordinary on every seed, the NTL teacher NTL-like where it traps DFKD (its unguarded
student more than {TRAP_MARGIN:g} IAcc below the SL student's) and ordinary elsewhere; where it traps, NTL + guard
above the unguarded NTL student on every seed; NTL + guard at >= {ORACLE_SHARE:.0%} of the oracle's IAcc (where there
is an oracle row);
no guarded row below its unguarded row by more than {MAX_IACC_LOSS:g} IAcc; SL + guard within {SL_TOLERANCE:g} of SL;
in backdoor settings ASR − clean <= {MAX_ASR:g} at <= {MAX_ASR_IACC_COST:g} IAcc below the unguarded NTL student.
"""


def _utc_minute(timestamp: str) -> str:
    moment = datetime.datetime.fromisoformat(timestamp).astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def _criterion(records: list[dict[str, Any]]) -> str:
    """The KD criterion of the runs, per adapter, from their records (a stored unguarded run without
    ``kd_temperature`` distilled at temperature 1)."""
    temperatures: dict[str, set[float]] = {}
    for record in records:
        guard = record["config"]["guard"]
        temperatures.setdefault(record["spec"]["adapter"], set()).add(float(guard.get("kd_temperature", 1.0)))
    if not temperatures:
        return "no run stored"
    mixed = sorted(adapter for adapter, values in temperatures.items() if len(values) > 1)
    if mixed:
        return f"KL(teacher ‖ student) · T²; the rows of {', '.join(mixed)} differ in T: their differences are not the guard's alone"
    adapters: dict[float, list[str]] = {}
    for adapter, (value,) in temperatures.items():
        adapters.setdefault(value, []).append(adapter)
    listed = "; ".join(f"T = {t:g} ({', '.join(names)})" for t, names in sorted(adapters.items()))
    return f"KL(teacher ‖ student) · T², guarded and unguarded rows alike: {listed}"


def _header(command: str, rows: list[RowSummary]) -> str:
    """Command, dates, machines and run count: from the invocation and run records alone."""
    records = [record for r in rows for record in r.records]
    finished = sorted(_utc_minute(record["finished"]) for record in records)
    if not finished:
        date = "no run stored"
    elif finished[0] == finished[-1]:
        date = f"{finished[0]} (when the runs finished)"
    else:
        date = f"{finished[0]} to {finished[-1]} (when the first and the last run finished)"
    machines = Counter(reporting.machine_identity(record["machine"]) for record in records).most_common()
    if len(machines) == 1:
        machine = f"- Machine: {machines[0][0]} ({_runs(machines[0][1])})\n"
    elif machines:
        mixed = len({_cpu_model(name) for name, _ in machines}) > 1
        legend = f" (a cell marked {MIXED_CPUS} has runs of different CPU models)" if mixed else ""
        machine = f"- Machines{legend}:" + "".join(f"\n  - {name}: {_runs(n)}" for name, n in machines) + "\n"
    else:
        machine = ""
    done, expected = len(records), sum(r.expected for r in rows)
    return (
        f"- Command: `{command}`\n"
        f"- Date: {date}\n"
        f"{machine}"
        f"- Distillation: {_criterion(records)}\n"
        f"- Runs: {done} of {expected} stored in `runs/`"
        f"{'' if done == expected else ' (the table is incomplete: rerun the command to finish)'}\n"
    )


def render_report(
    config: BenchConfig,
    out: Path,
    command: str | None = None,
    *,
    plots: bool = True,
    invocation: dict[str, Any] | None = None,
) -> str:
    """The text of ``config``'s report from the records stored under ``out`` (draws nothing).

    A function of the stored records and ``config`` alone: the command is the
    invocation record's when it holds ``config`` (:func:`records.report_command`),
    else ``command``; dates and machines come from the run records.

    :param plots: list the plots (:func:`plot_paths`); False leaves a note that they are not drawn.
    :param invocation: an invocation record (:func:`records.read_invocation`) whose config is
        ``config``: its command, config text and record names are used as stored.
    """
    rows, teachers = _stored_rows(config, out, invocation)
    command = invocation["command"] if invocation is not None else report_command(config, out, command)
    if plots:
        plot_lines = "\n".join(f"![{Path(p).stem}]({p})" for p in plot_paths(config))
    else:
        plot_lines = "Not drawn: matplotlib is not installed (`pip install 'dfkd-guard[bench]'`)."
    return (
        "# dfkd-guard benchmark\n\n"
        f"{_header(command, rows)}\n"
        "## Settings\n\n"
        f"{settings_table(config)}\n\n"
        "## Students\n\n"
        f"{_metrics_text(rows)}\n{main_table(rows)}\n\n"
        "## Guard effect (paired over seeds)\n\n"
        f"{_EFFECT_TEXT}\n{guard_effect_table(rows)}\n\n"
        f"{_overhead_section(rows)}"
        "## Targets\n\n"
        f"{_TARGETS_TEXT}\n{targets_table(rows)}\n\n"
        "## Confidence intervals\n\n"
        f"{_INTERVALS_TEXT}\n{interval_table(rows)}\n\n"
        "## Teachers\n\n"
        f"{_teacher_tables(config, teachers)}\n\n"
        "## Plots\n\n"
        f"{plot_lines}\n\n"
        "## Configuration\n\n"
        "Without `output_dir` and `teacher_cache_dir`, which say where files go, not what ran.\n\n"
        f"```json\n{json.dumps(invocation['config'] if invocation else config_record(config), indent=2)}\n```\n"
    )


def _stored_rows(
    config: BenchConfig, out: Path, invocation: dict[str, Any] | None
) -> tuple[list[RowSummary], list[dict[str, Any]]]:
    """The rows and teacher records of a report: those its invocation record names (records of 0.4 and
    older name none: the ids this version gives the config), else those of ``config``."""
    if invocation is None or "runs" not in invocation:
        return load_rows(config, out), _teacher_records(config, out)
    return load_rows(config, out, invocation["runs"]), _teacher_records(config, out, invocation["teachers"])


def write_report(
    config: BenchConfig,
    out: Path | None = None,
    *,
    command: str | None = None,
    plots: bool = True,
    invocation: dict[str, Any] | None = None,
) -> Path:
    """Write ``<out>/<report_name>.md`` (:func:`render_report`) and its plots from the runs stored under ``out``.

    :param command: the command that reproduces the benchmark, unless the invocation record names one.
    :param plots: draw the plots (needs matplotlib); False leaves a note instead.
    :returns: the report's path.
    """
    out = Path(out or config.output_dir)
    if plots:
        write_plots(config, *_stored_rows(config, out, invocation), out)
    path = out / f"{config.report_name}.md"
    path.write_text(render_report(config, out, command, plots=plots, invocation=invocation), encoding="utf-8")
    return path


def report_rows(out: Path, report_name: str) -> list[RowSummary]:
    """The rows of report ``report_name`` stored in ``out``: its stored config, the records its invocation names.

    :raises DfkdGuardError: naming the file, when ``out`` holds no invocation record of that report.
    """
    return _stored_rows(stored_config(out, report_name), out, read_invocation(out, report_name))[0]


def rederive_report(out: Path, report_name: str) -> str:
    """The text of report ``report_name`` from ``out`` alone: its stored config and records (:func:`render_report`)."""
    return render_report(stored_config(out, report_name), out, invocation=read_invocation(out, report_name))
