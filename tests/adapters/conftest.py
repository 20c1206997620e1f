"""A tiny real teacher trained on the vendored MNIST digits, shared by the adapter tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfkd_guard.bench.data import Setting, build_setting
from dfkd_guard.bench.models import ConvNet, Generator
from dfkd_guard.bench.teachers import TeacherConfig, load_or_train_teacher

TINY_TEACHER = TeacherConfig(
    kind="sl", setting="mnist_m", steps=200, batch_size=64, lr=1e-2, widths=(8, 16, 32), seed=0
)


@pytest.fixture(scope="session")
def setting() -> Setting:
    return build_setting("mnist_m", seed=0)


@pytest.fixture(scope="session")
def teacher_state(setting: Setting, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """State dict of an 8-16-32 CNN trained for 200 steps on real digits (about 95% test accuracy)."""
    model = load_or_train_teacher(TINY_TEACHER, tmp_path_factory.mktemp("teachers"), data=setting)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def teacher(teacher_state: dict[str, torch.Tensor]) -> ConvNet:
    model = ConvNet(TINY_TEACHER.widths)
    model.load_state_dict(teacher_state)
    return model.eval()


@pytest.fixture(scope="session")
def teacher_file(teacher_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher_state, path)
    return path


def tiny_student() -> ConvNet:
    return ConvNet((4, 8, 16))


def tiny_generator() -> Generator:
    return Generator(latent_dim=8, base_channels=8)
