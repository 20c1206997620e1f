"""Cost of the guard in a hand-written loop: examples/existing_loop.py against its guarded copy.

Times blocks of DFKD iterations of three loops side by side (interleaved, so
machine noise hits them alike) and prints the median seconds per iteration
and each guarded loop's ratio to the plain one:

* plain: ``examples/existing_loop.py``;
* guard off: ``examples/wrap_existing_loop.py`` with ``GuardConfig(enabled=False)``;
* default, after the warm-up: the guarded copy with the default guard, timed
  once its BN prior has reached a verdict (run first, untimed).

    python scripts/benchmarks/own_loop_overhead.py --blocks 15 --block 20
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import statistics
import time
from pathlib import Path

import torch

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.bench.data import build_setting
from dfkd_guard.bench.models import Generator, make_student
from dfkd_guard.bench.teachers import TeacherConfig, train_teacher

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15, help="timed blocks per loop (default 15)")
    parser.add_argument("--block", type=int, default=20, help="iterations per block (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = train_teacher(
        TeacherConfig(kind="sl", steps=200, lr=1e-2, widths=(8, 16, 32)), build_setting("mnist_m")
    )
    teacher.eval().requires_grad_(False)
    plain, wrapped = load("existing_loop"), load("wrap_existing_loop")

    def loop(module, config: GuardConfig | None):
        student, generator = make_student(widths=(4, 8, 16)), Generator(latent_dim=100, base_channels=32)
        synthesizer = module.Synthesizer(teacher, student, generator, 100, batch_size=64)
        if config is not None:
            synthesizer.guard.close()
            synthesizer.guard = Guard(config, teacher)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

        def step(steps: int) -> None:
            with contextlib.redirect_stdout(io.StringIO()):  # the example's progress lines
                module.train(synthesizer, teacher, student, optimizer, steps, log_every=10**9)

        return step, synthesizer

    runs = {
        "plain": loop(plain, None),
        "guard off": loop(wrapped, GuardConfig(enabled=False)),
        "default, after the warm-up": loop(wrapped, GuardConfig()),
    }
    step, synthesizer = runs["default, after the warm-up"]
    while synthesizer.guard.bn_prior.verdict == "warming up":  # 600 student batches: 300 iterations
        step(10)
    print(f"default guard verdict: {synthesizer.guard.bn_prior.verdict}")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.blocks):
        for name, (step, _) in runs.items():
            began = time.perf_counter()
            step(args.block)
            times[name].append((time.perf_counter() - began) / args.block)
    base = statistics.median(times["plain"])
    print(f"{'loop':<28} {'median s/it':>12} {'ratio':>7}")
    for name, values in times.items():
        print(f"{name:<28} {statistics.median(values):>12.4f} {statistics.median(values) / base:>7.3f}")


if __name__ == "__main__":
    main()
