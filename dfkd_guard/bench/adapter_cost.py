"""``dfkd-guard bench-adapters``: what the guard adds to a DFKD iteration of each adapter.

For every adapter (``vanilla``, ``deepinversion``, ``cmi``) the command trains
three copies side by side, built from the same initial weights (each on its
own copy of the teacher, since a guard hooks its teacher's BatchNorm layers),
and times
:func:`dfkd_guard.adapters.training.train` (its ``seconds_per_iteration``):

* ``off``: ``GuardConfig(enabled=False)``, the unguarded method;
* ``energy``: the energy scorer (reads the teacher's logits, no extra pass);
* ``atesc k=3``: the ATEsc scorer with 3 PGD steps.

Targets: ``energy`` at most 1.02x the unguarded time everywhere. ``atesc`` at
most 1.10x on the pooled adapters (``deepinversion``, ``cmi``), which score
each image once, when it is synthesised, and replay the stored score. On
``vanilla`` every student batch is fresh and must be scored, so the reference
is the PGD itself: the extra time per iteration over ``off`` may not exceed
the measured PGD cost per iteration, i.e. (time of ``Guard.score`` with atesc
minus with energy, on a batch of the adapter's size) times the batches scored
per iteration.

Each round runs ``--iterations`` iterations (default: 2 for vanilla, 1 for the
pooled adapters) of every guard setting in turn (the order rotates between
rounds), then times the two scorers once, so a burst of load from another
process spreads over all of them; the table gives medians (or, with
``--stat min``, minima) over ``--repeats`` rounds after ``--warmup`` untimed
rounds of one iteration each. A default run takes about 1-2 minutes on 2 idle
cores.

Models: the benchmark teacher and student of :mod:`dfkd_guard.bench.models`
(32-64-128 and 16-32-64 channels), randomly initialised; the teacher's
BatchNorm running statistics come from a few train-mode forwards on uniform
random images, so the BN prior is a real, non-trivial target (timing does not
depend on what the statistics are). Adapter sizes are scaled for CPU (see
:data:`SETUPS`).
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dfkd_guard.bench import reporting

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dfkd_guard.adapters.base import Synthesizer

__all__ = ["ADAPTERS", "GUARDS", "SETUPS", "Setup", "register", "run"]

ADAPTERS: tuple[str, ...] = ("vanilla", "deepinversion", "cmi")
POOLED = frozenset({"deepinversion", "cmi"})

#: Guard settings measured, as ``(row label, GuardConfig keyword arguments)``.
GUARDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("off", {"enabled": False}),
    ("energy", {"scorer": "energy"}),
    ("atesc k=3", {"scorer": {"name": "atesc", "params": {"steps": 3}}}),
)
ENERGY_TARGET = 1.02
POOLED_ATESC_TARGET = 1.10
#: On vanilla: the most the atesc overhead may be, in measured PGD costs.
VANILLA_ATESC_TARGET = 1.0


@dataclass(frozen=True)
class Setup:
    """A CPU-scaled configuration of one adapter.

    :param batch_size: images synthesised per round (vanilla: per generator
        step and per student batch) and images per student step.
    :param kd_steps: student steps per DFKD iteration.
    :param synthesis_steps: generator or pixel steps per ``synthesize()``.
    :param generator_width: ``base_channels`` of the generator (None: no generator).
    :param scored_batches: synthetic batches scored per iteration.
    :param iterations: timed iterations per setting and round (default of ``--iterations``).
    """

    batch_size: int
    kd_steps: int
    synthesis_steps: int
    generator_width: int | None
    scored_batches: int
    iterations: int

    def describe(self, batch: int, iterations: int) -> str:
        gen = f", generator width {self.generator_width}" if self.generator_width else ""
        return (
            f"batch {batch}, {_plural(self.synthesis_steps, 'synthesis step')} and "
            f"{_plural(self.kd_steps, 'student step')} per iteration{gen}, "
            f"{_plural(self.scored_batches, 'batch', 'batches')} scored per iteration; "
            f"{_plural(iterations, 'iteration')} per round"
        )


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


#: Vanilla: DFQ's 1 generator step and 2 student steps per iteration (the
#: bench's vanilla budget up to session 3, ``docs/benchmark.md``). Pooled
#: methods: one synthesis round per iteration (DeepInversion's 2000 pixel
#: steps and CMI's 200 generator steps cut to 20, batch 256 cut to 32), then
#: 20 student steps replaying the pool, as their ``datafree`` training loops
#: do (CMI: 400 student steps per 200-step round).
SETUPS: dict[str, Setup] = {
    "vanilla": Setup(
        batch_size=64, kd_steps=2, synthesis_steps=1, generator_width=32, scored_batches=2, iterations=2
    ),
    "deepinversion": Setup(
        batch_size=32, kd_steps=20, synthesis_steps=20, generator_width=None, scored_batches=1, iterations=1
    ),
    "cmi": Setup(
        batch_size=32, kd_steps=20, synthesis_steps=20, generator_width=16, scored_batches=1, iterations=1
    ),
}
LATENT_DIM = 100
POOL_SIZE = 1024

_COMMAND = "bench-adapters"
#: Options of the reproducing command line, in order (those left to a None default are omitted).
_OPTIONS = (
    "--iterations",
    "--repeats",
    "--stat",
    "--warmup",
    "--batch",
    "--threads",
    "--adapters",
    "--seed",
    "--out",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        _COMMAND,
        help="time a DFKD iteration of each adapter with the guard off, energy and atesc",
        description="Seconds per DFKD iteration of each adapter with the guard off, with the energy scorer and "
        "with atesc (3 PGD steps), in one run; prints a Markdown table with the guarded/unguarded ratios.",
    )
    parser.add_argument(
        "--iterations",
        type=reporting.positive_int(1),
        default=None,
        help="timed DFKD iterations per setting and round (default: "
        + ", ".join(f"{s.iterations} for {n}" for n, s in SETUPS.items())
        + ")",
    )
    parser.add_argument(
        "--repeats", type=reporting.positive_int(1), default=3, help="timed rounds (default: 3)"
    )
    reporting.add_timing_options(parser)
    parser.add_argument(
        "--batch",
        type=reporting.positive_int(1),
        default=None,
        help="synthetic and student batch size of every adapter (default: 64 for vanilla, 32 for the pooled ones)",
    )
    reporting.add_run_options(parser, "adapters", ADAPTERS, seeded="the weights and random draws")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Row:
    """One line of the table: typical seconds per iteration of one adapter under one guard setting."""

    adapter: str
    guard: str
    seconds: float
    off_seconds: float
    pgd_seconds: float | None = None

    @property
    def ratio(self) -> float:
        return self.seconds / self.off_seconds

    @property
    def overhead(self) -> float:
        return self.seconds - self.off_seconds

    @property
    def per_pgd(self) -> float | None:
        if self.pgd_seconds is None or self.pgd_seconds <= 0:
            return None
        return self.overhead / self.pgd_seconds

    def verdict(self) -> str:
        if self.guard == "off":
            return "-"
        if self.guard == "energy":
            return _verdict(self.ratio <= ENERGY_TARGET, f"<= {ENERGY_TARGET:g}x off")
        if self.adapter in POOLED:
            return _verdict(self.ratio <= POOLED_ATESC_TARGET, f"<= {POOLED_ATESC_TARGET:g}x off")
        per_pgd = self.per_pgd
        return _verdict(per_pgd is not None and per_pgd <= VANILLA_ATESC_TARGET, "overhead <= PGD")


def _verdict(ok: bool, target: str) -> str:
    return f"{'ok' if ok else 'MISSED'} ({target})"


def run(args: argparse.Namespace) -> int:
    started, load = reporting.start_run(args.threads)
    rows: list[Row] = []
    for name in reporting.parse_names(args.adapters, ADAPTERS):
        rows += _bench_adapter(name, args)
    load = reporting.load_span(load)
    reporting.publish(_report(rows, args, started, load), args.out, _COMMAND)
    return 0


# -- measuring ---------------------------------------------------------------


def _teacher(seed: int) -> nn.Module:
    import torch

    from dfkd_guard.bench.models import make_teacher

    torch.manual_seed(seed)
    teacher = make_teacher(num_classes=10).train()
    with torch.no_grad():  # real-ish BatchNorm running statistics
        for _ in range(10):
            teacher(torch.rand(64, 3, 32, 32))
    return teacher.eval()


def _synthesizer(name: str, teacher: nn.Module, config: dict[str, Any], batch: int, seed: int) -> Synthesizer:
    import copy

    import torch

    from dfkd_guard.bench.models import Generator, make_student
    from dfkd_guard.config import GuardConfig
    from dfkd_guard.guard import Guard

    setup = SETUPS[name]
    teacher = copy.deepcopy(teacher)  # the guard's BN hooks go on this setting's teacher only
    guard = Guard(GuardConfig(**config), teacher, load_entrypoints=False)
    torch.manual_seed(seed)  # every guard setting starts from the same student and generator
    student = make_student(num_classes=10)
    if name == "vanilla":
        from dfkd_guard.adapters.vanilla import VanillaConfig, VanillaSynthesizer

        generator = Generator(LATENT_DIM, setup.generator_width or 32)
        return VanillaSynthesizer(
            teacher, student, generator, LATENT_DIM, guard, VanillaConfig(batch_size=batch)
        )
    if name == "deepinversion":
        from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer

        di = DeepInversionConfig(
            batch_size=batch, student_batch_size=batch, iterations=setup.synthesis_steps, pool_size=POOL_SIZE
        )
        return DeepInversionSynthesizer(teacher, student, guard, di)
    from dfkd_guard.adapters.cmi import CMIConfig, CMISynthesizer

    generator = Generator(LATENT_DIM, setup.generator_width or 16)
    cmi = CMIConfig(
        batch_size=batch, student_batch_size=batch, iterations=setup.synthesis_steps, pool_size=POOL_SIZE
    )
    return CMISynthesizer(teacher, student, generator, LATENT_DIM, guard, cmi)


def _bench_adapter(name: str, args: argparse.Namespace) -> list[Row]:
    import torch

    from dfkd_guard.adapters.training import train
    from dfkd_guard.config import GuardConfig
    from dfkd_guard.guard import Guard

    setup = SETUPS[name]
    batch = args.batch or setup.batch_size
    iterations = args.iterations or setup.iterations
    teacher = _teacher(args.seed)
    runs: dict[str, tuple[Synthesizer, torch.optim.Optimizer]] = {}
    for label, config in GUARDS:
        synthesizer = _synthesizer(name, teacher, config, batch, args.seed)
        optimizer = torch.optim.SGD(synthesizer.student.parameters(), lr=0.05, momentum=0.9)
        runs[label] = (synthesizer, optimizer)

    images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        logits = teacher(images)
    scorers: dict[str, Callable[[], object]] = {}
    for label, config in GUARDS[1:]:
        guard = Guard(GuardConfig(**config), teacher, load_entrypoints=False)
        guard.close()  # scoring records no BN inputs
        scorers[label] = reporting.score_task(guard, images, logits)

    def iterate(label: str, count: int) -> float:
        synthesizer, optimizer = runs[label]
        return train(
            synthesizer, optimizer, count, kd_steps=setup.kd_steps, progress=False
        ).seconds_per_iteration

    reporting.progress(
        _COMMAND,
        f"{name}: {setup.describe(batch, iterations)}; {torch.get_num_threads()} threads, "
        f"{args.warmup} warm-up + {args.repeats} rounds",
    )
    labels = [label for label, _ in GUARDS]
    last: dict[str, float] = {}
    for round_ in range(args.warmup):
        for label in labels:
            iterate(label, 1)
        for label, task in scorers.items():
            last[label] = reporting.timed(task, 1)
        reporting.progress(_COMMAND, f"{name}: warm-up {round_ + 1}/{args.warmup} done")
    inner = {label: reporting.calls_per_timing(task, last.get(label)) for label, task in scorers.items()}
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    score_seconds: dict[str, list[float]] = {label: [] for label in scorers}
    for round_ in range(args.repeats):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            seconds[label].append(iterate(label, iterations))
        for label, task in scorers.items():
            score_seconds[label].append(reporting.timed(task, inner[label]))
        latest = ", ".join(f"{label} {values[-1]:.3g} s/it" for label, values in seconds.items())
        reporting.progress(_COMMAND, f"{name}: round {round_ + 1}/{args.repeats}: {latest}")
    for synthesizer, _ in runs.values():
        synthesizer.close()
        synthesizer.guard.close()

    stat = reporting.statistic(args.stat)
    median = {label: stat(values) for label, values in seconds.items()}
    score = {label: stat(values) for label, values in score_seconds.items()}
    pgd = setup.scored_batches * (score["atesc k=3"] - score["energy"])
    return [
        Row(name, label, median[label], median["off"], pgd if label.startswith("atesc") else None)
        for label in labels
    ]


# -- reporting ---------------------------------------------------------------


def format_table(rows: Sequence[Row]) -> str:
    """The Markdown result table."""
    lines = [
        "| adapter | guard | s / it | x off | overhead s / it | PGD s / it | overhead / PGD | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        off = row.guard == "off"
        num = reporting.format_number
        overhead = "-" if off else num(row.overhead)
        pgd = "-" if row.pgd_seconds is None else num(row.pgd_seconds)
        per_pgd = "-" if row.per_pgd is None else num(row.per_pgd)
        lines.append(
            f"| {row.adapter} | {row.guard} | {num(row.seconds)} | {num(row.ratio)} | "
            f"{overhead} | {pgd} | {per_pgd} | {row.verdict()} |"
        )
    return "\n".join(lines) + "\n"


def _report(rows: Sequence[Row], args: argparse.Namespace, started: datetime.datetime, load: str) -> str:
    batch = args.batch
    setups = "\n".join(
        f"  - `{name}`: {setup.describe(batch or setup.batch_size, args.iterations or setup.iterations)}"
        for name, setup in ((name, SETUPS[name]) for name in reporting.parse_names(args.adapters, ADAPTERS))
    )
    return (
        "# Adapter cost\n\n"
        + reporting.report_header(f"dfkd-guard {_COMMAND}", args, _OPTIONS, started, load)
        + "- Seconds per DFKD iteration (`train(...).seconds_per_iteration`): "
        f"{args.stat} of {_plural(args.repeats, 'round')} "
        f"after {_plural(args.warmup, 'warm-up round')}; the guard settings take turns in each round.\n"
        "  Teacher 32-64-128, student 16-32-64, random weights (BN statistics from random images).\n"
        f"{setups}\n"
        "  `PGD s / it`: (`Guard.score` with atesc minus with energy, on a batch of the adapter's size) x batches\n"
        "  scored per iteration. `overhead`: s / it minus the unguarded s / it.\n"
        + reporting.busy_warning(load)
        + "\n"
        + format_table(rows)
    )
