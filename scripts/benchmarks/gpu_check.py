"""Seconds per DFKD iteration of every adapter, guard off and on, at a ResNet-18 / 32x32 size: a GPU check.

    bash scripts/gpu_check.sh                      # CUDA, 300 iterations per row, float32
    bash scripts/gpu_check.sh --precision bfloat16 # synthesis and student steps under autocast

Teacher and student are torchvision ResNet-18s (random weights: the check
measures time, not accuracy); the generator is the adapters' DFQ generator.
Each row trains one adapter for ``--iterations`` iterations and prints the
median seconds per iteration over the iterations after ``--warmup`` (timed
with ``torch.cuda.synchronize`` on CUDA), then the guarded / unguarded ratio.
The guard is the default one with its warm-up shortened to ``--guard-warmup``
scored batches, so the rows after it show the cost of a judged guard.
``--syncs N`` then runs N more iterations per row with
``torch.cuda.set_sync_debug_mode("warn")`` and prints the host
synchronisations per iteration and the lines of code that made them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections import Counter

import torch
import torchvision

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.base import Synthesizer, student_step
from dfkd_guard.adapters.cmi import CMIConfig, CMISynthesizer
from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer
from dfkd_guard.adapters.generator import Generator
from dfkd_guard.adapters.vanilla import PRESETS, VanillaConfig, VanillaSynthesizer

METHODS = ("dfq", "deepinversion", "cmi")
LATENT = 256


def build(method: str, guard: Guard, teacher: torch.nn.Module, args: argparse.Namespace) -> Synthesizer:
    student = torchvision.models.resnet18(num_classes=10).to(args.device)
    shape = (3, 32, 32)
    if method == "deepinversion":
        config = DeepInversionConfig(
            batch_size=args.batch_size,
            student_batch_size=args.batch_size,
            iterations=args.inner,
            pool_size=4096,
        )
        return DeepInversionSynthesizer(teacher, student, guard, config, shape, args.device)
    generator = Generator(LATENT, base_channels=64).to(args.device)
    if method == "cmi":
        config = CMIConfig(
            batch_size=args.batch_size, student_batch_size=args.batch_size, iterations=args.inner
        )
        return CMISynthesizer(teacher, student, generator, LATENT, guard, config, shape, args.device)
    vanilla = VanillaConfig(**{**PRESETS["dfq"], "batch_size": args.batch_size})
    return VanillaSynthesizer(teacher, student, generator, LATENT, guard, vanilla, shape, args.device)


def seconds_per_iteration(synthesizer: Synthesizer, args: argparse.Namespace) -> float:
    optimizer = torch.optim.SGD(synthesizer.student.parameters(), lr=0.1, momentum=0.9)
    cuda = synthesizer.device.type == "cuda"
    times = []
    autocast = torch.autocast(
        synthesizer.device.type, dtype=torch.bfloat16, enabled=args.precision == "bfloat16"
    )
    with autocast:
        for i in range(args.iterations):
            began = time.perf_counter()
            synthesizer.synthesize()
            student_step(synthesizer.student, optimizer, synthesizer.sample())
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - began)
    return statistics.median(times)


def host_syncs(synthesizer: Synthesizer, iterations: int, precision: str) -> Counter[str]:
    """Host synchronisations over ``iterations`` more iterations, by ``file:line`` of the Python code that made them."""
    optimizer = torch.optim.SGD(synthesizer.student.parameters(), lr=0.1, momentum=0.9)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    with warnings.catch_warnings(record=True) as caught, autocast:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(iterations):
                synthesizer.synthesize()
                student_step(synthesizer.student, optimizer, synthesizer.sample())
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return Counter(
        f"{w.filename.rsplit('/', 2)[-2]}/{w.filename.rsplit('/', 1)[-1]}:{w.lineno}"
        for w in caught
        if "synchroniz" in str(w.message)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu (default cuda)")
    parser.add_argument("--iterations", type=int, default=300, help="iterations per row")
    parser.add_argument("--warmup", type=int, default=20, help="first iterations left out of the median")
    parser.add_argument("--batch-size", type=int, default=128, help="synthetic and student batch")
    parser.add_argument("--inner", type=int, default=20, help="DeepInversion / CMI synthesis steps per round")
    parser.add_argument("--guard-warmup", type=int, default=50, help="scored batches before the guard judges")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="adapters to time"
    )
    parser.add_argument(
        "--syncs", type=int, default=0, help="iterations per row counted for host synchronisations (CUDA)"
    )
    args = parser.parse_args(argv)
    if args.warmup >= args.iterations:
        parser.error("--warmup must be smaller than --iterations")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; pass --device cpu to try it on the CPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10).to(args.device).eval()
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu"
    print(f"# {name}, torch {torch.__version__}, {args.precision}, batch {args.batch_size}, ResNet-18 32x32")
    print("| method | guard off s/it | default guard s/it | ratio |")
    print("|---|---|---|---|")
    syncs: dict[str, Counter[str]] = {}
    for method in args.methods:
        row = []
        for config in (
            GuardConfig(enabled=False),
            GuardConfig(bn_prior={"skip_batches": 0, "warmup_batches": args.guard_warmup}),
        ):
            torch.manual_seed(0)
            with Guard(config, teacher, load_entrypoints=False) as guard:
                synthesizer = build(method, guard, teacher, args)
                row.append(seconds_per_iteration(synthesizer, args))
                if args.syncs and args.device.type == "cuda":
                    label = f"{method}, guard {'on' if config.enabled else 'off'} ({guard.bn_prior and guard.bn_prior.verdict})"
                    syncs[label] = host_syncs(synthesizer, args.syncs, args.precision)
                synthesizer.close()
        print(f"| {method} | {row[0]:.4f} | {row[1]:.4f} | {row[1] / row[0]:.2f}x |", flush=True)
    for label, sites in syncs.items():
        total = sum(sites.values()) / args.syncs
        where = ", ".join(f"{site} {count / args.syncs:g}" for site, count in sites.most_common())
        print(f"# host syncs per iteration, {label}: {total:g} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
