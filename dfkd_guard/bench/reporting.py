"""How the benchmark commands time work and describe the machine in their reports.

Shared by ``dfkd-guard bench-scorers`` (:mod:`dfkd_guard.bench.scorer_cost`),
``dfkd-guard bench-adapters`` (:mod:`dfkd_guard.bench.adapter_cost`) and
``dfkd-guard demo`` (:mod:`dfkd_guard.bench.demo`):

* argparse types for their options (:func:`positive_int`, :func:`name_list`)
  and the options every timing command has (:func:`add_timing_options`,
  :func:`add_run_options`);
* starting a run (:func:`start_run`, :func:`load_span`);
* timing (:func:`timed`, :func:`calls_per_timing`, :func:`statistic`,
  :func:`score_task`) and
  progress lines on stderr (:func:`progress`);
* the report header: the command that reproduces the run
  (:func:`command_line`), the machine (:func:`machine_line`, built from
  :func:`cpu_model`, :func:`usable_cores`, :func:`load_average`; what it is
  without when: :func:`machine_identity`), a warning
  when the machine was busy (:func:`busy_warning`), and numbers in the
  tables (:func:`format_number`);
* printing and saving the report (:func:`publish`).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_INNER_CALLS",
    "MIN_TIMING_SECONDS",
    "add_run_options",
    "add_timing_options",
    "busy_warning",
    "calls_per_timing",
    "command_line",
    "cpu_model",
    "format_number",
    "load_average",
    "load_span",
    "machine_identity",
    "machine_line",
    "name_list",
    "parse_names",
    "positive_int",
    "progress",
    "publish",
    "report_header",
    "score_task",
    "start_run",
    "statistic",
    "timed",
    "usable_cores",
]

#: A timing shorter than this is made of several back-to-back calls.
MIN_TIMING_SECONDS = 0.02
#: The most back-to-back calls in one timing.
MAX_INNER_CALLS = 100
_DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")


# -- options -----------------------------------------------------------------


def positive_int(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers ``>= minimum``.

    :param minimum: smallest value accepted (``0`` for counts that may be zero).
    :returns: a parser raising :class:`argparse.ArgumentTypeError` that names the rejected text or value.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def parse_names(text: str, allowed: Sequence[str]) -> list[str]:
    """The names of a comma-separated list, each one of ``allowed``.

    :raises argparse.ArgumentTypeError: if the list is empty or names anything else; the message names ``text``.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {', '.join(allowed)}, got {text!r}"
        )
    return names


def name_list(allowed: Sequence[str]) -> Callable[[str], str]:
    """An argparse ``type`` accepting a comma-separated subset of ``allowed``.

    The option keeps the text as given (so the report's command repeats it);
    split it with :func:`parse_names`.
    """

    def parse(text: str) -> str:
        parse_names(text, allowed)
        return text

    return parse


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--stat`` (median or min over the rounds) and ``--warmup`` (untimed rounds) to ``parser``."""
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic over the rounds; 'min' is steadier on a busy machine (default: median)",
    )
    parser.add_argument(
        "--warmup", type=positive_int(0), default=1, help="untimed rounds before the timed ones (default: 1)"
    )


def add_run_options(
    parser: argparse.ArgumentParser, subset: str, allowed: Sequence[str], seeded: str
) -> None:
    """Add ``--threads``, ``--<subset>`` (a :func:`name_list` of ``allowed``, default all), ``--seed`` and ``--out``.

    :param subset: what the command measures, in the plural (``"teachers"``); names the option.
    :param seeded: what ``--seed`` seeds, for its help (``"the weights and images"``).
    """
    parser.add_argument(
        "--threads",
        type=positive_int(1),
        default=None,
        help="torch.set_num_threads value (default: leave torch's choice)",
    )
    parser.add_argument(
        f"--{subset}",
        default=",".join(allowed),
        type=name_list(allowed),
        help=f"comma-separated {subset} among {', '.join(allowed)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help=f"seed of {seeded} (default: 0)")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="also write the report to FILE"
    )


# -- starting a run ---------------------------------------------------------


def start_run(threads: int | None) -> tuple[datetime.datetime, str]:
    """Apply ``--threads`` (None: leave torch's choice) and note the start of a run.

    :returns: the UTC time and the :func:`load_average` at the start; pass the
        latter to :func:`load_span` at the end.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return datetime.datetime.now(datetime.timezone.utc), load_average()


def load_span(at_start: str) -> str:
    """``"<at_start> at start, <load averages now> at end"``, for :func:`machine_line` and :func:`busy_warning`."""
    return f"{at_start} at start, {load_average()} at end"


# -- timing ------------------------------------------------------------------


def timed(task: Callable[[], object], calls: int) -> float:
    """Mean seconds of one call of ``task`` over ``calls`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        task()
    return (time.perf_counter() - start) / calls


def score_task(guard: Any, images: Any, logits: Any) -> Callable[[], object]:
    """A task for :func:`timed`: ``guard.score(images, logits)`` (the teacher's logits passed in, as adapters do)."""

    def score() -> object:
        return guard.score(images, logits)

    return score


def calls_per_timing(task: Callable[[], object], elapsed: float | None) -> int:
    """How many back-to-back calls make one timing last about 20 ms (one if a call already does).

    :param elapsed: seconds of a warm call, if known; a long task is not run again.
    """
    if elapsed is None:
        elapsed = timed(task, 1)
    if elapsed >= MIN_TIMING_SECONDS:
        return 1
    elapsed = min(elapsed, timed(task, 1))
    return min(MAX_INNER_CALLS, math.ceil(MIN_TIMING_SECONDS / max(elapsed, 1e-9)))


def statistic(name: str) -> Callable[[Sequence[float]], float]:
    """The summary of timed rounds that ``--stat`` names: ``"median"`` or ``"min"``."""
    if name == "median":
        return statistics.median
    if name == "min":
        return min
    raise ValueError(f"unknown statistic {name!r}; expected 'median' or 'min'")


def progress(command: str, message: str) -> None:
    """Print ``[command] message`` on stderr, at once (the report itself goes to stdout)."""
    print(f"[{command}] {message}", file=sys.stderr, flush=True)


# -- the machine -------------------------------------------------------------


#: Vector instruction sets that change which floating-point kernels torch runs, widest first.
_VECTOR_ISAS = ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon")


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, family / model / stepping and widest vector instruction set.

    Virtual machines often report a bare name ("AMD EPYC") for CPUs of several
    generations whose kernels round differently; the numbers and the
    instruction set tell them apart, e.g. ``AMD EPYC (cpu family 25, model 1,
    stepping 1, avx2)``.

    :param cpuinfo: text in the format of ``/proc/cpuinfo`` (default: that file, where there is one).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as file:
                cpuinfo = file.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    details = [f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping") if key in fields]
    details += [isa for isa in _VECTOR_ISAS if isa in flags][:1]
    return f"{name} ({', '.join(details)})" if details else name


def usable_cores() -> int | None:
    """Cores this process may run on, or None where the platform does not say."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as ``"0.12, 0.30, 0.45"``, or ``"n/a"``."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def machine_line(started: datetime.datetime | None = None, load: str | None = None) -> str:
    """``CPU model | cores | torch version and threads | Python | load | date`` on one line.

    :param started: when the run began (default: now), in UTC.
    :param load: load averages to report (default: :func:`load_average` now).
    """
    import torch

    started = started or datetime.datetime.now(datetime.timezone.utc)
    usable = usable_cores()
    cores = f"{os.cpu_count()} logical cores" + (f" ({usable} usable)" if usable is not None else "")
    return (
        f"{cpu_model()} | {cores} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"Python {platform.python_version()} | load average {load or load_average()} | "
        f"{started.strftime('%Y-%m-%d %H:%M UTC')}"
    )


def machine_identity(line: str) -> str:
    """A :func:`machine_line` without its load average and date: what the machine is, not when it ran."""
    return " | ".join(
        part
        for part in line.split(" | ")
        if not part.startswith("load average") and not _DATE.fullmatch(part)
    )


def busy_warning(load: str) -> str:
    """A report line warning that timings are noisy if a 1-minute load average in ``load`` exceeds the cores; else ``""``.

    ``load`` holds ``"1-min, 5-min, 15-min"`` triples (see :func:`load_average`);
    the longer averages still count work that ended before the run.
    """
    cores = usable_cores() or os.cpu_count() or 1
    if any(float(x) > cores for x in re.findall(r"(\d+\.\d+), \d+\.\d+, \d+\.\d+", load)):
        return "- **The machine was busy (load average above the core count): timings are noisy.**\n"
    return ""


# -- the report --------------------------------------------------------------


def command_line(prog: str, args: argparse.Namespace, options: Sequence[str]) -> str:
    """The command that reproduces a run: ``prog`` then each of ``options`` with its value in ``args``.

    An option's value is the attribute named after it (``--teacher-steps``:
    ``args.teacher_steps``); options whose value is None (left to their
    default) are omitted.
    """
    parts = [prog]
    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None:
            parts += [option, str(value)]
    return " ".join(parts)


def report_header(
    prog: str, args: argparse.Namespace, options: Sequence[str], started: datetime.datetime, load: str
) -> str:
    """The ``- Command``, ``- Date`` and ``- Machine`` lines that open a benchmark report.

    :param prog: ``args`` and ``options``: the reproducing command, as for :func:`command_line`.
    :param started: when the run began, in UTC.
    :param load: load averages over the run (see :func:`load_span`).
    """
    return (
        f"- Command: `{command_line(prog, args, options)}`\n"
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Machine: {machine_line(started, load)}\n"
    )


def format_number(value: float) -> str:
    """Three significant digits, never in exponent notation (``0.0123``, ``1.23``, ``1234``)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def publish(report: str, out: Path | None, command: str) -> None:
    """Print ``report`` on stdout and, if ``out`` is given, also write it there (creating its folder)."""
    print(report, end="")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report, encoding="utf-8")
        progress(command, f"wrote {out}")
