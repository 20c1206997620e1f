"""The operators one synthesis round of the bench's DeepInversion or CMI spends its time in (torch.profiler).

One untimed round, then one profiled round of ``--steps`` steps at the
bench's recipe (batch 64, 3x16x16, the bench's teacher, student and
generator widths, one thread); prints the seconds per step and the
operators by self CPU time.

    python scripts/benchmarks/synthesis_profile.py deepinversion --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.cmi import CMISynthesizer
from dfkd_guard.adapters.deepinversion import DeepInversionSynthesizer
from dfkd_guard.adapters.generator import Generator
from dfkd_guard.bench.config import BenchConfig
from dfkd_guard.bench.models import ConvNet

SHAPE = (3, 16, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["deepinversion", "cmi"])
    parser.add_argument("--steps", type=int, default=20, help="synthesis steps of the profiled round")
    parser.add_argument("--rows", type=int, default=15, help="operators listed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bench = BenchConfig()
    teacher, student = ConvNet().eval(), ConvNet((8, 16, 32))
    guard = Guard(GuardConfig(), teacher, load_entrypoints=False)
    if args.method == "deepinversion":
        config = bench.deepinversion.model_copy(update={"iterations": args.steps})
        synthesizer = DeepInversionSynthesizer(teacher, student, guard, config, SHAPE)
    else:
        config = bench.cmi.model_copy(update={"iterations": args.steps})
        generator = Generator(bench.latent_dim, bench.generator_width, 3, 16)
        synthesizer = CMISynthesizer(teacher, student, generator, bench.latent_dim, guard, config, SHAPE)
    synthesizer.synthesize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        synthesizer.synthesize()
    print(f"{args.method}: {(time.perf_counter() - start) / args.steps:.4f} s per step (profiled)")
    print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
