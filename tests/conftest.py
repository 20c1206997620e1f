"""Shared fixtures: one torch thread; plugin debug checks on; small teachers on random tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfkd_guard.plugins import DEBUG_ENV


class SmallCNN(nn.Module):
    """A tiny BatchNorm CNN for 3x8x8 inputs."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run faster on one thread, and results do not depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _debug_mode():
    """Every component call checks that it left the teacher alone (tests that need it off unset it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DEBUG_ENV, "1")
        yield


@pytest.fixture
def teacher() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN()
    # Give the BatchNorm layers non-trivial running statistics.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 3, 8, 8))
    model.eval()
    return model


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
