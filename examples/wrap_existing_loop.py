"""A DFQ-style data-free knowledge distillation loop, written the way public DFKD codebases write theirs.

The structure follows the ``datafree`` package of zju-vipa CMI / Fast-Datafree:
a ``Synthesizer`` whose ``synthesize()`` takes one generator step (one-hot
cross-entropy, BatchNorm-statistics matching through forward hooks on the
teacher, and an adversarial term) and whose ``sample()`` draws fresh generator
images; a ``KLDiv`` criterion; and a ``train()`` function alternating the two.

The demo distils a small MNIST teacher into a smaller student with no real
training image, then prints the student's accuracy on real MNIST test digits.
Run this file with ``--steps N`` (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dfkd_guard import Guard  # guard

# Only to build the demo's teacher, student, generator and test digits.
from dfkd_guard.bench.data import build_setting
from dfkd_guard.bench.models import Generator, make_student, make_teacher
from dfkd_guard.bench.teachers import TeacherConfig, train_teacher


class BNStatsHook:
    """Forward hook on a BatchNorm layer: distance of the batch statistics to the running ones.

    Like the public codebases, the distance is computed when the layer runs,
    so ``r_feature`` always belongs to the last forward of the teacher.
    """

    def __init__(self, module: nn.BatchNorm2d) -> None:
        self.module = module
        self.handle = module.register_forward_hook(self.hook_fn)
        self.r_feature: torch.Tensor | None = None

    def hook_fn(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.r_feature = torch.norm(mean - self.module.running_mean, 2) + torch.norm(
            var - self.module.running_var, 2
        )

    def remove(self) -> None:
        self.handle.remove()


class KLDiv(nn.Module):
    """KL(teacher || student) of temperature-softened predictions, times T^2, from log-probabilities.

    ``reduction="batchmean"``: the batch mean (a scalar); ``"none"``: one value per sample (B,).
    """

    def __init__(self, T: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.T = T
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(logits / self.T, dim=1)
        log_p = F.log_softmax(targets / self.T, dim=1)
        kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1) * self.T**2
        return kl.mean() if self.reduction == "batchmean" else kl


class Synthesizer:
    """A persistent generator trained with the DFQ loss against the teacher and the student."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        generator: nn.Module,
        nz: int,
        batch_size: int = 64,
        lr_g: float = 1e-2,
        oh: float = 1.0,
        bn: float = 10.0,
        adv: float = 1.0,
    ) -> None:
        self.teacher = teacher
        self.student = student
        self.generator = generator
        self.nz = nz
        self.batch_size = batch_size
        self.oh, self.bn, self.adv = oh, bn, adv
        self.optimizer = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=(0.5, 0.999))
        self.hooks = [BNStatsHook(m) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self.kldiv = KLDiv()
        self.guard = Guard(teacher=teacher)  # guard

    def synthesize(self) -> dict[str, float]:
        """One generator step; returns the loss terms."""
        self.student.eval()
        self.generator.train()
        z = torch.randn(self.batch_size, self.nz)
        self.optimizer.zero_grad()
        inputs = self.generator(z)
        t_out = self.teacher(inputs)
        s_out = self.student(inputs)
        loss_oh = F.cross_entropy(t_out, t_out.argmax(dim=1))
        loss_bn = self.guard.bn_loss()  # guard
        loss_adv = -self.kldiv(s_out, t_out)
        loss_G = self.oh * loss_oh + self.bn * loss_bn + self.adv * loss_adv
        loss_G = loss_G + self.guard.generator_penalty(inputs, t_out)  # guard
        loss_G.backward()
        self.optimizer.step()
        return {"oh": loss_oh.item(), "bn": loss_bn.item(), "adv": loss_adv.item(), "total": loss_G.item()}

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        """A fresh batch of generator images, detached; G in train mode, as DFAD and DFQ sample it."""
        self.generator.train()
        return self.generator(torch.randn(self.batch_size, self.nz))

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()


def train(
    synthesizer: Synthesizer,
    teacher: nn.Module,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    kd_steps: int = 2,
    log_every: int = 50,
) -> None:
    """``steps`` iterations of: one generator step, then ``kd_steps`` student steps."""
    criterion = KLDiv(reduction="none")  # guard
    teacher.eval()
    for it in range(steps):
        losses = synthesizer.synthesize()
        student.train()
        for _ in range(kd_steps):
            images = synthesizer.sample()
            with torch.no_grad():
                t_out = teacher(images)
            batch = synthesizer.guard.student_batch(images, t_out)  # guard
            s_out = student(batch.images)  # guard
            loss_s = batch.student_loss(s_out, criterion(s_out, batch.teacher_logits))  # guard
            optimizer.zero_grad()
            loss_s.backward()
            optimizer.step()
        if (it + 1) % log_every == 0 or it + 1 == steps:
            print(
                f"iter {it + 1}/{steps}  loss_G {losses['total']:.3f}  loss_S {loss_s.item():.4f}", flush=True
            )


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = sum(
        int((model(images[i : i + batch_size]).argmax(dim=1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(labels), batch_size)
    )
    return correct / len(labels)


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(w) for w in text.split(","))


def main(argv: Sequence[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="DFKD iterations (default: 20; try 2000)")
    parser.add_argument(
        "--kd-steps", type=int, default=2, help="student steps per generator step (default: 2)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="synthetic batch size (default: 64)")
    parser.add_argument(
        "--teacher", default=None, metavar="PATH", help="teacher state dict (default: train one)"
    )
    parser.add_argument(
        "--teacher-widths", type=_widths, default=(8, 16, 32), help="teacher CNN widths (default: 8,16,32)"
    )
    parser.add_argument(
        "--student-widths", type=_widths, default=(4, 8, 16), help="student CNN widths (default: 4,8,16)"
    )
    parser.add_argument("--nz", type=int, default=100, help="latent size of the generator (default: 100)")
    parser.add_argument("--ngf", type=int, default=32, help="generator width (default: 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = build_setting("mnist_m", seed=args.seed)
    if args.teacher is None:
        config = TeacherConfig(kind="sl", steps=200, lr=1e-2, widths=args.teacher_widths, seed=args.seed)
        teacher = train_teacher(config, data)
    else:
        teacher = make_teacher(widths=args.teacher_widths)
        teacher.load_state_dict(torch.load(args.teacher, map_location="cpu", weights_only=True))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    print(
        f"teacher accuracy on MNIST test: {accuracy(teacher, data.id_test.images, data.id_test.labels):.4f}"
    )

    student = make_student(widths=args.student_widths)
    generator = Generator(latent_dim=args.nz, base_channels=args.ngf)
    synthesizer = Synthesizer(teacher, student, generator, args.nz, batch_size=args.batch_size)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train(synthesizer, teacher, student, optimizer, args.steps, kd_steps=args.kd_steps)
    synthesizer.remove_hooks()

    acc = accuracy(student, data.id_test.images, data.id_test.labels)
    print(f"student accuracy on MNIST test: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
