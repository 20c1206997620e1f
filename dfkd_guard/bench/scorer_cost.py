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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dfkd_guard.bench import reporting

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

_COMMAND = "bench-scorers"
#: Options of the reproducing command line, in order (those left to a None default are omitted).
_OPTIONS = ("--batch", "--repeats", "--stat", "--warmup", "--threads", "--teachers", "--seed", "--out")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        _COMMAND,
        help="time each built-in scorer relative to teacher forward / fwd+bwd passes",
        description="Time Guard.score for each built-in scorer against one teacher forward "
        "(and atesc against k training-style forward+backward passes); prints a Markdown table.",
    )
    parser.add_argument(
        "--batch", type=reporting.positive_int(1), default=256, help="batch size of every pass (default: 256)"
    )
    parser.add_argument(
        "--repeats",
        type=reporting.positive_int(1),
        default=None,
        help="timed rounds per teacher (default: "
        + ", ".join(f"{n} for {t}" for t, n in DEFAULT_REPEATS.items())
        + ")",
    )
    reporting.add_timing_options(parser)
    reporting.add_run_options(parser, "teachers", TEACHERS, seeded="the weights and images")
    parser.set_defaults(func=run)


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
    started, load = reporting.start_run(args.threads)
    rows: list[Row] = []
    repeats: dict[str, int] = {}
    for name in reporting.parse_names(args.teachers, TEACHERS):
        repeats[name] = args.repeats or DEFAULT_REPEATS[name]
        rows += _bench_teacher(name, args, repeats[name])
    load = reporting.load_span(load)
    reporting.publish(_report(rows, args, started, load, repeats), args.out, _COMMAND)
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
    trainee = copy.deepcopy(
        teacher
    )  # the training-style reference updates BN statistics; keep them off the teacher
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
        guard.close()  # scoring records no BN inputs: no guard's hooks stay on the teacher the forwards time
        tasks[label] = reporting.score_task(guard, images, logits)

    threads = torch.get_num_threads()
    reporting.progress(
        _COMMAND, f"{name}: batch {args.batch}, {threads} threads, {args.warmup} warm-up + {repeats} rounds"
    )
    last: dict[str, float] = {}
    for round_ in range(args.warmup):
        for key, task in tasks.items():
            last[key] = reporting.timed(task, 1)
        reporting.progress(_COMMAND, f"{name}: warm-up {round_ + 1}/{args.warmup} done")
    inner = {key: reporting.calls_per_timing(task, last.get(key)) for key, task in tasks.items()}
    samples: dict[str, list[float]] = {key: [] for key in tasks}
    for round_ in range(repeats):
        for key, task in tasks.items():
            samples[key].append(reporting.timed(task, inner[key]))
        reporting.progress(_COMMAND, f"{name}: round {round_ + 1}/{repeats} done")

    stat = reporting.statistic(args.stat)
    typical = {key: stat(values) for key, values in samples.items()}
    rows = [
        Row(name, "forward", typical["forward"], typical["forward"]),
        Row(name, "fwd+bwd", typical["fwd+bwd"], typical["forward"], 1, typical["fwd+bwd"]),
    ]
    for label, _, steps in SCORERS:
        fwd_bwd_seconds = typical["fwd+bwd"] if steps is not None else None
        rows.append(Row(name, label, typical[label], typical["forward"], steps, fwd_bwd_seconds))
    return rows


# -- reporting ---------------------------------------------------------------


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
        num = reporting.format_number
        lines.append(
            f"| {row.teacher} | {label} | {num(row.seconds * 1e3)} | {num(row.seconds * 1e6 / batch)} | "
            f"{num(row.per_forward)} | {'-' if per_fwd_bwd is None else num(per_fwd_bwd)} | "
            f"{'-' if row.label in ('forward', 'fwd+bwd') else row.verdict()} |"
        )
    return "\n".join(lines) + "\n"


def _report(
    rows: Sequence[Row],
    args: argparse.Namespace,
    started: datetime.datetime,
    load: str,
    repeats: dict[str, int],
) -> str:
    rounds = ", ".join(f"{n} for {teacher}" for teacher, n in repeats.items())
    return (
        "# Scorer cost\n\n"
        + reporting.report_header(f"dfkd-guard {_COMMAND}", args, _OPTIONS, started, load)
        + f"- Batch {args.batch} of random 3x32x32 images; {args.stat} of {rounds} rounds after {args.warmup} warm-up.\n"
        "  `x forward`: time of `Guard.score(images, logits)` over one no-grad eval forward of the teacher.\n"
        "  `x k fwd+bwd`: atesc with k PGD steps over k train-mode forward + `loss.backward()` passes\n"
        "  with parameter grads.\n" + reporting.busy_warning(load) + "\n" + format_table(rows, args.batch)
    )
