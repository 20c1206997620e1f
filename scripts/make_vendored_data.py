"""Rebuild the vendored benchmark data in ``dfkd_guard/bench/_data/``.

Reads the full datasets from a source folder (``mnist/`` and
``fashion-mnist/`` with the four gzipped IDX files each, and
``natural_images.npz``; the files and their SHA-256 are listed in
``dfkd_guard/bench/_data/PROVENANCE.md``) and writes, deterministically for a
given seed:

* ``mnist_subset.npz``: class-balanced MNIST subset, keys ``x_train``
  ``(6000, 28, 28)``, ``y_train`` ``(6000,)``, ``x_test`` ``(2000, 28, 28)``,
  ``y_test`` ``(2000,)``, all ``uint8``;
* ``fashion_subset.npz``: the same for Fashion-MNIST, 1000 train / 1000 test;
* ``photos.npz``: key ``photos``, ``uint8`` ``(8, 128, 128, 3)``: each
  photograph centre-cropped to a square and resized to 128x128 (Lanczos);
* ``SHA256SUMS`` in ``sha256sum`` format.

Usage::

    PYTHONPATH=. python scripts/make_vendored_data.py --source <data folder> --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from dfkd_guard.bench.data import read_idx

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dfkd_guard" / "bench" / "_data"
PHOTO_SIDE = 128


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` random images of every class, in a random order."""
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    for c, idx in enumerate(picks):
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} images, {per_class} requested")
    return rng.permutation(np.concatenate(picks))


def idx_subset(folder: Path, n_train: int, n_test: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        keep = balanced_subset(labels, n // 10, rng)
        arrays[f"x_{split}"] = np.ascontiguousarray(images[keep], dtype=np.uint8)
        arrays[f"y_{split}"] = np.ascontiguousarray(labels[keep], dtype=np.uint8)
    return arrays


def square_thumbnails(npz_path: Path, side: int) -> tuple[np.ndarray, list[str]]:
    thumbs, names = [], []
    with np.load(npz_path, allow_pickle=False) as npz:
        for name in npz.files:  # stored order: the order of the source file
            photo = npz[name]
            h, w = photo.shape[:2]
            s = min(h, w)
            top, left = (h - s) // 2, (w - s) // 2
            square = Image.fromarray(photo[top : top + s, left : left + s])
            thumbs.append(np.asarray(square.resize((side, side), Image.Resampling.LANCZOS), dtype=np.uint8))
            names.append(name)
    return np.stack(thumbs), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="folder with mnist/ and fashion-mnist/ (gzipped IDX files) and natural_images.npz",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    photos, photo_names = square_thumbnails(args.source / "natural_images.npz", PHOTO_SIDE)
    outputs = {
        "mnist_subset.npz": idx_subset(args.source / "mnist", 6000, 2000, rng),
        "fashion_subset.npz": idx_subset(args.source / "fashion-mnist", 1000, 1000, rng),
        "photos.npz": {"photos": photos, "names": np.array(photo_names)},
    }
    lines = []
    for name, arrays in outputs.items():
        path = args.out / name
        np.savez_compressed(path, **arrays)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {name}\n")
        print(f"{name}: {path.stat().st_size} bytes, sha256 {digest}")
    (args.out / "SHA256SUMS").write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
