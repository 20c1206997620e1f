"""Exploration for issue 5: de-mix the BN targets of an NTL teacher (DESIGN 7.1), outside the library.

The demo's vanilla DFKD run (``dfkd-guard demo``: MNIST / MNIST-M, DFQ terms,
BN weight 10, 300 iterations) with the BatchNorm-statistics targets replaced
by de-mixed ones: per layer, EMAs of the BN-input mean and second moment of
OOD-like (teacher max softmax > threshold) and ID-like synthetic samples, a
mixture weight ``a`` fitted by least squares (``fit``) or fixed (``fixed``),
and targets ``mean = (running_mean - (1-a) ood_mean) / a`` with the matching
variance from second moments. Not library code: the guard's own de-mixing
(issue 5) supersedes it; this script records how the first measurements were
made.

usage: python scripts/experiments/bn_demix_probe.py RUN_NAME {sl,ntl} {plain,fit,fixed}
       [--a 0.5] [--iterations 300] [--seed 0] [--cache-dir DIR] [--out DIR]
Writes OUT/RUN_NAME.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.bn_statistics import BatchNormStatistics
from dfkd_guard.adapters.training import train
from dfkd_guard.adapters.vanilla import PRESETS, VanillaConfig, VanillaSynthesizer
from dfkd_guard.bench.data import build_setting
from dfkd_guard.bench.metrics import OodProbe, accuracy, agreement, collapse_rate, predict
from dfkd_guard.bench.models import Generator, make_student
from dfkd_guard.bench.teachers import TeacherConfig, evaluate_teacher, load_or_train_teacher

LATENT_DIM = 64


class DemixBNStatistics(BatchNormStatistics):
    """BN-statistics matching against de-mixed targets.

    Per layer, EMAs of the per-channel mean and second moment of the BN inputs of
    the OOD-like (teacher max softmax > threshold) and ID-like synthetic samples.
    mode 'fit': a = <rm - ood, id - ood> / ||id - ood||^2 clipped to [0.05, 1]
    (a = 1 until both EMAs have data); mode 'fixed': a = fixed_a once the OOD EMA has data.
    """

    def __init__(self, teacher, mode="fit", fixed_a=0.5, momentum=0.9, threshold=0.99, record_every=30):
        super().__init__(teacher)
        self.mode, self.fixed_a, self.momentum, self.threshold = mode, fixed_a, momentum, threshold
        self.record_every = record_every
        n = len(self.layers)
        self.ema = {k: [None] * n for k in ("id_mean", "id_e2", "ood_mean", "ood_e2")}
        self.a = [1.0] * n
        self.a_raw = [float("nan")] * n
        self.calls = 0
        self.history: list[dict] = []
        self.ood_fraction_sum = 0.0
        self._logits = None
        self._teacher_handle = teacher.register_forward_hook(self._keep_logits)

    def _keep_logits(self, module, inputs, output):
        self._logits = output

    def _update(self, key_mean, key_e2, i, x):
        dims = [0, *range(2, x.ndim)]
        mean = x.mean(dim=dims)
        e2 = (x * x).mean(dim=dims)
        m = self.momentum
        if self.ema[key_mean][i] is None:
            self.ema[key_mean][i], self.ema[key_e2][i] = mean, e2
        else:
            self.ema[key_mean][i] = m * self.ema[key_mean][i] + (1 - m) * mean
            self.ema[key_e2][i] = m * self.ema[key_e2][i] + (1 - m) * e2

    def layer_losses(self):
        if self._logits is None:
            raise RuntimeError("no teacher forward yet")
        with torch.no_grad():
            msp = F.softmax(self._logits.detach().float(), dim=1).max(dim=1).values
            ood = msp > self.threshold
        self.ood_fraction_sum += float(ood.float().mean())
        self.calls += 1
        losses = []
        for i, (layer, x) in enumerate(zip(self.layers, self.inputs)):
            if x is None:
                raise RuntimeError("read before any teacher forward")
            xd = x.detach()
            if int(ood.sum()) >= 2:
                self._update("ood_mean", "ood_e2", i, xd[ood])
            if int((~ood).sum()) >= 2:
                self._update("id_mean", "id_e2", i, xd[~ood])
            rm, rv = layer.running_mean, layer.running_var
            ood_mean, ood_e2 = self.ema["ood_mean"][i], self.ema["ood_e2"][i]
            id_mean = self.ema["id_mean"][i]
            a = 1.0
            if self.mode == "fit" and ood_mean is not None and id_mean is not None:
                d = id_mean - ood_mean
                raw = float(torch.dot(rm - ood_mean, d) / torch.dot(d, d).clamp_min(1e-12))
                self.a_raw[i] = raw
                a = min(max(raw, 0.05), 1.0)
            elif self.mode == "fixed" and ood_mean is not None:
                a = self.fixed_a
            self.a[i] = a
            if a < 1.0:
                mean_t = (rm - (1 - a) * ood_mean) / a
                e2_t = ((rv + rm * rm) - (1 - a) * ood_e2) / a
                var_t = (e2_t - mean_t * mean_t).clamp_min(1e-3)
            else:
                mean_t, var_t = rm, rv
            dims = [0, *range(2, x.ndim)]
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)
            losses.append(torch.norm(mean - mean_t, 2) + torch.norm(var - var_t, 2))
        if self.calls % self.record_every == 0 or self.calls == 1:
            self.history.append(
                {"call": self.calls, "a": list(self.a), "a_raw": list(self.a_raw), "ood_flagged": float(ood.float().mean())}
            )
        return losses

    def remove(self):
        super().remove()
        if self._teacher_handle is not None:
            self._teacher_handle.remove()
            self._teacher_handle = None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("kind", choices=["sl", "ntl"])
    p.add_argument("mode", choices=["plain", "fit", "fixed"])
    p.add_argument("--a", type=float, default=0.5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--threshold", type=float, default=0.99)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dfkd-guard" / "teachers")
    p.add_argument("--out", type=Path, default=Path("runs/bn_demix"))
    args = p.parse_args()
    torch.set_num_threads(2)
    began = time.perf_counter()
    setting = build_setting("mnist_m")
    teachers = {}
    for kind in ("sl", "ntl"):
        cfg = TeacherConfig(kind=kind, setting="mnist_m", steps=1000, seed=0, data_seed=0)
        teachers[kind] = load_or_train_teacher(cfg, args.cache_dir, data=setting)
    teacher = teachers[args.kind]
    print(f"teacher {args.kind}: {evaluate_teacher(teacher, setting)}", file=sys.stderr)
    probe = OodProbe(teacher.features, setting.id_train.images[:2000], setting.ood_train.images[:2000])
    ntl_predictions = predict(teachers["ntl"], setting.ood_test.images)

    torch.manual_seed(args.seed)
    student = make_student()
    guard = Guard(GuardConfig(enabled=False), teacher)
    config = VanillaConfig(**{**PRESETS["dfq"], "bn": 10.0}, batch_size=64, generator_lr=1e-2)
    synth = VanillaSynthesizer(teacher, student, Generator(LATENT_DIM, base_channels=32), LATENT_DIM, guard, config)
    demix = None
    if args.mode != "plain":
        synth.bn_statistics.remove()
        demix = DemixBNStatistics(synth.teacher, mode=args.mode, fixed_a=args.a, momentum=args.momentum, threshold=args.threshold)
        synth.bn_statistics = demix
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    result = train(synth, optimizer, args.iterations, kd_steps=2, log_every=max(args.iterations // 10, 1))
    synthetic = torch.cat([synth.sample().images for _ in range(8)])
    with torch.no_grad():
        msp_synth = F.softmax(teacher(synthetic), dim=1).max(dim=1).values
    synth.close()
    tail = result.history[-max(len(result.history) // 10, 1):]
    out = {
        "name": args.name, "kind": args.kind, "mode": args.mode, "args": {k: str(v) for k, v in vars(args).items()},
        "iacc": accuracy(student, setting.id_test.images, setting.id_test.labels),
        "oacc": accuracy(student, setting.ood_test.images, setting.ood_test.labels),
        "oagr": agreement(student, ntl_predictions, setting.ood_test.images),
        "ood_share": probe.ood_share(synthetic),
        "collapse": collapse_rate(predict(teacher, synthetic), 10),
        "msp_gt_0.99_final": float((msp_synth > 0.99).float().mean()),
        "bn_loss_tail": sum(h.get("synthesis/bn", float("nan")) for h in tail) / len(tail),
        "s_per_it": result.seconds_per_iteration,
        "minutes": (time.perf_counter() - began) / 60,
    }
    if demix is not None:
        out["a_final"] = demix.a
        out["a_raw_final"] = demix.a_raw
        out["a_history"] = demix.history
        out["mean_ood_flagged"] = demix.ood_fraction_sum / max(demix.calls, 1)
    print(json.dumps({k: v for k, v in out.items() if k != "a_history"}, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
