"""A DeepInversion-style data-free distillation loop with an image pool, written the way public codebases write theirs.

The structure follows the ``DeepInvSynthesizer`` of the ``datafree`` package
(zju-vipa CMI / Fast-Datafree) and NVlabs' DeepInversion: every round
optimises a batch of pixels from noise against the teacher (cross-entropy to
random targets, BatchNorm-statistics matching through forward hooks, total
variation), with random jitter and flips, keeps the lowest-loss batch in a
data pool, and the student replays random batches of the pool with a
``KLDiv`` criterion.

The demo distils a small MNIST teacher into a smaller student with no real
training image, then prints the student's accuracy on real MNIST test digits.
Run this file with ``--rounds N`` (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dfkd_guard import Guard  # guard

# Only to build the demo's teacher, student and test digits.
from dfkd_guard.bench.data import build_setting
from dfkd_guard.bench.models import make_student, make_teacher
from dfkd_guard.bench.teachers import TeacherConfig, train_teacher


class DeepInversionFeatureHook:
    """Forward hook on a BatchNorm layer: distance of the batch statistics to the running ones."""

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


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """L2 norms of the differences between horizontal and vertical neighbours."""
    return torch.norm(x[:, :, :, :-1] - x[:, :, :, 1:]) + torch.norm(x[:, :, :-1, :] - x[:, :, 1:, :])


class DeepInvSynthesizer:
    """Pixel optimisation against the teacher; the best batch of each round goes into a data pool."""

    def __init__(
        self,
        teacher: nn.Module,
        img_size: tuple[int, int, int],
        num_classes: int = 10,
        iterations: int = 50,
        lr_g: float = 0.1,
        synthesis_batch_size: int = 64,
        sample_batch_size: int = 64,
        bn: float = 10.0,
        oh: float = 1.0,
        tv: float = 1e-4,
    ) -> None:
        self.teacher = teacher
        self.img_size = img_size
        self.num_classes = num_classes
        self.iterations = iterations
        self.lr_g = lr_g
        self.synthesis_batch_size = synthesis_batch_size
        self.sample_batch_size = sample_batch_size
        self.bn, self.oh, self.tv = bn, oh, tv
        self.data_pool: list[torch.Tensor] = []
        self.hooks = [DeepInversionFeatureHook(m) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
        self.guard = Guard(teacher=teacher)  # guard

    def synthesize(self) -> dict[str, float]:
        """One round of pixel optimisation; returns the best batch's loss."""
        inputs = torch.rand(self.synthesis_batch_size, *self.img_size).requires_grad_()
        targets = torch.randint(self.num_classes, (self.synthesis_batch_size,))
        optimizer = torch.optim.Adam([inputs], lr=self.lr_g, betas=(0.5, 0.99))
        best_cost, best_inputs = float("inf"), inputs.detach().clone()
        for _ in range(self.iterations):
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
            inputs_aug = torch.roll(inputs, shifts=(dx, dy), dims=(2, 3))
            if torch.rand(()) < 0.5:
                inputs_aug = torch.flip(inputs_aug, dims=(3,))
            t_out = self.teacher(inputs_aug)
            loss_bn = self.guard.bn_loss()  # guard
            loss_oh = F.cross_entropy(t_out, targets)
            loss = self.bn * loss_bn + self.oh * loss_oh + self.tv * total_variation(inputs)
            loss = loss + self.guard.generator_penalty(inputs_aug, t_out)  # guard
            if loss.item() < best_cost:
                best_cost, best_inputs = loss.item(), inputs.detach().clone()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                inputs.clamp_(0.0, 1.0)
        self.data_pool.append(best_inputs)
        return {"best": best_cost}

    def sample(self) -> torch.Tensor:
        """A random batch of the pool."""
        pool = torch.cat(self.data_pool)
        return pool[torch.randperm(len(pool))[: self.sample_batch_size]]

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()


def train(
    synthesizer: DeepInvSynthesizer,
    teacher: nn.Module,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    rounds: int,
    kd_steps: int = 20,
) -> None:
    """``rounds`` times: one synthesis round, then ``kd_steps`` student steps on pool batches."""
    criterion = KLDiv(reduction="none")  # guard
    teacher.eval()
    for it in range(rounds):
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
        print(
            f"round {it + 1}/{rounds}  best synthesis loss {losses['best']:.3f}  loss_S {loss_s.item():.4f}",
            flush=True,
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
    parser.add_argument("--rounds", type=int, default=5, help="synthesis rounds (default: 5; try 60)")
    parser.add_argument("--iterations", type=int, default=50, help="pixel steps per round (default: 50)")
    parser.add_argument("--kd-steps", type=int, default=20, help="student steps per round (default: 20)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="synthesis and student batch size (default: 64)"
    )
    parser.add_argument(
        "--teacher", default=None, metavar="PATH", help="teacher state dict (default: train one)"
    )
    parser.add_argument(
        "--teacher-widths", type=_widths, default=(8, 16, 32), help="teacher CNN widths (default: 8,16,32)"
    )
    parser.add_argument(
        "--student-widths", type=_widths, default=(4, 8, 16), help="student CNN widths (default: 4,8,16)"
    )
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
    image_shape = tuple(data.id_test.images.shape[1:])
    synthesizer = DeepInvSynthesizer(
        teacher,
        image_shape,
        iterations=args.iterations,
        synthesis_batch_size=args.batch_size,
        sample_batch_size=args.batch_size,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    train(synthesizer, teacher, student, optimizer, args.rounds, kd_steps=args.kd_steps)
    synthesizer.remove_hooks()

    acc = accuracy(student, data.id_test.images, data.id_test.labels)
    print(f"student accuracy on MNIST test: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
