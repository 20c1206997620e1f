"""Tests of dfkd_guard.bench.data: IDX reading, loaders, domain builders, vendored checksums."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dfkd_guard.bench import data
from dfkd_guard.bench.data import (
    build_setting,
    load_digits,
    load_fashion,
    load_photos,
    make_mnist_m,
    make_rotated_mnist,
    read_idx,
    to_rgb32,
    verify_vendored_data,
)
from dfkd_guard.bench.triggers import add_trigger


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file, optionally gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_split_folder(
    folder: Path, n_train: int, n_test: int, compress: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays


def tiny_digits(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x.idx", array, compress)
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_read_idx_bad_magic_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="broken-images-idx3-ubyte"):
        read_idx(path)


def test_read_idx_bad_size_names_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "short.idx", np.zeros((2, 2, 2), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"short\.idx.*payload"):
        read_idx(path)


# -------------------------------------------------------------------- loaders


@pytest.mark.parametrize("compress", [False, True])
def test_load_digits_from_raw_idx_folder(tmp_path: Path, compress: bool) -> None:
    arrays = write_split_folder(tmp_path, 5, 3, compress)
    x, y = load_digits("test", tmp_path)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (3,) and y.dtype == torch.int64
    np.testing.assert_allclose(x[:, 0].numpy(), arrays["t10k_images"] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), arrays["t10k_labels"])


def test_loaders_from_torchvision_layout(tmp_path: Path) -> None:
    digits = write_split_folder(tmp_path / "MNIST" / "raw", 4, 2, compress=False, seed=1)
    fashion = write_split_folder(tmp_path / "FashionMNIST" / "raw", 3, 2, compress=True, seed=2)
    x, y = load_digits("train", tmp_path)
    np.testing.assert_array_equal(y.numpy(), digits["train_labels"])
    assert x.shape == (4, 1, 28, 28)
    x, y = load_fashion("train", tmp_path)
    np.testing.assert_array_equal(y.numpy(), fashion["train_labels"])
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0


def test_loader_missing_files_names_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_digits("train", tmp_path)


def test_loader_label_count_mismatch_names_file(tmp_path: Path) -> None:
    write_split_folder(tmp_path, 4, 2, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_digits("train", tmp_path)


def test_bad_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        load_digits("validation")  # type: ignore[arg-type]


def test_vendored_subsets_are_balanced_and_scaled() -> None:
    for loader, n_train, n_test in ((load_digits, 6000, 2000), (load_fashion, 1000, 1000)):
        for split, n in (("train", n_train), ("test", n_test)):
            x, y = loader(split)
            assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10
    photos = load_photos()
    assert photos.shape == (8, 3, 128, 128) and photos.dtype == torch.float32


def test_vendored_checksums() -> None:
    verified = verify_vendored_data()
    assert set(verified) == {"mnist_subset.npz", "fashion_subset.npz", "photos.npz"}


def test_checksum_mismatch_names_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "photos.npz").write_bytes(b"not the vendored bytes")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  photos.npz\n")
    monkeypatch.setattr(data, "_vendored", lambda name: tmp_path / name)
    with pytest.raises(ValueError, match="photos.npz"):
        verify_vendored_data()


# -------------------------------------------------------------------- domains


def test_to_rgb32_pads_and_repeats() -> None:
    x = tiny_digits()
    out = to_rgb32(x)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 1, 2:30, 2:30], x[:, 0])
    assert torch.equal(out[:, 0], out[:, 2])
    assert float(out[:, :, :2].abs().sum()) == 0.0


def _check_builder(build) -> None:  # build(seed) -> Tensor
    a, b, c = build(0), build(0), build(1)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_make_mnist_m_deterministic_and_in_range() -> None:
    photos = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(5))
    x = tiny_digits()
    _check_builder(lambda seed: make_mnist_m(x, photos, seed))
    # |crop - digit|: where the digit is 0 the output is a photograph crop.
    out = make_mnist_m(torch.zeros(2, 1, 28, 28), photos, seed=3)
    assert any(
        torch.equal(out[0], photos[p, :, i : i + 32, j : j + 32])
        for p in range(3)
        for i in range(40 - 31)
        for j in range(48 - 31)
    )


def test_make_rotated_mnist_deterministic_and_in_range() -> None:
    x = tiny_digits(n=6)
    _check_builder(lambda seed: make_rotated_mnist(x, seed))
    assert torch.equal(make_rotated_mnist(x, 0, angle=0.0), to_rgb32(x))


def test_add_trigger_stamps_a_copy() -> None:
    images = torch.zeros(2, 3, 32, 32)
    out = add_trigger(images, size=4, value=1.0, position="bottom_right")
    assert float(images.sum()) == 0.0
    assert float(out.sum()) == 2 * 3 * 16
    assert torch.all(out[:, :, 27:31, 27:31] == 1.0)
    top_left = add_trigger(images, size=3, value=0.5, position="top_left")
    assert torch.all(top_left[:, :, 1:4, 1:4] == 0.5)
    with pytest.raises(ValueError, match="position"):
        add_trigger(images, position="middle")  # type: ignore[arg-type]
    at = add_trigger(images, size=2, value=0.25, position=(5, 9))  # any position: [row, column]
    assert float(at.sum()) == 2 * 3 * 4 * 0.25 and torch.all(at[:, :, 5:7, 9:11] == 0.25)
    with pytest.raises(ValueError, match="does not fit"):
        add_trigger(images, size=4, position=(30, 0))


@pytest.mark.parametrize("name", ["mnist_m", "rotated_mnist", "backdoor", "fashion"])
def test_build_setting_shapes_and_determinism(name: str) -> None:
    setting = build_setting(name, seed=0)
    for domain in (setting.id_train, setting.id_test, setting.ood_train, setting.ood_test):
        assert domain.images.shape[1:] == (3, 32, 32) and domain.images.dtype == torch.float32
        assert domain.labels.dtype == torch.int64 and len(domain.labels) == len(domain.images)
        assert 0.0 <= float(domain.images.min()) and float(domain.images.max()) <= 1.0
    assert setting.close_set == (name != "fashion")
    if name == "backdoor":
        assert setting.target_class == 0 and setting.trigger == "patch"
        assert bool((setting.ood_test.labels != 0).all())
        # the clean versions of the triggered test digits are the non-target ID test digits, in order
        assert torch.equal(setting.clean_ood_test, setting.id_test.images[setting.id_test.labels != 0])
    else:
        assert setting.target_class is None and setting.clean_ood_test is None
    if name in ("mnist_m", "rotated_mnist"):
        again = build_setting(name, seed=0)
        other = build_setting(name, seed=1)
        assert torch.equal(setting.ood_test.images, again.ood_test.images)
        assert not torch.equal(setting.ood_test.images, other.ood_test.images)


def test_build_setting_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown setting 'svhn'"):
        build_setting("svhn")  # type: ignore[arg-type]


def test_provenance_lists_current_checksums() -> None:
    provenance = (Path(data.__file__).parent / "_data" / "PROVENANCE.md").read_text(encoding="utf-8")
    for name, digest in verify_vendored_data().items():
        assert f"{digest}  {name}" in provenance, name


def test_a_smaller_image_size_averages_the_32_pixel_images() -> None:
    full = build_setting("backdoor", seed=0)
    small = build_setting("backdoor", seed=0, image_size=16)
    assert small.id_train.images.shape[1:] == (3, 16, 16)
    torch.testing.assert_close(small.ood_test.images, torch.nn.functional.avg_pool2d(full.ood_test.images, 2))
    assert torch.equal(small.ood_test.labels, full.ood_test.labels)
    # the 4-pixel trigger near the bottom-right corner keeps a full-intensity pixel at 16x16
    assert (small.ood_test.images[:, :, -3:, -3:].flatten(2).amax(dim=2) == 1.0).all()
    with pytest.raises(ValueError, match="image_size must divide 32"):
        build_setting("backdoor", image_size=12)
