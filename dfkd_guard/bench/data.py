"""Benchmark data: IDX reading, MNIST / Fashion-MNIST loading, OOD domain builders, settings.

Conventions used throughout this module:

* Grey images as returned by the loaders: ``float32`` tensors of shape
  ``(N, 1, 28, 28)`` with pixel values in ``[0, 1]`` (raw byte / 255).
* Benchmark images (every domain builder and every :class:`Setting` field):
  ``float32`` tensors of shape ``(N, 3, 32, 32)`` in ``[0, 1]``: the 28x28
  digit is zero-padded by 2 pixels on each side and repeated on 3 channels.
* Labels: ``int64`` tensors of shape ``(N,)``.

Every random choice is drawn from a :class:`torch.Generator` seeded from the
caller's ``seed`` (and, inside :func:`build_setting`, from a sub-seed derived
from the seed and the purpose), so the same seed gives bit-identical tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "Domain",
    "Setting",
    "build_setting",
    "load_digits",
    "load_fashion",
    "load_photos",
    "make_mnist_m",
    "make_rotated_mnist",
    "read_idx",
    "subseed",
    "to_rgb32",
    "verify_vendored_data",
]

Split = Literal["train", "test"]

_VENDORED_PACKAGE = "dfkd_guard.bench"
_VENDORED_DIR = "_data"
_DIGITS_FILE = "mnist_subset.npz"
_FASHION_FILE = "fashion_subset.npz"
_PHOTOS_FILE = "photos.npz"
_SUMS_FILE = "SHA256SUMS"

# IDX type byte -> numpy big-endian dtype (LeCun's IDX specification).
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) into a numpy array.

    Compression is detected from the file's first bytes, not its name. The
    header is the 4-byte magic ``00 00 <type> <ndim>`` followed by ``ndim``
    big-endian ``uint32`` dimensions; the payload must hold exactly
    ``prod(dims)`` items.

    Returns:
        Array with the header's shape, e.g. ``(N, 28, 28)`` ``uint8`` for an
        MNIST image file, ``(N,)`` ``uint8`` for a label file. Multi-byte types
        are converted to native byte order.

    Raises:
        ValueError: the magic number, type byte or payload size is wrong; the
            message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file (magic {raw[:4].hex() or 'empty'}, expected 0000<type><ndim>)"
        )
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type byte 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header_len})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize
    payload = len(raw) - header_len
    if payload != expected:
        raise ValueError(f"{path}: IDX payload is {payload} bytes, header {dims} of {dtype} needs {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------- loaders


def _vendored(name: str) -> Traversable:
    return resources.files(_VENDORED_PACKAGE).joinpath(_VENDORED_DIR).joinpath(name)


def _load_vendored(name: str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    with _vendored(name).open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        return npz[f"x_{split}"], npz[f"y_{split}"]


def _find_idx(root: Path, subdir: str, stem: str) -> Path:
    candidates = [
        folder / f"{stem}{suffix}" for folder in (root, root / subdir / "raw") for suffix in ("", ".gz")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no IDX file {stem}[.gz] under {root}; tried: {tried}")


def _load_idx_split(root: Path, subdir: str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images_path = _find_idx(root, subdir, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, subdir, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected (N, H, W) uint8 images, got {images.shape} {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{labels_path}: expected {len(images)} labels to match {images_path.name}, got shape {labels.shape}"
        )
    return images, labels


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _check_split(split: str) -> None:
    if split not in get_args(Split):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_digits(split: Split, root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Load MNIST digits.

    Args:
        split: ``"train"`` or ``"test"``.
        root: ``None`` for the vendored class-balanced subset (6000 train /
            2000 test, see ``_data/PROVENANCE.md``); otherwise a folder holding
            the raw IDX files (``train-images-idx3-ubyte[.gz]``,
            ``t10k-labels-idx1-ubyte[.gz]``, ...) either directly or in
            torchvision's layout ``<root>/MNIST/raw/``.

    Returns:
        ``(images, labels)``: ``float32`` ``(N, 1, 28, 28)`` in ``[0, 1]`` and
        ``int64`` ``(N,)`` in ``0..9``.
    """
    _check_split(split)
    arrays = (
        _load_vendored(_DIGITS_FILE, split) if root is None else _load_idx_split(Path(root), "MNIST", split)
    )
    return _to_tensors(*arrays)


def load_fashion(split: Split, root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Load Fashion-MNIST; same contract as :func:`load_digits`.

    ``root=None`` gives the vendored subset (1000 train / 1000 test, class
    balanced); a folder is searched directly and in ``<root>/FashionMNIST/raw/``.
    """
    _check_split(split)
    arrays = (
        _load_vendored(_FASHION_FILE, split)
        if root is None
        else _load_idx_split(Path(root), "FashionMNIST", split)
    )
    return _to_tensors(*arrays)


def load_photos() -> Tensor:
    """Load the vendored natural photographs used as MNIST-M crop sources.

    Returns:
        ``float32`` ``(8, 3, 128, 128)`` in ``[0, 1]`` (RGB).
    """
    with _vendored(_PHOTOS_FILE).open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        photos = npz["photos"]
    return torch.from_numpy(photos).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def verify_vendored_data() -> dict[str, str]:
    """Check every vendored file against ``_data/SHA256SUMS``.

    Returns:
        Mapping file name -> verified SHA-256 hex digest.

    Raises:
        ValueError: a listed file is missing or its digest differs (the message
            names the file and both digests), or the sums file is malformed.
    """
    sums_text = _vendored(_SUMS_FILE).read_text(encoding="utf-8")
    verified: dict[str, str] = {}
    for lineno, line in enumerate(sums_text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{_SUMS_FILE} line {lineno}: expected '<sha256>  <file>', got {line!r}")
        expected, name = parts[0].lower(), parts[1].lstrip("*")
        resource = _vendored(name)
        if not resource.is_file():
            raise ValueError(f"vendored file {name} listed in {_SUMS_FILE} is missing")
        actual = hashlib.sha256(resource.read_bytes()).hexdigest()
        if actual != expected:
            raise ValueError(f"vendored file {name}: sha256 {actual} != expected {expected}")
        verified[name] = actual
    if not verified:
        raise ValueError(f"{_SUMS_FILE} lists no files")
    return verified


# ----------------------------------------------------------------------- domains


def _check_grey(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W) grey, got shape {tuple(images.shape)}")


def to_rgb32(images: Tensor) -> Tensor:
    """Pad grey 28x28 images to 32x32 and repeat them on 3 channels.

    Args:
        images: ``(N, 1, 28, 28)`` in ``[0, 1]``.

    Returns:
        ``float32`` ``(N, 3, 32, 32)`` in ``[0, 1]``; the 2-pixel border is 0.
    """
    _check_grey(images)
    pad_h, pad_w = 32 - images.shape[2], 32 - images.shape[3]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"images larger than 32x32: {tuple(images.shape)}")
    padded = F.pad(images.float(), (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return padded.expand(-1, 3, -1, -1).contiguous()


def make_mnist_m(images: Tensor, photos: Tensor, seed: int) -> Tensor:
    """Build MNIST-M images (Ganin & Lempitsky 2015 recipe).

    For each digit ``d`` (padded to 32x32, on 3 channels) a 32x32 crop ``c`` is
    taken from a photograph at a random position and the output is
    ``|c - d|`` per channel, so the digit appears as an inverted-colour stroke
    on a natural texture.

    Args:
        images: grey digits ``(N, 1, 28, 28)`` in ``[0, 1]``.
        photos: crop sources ``(P, 3, H, W)`` in ``[0, 1]`` with ``H, W >= 32``
            (e.g. :func:`load_photos`).
        seed: seeds the choice of photograph and crop offset of every image.

    Returns:
        ``float32`` ``(N, 3, 32, 32)`` in ``[0, 1]``.
    """
    digits = to_rgb32(images)
    if photos.ndim != 4 or photos.shape[1] != 3 or photos.shape[2] < 32 or photos.shape[3] < 32:
        raise ValueError(f"photos must be (P, 3, H>=32, W>=32), got shape {tuple(photos.shape)}")
    n, (p, _, h, w) = len(digits), photos.shape
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(p, (n,), generator=gen)
    top = torch.randint(h - 31, (n,), generator=gen)
    left = torch.randint(w - 31, (n,), generator=gen)
    offsets = torch.arange(32)
    rows = (top[:, None] + offsets)[:, None, :, None]  # (N, 1, 32, 1)
    cols = (left[:, None] + offsets)[:, None, None, :]  # (N, 1, 1, 32)
    chans = torch.arange(3)[None, :, None, None]
    crops = photos.float()[which[:, None, None, None], chans, rows, cols]
    return (crops - digits).abs()


def make_rotated_mnist(images: Tensor, seed: int, angle: float = 30.0) -> Tensor:
    """Build rotated MNIST: every digit turned by ``angle`` degrees, direction seeded.

    The digit is padded to 32x32 (:func:`to_rgb32`) and rotated about the image
    centre with bilinear sampling (zeros outside); each image turns
    counter-clockwise or clockwise with probability 1/2. At 30 degrees an
    ordinary MNIST teacher keeps roughly 70% accuracy (measured on the vendored
    data), so OOD accuracy has range, while the domain stays visibly different.

    Args:
        images: grey digits ``(N, 1, 28, 28)`` in ``[0, 1]``.
        seed: seeds the rotation direction of every image.
        angle: rotation magnitude in degrees.

    Returns:
        ``float32`` ``(N, 3, 32, 32)`` in ``[0, 1]``.
    """
    padded = to_rgb32(images)
    gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(2, (len(padded),), generator=gen).float().mul_(2.0).sub_(1.0)
    theta = sign * math.radians(angle)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zeros = torch.zeros_like(theta)
    affine = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(affine, list(padded.shape), align_corners=False)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(
        0.0, 1.0
    )


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Domain:
    """One labelled image set.

    Attributes:
        name: human-readable domain name, e.g. ``"mnist/train"``.
        images: ``float32`` ``(N, 3, S, S)`` in ``[0, 1]`` (S = 32 unless
            downsampled by :func:`build_setting`).
        labels: ``int64`` ``(N,)``.
    """

    name: str
    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.shape[2] != self.images.shape[3]:
            raise ValueError(
                f"Domain {self.name}: images must be (N, 3, S, S), got {tuple(self.images.shape)}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(
                f"Domain {self.name}: labels must be ({len(self.images)},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Setting:
    """An ID / OOD benchmark setting; ID is always MNIST.

    Attributes:
        name: the setting's id in the bench config (``"mnist_m"``, ``"my_backdoor"``).
        id_train, id_test: MNIST as 3x32x32 images.
        ood_train, ood_test: the OOD domain. For close-set settings the labels
            are the digit labels of the source images (OOD accuracy is
            meaningful). In a backdoor setting (one with a trigger) the OOD
            images are triggered copies of the setting's images whose label is
            not ``target_class`` and the labels stay their true labels; the
            label the backdoor sends them to is ``target_class`` (so attack
            success rate = share of ``ood_test`` predicted as ``target_class``).
            For open-set settings (``"fashion"``) the labels are not digits.
        close_set: ``True`` when OOD labels share the ID label space.
        target_class: backdoor target class, ``None`` without a trigger.
        clean_ood_test: backdoor settings: ``ood_test``'s images before the
            trigger, the same shape; ``None`` without a trigger.
        trigger: the name of the backdoor trigger, ``None`` without one.
    """

    name: str
    id_train: Domain
    id_test: Domain
    ood_train: Domain
    ood_test: Domain
    close_set: bool
    target_class: int | None = None
    clean_ood_test: Tensor | None = None
    trigger: str | None = None


def subseed(seed: int, purpose: str) -> int:
    """A seed for one random choice, derived from ``seed`` and ``purpose`` (``"mnist_m/train"``)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def build_setting(
    name: str,
    seed: int = 0,
    image_size: int = 32,
    *,
    params: dict[str, Any] | None = None,
    trigger: str | dict[str, Any] | None = None,
    target_class: int | None = None,
    root: str | Path | None = None,
) -> Setting:
    """Build the ID (MNIST) and OOD train/test domains of one setting.

    Built-in settings (:mod:`dfkd_guard.bench.settings`):
        * ``"mnist_m"`` (close-set): MNIST-M from the vendored photographs; an
          ordinary MNIST teacher transfers poorly to it.
        * ``"rotated_mnist"`` (close-set): :func:`make_rotated_mnist`, 30
          degrees by default; an ordinary MNIST teacher does transfer to it
          (about 70%), so OOD accuracy has range.
        * ``"backdoor"``: triggered copies of the non-target ID images (by
          default the ``"patch"`` trigger: a bottom-right 4-pixel square of 1.0,
          target class 0); see :class:`Setting` for the label convention.
        * ``"fashion"`` (open-set): Fashion-MNIST as 3x32x32 images.

    Args:
        name: a registered setting or ``"package.module:attribute"``
            (:mod:`dfkd_guard.bench.registry`); also the returned setting's name.
        seed: seeds every random choice (crops, rotations); train and test use
            different derived streams.
        image_size: side of the returned images: 32, or a divisor of 32; smaller
            images are 32x32 ones averaged over (32 / image_size)-pixel squares
            (triggers are stamped at 32x32: at 16 the 4-pixel patch covers parts of
            3 pixels per side, one at full intensity).
        params: the setting's parameters (default: its defaults).
        trigger: a trigger name, or ``{"name": ..., "params": {...}}``; makes it a
            backdoor setting (default: the setting's own, ``"patch"`` for ``"backdoor"``).
        target_class: backdoor target class (default 0; needs a trigger).
        root: MNIST IDX folder (see :func:`load_digits`); ``None`` = vendored.

    Raises:
        ConfigError: unknown setting or trigger, or invalid parameters (naming the field).
    """
    from .settings import SettingSpec, resolve_setting  # the settings build on this module

    spec = SettingSpec(setting=name, params=params or {}, trigger=trigger, target_class=target_class)
    return resolve_setting(name, spec, "setting").build(seed, image_size, root)
