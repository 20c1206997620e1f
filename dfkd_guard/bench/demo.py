"""``dfkd-guard demo``: the OOD trap and the guard, on real digits, in minutes.

Close-set setting: ID = MNIST, OOD = MNIST-M (both from the vendored subset).
It trains (or loads from the cache) an ordinary (SL) and a non-transferable
(NTL) teacher, runs vanilla generator DFKD (DFQ terms) three times: SL
teacher, NTL teacher, NTL teacher + guard (the default guard config), and
prints one row per run:

* IAcc: student accuracy on real MNIST test digits;
* OAcc: student accuracy on real MNIST-M test digits;
* OAgr: share of MNIST-M test digits where the student agrees with the NTL
  teacher's (misleading) prediction;
* OOD share: share of the last synthetic batches on the OOD side of a linear
  probe on the run's teacher features (trained on real MNIST vs MNIST-M);
* collapse: share of the last synthetic batches' teacher predictions in their
  most frequent class;
* flagged: share of student samples the guard forgot;
* s/it: wall time per DFKD iteration.

The report (table, configuration, machine) is written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.training import train
from dfkd_guard.adapters.vanilla import PRESETS, VanillaConfig, VanillaSynthesizer
from dfkd_guard.bench.data import Setting, build_setting
from dfkd_guard.bench.metrics import OodProbe, accuracy, agreement, collapse_rate, predict
from dfkd_guard.bench.models import ConvNet, Generator, make_student
from dfkd_guard.bench.reporting import command_line, load_span, machine_line, start_run
from dfkd_guard.bench.teachers import TeacherConfig, evaluate_teacher, load_or_train_teacher

__all__ = ["register", "run", "DemoRow", "run_vanilla"]

LATENT_DIM = 64
#: Options of the reproducing command line in the report, in order.
_OPTIONS = ("--iterations", "--teacher-steps", "--seed")


@dataclass(frozen=True)
class DemoRow:
    """One DFKD run's results (rates in [0, 1])."""

    name: str
    iacc: float
    oacc: float
    oagr: float
    ood_share: float
    collapse: float
    flagged: float
    seconds_per_iteration: float


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="show the OOD trap of an NTL teacher and the guard on real digits")
    parser.add_argument("--iterations", type=int, default=300, help="DFKD iterations per run")
    parser.add_argument("--teacher-steps", type=int, default=1000, help="training steps of each teacher")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, teachers and DFKD")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dfkd-guard",
        help="where trained teachers are cached",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder of report.md")
    parser.set_defaults(func=run)


def run_vanilla(
    name: str,
    teacher: ConvNet,
    guard_config: GuardConfig,
    setting: Setting,
    probe: OodProbe,
    ntl_ood_predictions: torch.Tensor,
    iterations: int,
    seed: int,
) -> DemoRow:
    """Vanilla DFKD (DFQ terms, BN weight 10, generator lr 1e-2: DESIGN 7) from ``teacher``; evaluated at the end."""
    torch.manual_seed(seed)
    student = make_student()
    guard = Guard(guard_config, teacher)
    config = VanillaConfig(**{**PRESETS["dfq"], "bn": 10.0}, batch_size=64, generator_lr=1e-2)
    synthesizer = VanillaSynthesizer(teacher, student, Generator(LATENT_DIM, base_channels=32), LATENT_DIM, guard, config)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    print(f"[{name}] {iterations} iterations: {guard!r}", file=sys.stderr, flush=True)
    result = train(synthesizer, optimizer, iterations, kd_steps=2, log_every=max(iterations // 10, 1))
    synthetic = torch.cat([synthesizer.sample().images for _ in range(8)])
    synthesizer.close()
    tail = result.history[-max(len(result.history) // 10, 1) :]
    return DemoRow(
        name=name,
        iacc=accuracy(student, setting.id_test.images, setting.id_test.labels),
        oacc=accuracy(student, setting.ood_test.images, setting.ood_test.labels),
        oagr=agreement(student, ntl_ood_predictions, setting.ood_test.images),
        ood_share=probe.ood_share(synthetic),
        collapse=collapse_rate(predict(teacher, synthetic), 10),
        flagged=sum(h["guard/forgotten"] for h in tail) / len(tail),
        seconds_per_iteration=result.seconds_per_iteration,
    )


def markdown_table(rows: list[DemoRow]) -> str:
    lines = [
        "| run | IAcc | OAcc | OAgr | synthetic OOD share | collapse | flagged by guard | s/it |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.iacc:.3f} | {r.oacc:.3f} | {r.oagr:.3f} | {r.ood_share:.3f} | {r.collapse:.3f} "
            f"| {r.flagged:.3f} | {r.seconds_per_iteration:.2f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    started, load = start_run(args.threads or None)
    began = time.perf_counter()
    setting = build_setting("mnist_m", seed=args.seed)
    teachers = {}
    for kind in ("sl", "ntl"):
        config = TeacherConfig(kind=kind, setting="mnist_m", steps=args.teacher_steps, seed=args.seed, data_seed=args.seed)
        teachers[kind] = load_or_train_teacher(config, args.cache_dir / "teachers", data=setting, verbose=True)
        scores = evaluate_teacher(teachers[kind], setting)
        print(f"{kind} teacher: MNIST {scores['id_acc']:.3f}, MNIST-M {scores['ood_acc']:.3f}", file=sys.stderr)
    probe_data = (setting.id_train.images[:2000], setting.ood_train.images[:2000])
    probes = {kind: OodProbe(t.features, *probe_data) for kind, t in teachers.items()}
    ntl_predictions = predict(teachers["ntl"], setting.ood_test.images)
    runs = [
        ("SL teacher", "sl", GuardConfig(enabled=False)),
        ("NTL teacher", "ntl", GuardConfig(enabled=False)),
        ("NTL teacher + guard", "ntl", GuardConfig()),
    ]
    rows = [
        run_vanilla(name, teachers[kind], guard, setting, probes[kind], ntl_predictions, args.iterations, args.seed)
        for name, kind, guard in runs
    ]
    table = markdown_table(rows)
    elapsed = time.perf_counter() - began
    load = load_span(load)
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / "report.md"
    report.write_text(
        "# dfkd-guard demo\n\n"
        f"Command: `{command_line('dfkd-guard demo', args, _OPTIONS)}`  \n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC; {elapsed / 60:.1f} min.  \n"
        f"Machine: {machine_line(started, load)}\n\n"
        "Vanilla generator DFKD (DFQ terms, BN weight 10), ID = MNIST, OOD = MNIST-M, real test sets.\n\n"
        f"{table}\n\nGuard config of the guarded run:\n\n```json\n{json.dumps(GuardConfig().model_dump(), indent=2)}\n```\n"
    )
    print(table)
    print(f"\nreport: {report} ({elapsed / 60:.1f} min)")
    return 0
