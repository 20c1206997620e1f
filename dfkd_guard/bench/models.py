"""Small benchmark networks for square 3-channel images with pixel values in [0, 1].

* :class:`BenchNet`: what the bench trains and probes, a feature extractor
  and a linear head. Four are built-in architectures (bench components of
  kind ``architecture``, :mod:`dfkd_guard.bench.registry`), each a stack of
  stages of the config's widths, each stage halving the image side:

  - ``convnet`` (:class:`ConvNet`): per stage conv3x3 -> BatchNorm -> ReLU ->
    2x2 max-pool, the bench's default teacher and student;
  - ``resnet`` (:class:`ResNet`): a conv3x3-BN-ReLU stem, then per stage
    ``blocks`` residual basic blocks (two conv3x3-BN; identity shortcut, or
    2x2 average pool and 1x1 conv-BN), the first of each stage but the first
    with stride 2;
  - ``vgg`` (:class:`VGG`): per stage ``convs`` conv3x3 -> BN -> ReLU, then a
    2x2 max-pool;
  - ``convnet_nobn`` (:class:`ConvNet` with ``batchnorm=False``): the bench
    CNN without BatchNorm (biased convolutions), for students, or teachers
    of adapters run without BN matching.

  :func:`make_teacher` and :func:`make_student` give ConvNets of the
  benchmark's teacher (32-64-128) and student (16-32-64) widths.
* :class:`Generator`: the adapters' DFQ / DCGAN-style generator ``z -> image``
  (:mod:`dfkd_guard.adapters.generator`), re-exported for the bench.

No network normalises its input: images go in as they come from
:mod:`dfkd_guard.bench.data` (``float32``, ``[0, 1]``) and the generator emits
the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dfkd_guard.adapters.generator import Generator
from dfkd_guard.errors import ConfigError, PluginError

from .registry import Resolved, architecture

__all__ = [
    "STUDENT_WIDTHS",
    "TEACHER_WIDTHS",
    "VGG",
    "BenchNet",
    "ConvNet",
    "Generator",
    "ResNet",
    "build_network",
    "make_student",
    "make_teacher",
]

TEACHER_WIDTHS: tuple[int, ...] = (32, 64, 128)
STUDENT_WIDTHS: tuple[int, ...] = (16, 32, 64)


class BenchNet(nn.Module):
    """A classifier the bench can train and probe: :meth:`features` then the linear ``head``.

    A subclass builds its convolutional ``body``, then calls :meth:`add_head`
    (last, so a seeded initialisation draws the head's weights after the
    body's); the features are the body's output averaged over space, unless
    the subclass overrides :meth:`features`.

    Shapes:
        input ``(B, 3, S, S)``; :meth:`features` ``(B, feature_dim)``; output
        logits ``(B, num_classes)``.
    """

    body: nn.Module
    head: nn.Linear
    feature_dim: int
    num_classes: int

    def add_head(self, feature_dim: int, num_classes: int) -> None:
        """Create the global average ``pool`` and ``head``, a linear layer from ``feature_dim`` features to
        ``num_classes`` logits."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.num_classes = num_classes

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, feature_dim)``: ``body(x)`` averaged over its spatial positions."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        return self.head(self.features(x))


def _check_widths(widths: Sequence[int]) -> None:
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")


class ConvNet(BenchNet):
    """CNN classifier: per width, conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool.

    After the last stage a global average pool gives the feature vector and a
    linear head the logits.

    Args:
        widths: output channels of each stage; each stage halves the spatial
            size, so at most 5 stages for 32x32 inputs.
        num_classes: number of logits.
        in_channels: input channels.
        batchnorm: False: no BatchNorm, the convolutions have a bias.

    Shapes:
        input ``(B, in_channels, S, S)``; :meth:`features` ``(B, widths[-1])``;
        output logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        widths: Sequence[int] = TEACHER_WIDTHS,
        num_classes: int = 10,
        in_channels: int = 3,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        _check_widths(widths)
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=not batchnorm)]
            layers += [nn.BatchNorm2d(width)] if batchnorm else []
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.add_head(channels, num_classes)


class _BasicBlock(nn.Module):
    """Two conv3x3-BN with a ReLU between, plus the input (through a shortcut when the shape changes).

    The shortcut of a downsampling block averages 2x2 squares, then applies a
    1x1 conv-BN (the ResNet-D shortcut): the backward of a strided 1x1
    convolution in channels-last memory crashed the process on CPU (torch 2.14.1).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        shortcut: list[nn.Module] = [nn.AvgPool2d(stride)] if stride > 1 else []
        if in_channels != out_channels:
            shortcut += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.shortcut = nn.Sequential(*shortcut)  # empty: the identity

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class ResNet(BenchNet):
    """ResNet-style classifier: conv3x3-BN-ReLU stem, ``blocks`` basic blocks per width, global average pool.

    The first block of every stage but the first has stride 2, so the side
    is halved ``len(widths) - 1`` times.

    Shapes:
        input ``(B, in_channels, S, S)``; :meth:`features` ``(B, widths[-1])``.
    """

    def __init__(
        self, widths: Sequence[int], num_classes: int = 10, blocks: int = 1, in_channels: int = 3
    ) -> None:
        super().__init__()
        _check_widths(widths)
        stem = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0])]
        layers: list[nn.Module] = [*stem, nn.ReLU(inplace=True)]
        channels = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                layers.append(_BasicBlock(channels, width, 2 if stage > 0 and block == 0 else 1))
                channels = width
        self.body = nn.Sequential(*layers)
        self.add_head(channels, num_classes)


class VGG(BenchNet):
    """VGG-style classifier: per width, ``convs`` x (conv3x3 -> BN -> ReLU), then 2x2 max-pool; global average pool.

    Shapes:
        input ``(B, in_channels, S, S)``; :meth:`features` ``(B, widths[-1])``.
    """

    def __init__(
        self, widths: Sequence[int], num_classes: int = 10, convs: int = 2, in_channels: int = 3
    ) -> None:
        super().__init__()
        _check_widths(widths)
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            for _ in range(convs):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.add_head(channels, num_classes)


def make_teacher(num_classes: int = 10, widths: Sequence[int] = TEACHER_WIDTHS) -> ConvNet:
    """The benchmark teacher (default widths 32-64-128)."""
    return ConvNet(widths, num_classes)


def make_student(num_classes: int = 10, widths: Sequence[int] = STUDENT_WIDTHS) -> ConvNet:
    """The benchmark student (default widths 16-32-64)."""
    return ConvNet(widths, num_classes)


# -- the architectures as bench components ------------------------------------------


def _halvings_fit(widths: Sequence[int], image_size: int, halvings: int) -> None:
    if image_size >> halvings < 1:
        raise ValueError(f"{len(widths)} stages halve {image_size}x{image_size} images below one pixel")


@architecture("convnet")
def convnet(widths: tuple[int, ...], num_classes: int, image_size: int) -> ConvNet:
    """The bench CNN: per width conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool, global average pool."""
    _halvings_fit(widths, image_size, len(widths))
    return ConvNet(widths, num_classes)


@architecture("convnet_nobn")
def convnet_nobn(widths: tuple[int, ...], num_classes: int, image_size: int) -> ConvNet:
    """The bench CNN without BatchNorm: per width conv3x3 (with bias) -> ReLU -> 2x2 max-pool."""
    _halvings_fit(widths, image_size, len(widths))
    return ConvNet(widths, num_classes, batchnorm=False)


class ResNetParams(BaseModel):
    """Parameters of the ``resnet`` architecture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocks: int = Field(default=1, ge=1, le=8, description="basic blocks per stage")


@architecture("resnet", ResNetParams)
def resnet(widths: tuple[int, ...], num_classes: int, image_size: int, params: ResNetParams) -> ResNet:
    """ResNet-style: conv3x3-BN stem, per width `blocks` basic blocks (stride 2 from the second width)."""
    _halvings_fit(widths, image_size, len(widths) - 1)
    return ResNet(widths, num_classes, params.blocks)


class VGGParams(BaseModel):
    """Parameters of the ``vgg`` architecture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    convs: int = Field(default=2, ge=1, le=8, description="conv3x3-BN-ReLU layers per stage")


@architecture("vgg", VGGParams)
def vgg(widths: tuple[int, ...], num_classes: int, image_size: int, params: VGGParams) -> VGG:
    """VGG-style: per width `convs` conv3x3 -> BN -> ReLU, then 2x2 max-pool; global average pool."""
    _halvings_fit(widths, image_size, len(widths))
    return VGG(widths, num_classes, params.convs)


def build_network(
    network: Resolved, widths: Sequence[int], num_classes: int, image_size: int, field: str
) -> BenchNet:
    """Build the resolved architecture ``network`` for ``image_size`` x ``image_size`` RGB inputs.

    :param field: the config field that names the architecture, for errors.
    :raises ConfigError: the widths do not fit the image size.
    :raises PluginError: the architecture raised otherwise, or returned no
        :class:`BenchNet` with ``num_classes`` logits.
    """
    try:
        model = network(widths=tuple(widths), num_classes=num_classes, image_size=image_size)
    except ValueError as exc:
        raise ConfigError(field, f"architecture {network.name!r}: {exc}") from exc
    except Exception as exc:  # re-raised naming the architecture
        raise PluginError(network.name, "architecture", f"raised {exc!r}") from exc
    if not isinstance(model, BenchNet) or model.num_classes != num_classes:
        raise PluginError(
            network.name,
            "architecture",
            f"returned {type(model).__name__}, not a BenchNet with {num_classes} logits (its features, then head)",
        )
    return model
