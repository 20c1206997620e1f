"""One vanilla DFKD run with every knob on the command line: the tuning tool behind the bench defaults.

Trains (or loads from ``--cache``) a teacher of the given kind and widths on
the close-set setting, runs vanilla DFKD (DFQ terms) and prints, every
``--eval`` iterations, the student's IAcc on 2000 real MNIST test digits, the
synthetic OOD share (linear probe on the teacher's features) and the class
collapse of the latest synthetic batch, and the guard's BN-prior verdict.

Examples (the runs quoted in ``docs/adapters.md`` and ``docs/bn_prior.md``)::

    python scripts/experiments/vanilla_recipe.py --student 8,16,32 --generator-eval
    python scripts/experiments/vanilla_recipe.py --kind ntl --guard '{}'
    python scripts/experiments/vanilla_recipe.py --kind ntl --oracle
    python scripts/experiments/vanilla_recipe.py --kind ntl --oracle mean --guard '{}'
    python scripts/experiments/vanilla_recipe.py --kind ntl --guard '{}' --target-error

Not part of the library: the bench (``dfkd-guard bench``) is the reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.training import train
from dfkd_guard.adapters.vanilla import PRESETS, VanillaConfig, VanillaSynthesizer
from dfkd_guard.bench.data import build_setting
from dfkd_guard.bench.metrics import OodProbe, collapse_rate, predict
from dfkd_guard.bench.models import ConvNet, Generator
from dfkd_guard.bench.oracle import OracleGuard, measure_bn_moments
from dfkd_guard.bench.runner import MEMORY_FORMAT
from dfkd_guard.bench.teachers import TeacherConfig, load_or_train_teacher
from dfkd_guard.bn_prior import BNPrior

Moments = list[tuple[torch.Tensor, torch.Tensor]]

#: Mixture weight of the ``fixed`` row of ``--target-error``: Wang et al.'s NTL training with equal-size ID and OOD batches.
FIXED_WEIGHT = 0.5


def target_errors(prior: BNPrior, real: Moments) -> str:
    """Per BN layer, how far the running statistics and each estimate's targets are from the
    real ID moments: the mean error as a squared effect size ``||m - m_real||^2 / sum(v_real)``,
    and the mean absolute and mean signed log variance ratio ``log(v / v_real)`` (signed > 0:
    the target's variance is too large).

    The estimates: ``fitted``, the guard's own targets (de-mixing with the fitted mixture
    weight); ``id_group``, the ID-like group's observed moments; ``fixed``, de-mixing with
    ``a = 0.5``; and ``fitted-equal-var``, the fitted means with variances that assume equal ID
    and OOD variances, ``v - a / (1 - a) (r - mean)**2`` (no synthetic second moment). The last
    three are computed here from the prior's observed moments (the library keeps only the
    fitted de-mixing since 0.2.0), floored like it; all are the running statistics while the
    prior does not correct.
    """
    state = prior.state_dict()
    floor = prior.config.var_floor

    def error(index: int, mean: torch.Tensor, var: torch.Tensor) -> str:
        real_mean, real_var = (t.to(mean) for t in real[index])
        log_ratio = (var / real_var).log()
        mean_error = float(((mean - real_mean) ** 2).sum() / real_var.sum())
        return f"{mean_error:.2f}/{float(log_ratio.abs().mean()):.2f}({float(log_ratio.mean()):+.2f})"

    def floored(
        layer: torch.nn.Module, mean: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return mean, torch.maximum(second - mean * mean, floor * layer.running_var)

    def id_group(index: int, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if not prior.correcting:
            return layer.running_mean, layer.running_var
        mean, second = (t.to(layer.running_mean) for t in state["id"][index])
        return floored(layer, mean, second)

    def fixed(index: int, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if not prior.correcting:
            return layer.running_mean, layer.running_var
        a, r, v = FIXED_WEIGHT, layer.running_mean, layer.running_var
        mu_ood, m2_ood = (t.to(r) for t in state["ood"][index])
        mean = (r - (1 - a) * mu_ood) / a
        return floored(layer, mean, (v + r * r - (1 - a) * m2_ood) / a)

    def equal_var(index: int, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        mean, _ = prior.target(index, layer)  # type: ignore[arg-type]
        a = min(max(prior.weights[index], 1e-3), 1 - 1e-3)  # type: ignore[index]
        var = layer.running_var - a / (1 - a) * (layer.running_mean - mean) ** 2
        return mean, var.clamp_min(floor * layer.running_var)

    estimates = {
        "id_group": id_group,
        "fitted": lambda i, layer: prior.target(i, layer),
        "fitted-equal-var": equal_var,
        "fixed": fixed,
    }
    rows = [
        "running " + " ".join(error(i, l.running_mean, l.running_var) for i, l in enumerate(prior.layers))
    ]
    for name, targets in estimates.items():
        rows.append(f"{name} " + " ".join(error(i, *targets(i, l)) for i, l in enumerate(prior.layers)))
    return "target error (mean / |log var ratio| (signed), per layer): " + " | ".join(rows)


class PartialOracleGuard(Guard):
    """A guard whose BN targets take their means (``part="mean"``) or variances (``part="var"``)
    from the real ID moments and the other half from the guard's own :meth:`Guard.bn_targets`
    (its de-mixed estimate once the BN prior corrects, the running statistics before, or always
    without a BN prior): which half of the oracle closes the gap."""

    def __init__(self, real: Moments, part: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.real = [(m.detach().clone(), v.detach().clone()) for m, v in real]
        self.part = part

    def bn_targets(self) -> Moments:
        own = super().bn_targets()
        if len(own) != len(self.real):
            raise ValueError(f"real moments for {len(self.real)} BN layers, the teacher has {len(own)}")
        if self.part == "mean":
            return [(real_mean.to(mean), var) for (real_mean, _), (mean, var) in zip(self.real, own)]
        return [(mean, real_var.to(var)) for (_, real_var), (mean, var) in zip(self.real, own)]


def widths(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="sl", choices=["sl", "ntl", "ntl_backdoor"])
    p.add_argument("--setting", default="mnist_m")
    p.add_argument("--teacher", type=widths, default=(16, 32, 64), help="teacher widths")
    p.add_argument("--student", type=widths, default=(16, 32, 64), help="student widths")
    p.add_argument("--generator-width", type=int, default=8)
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--kd-steps", type=int, default=3)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--student-lr", type=float, default=3e-3)
    p.add_argument("--constant-lr", action="store_true", help="no cosine decay of the student lr")
    p.add_argument("--generator-lr", type=float, default=3e-3)
    p.add_argument("--bn", type=float, default=10.0)
    p.add_argument(
        "--guard", default="", help="GuardConfig as JSON ('{}' = the default guard); empty = no guard"
    )
    p.add_argument(
        "--oracle",
        nargs="?",
        const="all",
        choices=["all", "mean", "var"],
        help="BN targets measured on real ID train images: all, or only their means / variances (the other half from the guard or the running statistics)",
    )
    p.add_argument(
        "--target-error",
        action="store_true",
        help="once the guard corrects, print how far each estimate's BN targets are from the real ID moments",
    )
    p.add_argument("--generator-eval", action="store_true", help="draw student batches with G in eval mode")
    p.add_argument("--teacher-steps", type=int, default=1000)
    p.add_argument("--teacher-lr", type=float, default=3e-3)
    p.add_argument(
        "--teacher-shift", type=int, default=1, help="random translation of teacher batches, pixels"
    )
    p.add_argument("--replay", type=int, default=64, help="replayed images per student step (0 = fresh only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--cache", type=Path, default=Path("/tmp/dfkd-guard-recipe/teachers"))
    a = p.parse_args()
    torch.set_num_threads(1)

    data = build_setting(a.setting, 0, image_size=a.image_size)
    teacher_config = TeacherConfig(
        kind=a.kind,
        setting=a.setting,
        steps=a.teacher_steps,
        lr=a.teacher_lr,
        shift=a.teacher_shift,
        widths=a.teacher,
        image_size=a.image_size,
    )
    teacher = load_or_train_teacher(teacher_config, a.cache, data=data).to(memory_format=MEMORY_FORMAT)
    probe = OodProbe(teacher.features, data.id_train.images[:2000], data.ood_train.images[:2000])
    real_moments = (
        measure_bn_moments(teacher, data.id_train.images[:2000]) if a.target_error or a.oracle else None
    )
    torch.manual_seed(a.seed)
    student = ConvNet(a.student, 10).to(memory_format=MEMORY_FORMAT)
    guard_config = GuardConfig.model_validate(json.loads(a.guard)) if a.guard else GuardConfig(enabled=False)
    if a.oracle == "all":
        guard: Guard = OracleGuard(real_moments, guard_config, teacher)  # type: ignore[arg-type]
    elif a.oracle:
        guard = PartialOracleGuard(real_moments, a.oracle, guard_config, teacher)  # type: ignore[arg-type]
    else:
        guard = Guard(guard_config, teacher)
    config = VanillaConfig(
        **{**PRESETS["dfq"], "bn": a.bn}, batch_size=a.batch, generator_lr=a.generator_lr, replay=a.replay
    )
    synthesizer = VanillaSynthesizer(
        teacher,
        student,
        Generator(a.latent, a.generator_width, img_size=a.image_size).to(memory_format=MEMORY_FORMAT),
        a.latent,
        guard,
        config,
        image_shape=(3, a.image_size, a.image_size),
    )
    if a.generator_eval:
        draw = synthesizer._images
        synthesizer._images = lambda batch, train=True: draw(batch, train=False)  # type: ignore[method-assign]
    images, labels = data.id_test.images[:2000], data.id_test.labels[:2000]
    began = time.time()

    def evaluate() -> dict[str, float]:
        batch = synthesizer.last_synthesis.images  # type: ignore[union-attr]
        metrics = {
            "iacc": float((predict(student, images) == labels).float().mean()),
            "ood_share": probe.ood_share(batch),
            "collapse": collapse_rate(predict(teacher, batch), 10),
        }
        bn_prior = guard.bn_prior
        shown = " ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        if bn_prior is not None:
            shown += f" | BN prior {bn_prior.verdict} a={bn_prior.weights} sep={bn_prior.separation}"
            if a.target_error and bn_prior.weights is not None:
                shown += "\n      " + target_errors(bn_prior, real_moments)  # type: ignore[arg-type]
        print(f"{len(result_evals) * a.eval + a.eval:5d} | {shown} | {time.time() - began:.0f} s", flush=True)
        result_evals.append(metrics)
        return metrics

    result_evals: list[dict[str, float]] = []
    optimizer = torch.optim.Adam(student.parameters(), lr=a.student_lr)
    scheduler = None if a.constant_lr else torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, a.iterations)
    result = train(
        synthesizer,
        optimizer,
        a.iterations,
        kd_steps=a.kd_steps,
        scheduler=scheduler,
        evaluate=evaluate,
        evaluate_every=a.eval,
        progress=False,
    )
    last = result_evals[-3:]
    print(
        f"{vars(a)}\nmean of the last 3 evaluations: IAcc {sum(e['iacc'] for e in last) / len(last):.3f}, "
        f"OOD share {sum(e['ood_share'] for e in last) / len(last):.3f}; {result.seconds_per_iteration:.3f} s/it"
    )


if __name__ == "__main__":
    main()
