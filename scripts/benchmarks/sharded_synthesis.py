"""Seconds per synthesis round, one process against several sharing each round (gloo on the CPU).

Runs rounds of the bench's DeepInversion and CMI (batch 64, 3x16x16, the
bench's teacher and student widths, default guard) on one process with
``--threads`` threads, then on ``--processes`` processes with
``threads // processes`` threads each, and prints the median seconds per
round and the speed-up. The teacher is untrained: a round costs the same.

    python scripts/benchmarks/sharded_synthesis.py --rounds 5 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dfkd_guard import Guard, GuardConfig, Processes
from dfkd_guard.adapters.cmi import CMISynthesizer
from dfkd_guard.adapters.deepinversion import DeepInversionSynthesizer
from dfkd_guard.adapters.generator import Generator
from dfkd_guard.bench.config import BenchConfig
from dfkd_guard.bench.models import ConvNet

SHAPE = (3, 16, 16)


def round_seconds(method: str, rounds: int, steps: int, processes: Processes) -> list[float]:
    """Seconds of each of ``rounds`` rounds of ``steps`` synthesis steps after one untimed round."""
    torch.manual_seed(0)
    teacher, student = ConvNet().eval(), ConvNet((8, 16, 32))
    guard = Guard(GuardConfig(), teacher, load_entrypoints=False)
    bench = BenchConfig()
    if method == "deepinversion":
        config = bench.deepinversion.model_copy(update={"iterations": steps})
        synthesizer = DeepInversionSynthesizer(teacher, student, guard, config, SHAPE, processes=processes)
    else:
        config = bench.cmi.model_copy(update={"iterations": steps})
        generator = Generator(64, BenchConfig().generator_width, 3, 16)
        synthesizer = CMISynthesizer(
            teacher, student, generator, 64, guard, config, SHAPE, processes=processes
        )
    seconds = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        synthesizer.synthesize()
        seconds.append(time.perf_counter() - start)
    synthesizer.close()
    guard.close()
    return seconds[1:]


def _worker(rank: int, world: int, folder: str, args: argparse.Namespace, method: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=world)
    torch.set_num_threads(max(1, args.threads // world))
    seconds = round_seconds(method, args.rounds, args.steps, Processes.current())
    if rank == 0:
        out[method] = seconds
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="synthesis steps per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.rounds} rounds of {args.steps} steps, batch 64, {SHAPE}; median seconds per round")
    for method in ("deepinversion", "cmi"):
        torch.set_num_threads(args.threads)
        alone = statistics.median(round_seconds(method, args.rounds, args.steps, Processes()))
        with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
            out = manager.dict()
            mp.spawn(
                _worker, args=(args.processes, folder, args, method, out), nprocs=args.processes, join=True
            )
            shared = statistics.median(out[method])
        print(
            f"{method:14s} 1 process x {args.threads} threads {alone:.3f} s | "
            f"{args.processes} processes x {max(1, args.threads // args.processes)} {shared:.3f} s | "
            f"speed-up {alone / shared:.2f}x"
        )


if __name__ == "__main__":
    main()
