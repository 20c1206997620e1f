"""The trigger-window search's statistic on every bench teacher, on the images the guard would search.

For each teacher, the bench's vanilla synthesis runs unguarded for the
iterations it takes the default search to collect its images (the guard's
search sees the student batches; nothing else of the guard acts), and the
search's best window is printed: side, class, class-specific drop, its ratio
to the best window apart from it, the mask, and whether it counts as a
trigger. Then the same search on real test digits, a fifth of them with the
backdoor setting's trigger (a generator that draws clean digits on black
backgrounds), with the backdoor and the SL teacher. The backdoor teachers:
the bench's (a 3x3 white patch at the bottom right, class 0) and a
checkerboard at the top left sending to class 3.

    python scripts/experiments/trigger_statistics.py --out OUT [--teachers CACHE] [--seed 0]

Not part of the library: docs/trigger_window.md quotes its output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.training import train
from dfkd_guard.bench.config import BenchConfig
from dfkd_guard.bench.models import build_network
from dfkd_guard.bench.runner import RunSpec, _Context, _synthesizer, dfkd_seed
from dfkd_guard.bench.settings import SettingSpec
from dfkd_guard.trigger_window import TriggerWindowConfig, TriggerWindowSearch

#: A second trigger family: a checkerboard at the top left, sending to class 3 (the bench's backdoor setting
#: otherwise).
BOARD = SettingSpec(
    setting="backdoor",
    trigger={"name": "checkerboard", "params": {"size": 8, "cell": 2, "position": "top_left"}},
    target_class=3,
)
TEACHERS = [
    ("backdoor", "ntl_backdoor", "ntl"),
    ("board", "ntl_backdoor", "ntl"),
    ("backdoor", "sl", "sl"),
    ("mnist_m", "ntl", "ntl"),
    ("rotated_mnist", "ntl", "ntl"),
    ("fashion", "ntl", "ntl"),
]


def searched(config: BenchConfig, ctx: _Context, setting: str, kind: str, row: str, seed: int) -> dict:
    """The default search's best window after an unguarded vanilla synthesis with ``setting``'s teacher."""
    teacher = ctx.teacher(setting, kind)
    search_config = TriggerWindowConfig()
    guard_config = GuardConfig(
        normalization=config.guard.normalization,
        kd_temperature=config.kd_temperature["vanilla"],
        bn_prior={"demix": False},
    )
    batches = search_config.skip_batches + -(-search_config.images // search_config.per_batch)
    iterations = -(-batches // config.budgets["vanilla"].kd_steps)
    with torch.random.fork_rng(devices=[]), Guard(guard_config, teacher, load_entrypoints=False) as guard:
        torch.manual_seed(dfkd_seed(seed))
        network = config.component("student_architecture")
        student = build_network(network, config.student_widths, 10, config.image_size, "student")
        synthesizer = _synthesizer(ctx, RunSpec(setting, "vanilla", row, seed), teacher, student, guard)
        optimizer = torch.optim.Adam(student.parameters(), lr=config.student_lr)
        train(synthesizer, optimizer, iterations, kd_steps=config.budgets["vanilla"].kd_steps, progress=False)
        synthesizer.close()
        assert guard.trigger_search is not None and guard.trigger_search.searched
        return _described(guard.trigger_search)


def _described(search: TriggerWindowSearch) -> dict:
    best = search.best
    assert best is not None
    return {
        "side": best.side,
        "window": [best.top, best.left],
        "class": best.label,
        "drop": round(best.drop, 3),
        "ratio": round(best.ratio, 1),
        "mask": list(best.mask),
        "mask_fraction": round(best.mask_fraction, 3),
        "trigger": search.found is not None,
    }


def on_real_digits(config: BenchConfig, ctx: _Context, kind: str) -> dict:
    """The search on 820 clean and 204 triggered real test digits, in the order the guard would see them."""
    _, triggered, clean, _ = ctx.test_data("backdoor")
    images = torch.cat([clean[:820], triggered[820:1024]])
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    search = TriggerWindowSearch(
        TriggerWindowConfig(skip_batches=0, per_batch=64), config.guard.normalization
    )
    teacher = ctx.teacher("backdoor", kind)
    for batch in images.split(64):
        search.collect(batch, teacher)
    return _described(search)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results (and the teacher cache)")
    parser.add_argument("--teachers", type=Path, help="teacher cache (default: OUT/teachers)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = BenchConfig(
        teacher_cache_dir=str(args.teachers or args.out / "teachers"),
        settings={**BenchConfig().settings, "board": BOARD},
        adapters={**BenchConfig().adapters, "board": ("vanilla",)},
    )
    ctx = _Context(config, args.out, print)
    results = {}
    for setting, kind, row in TEACHERS:
        results[f"synthetic/{setting}/{kind}"] = searched(config, ctx, setting, kind, row, args.seed)
        print(f"synthetic {setting}/{kind}: {results[f'synthetic/{setting}/{kind}']}", flush=True)
    for kind in ("ntl_backdoor", "sl"):
        results[f"real digits/{kind}"] = on_real_digits(config, ctx, kind)
        print(f"real digits, a fifth triggered, {kind}: {results[f'real digits/{kind}']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"trigger_statistics-seed{args.seed}.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
