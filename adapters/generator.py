"""The DFQ / DCGAN-style generator of the generator-based adapters (vanilla DFKD, CMI) and of ``distill``."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Generator"]


class Generator(nn.Module):
    """``G(z)``: ``z -> Linear -> (2*base) x s/4 x s/4 -> BN -> [upsample x2, conv3x3, BN, LeakyReLU(0.2)] x 2
    -> conv3x3 -> Sigmoid``.

    :param latent_dim: size of ``z``.
    :param base_channels: width of the last hidden stage (the first has twice as many).
    :param out_channels: image channels.
    :param img_size: output side ``s``; divisible by 4.

    Input ``z`` (B, latent_dim), any real values (standard normal in the
    adapters); output (B, out_channels, img_size, img_size) in (0, 1): pixels.
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
        """Images (B, out_channels, img_size, img_size) in (0, 1)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (B, {self.latent_dim}), got shape {tuple(z.shape)}")
        x = self.project(z).view(-1, self._init_channels, self._init_side, self._init_side)
        return self.body(x)
