"""Small benchmark networks for 3x32x32 images with pixel values in [0, 1].

* :class:`ConvNet`: a BatchNorm CNN classifier; :func:`make_teacher` and
  :func:`make_student` give the benchmark's teacher (32-64-128) and student
  (16-32-64) widths.
* :class:`Generator`: a DFQ / DCGAN-style generator ``z -> image``.

No network normalises its input: images go in as they come from
:mod:`dfkd_guard.bench.data` (``float32``, ``[0, 1]``) and the generator emits
the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "STUDENT_WIDTHS",
    "TEACHER_WIDTHS",
    "ConvNet",
    "Generator",
    "make_student",
    "make_teacher",
]

TEACHER_WIDTHS: tuple[int, ...] = (32, 64, 128)
STUDENT_WIDTHS: tuple[int, ...] = (16, 32, 64)


class ConvNet(nn.Module):
    """CNN classifier: per width, conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool.

    After the last stage a global average pool gives the feature vector and a
    linear head the logits.

    Args:
        widths: output channels of each stage; each stage halves the spatial
            size, so at most 5 stages for 32x32 inputs.
        num_classes: number of logits.
        in_channels: input channels.

    Shapes:
        input ``(B, in_channels, 32, 32)``; :meth:`features` ``(B, widths[-1])``;
        output logits ``(B, num_classes)``.
    """

    def __init__(
        self, widths: Sequence[int] = TEACHER_WIDTHS, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        self.feature_dim = channels
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, widths[-1])`` (after global average pooling)."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.head(self.features(x))


def make_teacher(num_classes: int = 10, widths: Sequence[int] = TEACHER_WIDTHS) -> ConvNet:
    """The benchmark teacher (default widths 32-64-128)."""
    return ConvNet(widths, num_classes)


def make_student(num_classes: int = 10, widths: Sequence[int] = STUDENT_WIDTHS) -> ConvNet:
    """The benchmark student (default widths 16-32-64)."""
    return ConvNet(widths, num_classes)


class Generator(nn.Module):
    """DFQ / DCGAN-style generator ``G(z)``.

    ``z -> Linear -> (2*base) x 8 x 8 -> BN -> [upsample x2, conv3x3, BN,
    LeakyReLU(0.2)] x 2 -> conv3x3 -> Sigmoid``.

    Args:
        latent_dim: size of ``z``.
        base_channels: width of the last hidden stage (the first has twice as many).
        out_channels: image channels.
        img_size: output side; must be divisible by 4.

    Shapes and scale:
        input ``z`` ``(B, latent_dim)`` (any real values, typically standard
        normal); output ``(B, out_channels, img_size, img_size)`` in ``(0, 1)``
        from the final Sigmoid, the pixel scale of the benchmark images.
    """

    def __init__(
        self, latent_dim: int = 100, base_channels: int = 64, out_channels: int = 3, img_size: int = 32
    ) -> None:
        super().__init__()
        if img_size % 4:
            raise ValueError(f"img_size must be divisible by 4, got {img_size}")
        if latent_dim < 1 or base_channels < 1:
            raise ValueError(
                f"latent_dim and base_channels must be positive, got {latent_dim}, {base_channels}"
            )
        self.latent_dim = latent_dim
        self._init_side = img_size // 4
        self._init_channels = 2 * base_channels
        self.project = nn.Linear(latent_dim, self._init_channels * self._init_side**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(self._init_channels),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(self._init_channels, self._init_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(self._init_channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(self._init_channels, base_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(base_channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(base_channels, out_channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Images ``(B, out_channels, img_size, img_size)`` in ``(0, 1)``."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (B, {self.latent_dim}), got shape {tuple(z.shape)}")
        x = self.project(z).view(-1, self._init_channels, self._init_side, self._init_side)
        return self.body(x)

    def sample_latent(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard-normal latent codes ``(batch_size, latent_dim)`` on the module's device."""
        device = self.project.weight.device
        return torch.randn(batch_size, self.latent_dim, generator=generator).to(device)
