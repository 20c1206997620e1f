"""The networks of the distill example: a small BatchNorm CNN for 1x28x28 digits, defined outside dfkd-guard.

``digits.toml`` names them as ``my_models:DigitNet``; ``dfkd-guard distill``
finds this module because it sits beside the config.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitNet(nn.Module):
    """conv-BN-ReLU x 3 (two 2x2 poolings), global average pooling, linear: (B, 1, 28, 28) -> (B, classes)."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i, out in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
