"""Can the guard tell an NTL teacher from an ordinary one without BatchNorm statistics? (issue 15)

The BN prior's verdict compares the ID-like and OOD-like halves of the warm-up
batches on the teacher's BN-layer inputs, in units of the running variance
(``dfkd_guard/bn_prior.py``). A teacher without BatchNorm has no running
variance. This runs the bench's guarded vanilla row of a config's first setting
for each teacher (SL, NTL) and seed, keeps the student batches the BN prior
would observe (after ``skip_batches``, ``warmup_batches`` of them) with the
guard's scores and the teacher's logits, and prints statistics that need no
BN layer, per run:

* ``score_eta``: between-group share of the score variance at the batch's
  two-means cut (0: one cluster, 1: two points), the batch mean;
* ``feature_separation``: ``||mu_id - mu_ood||^2 / trace(cov)`` of the
  teacher's feature vectors (before its linear head), split by the guard's
  rule, over all kept batches; ``cov`` is that of every kept sample, so it is
  the BN prior's separation with the observed spread in place of the running one;
* ``confidence_gap``: mean max-softmax of the OOD-like side minus the ID-like side;
* ``ood_collapse`` / ``id_collapse``: share of the most frequent teacher class on each side.

    python scripts/experiments/verdict_without_bn.py --config docs/benchmarks/teacher_nobn.toml --out OUT
    python scripts/experiments/verdict_without_bn.py --out OUT   # the default table's BN teachers

``OUT`` holds the teacher cache (``OUT/teachers``; a bench output folder of
the same config reuses its teachers) and ``verdict_without_bn.json``. Not
part of the library: it measures candidates for a verdict, it makes none.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dfkd_guard import Guard, GuardedBatch
from dfkd_guard.adapters.training import train
from dfkd_guard.bench.config import BenchConfig
from dfkd_guard.bench.models import build_network
from dfkd_guard.bench.runner import RunSpec, _Context, _synthesizer, dfkd_seed, row_guard
from dfkd_guard.weightings import SplitParams, ood_mask, two_means_cut


def kept_batches(
    config: BenchConfig, ctx: _Context, spec: RunSpec, teacher: torch.nn.Module
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, teacher logits, scores) of the guarded vanilla run's student batches in the BN prior's window.

    Scored here: without a BN prior the guard itself scores nothing.
    """
    guard_config = row_guard(config, spec)
    skip, warmup = guard_config.bn_prior.skip_batches, guard_config.bn_prior.warmup_batches
    kd_steps = config.budgets["vanilla"].kd_steps
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dfkd_seed(spec.seed))
        network = config.component("student_architecture")
        student = build_network(network, config.student_widths, 10, config.image_size, "student")
        guard = Guard(guard_config, teacher, load_entrypoints=False)
        synthesizer = _synthesizer(ctx, spec, teacher, student, guard)
        sample = synthesizer.sample
        guard_calls = {"n": 0}

        def keeping_sample() -> GuardedBatch:
            batch = sample()
            if skip <= guard_calls["n"] < skip + warmup:
                own = batch.scores.shape[0]  # recalled trap-memory images, if any, come after the caller's
                images, logits = batch.images[:own], batch.teacher_logits[:own]
                kept.append((images, logits, guard.score(images, logits)))
            guard_calls["n"] += 1
            return batch

        synthesizer.sample = keeping_sample  # type: ignore[method-assign]
        optimizer = torch.optim.Adam(student.parameters(), lr=config.student_lr)
        train(synthesizer, optimizer, -(-(skip + warmup) // kd_steps), kd_steps=kd_steps, progress=False)
        synthesizer.close()
        guard.close()
    return kept


@torch.no_grad()
def statistics(
    teacher: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    split: SplitParams,
) -> dict[str, float]:
    teacher.eval()
    etas, features, ood, confidence, label = [], [], [], [], []
    for images, logits, scores in batches:
        scores = scores.double()
        cut = two_means_cut(scores)
        if cut is not None:
            high = scores > cut
            total = float(scores.var(unbiased=False))
            between = float(high.double().mean() * (~high).double().mean()) * float(
                (scores[high].mean() - scores[~high].mean()) ** 2
            )
            etas.append(between / total if total > 0 else 0.0)
        features.append(teacher.features(images).double())
        ood.append(ood_mask(scores, split))
        probabilities = logits.softmax(1)
        confidence.append(probabilities.max(1).values)
        label.append(probabilities.argmax(1))
    f, o, c, y = torch.cat(features), torch.cat(ood), torch.cat(confidence), torch.cat(label)
    gap = f[o].mean(0) - f[~o].mean(0)
    spread = float(f.var(0, unbiased=False).sum())

    def collapse(mask: torch.Tensor) -> float:
        return float(torch.bincount(y[mask], minlength=10).max() / mask.sum().clamp_min(1))

    return {
        "score_eta": sum(etas) / max(len(etas), 1),
        "feature_separation": float((gap * gap).sum()) / spread,
        "confidence_gap": float(c[o].mean() - c[~o].mean()),
        "ood_share": float(o.float().mean()),
        "ood_collapse": collapse(o),
        "id_collapse": collapse(~o),
        "batches": len(batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a bench config (default: the default table's)")
    parser.add_argument("--out", type=Path, required=True, help="results and the teacher cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = BenchConfig.from_file(args.config) if args.config else BenchConfig()
    ctx = _Context(config, args.out, print)
    setting = next(iter(config.settings))
    split = config.guard.bn_prior.split
    results = []
    for kind in ("sl", "ntl"):
        for seed in args.seeds:
            teacher = ctx.teacher(setting, kind)
            spec = RunSpec(setting, "vanilla", f"{kind}_guard", seed)
            batches = kept_batches(config, ctx, spec, teacher)
            row = {"setting": setting, "teacher": kind, "seed": seed}
            row |= statistics(teacher, batches, split)
            print(json.dumps(row), flush=True)
            results.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "verdict_without_bn.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
