"""``dfkd-guard bench-scorers``: what each built-in scorer costs, in teacher passes.

For every teacher and every built-in scorer the command times
``Guard.score(images, logits)`` on one batch of random 3x32x32 images, with
the teacher's logits passed in (as adapters do), and divides by the time of
one reference pass of the same teacher on the same batch:

* ``x forward``: one ``torch.no_grad()`` eval-mode forward. The logit scorers
  (``msp``, ``energy``, ``entropy``) need no teacher pass at all; their
  target is at most 0.05 of a forward.
* ``x k fwd+bwd`` (``atesc`` with ``k`` PGD steps only): ``k`` training-style
  passes, i.e. a train-mode forward, cross-entropy and ``loss.backward()``
  filling the parameters' ``.grad``; target at most 1.1.

Timings are medians (or, with ``--stat min``, minima) over ``--repeats``
rounds after ``--warmup`` rounds; a round times every measurement once, in
turn, so a burst of load from another process spreads over all of them
instead of hitting one. Operations shorter than
about 20 ms are run several times per timing and averaged. Both ratios are per
sample and per batch alike, since all passes use the same batch.

Teachers: ``small`` is the benchmark teacher :func:`dfkd_guard.bench.models.make_teacher`
(three conv-BatchNorm-ReLU-pool stages, 32-64-128 channels) and ``resnet18``
is ``torchvision.models.resnet18(num_classes=10)``; both randomly
initialised (nothing is downloaded).
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["SCORERS", "TEACHERS", "register", "run"]

#: Scorers measured, as ``(row label, GuardConfig scorer choice, k)``; ``k``
#: is the number of PGD steps for ``atesc`` and None otherwise.
SCORERS: tuple[tuple[str, dict[str, Any], int | None], ...] = (
    ("msp", {"name": "msp"}, None),
    ("energy", {"name": "energy"}, None),
    ("entropy", {"name": "entropy"}, None),
    ("odin", {"name": "odin"}, None),
    ("bn_deviation", {"name": "bn_deviation"}, None),
    ("atesc k=1", {"name": "atesc", "params": {"steps": 1}}, 1),
    ("atesc k=3", {"name": "atesc", "params": {"steps": 3}}, 3),
    ("atesc k=5", {"name": "atesc", "params": {"steps": 5}}, 5),
)
#: Scorers that read the logits only, and the most they may cost, in forwards.
LOGIT_SCORERS = frozenset({"msp", "energy", "entropy"})
LOGIT_TARGET = 0.05
#: Most an atesc score with k steps may cost, in k training-style fwd+bwd passes.
ATESC_TARGET = 1.1

TEACHERS: tuple[str, ...] = ("small", "resnet18")
#: Timed rounds per teacher when ``--repeats`` is not given: a default run
#: takes about 2-3 minutes on 2 idle cores, ResNet-18 being most of it.
DEFAULT_REPEATS: dict[str, int] = {"small": 5, "resnet18": 3}

_MIN_TIMING_SECONDS = 0.02
_MAX_INNER_CALLS = 100


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench-scorers",
        help="time each built-in scorer relative to teacher forward / fwd+bwd passes",
        description="Time Guard.score for each built-in scorer against one teacher forward "
        "(and atesc against k training-style forward+backward passes); prints a Markdown table.",
    )
    parser.add_argument("--batch", type=_count(1), default=256, help="batch size of every pass (default: 256)")
    parser.add_argument(
        "--repeats",
        type=_count(1),
        default=None,
        help="timed rounds per teacher (default: "
        + ", ".join(f"{n} for {t}" for t, n in DEFAULT_REPEATS.items())
        + ")",
    )
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="statistic over the rounds; 'min' is steadier on a busy machine (default: median)",
    )
    parser.add_argument("--warmup", type=_count(0), default=1, help="untimed rounds before the timed ones (default: 1)")
    parser.add_argument(
        "--threads", type=_count(1), default=None, help="torch.set_num_threads value (default: leave torch's choice)"
    )
    parser.add_argument(
        "--teachers",
        default=",".join(TEACHERS),
        type=_teacher_list,
        help=f"comma-separated teachers among {', '.join(TEACHERS)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and images (default: 0)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the report to FILE")
    parser.set_defaults(func=run)


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _teacher_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TEACHERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(TEACHERS)}, got {text!r}")
    return names


def _teacher_list(text: str) -> str:
    _teacher_names(text)
    return text


@dataclass(frozen=True)
class Row:
    """One line of the result table; seconds are per batch (median or minimum over the rounds)."""

    teacher: str
    label: str
    seconds: float
    forward_seconds: float
    steps: int | None = None
    fwd_bwd_seconds: float | None = None

    @property
    def per_forward(self) -> float:
        return self.seconds / self.forward_seconds

    @property
    def per_fwd_bwd(self) -> float | None:
        if self.steps is None or self.fwd_bwd_seconds is None:
            return None
        return self.seconds / (self.steps * self.fwd_bwd_seconds)

    def verdict(self) -> str:
        if self.label in LOGIT_SCORERS:
            return _verdict(self.per_forward, LOGIT_TARGET, "x fwd")
        ratio = self.per_fwd_bwd
        if ratio is not None:
            return _verdict(ratio, ATESC_TARGET, "x k fwd+bwd")
        return "-"


def _verdict(ratio: float, target: float, unit: str) -> str:
    return f"{'ok' if ratio <= target else 'MISSED'} (<= {target:g}{unit})"


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = datetime.datetime.now(datetime.timezone.utc)
    load = _load_average()
    rows: list[Row] = []
    repeats: dict[str, int] = {}
    for name in _teacher_names(args.teachers):
        repeats[name] = args.repeats or DEFAULT_REPEATS[name]
        rows += _bench_teacher(name, args, repeats[name])
    load = f"{load} at start, {_load_average()} at end"
    report = _report(rows, args, started, load, repeats)
    print(report, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
        _progress(f"wrote {args.out}")
    return 0


# -- measuring ---------------------------------------------------------------


def _make_teacher(name: str) -> nn.Module:
    if name == "small":
        from dfkd_guard.bench.models import make_teacher

        return make_teacher(num_classes=10)
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


def _bench_teacher(name: str, args: argparse.Namespace, repeats: int) -> list[Row]:
    import copy

    import torch
    import torch.nn.functional as F

    from dfkd_guard.config import GuardConfig
    from dfkd_guard.guard import Guard

    torch.manual_seed(args.seed)
    teacher = _make_teacher(name).eval()
    trainee = copy.deepcopy(teacher)  # the training-style reference updates BN statistics; keep them off the teacher
    images = torch.rand(args.batch, 3, 32, 32)
    labels = torch.randint(0, 10, (args.batch,))
    with torch.no_grad():
        logits = teacher(images)

    def forward() -> None:
        with torch.no_grad():
            teacher(images)

    def fwd_bwd() -> None:
        trainee.train()
        loss = F.cross_entropy(trainee(images), labels)
        loss.backward()
        trainee.zero_grad(set_to_none=True)

    tasks: dict[str, Callable[[], object]] = {"forward": forward, "fwd+bwd": fwd_bwd}
    for label, choice, _ in SCORERS:
        guard = Guard(GuardConfig(scorer=choice), teacher, load_entrypoints=False)
        tasks[label] = _bound_score(guard, images, logits)

    threads = torch.get_num_threads()
    _progress(f"{name}: batch {args.batch}, {threads} threads, {args.warmup} warm-up + {repeats} rounds")
    last: dict[str, float] = {}
    for round_ in range(args.warmup):
        for key, task in tasks.items():
            last[key] = _timed(task, 1)
        _progress(f"{name}: warm-up {round_ + 1}/{args.warmup} done")
    inner = {key: _calls_per_timing(task, last.get(key)) for key, task in tasks.items()}
    samples: dict[str, list[float]] = {key: [] for key in tasks}
    for round_ in range(repeats):
        for key, task in tasks.items():
            samples[key].append(_timed(task, inner[key]))
        _progress(f"{name}: round {round_ + 1}/{repeats} done")

    stat = statistics.median if args.stat == "median" else min
    typical = {key: stat(values) for key, values in samples.items()}
    rows = [
        Row(name, "forward", typical["forward"], typical["forward"]),
        Row(name, "fwd+bwd", typical["fwd+bwd"], typical["forward"], 1, typical["fwd+bwd"]),
    ]
    for label, _, steps in SCORERS:
        fwd_bwd_seconds = typical["fwd+bwd"] if steps is not None else None
        rows.append(Row(name, label, typical[label], typical["forward"], steps, fwd_bwd_seconds))
    return rows


def _bound_score(guard: Any, images: Any, logits: Any) -> Callable[[], object]:
    def score() -> object:
        return guard.score(images, logits)

    return score


def _calls_per_timing(task: Callable[[], object], elapsed: float | None) -> int:
    """How many back-to-back calls make one timing last about 20 ms (one if a call already does).

    :param elapsed: seconds of a warm call, if known; a long task is not run again.
    """
    if elapsed is None:
        elapsed = _timed(task, 1)
    if elapsed >= _MIN_TIMING_SECONDS:
        return 1
    elapsed = min(elapsed, _timed(task, 1))
    return min(_MAX_INNER_CALLS, math.ceil(_MIN_TIMING_SECONDS / max(elapsed, 1e-9)))


def _timed(task: Callable[[], object], calls: int) -> float:
    """Mean seconds of one call of ``task`` over ``calls`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        task()
    return (time.perf_counter() - start) / calls


def _progress(message: str) -> None:
    print(f"[bench-scorers] {message}", file=sys.stderr, flush=True)


# -- reporting ---------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def machine_line(started: datetime.datetime | None = None, load: str | None = None) -> str:
    """``CPU model | cores | torch version and threads | load | date`` on one line."""
    import torch

    started = started or datetime.datetime.now(datetime.timezone.utc)
    usable = _usable_cores()
    cores = f"{os.cpu_count()} logical cores" + (f" ({usable} usable)" if usable is not None else "")
    return (
        f"{_cpu_model()} | {cores} | torch {torch.__version__}, {torch.get_num_threads()} threads | "
        f"Python {platform.python_version()} | load average {load or _load_average()} | "
        f"{started.strftime('%Y-%m-%d %H:%M UTC')}"
    )


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run."""
    parts = ["dfkd-guard", "bench-scorers", "--batch", str(args.batch)]
    if args.repeats is not None:
        parts += ["--repeats", str(args.repeats)]
    parts += ["--stat", args.stat, "--warmup", str(args.warmup)]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    parts += ["--teachers", args.teachers, "--seed", str(args.seed)]
    if args.out is not None:
        parts += ["--out", str(args.out)]
    return " ".join(parts)


def _num(value: float) -> str:
    """Three significant digits, never in exponent notation."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def format_table(rows: Sequence[Row], batch: int) -> str:
    """The Markdown result table."""
    header = (
        "| teacher | scorer | ms / batch | us / sample | x forward | x k fwd+bwd | target |",
        "|---|---|---:|---:|---:|---:|---|",
    )
    lines = list(header)
    for row in rows:
        label = row.label
        if label == "forward":
            label = "*teacher forward (reference)*"
        elif label == "fwd+bwd":
            label = "*teacher fwd+bwd, train mode (reference)*"
        per_fwd_bwd = row.per_fwd_bwd
        lines.append(
            f"| {row.teacher} | {label} | {_num(row.seconds * 1e3)} | {_num(row.seconds * 1e6 / batch)} | "
            f"{_num(row.per_forward)} | {'-' if per_fwd_bwd is None else _num(per_fwd_bwd)} | "
            f"{'-' if row.label in ('forward', 'fwd+bwd') else row.verdict()} |"
        )
    return "\n".join(lines) + "\n"


def _report(
    rows: Sequence[Row], args: argparse.Namespace, started: datetime.datetime, load: str, repeats: dict[str, int]
) -> str:
    rounds = ", ".join(f"{n} for {teacher}" for teacher, n in repeats.items())
    busy = ""
    if any(float(x) > (_usable_cores() or os.cpu_count() or 1) for x in re.findall(r"\d+\.\d+", load)):
        busy = "- **The machine was busy (load average above the core count): timings are noisy.**\n"
    return (
        "# Scorer cost\n\n"
        f"- Command: `{command_line(args)}`\n"
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- Machine: {machine_line(started, load)}\n"
        f"- Batch {args.batch} of random 3x32x32 images; {args.stat} of {rounds} rounds after {args.warmup} warm-up.\n"
        "  `x forward`: time of `Guard.score(images, logits)` over one no-grad eval forward of the teacher.\n"
        "  `x k fwd+bwd`: atesc with k PGD steps over k train-mode forward + `loss.backward()` passes\n"
        "  with parameter grads.\n"
        + busy
        + "\n"
        + format_table(rows, args.batch)
    )
