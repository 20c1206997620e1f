"""Through which synthetic samples does the NTL-backdoor teacher's backdoor reach the student? (issue 15, step 0)

Runs the bench's unguarded vanilla row of the ``backdoor`` setting (the
bench's recipe and teachers) and keeps, evenly over the run, a sample of the
fresh synthetic images every student batch held, with the teacher's logits.
The trigger's region is read off the setting's own test data (the pixels a
trigger changes). It then prints, for the kept images:

* the share the teacher labels with the backdoor's target class;
* the share of those whose label leaves the target class when the trigger
  region is blacked out (trigger-dependent samples), and a control: the same
  for a region of the same size in the opposite corner;

and trains fresh students offline (KD at the run's temperature, the bench's
student optimiser and learning rate, batches of 128) on the kept images: all
of them, all but the target-labelled ones, all but the trigger-dependent
ones, all but as many random ones; and on all of them relabelled by the
teacher with a region blacked out: the trigger's (which a defence does not
know), or per image the ``--window``-pixel window whose blacking out moves
the teacher's answer most (KL), for every image or for the 20% it moves most.
Each student's IAcc and ASR - clean on the real test data tells which samples
carry the backdoor and whether relabelling unteaches it.

    python scripts/experiments/backdoor_paths.py --out /tmp/backdoor-paths
    python scripts/experiments/backdoor_paths.py --out /tmp/backdoor-paths-board --target-class 3 \
        --trigger '{"name": "checkerboard", "params": {"size": 8, "cell": 2, "position": "top_left"}}'

Not part of the library: the bench (``dfkd-guard bench``) is the reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dfkd_guard import Guard, GuardedBatch
from dfkd_guard.adapters.training import train
from dfkd_guard.bench.config import BenchConfig
from dfkd_guard.bench.metrics import predict
from dfkd_guard.bench.models import build_network
from dfkd_guard.bench.runner import (
    RunSpec,
    _Context,
    _synthesizer,
    dfkd_seed,
    prediction_metrics,
    row_guard,
)
from dfkd_guard.bench.settings import SettingSpec
from dfkd_guard.losses import kd_divergence

SETTING = "backdoor"


def trigger_region(setting) -> torch.Tensor:
    """(H, W) bool: pixels the trigger changes in at least half of the triggered test images."""
    changed = (setting.ood_test.images != setting.clean_ood_test).any(dim=1).float().mean(dim=0)
    return changed >= 0.5


def blacked_out(images: torch.Tensor, region: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
    """``images`` (teacher units) with ``region`` set to black pixels (``black``: (C, 1, 1) in teacher units)."""
    out = images.clone()
    out[:, :, region] = black.view(1, -1, 1).expand(out.shape[0], -1, int(region.sum()))
    return out


@torch.no_grad()
def logits_of(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def most_sensitive_window(
    teacher: torch.nn.Module,
    images: torch.Tensor,
    logits: torch.Tensor,
    black: torch.Tensor,
    size: int,
    stride: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the largest KL(T(x) || T(x with a size x size window blacked out)) over windows on a
    ``stride`` grid, and the teacher's logits on the image with that window blacked out."""
    height, width = images.shape[2:]
    best_kl = torch.zeros(len(images))
    best_logits = logits.clone()
    log_p = logits.log_softmax(1)
    for top in range(0, height - size + 1, stride):
        for left in range(0, width - size + 1, stride):
            window = torch.zeros(height, width, dtype=torch.bool)
            window[top : top + size, left : left + size] = True
            out = logits_of(teacher, blacked_out(images, window, black))
            kl = (log_p.exp() * (log_p - out.log_softmax(1))).sum(1)
            better = kl > best_kl
            best_kl = torch.where(better, kl, best_kl)
            best_logits[better] = out[better]
    return best_kl, best_logits


def population_window(
    teacher: torch.nn.Module, images: torch.Tensor, logits: torch.Tensor, black: torch.Tensor, size: int
) -> dict[str, float | int]:
    """The window (every position, stride 1) whose blacking out lowers one class's teacher probability most
    on average over ``images``: that class, the window, the mean drop, and its ratio to the median window's."""
    height, width = images.shape[2:]
    probabilities = logits.softmax(1)
    found = []
    for top in range(height - size + 1):
        for left in range(width - size + 1):
            window = torch.zeros(height, width, dtype=torch.bool)
            window[top : top + size, left : left + size] = True
            drop = (probabilities - logits_of(teacher, blacked_out(images, window, black)).softmax(1)).mean(0)
            found.append((float(drop.max()), int(drop.argmax()), top, left))
    drops = torch.tensor([f[0] for f in found])
    drop, label, top, left = max(found)
    return {
        "drop": drop,
        "class": label,
        "top": top,
        "left": left,
        "size": size,
        "ratio": drop / float(drops.median()),
    }


def offline_student(config: BenchConfig, images, logits, temperature, steps, seed, num_classes):
    """A fresh student trained by KD on fixed (images, teacher logits), batches of 128."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dfkd_seed(seed))
        network = config.component("student_architecture")
        student = build_network(network, config.student_widths, num_classes, config.image_size, "student")
        optimizer = torch.optim.Adam(student.parameters(), lr=config.student_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(steps):
            index = torch.randint(len(images), (128,))
            student.train()
            loss = kd_divergence(student(images[index]), logits[index], temperature).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return student.eval()


def dfkd_run(config, ctx, spec, teacher, guard, args) -> dict[str, torch.Tensor]:
    """The bench's vanilla run; the fresh images of every ``keep_every``-th student batch with their logits."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dfkd_seed(args.seed))
        network = config.component("student_architecture")
        student = build_network(network, config.student_widths, 10, config.image_size, "student")
        synthesizer = _synthesizer(ctx, spec, teacher, student, guard)
        kept_images, kept_logits, calls = [], [], {"n": 0}
        sample = synthesizer.sample

        def keeping_sample() -> GuardedBatch:
            batch = sample()
            if calls["n"] % args.keep_every == 0:
                fresh = config.vanilla.batch_size
                kept_images.append(batch.images[:fresh].clone())
                kept_logits.append(batch.teacher_logits[:fresh].clone())
            calls["n"] += 1
            return batch

        synthesizer.sample = keeping_sample  # type: ignore[method-assign]
        budget = config.budgets["vanilla"]
        optimizer = torch.optim.Adam(student.parameters(), lr=config.student_lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.iterations)
        train(
            synthesizer,
            optimizer,
            args.iterations,
            kd_steps=budget.kd_steps,
            scheduler=scheduler,
            progress=False,
        )
    synthesizer.close()

    id_images, ood_images, clean_images, labels = ctx.test_data(SETTING)
    final = prediction_metrics(
        predict(student, id_images), predict(student, ood_images), labels, predict(student, clean_images)
    )
    return {
        "images": torch.cat(kept_images),
        "logits": torch.cat(kept_logits),
        "student_iacc": torch.tensor(final["iacc"]),
        "student_asr_minus_clean": torch.tensor(final["asr_minus_clean"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results (and the teacher cache)")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument(
        "--keep-every", type=int, default=10, help="keep the fresh images of every n-th batch"
    )
    parser.add_argument("--student-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=4, help="side of the per-image windows, pixels")
    parser.add_argument("--search-images", type=int, default=4096, help="images the population search reads")
    parser.add_argument("--teacher", choices=["ntl_backdoor", "sl"], default="ntl_backdoor")
    parser.add_argument(
        "--trigger", type=json.loads, help='the trigger as JSON, e.g. {"name": "checkerboard"}'
    )
    parser.add_argument("--target-class", type=int, help="the backdoor's target class (default 0)")
    parser.add_argument("--teachers", type=Path, help="teacher cache (default: OUT/teachers)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backdoor = SettingSpec(trigger=args.trigger, target_class=args.target_class)
    settings = {**BenchConfig().settings, SETTING: backdoor}
    config = BenchConfig(teacher_cache_dir=str(args.teachers or args.out / "teachers"), settings=settings)
    ctx = _Context(config, args.out, print)
    spec = RunSpec(SETTING, "vanilla", "ntl" if args.teacher == "ntl_backdoor" else "sl", args.seed)
    teacher = ctx.teacher(SETTING, args.teacher)
    setting = ctx.setting(SETTING)
    id_images, ood_images, clean_images, labels = ctx.test_data(SETTING)
    target = setting.target_class
    region = trigger_region(setting)
    opposite = region.flip(0, 1)

    guard = Guard(row_guard(config, spec), teacher, load_entrypoints=False)
    kept_file = args.out / f"kept-{args.teacher}-seed{args.seed}.pt"
    if kept_file.exists():  # the DFKD run of an earlier call: only the analyses run again
        kept = torch.load(kept_file, weights_only=True)
    else:
        kept = dfkd_run(config, ctx, spec, teacher, guard, args)
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(kept, kept_file)

    def metrics(model) -> dict[str, float]:
        return prediction_metrics(
            predict(model, id_images), predict(model, ood_images), labels, predict(model, clean_images)
        )

    images, logits = kept["images"], kept["logits"]
    black = guard.config.normalization.normalize(torch.zeros(1, images.shape[1], 1, 1))[0]
    label = logits.argmax(1)
    to_target = label == target
    off = predict(teacher, blacked_out(images, region, black))
    off_control = predict(teacher, blacked_out(images, opposite, black))
    dependent = to_target & (off != target)
    result = {
        "dfkd_student": {
            "iacc": float(kept["student_iacc"]),
            "asr_minus_clean": float(kept["student_asr_minus_clean"]),
        },
        "kept_images": len(images),
        "target_share": float(to_target.float().mean()),
        "trigger_region_pixels": int(region.sum()),
        "target_leaves_when_region_blacked": float(dependent.sum() / to_target.sum().clamp_min(1)),
        "target_leaves_when_opposite_blacked": float(
            (to_target & (off_control != target)).sum() / to_target.sum().clamp_min(1)
        ),
        "class_histogram": torch.bincount(label, minlength=10).tolist(),
    }
    print(json.dumps(result), flush=True)
    temperature = guard.config.kd_temperature
    generator = torch.Generator().manual_seed(args.seed)
    random_drop = torch.zeros(len(images), dtype=torch.bool)
    random_drop[torch.randperm(len(images), generator=generator)[: int(dependent.sum())]] = True
    subsets = {
        "all": torch.ones(len(images), dtype=torch.bool),
        "without_target_labelled": ~to_target,
        "without_trigger_dependent": ~dependent,
        "without_as_many_random": ~random_drop,
    }
    region_logits = logits_of(teacher, blacked_out(images, region, black))
    window_kl, window_logits = most_sensitive_window(teacher, images, logits, black, args.window, 2)
    top = window_kl >= window_kl.quantile(0.8)
    result["window_kl_quantiles"] = window_kl.quantile(torch.tensor([0.5, 0.8, 0.95])).tolist()
    result["trigger_dependent_in_top_window_kl"] = float(
        (dependent & top).sum() / dependent.sum().clamp_min(1)
    )
    search = population_window(teacher, images[: args.search_images], logits[: args.search_images], black, 3)
    result["population_window"] = search
    found = torch.zeros_like(region)
    found[search["top"] : search["top"] + 3, search["left"] : search["left"] + 3] = True
    relabelled = {
        "relabelled_population_window": logits_of(teacher, blacked_out(images, found, black)),
        "relabelled_region_blacked (knows the trigger's region)": region_logits,
        "relabelled_most_sensitive_window": window_logits,
        "relabelled_most_sensitive_window_top20": torch.where(top[:, None], window_logits, logits),
    }
    everything = torch.ones(len(images), dtype=torch.bool)
    runs = [(name, keep, logits) for name, keep in subsets.items()]
    runs += [(name, everything, new_logits) for name, new_logits in relabelled.items()]
    for name, keep, targets in runs:
        if not keep.any():
            result[f"offline/{name}"] = {"images": 0}
            continue
        model = offline_student(
            config, images[keep], targets[keep], temperature, args.student_steps, args.seed, 10
        )
        result[f"offline/{name}"] = {"images": int(keep.sum()), **metrics(model)}
        print(name, result[f"offline/{name}"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"backdoor_paths-{args.teacher}-seed{args.seed}.json").write_text(
        json.dumps(result, indent=1)
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
