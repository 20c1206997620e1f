"""The report of ``dfkd-guard bench``: tables and plots from the stored runs.

:func:`write_report` reads the runs of a :class:`~dfkd_guard.bench.config.BenchConfig`
from ``<out>/runs/`` and the teacher records from ``<out>/teacher_metrics/``
(see :mod:`dfkd_guard.bench.runner`), and writes ``<out>/report.md``:

* what each setting is (its setting, parameters, trigger and target class,
  NTL loss) and the teachers' and students' architectures;
* the main table: one row per setting x adapter x teacher row, each metric
  as mean +- sample standard deviation over the seeds found (a run's value is
  the mean of its last 3 evaluations);
* the teachers' own accuracy and each scorer's AUROC on real ID vs real OOD
  test images;
* the plots in ``<out>/plots/``, per setting: ``iacc-<setting>.png`` (IAcc
  over iterations), ``trap-<setting>.png`` (synthetic OOD share and class
  collapse over iterations), ``scores-<setting>.png`` (histograms of the
  guard scorer's scores on real ID, real OOD and the final synthetic batches);
* the exact configuration (JSON), the command and the machine.

Plots need matplotlib (``pip install 'dfkd-guard[bench]'``); it is imported
only here, inside the functions that draw.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfkd_guard.errors import DfkdGuardError

from . import reporting
from .config import BenchConfig, row_label
from .runner import enumerate_runs, ntl_kind, run_path, teacher_components, teacher_kind, teacher_record_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "COLUMNS",
    "RowSummary",
    "format_stat",
    "has_matplotlib",
    "load_rows",
    "main_table",
    "require_matplotlib",
    "settings_table",
    "write_plots",
    "write_report",
]

#: Main-table columns: (metric key in a run's ``final``, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("iacc", "IAcc"),
    ("oacc", "OAcc"),
    ("oagr", "OAgr"),
    ("asr_minus_clean", "ASR − clean"),
    ("ood_share", "synthetic OOD share"),
    ("collapse", "collapse"),
    ("flagged", "flagged by guard"),
)

_TEACHER_LABELS = {"sl": "SL", "ntl": "NTL", "ntl_backdoor": "NTL backdoor"}


@dataclass
class RowSummary:
    """The stored runs of one table row (all seeds of one setting x adapter x teacher row)."""

    setting: str
    adapter: str
    row: str
    expected: int
    records: list[dict[str, Any]] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        """The metric's final value in every stored run that has it."""
        return [v for r in self.records if (v := r["final"].get(metric)) is not None]

    def seconds_per_iteration(self) -> list[float]:
        return [v for r in self.records if (v := r.get("seconds_per_iteration")) is not None]

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


def load_rows(config: BenchConfig, out: Path | None = None) -> list[RowSummary]:
    """The table rows of ``config`` in order, each with the run records found on disk."""
    out = Path(out or config.output_dir)
    rows: dict[tuple[str, str, str], RowSummary] = {}
    for spec in enumerate_runs(config):
        key = (spec.setting, spec.adapter, spec.row)
        summary = rows.setdefault(key, RowSummary(spec.setting, spec.adapter, spec.row, 0))
        summary.expected += 1
        path = run_path(config, spec, out)
        if path.is_file():
            summary.records.append(json.loads(path.read_text(encoding="utf-8")))
    return list(rows.values())


def format_stat(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std, 3 significant digits) over seeds; the mean alone for one value; ``–`` for none."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return reporting.format_number(mean)
    return f"{reporting.format_number(mean)} ± {reporting.format_number(statistics.stdev(values))}"


def main_table(rows: list[RowSummary]) -> str:
    """The students table in Markdown: one line per row summary, metrics as mean ± std over seeds."""
    header = (
        ["setting", "adapter", "teacher"] + [title for _, title in COLUMNS] + ["BN prior", "s/it", "seeds"]
    )
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * len(COLUMNS) + "---|---:|---:|"]
    for r in rows:
        cells = [r.setting, r.adapter, row_label(r.row)]
        cells += [format_stat(r.values(metric)) for metric, _ in COLUMNS]
        cells += [r.verdicts(), format_stat(r.seconds_per_iteration()), f"{len(r.records)}/{r.expected}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def _teacher_records(config: BenchConfig, out: Path) -> list[dict[str, Any]]:
    records = []
    for setting in config.settings:
        kinds = dict.fromkeys(
            [teacher_kind(config, row, setting) for row in config.rows] + [ntl_kind(config, setting)]
        )
        for kind in kinds:
            path = teacher_record_path(config, setting, kind, out)
            if path.is_file():
                records.append(json.loads(path.read_text(encoding="utf-8")))
    return records


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


def write_plots(
    config: BenchConfig, rows: list[RowSummary], teachers: list[dict[str, Any]], folder: Path
) -> list[Path]:
    """Draw the three plots of every setting into ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for setting in config.settings:
        in_setting = [r for r in rows if r.setting == setting]
        figures = {
            f"iacc-{setting}.png": _curves_figure(in_setting, setting, [("iacc", "IAcc (real MNIST test)")]),
            f"trap-{setting}.png": _curves_figure(
                in_setting,
                setting,
                [("ood_share", "synthetic OOD share (probe)"), ("collapse", "class collapse")],
            ),
            f"scores-{setting}.png": _scores_figure(
                config, setting, in_setting, [t for t in teachers if t["setting"] == setting]
            ),
        }
        for name, figure in figures.items():
            figure.savefig(folder / name, dpi=100)
            written.append(folder / name)
    return written


# -- the report ----------------------------------------------------------------------


_METRICS_TEXT = """\
Metrics on held-out real test images; each run's value is the mean of its last 3 evaluations,
each cell the mean ± sample standard deviation over seeds (the mean alone for one seed).

- IAcc: student accuracy on MNIST. OAcc: on the OOD domain (close-set settings; backdoor settings:
  triggered images against their true labels). OAgr: share of OOD test images where the student
  predicts what the setting's NTL teacher predicts.
- ASR − clean: share of triggered non-target images the student sends to the target class, minus
  the share of the same images without trigger it sends there (backdoor settings only).
- On the adapter's latest synthetic batch: synthetic OOD share (OOD side of a linear probe on the
  run's teacher features, fitted on real ID vs OOD train images), collapse (share of the teacher's
  predictions in the most frequent class); flagged by guard: share of student samples forgotten.
- BN prior: the guard's verdict on the teacher, per seed (ntl-like: BN targets corrected;
  ordinary: left alone; warming up: the run ended before the warm-up did).
- s/it: wall time per DFKD iteration, without evaluations.
"""


def write_report(
    config: BenchConfig,
    out: Path | None = None,
    *,
    command: str | None = None,
    started: datetime.datetime | None = None,
    load: str | None = None,
    plots: bool = True,
) -> Path:
    """Write ``<out>/<report_name>.md`` and its plots from the runs stored under ``out``.

    :param command: the command that reproduces the benchmark (shown in the report).
    :param started: when the benchmark began (UTC), for the date and machine lines.
    :param load: load averages over the benchmark (see :func:`reporting.load_span`).
    :param plots: draw the plots (needs matplotlib); False leaves a note instead.
    :returns: the report's path.
    """
    out = Path(out or config.output_dir)
    started = started or datetime.datetime.now(datetime.timezone.utc)
    load = load or reporting.load_average()
    rows = load_rows(config, out)
    teachers = _teacher_records(config, out)
    done = sum(len(r.records) for r in rows)
    expected = sum(r.expected for r in rows)
    if plots:
        folder = "plots" if config.report_name == "report" else f"{config.report_name}-plots"
        plot_lines = "\n".join(
            f"![{p.stem}]({folder}/{p.name})" for p in write_plots(config, rows, teachers, out / folder)
        )
    else:
        plot_lines = "Not drawn: matplotlib is not installed (`pip install 'dfkd-guard[bench]'`)."
    text = (
        "# dfkd-guard benchmark\n\n"
        f"- Command: `{command or '(run from Python)'}`\n"
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Machine: {reporting.machine_line(started, load)}\n"
        f"{reporting.busy_warning(load)}"
        f"- Runs: {done} of {expected} stored in `runs/`"
        f"{'' if done == expected else ' (the table is incomplete: rerun the command to finish)'}\n\n"
        "## Settings\n\n"
        f"{settings_table(config)}\n\n"
        "## Students\n\n"
        f"{_METRICS_TEXT}\n{main_table(rows)}\n\n"
        "## Teachers\n\n"
        f"{_teacher_tables(config, teachers)}\n\n"
        "## Plots\n\n"
        f"{plot_lines}\n\n"
        "## Configuration\n\n"
        f"```json\n{json.dumps(config.model_dump(mode='json'), indent=2)}\n```\n"
    )
    path = out / f"{config.report_name}.md"
    path.write_text(text, encoding="utf-8")
    return path
