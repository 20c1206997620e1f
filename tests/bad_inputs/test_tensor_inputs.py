"""Bad tensors and models at every public entry point: a ValueError naming the argument, never a plugin's fault."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from dfkd_guard import Guard, GuardConfig, LogitsOf, PluginError
from dfkd_guard.adapters.vanilla import VanillaConfig, VanillaSynthesizer
from dfkd_guard.bench.models import ConvNet, Generator
from tests.conftest import SmallCNN

NAN = float("nan")
B = 4


def x(*shape: int, dtype: torch.dtype = torch.float32, fill: float | None = None) -> torch.Tensor:
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if fill is not None:
        images.view(-1)[0] = fill
    return images


def logits(batch: int = B, k: int = 4) -> torch.Tensor:
    return torch.randn(batch, k, generator=torch.Generator().manual_seed(1))


class TupleTeacher(nn.Module):
    """Returns (logits, features), as many public classifiers do."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out, out.detach()


Call = Callable[[Guard], Any]

# (id, config, call, exception type, text the message must contain)
CASES: list[tuple[str, dict[str, Any], Call, type[Exception], str]] = [
    # Guard.score
    (
        "score-3d-images",
        {},
        lambda g: g.score(x(3, 8, 8)),
        ValueError,
        "images must be a float tensor (B, C, H, W)",
    ),
    (
        "score-uint8-images",
        {},
        lambda g: g.score(x(B, 3, 8, 8, dtype=torch.uint8)),
        ValueError,
        "torch.uint8",
    ),
    (
        "score-list",
        {},
        lambda g: g.score([[0.0]]),
        ValueError,
        "images must be a float tensor (B, C, H, W), got a list",
    ),
    ("score-empty-batch", {}, lambda g: g.score(x(0, 3, 8, 8)), ValueError, "images is an empty batch"),
    (
        "score-nan-image",
        {},
        lambda g: g.score(x(B, 3, 8, 8, fill=NAN)),
        ValueError,
        "images contain 1 NaN or Inf",
    ),
    ("score-inf-image", {}, lambda g: g.score(x(B, 3, 8, 8, fill=float("inf"))), ValueError, "NaN or Inf"),
    (
        "score-2-channel-normalization",
        {"normalization": {"mean": [0.5, 0.5], "std": [0.5, 0.5]}},
        lambda g: g.score(x(B, 3, 8, 8)),
        ValueError,
        "images have 3 channels but config.normalization has 2",
    ),
    (
        "score-1-channel-images",
        {},
        lambda g: g.score(x(B, 1, 8, 8)),
        ValueError,
        "the teacher (SmallCNN) failed on images, a torch.float32 tensor of shape (4, 1, 8, 8)",
    ),
    (
        "score-float64-images",
        {},
        lambda g: g.score(x(B, 3, 8, 8, dtype=torch.float64)),
        ValueError,
        "images are torch.float64 but the teacher's weights torch.float32",
    ),
    (
        "score-float16-images",
        {},
        lambda g: g.score(x(B, 3, 8, 8, dtype=torch.float16)),
        ValueError,
        "images are torch.float16",
    ),
    (
        "score-images-on-another-device",
        {},
        lambda g: g.score(torch.empty(B, 3, 8, 8, device="meta")),
        ValueError,
        "images are on meta but the teacher's weights on cpu",
    ),
    ("score-logits-batch", {}, lambda g: g.score(x(B, 3, 8, 8), logits(B + 1)), ValueError, "logits must be"),
    ("score-logits-1d", {}, lambda g: g.score(x(B, 3, 8, 8), torch.zeros(B)), ValueError, "logits must be"),
    (
        "score-int-logits",
        {},
        lambda g: g.score(x(B, 3, 8, 8), torch.zeros(B, 4, dtype=torch.long)),
        ValueError,
        "torch.int64",
    ),
    (
        "score-nan-logits",
        {},
        lambda g: g.score(x(B, 3, 8, 8), torch.full((B, 4), NAN)),
        ValueError,
        "logits contain NaN",
    ),
    # Guard.student_batch / observe / weigh
    ("batch-3d-images", {}, lambda g: g.student_batch(x(3, 8, 8), logits()), ValueError, "images must be"),
    (
        "batch-no-logits",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8), None),
        ValueError,
        "teacher_logits must be",
    ),
    (
        "batch-logits-batch",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8), logits(B - 1)),
        ValueError,
        "teacher_logits must be a float tensor (4, K)",
    ),
    (
        "batch-nan-logits",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8), torch.full((B, 4), NAN)),
        ValueError,
        "teacher_logits contain NaN",
    ),
    (
        "batch-int-scores",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8), logits(), torch.zeros(B, dtype=torch.long)),
        ValueError,
        "scores must be a float tensor (4,), one per image, got a torch.int64",
    ),
    (
        "batch-scores-shape",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8), logits(), torch.zeros(B, 1)),
        ValueError,
        "scores must be a float tensor (4,)",
    ),
    (
        "batch-scores-list",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8), logits(), [0.0] * B),
        ValueError,
        "got a list",
    ),
    (
        "batch-empty",
        {},
        lambda g: g.student_batch(x(0, 3, 8, 8), logits(0)),
        ValueError,
        "images is an empty batch",
    ),
    (
        "batch-nan-image",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8, fill=NAN), logits()),
        ValueError,
        "images contain 1 NaN or Inf",
    ),
    (
        "batch-2-channel-normalization",
        {"normalization": ([0.5, 0.5], [0.5, 0.5])},
        lambda g: g.student_batch(x(B, 3, 8, 8), logits()),
        ValueError,
        "config.normalization has 2",
    ),
    (
        "batch-float64",
        {},
        lambda g: g.student_batch(x(B, 3, 8, 8, dtype=torch.float64), logits()),
        ValueError,
        "images are torch.float64",
    ),
    (
        "observe-logits",
        {},
        lambda g: g.observe(x(B, 3, 8, 8), logits(2)),
        ValueError,
        "teacher_logits must be",
    ),
    (
        "weigh-int-scores",
        {"weighting": "split", "bn_prior": {"demix": False}},
        lambda g: g.weigh(x(B, 3, 8, 8), logits(), torch.ones(B, dtype=torch.int32)),
        ValueError,
        "scores must be a float tensor",
    ),
    # Guard.generator_penalty
    (
        "penalty-3d-images",
        {"penalties": ["confidence"]},
        lambda g: g.generator_penalty(x(3, 8, 8)),
        ValueError,
        "images must be",
    ),
    (
        "penalty-nan-images",
        {"penalties": ["confidence"]},
        lambda g: g.generator_penalty(x(B, 3, 8, 8, fill=NAN)),
        ValueError,
        "images contain 1 NaN",
    ),
    (
        "penalty-logits",
        {"penalties": ["confidence"]},
        lambda g: g.generator_penalty(x(B, 3, 8, 8), logits(B + 2)),
        ValueError,
        "logits must be a float tensor (4, K)",
    ),
    (
        "penalty-1-channel",
        {"penalties": ["confidence"]},
        lambda g: g.generator_penalty(x(B, 1, 8, 8)),
        ValueError,
        "the teacher (SmallCNN) failed on images",
    ),
]


@pytest.mark.parametrize(
    ("config", "call", "error", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_tensor_is_a_named_error_of_the_caller(
    teacher: nn.Module, config: dict[str, Any], call: Call, error: type[Exception], text: str
) -> None:
    guard = Guard(config, teacher, load_entrypoints=False)
    with pytest.raises(error) as caught:
        call(guard)
    assert text in str(caught.value)
    assert not isinstance(caught.value, PluginError)


def test_a_disabled_guard_checks_only_shapes(teacher: nn.Module) -> None:
    """Off, the guard reads no value: NaN images pass through (the user's loop owns them), wrong shapes do not."""
    guard = Guard(GuardConfig(enabled=False), teacher, load_entrypoints=False)
    batch = guard.student_batch(x(B, 3, 8, 8, fill=NAN), logits())
    assert batch.images.shape == (B, 3, 8, 8) and bool(batch.weights.kd.eq(1).all())
    with pytest.raises(ValueError, match="teacher_logits must be"):
        guard.student_batch(x(B, 3, 8, 8), logits(B + 1))


# -- teachers with several outputs ----------------------------------------------------------------


@pytest.mark.parametrize("call", ["score", "student_batch", "penalty"])
def test_a_teacher_returning_a_tuple_is_named_with_the_fix(teacher: nn.Module, call: str) -> None:
    tupled = TupleTeacher(teacher).eval()
    guard = Guard({"penalties": ["confidence"]}, tupled, load_entrypoints=False)
    images = x(B, 3, 8, 8)
    with pytest.raises(
        ValueError, match=r"returned a tuple; .*dfkd_guard.LogitsOf\(teacher, output=\.\.\.\)"
    ):
        if call == "score":
            guard.score(images, teacher(images))  # logits from the loop, the scorer would call the teacher
        elif call == "student_batch":
            guard.student_batch(images, teacher(images).detach())
        else:
            guard.generator_penalty(images.requires_grad_())  # the guard runs the teacher itself


def test_logits_of_gives_the_guard_a_tuple_teachers_logits(teacher: nn.Module) -> None:
    wrapped = LogitsOf(TupleTeacher(teacher), output=0).eval()
    guard = Guard(None, wrapped, load_entrypoints=False)
    images = x(B, 3, 8, 8)
    t_out = wrapped(images)
    assert torch.equal(t_out, teacher(images))
    assert guard.score(images).shape == (B,)
    assert torch.isfinite(guard.bn_loss())  # the BN layers inside the wrapper are found and recorded
    assert len(guard.bn_inputs()) == 2


def test_logits_of_names_a_missing_output(teacher: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"LogitsOf\(output='logits'\): TupleTeacher returned a tuple"):
        LogitsOf(TupleTeacher(teacher), output="logits")(x(B, 3, 8, 8))
    with pytest.raises(TypeError, match="network must be a torch.nn.Module"):
        LogitsOf("teacher.pt")  # type: ignore[arg-type]


# -- models given to the adapters ----------------------------------------------------------------


class TupleGenerator(Generator):
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        images = super().forward(z)
        return images, z


def vanilla(teacher: nn.Module, student: nn.Module, generator: nn.Module) -> VanillaSynthesizer:
    guard = Guard(None, teacher, load_entrypoints=False)
    return VanillaSynthesizer(teacher, student, generator, 8, guard, VanillaConfig(batch_size=4))


MODEL_CASES: list[tuple[str, Callable[[], tuple[nn.Module, nn.Module, nn.Module]], str]] = [
    (
        "tuple-generator",
        lambda: (ConvNet((4, 8)), ConvNet((4, 8)), TupleGenerator(8, base_channels=4)),
        "the images the generator produced must be a float tensor (B, C, H, W), got a tuple",
    ),
    (
        "tuple-teacher",
        lambda: (TupleTeacher(ConvNet((4, 8))), ConvNet((4, 8)), Generator(8, base_channels=4)),
        "returned a tuple",
    ),
    (
        "tuple-student",
        lambda: (ConvNet((4, 8)), TupleTeacher(ConvNet((4, 8))), Generator(8, base_channels=4)),
        "the student's (TupleTeacher) output on (3, 32, 32) images must be a float tensor (2, K)",
    ),
    (
        "student-with-other-classes",
        lambda: (ConvNet((4, 8)), ConvNet((4, 8), num_classes=7), Generator(8, base_channels=4)),
        "the student predicts 7 classes but the teacher 10",
    ),
    (
        "generator-of-other-size",
        lambda: (ConvNet((4, 8)), ConvNet((4, 8)), Generator(8, base_channels=4, img_size=16)),
        "the generator produced images of shape (3, 16, 16), but the teacher takes (3, 32, 32)",
    ),
]


@pytest.mark.parametrize(("models", "text"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_models_that_do_not_fit_an_adapter_are_named(
    models: Callable[[], tuple[nn.Module, nn.Module, nn.Module]], text: str
) -> None:
    torch.manual_seed(0)
    teacher, student, generator = models()
    with pytest.raises(ValueError) as caught:
        vanilla(teacher.eval(), student, generator)
    assert text in str(caught.value)


def test_an_adapter_refuses_a_guard_of_another_teacher() -> None:
    guard = Guard(None, SmallCNN(), load_entrypoints=False)
    with pytest.raises(ValueError, match="the guard is bound to a different teacher"):
        VanillaSynthesizer(
            ConvNet((4, 8)).eval(), ConvNet((4, 8)), Generator(8, base_channels=4), 8, guard, VanillaConfig()
        )
