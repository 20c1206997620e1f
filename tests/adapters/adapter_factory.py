"""Tiny configurations of every adapter, built the same way in tests and subprocesses."""

from __future__ import annotations

import torch
from torch import nn

from dfkd_guard import Guard
from dfkd_guard.adapters.base import Synthesizer
from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer
from dfkd_guard.adapters.vanilla import VanillaConfig, VanillaSynthesizer
from dfkd_guard.bench.models import ConvNet, Generator

ADAPTERS = ("vanilla", "deepinversion", "cmi")
ITERATIONS = 6


def make_adapter(
    name: str, teacher: nn.Module, guard: Guard
) -> tuple[Synthesizer, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """An adapter with a fresh tiny student, its SGD optimiser and a cosine schedule."""
    student = ConvNet((4, 8, 16))
    synthesizer: Synthesizer
    if name == "vanilla":
        synthesizer = VanillaSynthesizer(
            teacher,
            student,
            Generator(latent_dim=8, base_channels=8),
            8,
            guard,
            VanillaConfig(batch_size=16, replay=8),
        )
    elif name == "deepinversion":
        config = DeepInversionConfig(
            batch_size=8, student_batch_size=8, iterations=3, lr=0.1, competition=0.2
        )
        synthesizer = DeepInversionSynthesizer(teacher, student, guard, config)
    elif name == "cmi":
        from dfkd_guard.adapters.cmi import CMIConfig, CMISynthesizer

        synthesizer = CMISynthesizer(
            teacher,
            student,
            Generator(latent_dim=8, base_channels=8),
            8,
            guard,
            CMIConfig(batch_size=8, student_batch_size=8, iterations=3),
        )
    else:
        raise ValueError(f"unknown adapter {name!r}")
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, ITERATIONS)
    return synthesizer, optimizer, scheduler
