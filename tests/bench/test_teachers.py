"""Tests of dfkd_guard.bench.models and dfkd_guard.bench.teachers (tiny widths, few steps)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pydantic
import pytest
import torch

from dfkd_guard import CheckpointError
from dfkd_guard.bench import teachers
from dfkd_guard.bench.data import Domain, Setting
from dfkd_guard.bench.models import ConvNet, Generator, make_student, make_teacher
from dfkd_guard.bench.ntl_losses import wang2022_loss
from dfkd_guard.bench.teachers import (
    TeacherConfig,
    evaluate_teacher,
    load_or_train_teacher,
    shifted,
    teacher_cache_key,
    train_teacher,
)
from dfkd_guard.bench.triggers import add_trigger
from dfkd_guard.serialization import save_atomic

TINY = {"widths": (4, 8), "steps": 3, "batch_size": 8, "shift": 1}


def tiny_setting(backdoor: bool = False, n: int = 24) -> Setting:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2 * n, 3, 32, 32, generator=gen)
    y = torch.arange(2 * n) % 10
    id_train, id_test = Domain("id/train", x[:n], y[:n]), Domain("id/test", x[n:], y[n:])
    if backdoor:
        keep = y != 0
        trig = add_trigger(x[keep])
        ood_x, ood_y = trig, y[keep]
    else:
        ood_x, ood_y = 1.0 - x, y
    half = len(ood_y) // 2
    return Setting(
        name="backdoor" if backdoor else "tiny",
        id_train=id_train,
        id_test=id_test,
        ood_train=Domain("ood/train", ood_x[:half], ood_y[:half]),
        ood_test=Domain("ood/test", ood_x[half:], ood_y[half:]),
        close_set=True,
        target_class=0 if backdoor else None,
        clean_ood_test=x[keep][half:] if backdoor else None,
        trigger="patch" if backdoor else None,
    )


# --------------------------------------------------------------------- models


def test_model_shapes() -> None:
    x = torch.rand(2, 3, 32, 32)
    teacher, student = make_teacher(), make_student(num_classes=7)
    assert teacher(x).shape == (2, 10) and teacher.features(x).shape == (2, 128)
    assert student(x).shape == (2, 7) and student.features(x).shape == (2, 64)
    tiny = ConvNet((4, 8), num_classes=3)
    assert tiny.features(x).shape == (2, 8)
    generator = Generator(latent_dim=16, base_channels=8)
    images = generator(torch.randn(4, 16, generator=torch.Generator().manual_seed(0))).detach()
    assert images.shape == (4, 3, 32, 32)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    with pytest.raises(ValueError, match=r"z must be \(B, 16\)"):
        generator(torch.zeros(2, 5))


# ------------------------------------------------------------------------ loss


def _kernel_sum(u: torch.Tensor, v: torch.Tensor, h0: float) -> float:
    d2 = float(((u - v) ** 2).sum())
    return sum(math.exp(-d2 / (h0 * 2.0 ** (j - 2))) for j in range(5))


def test_ntl_loss_matches_formula() -> None:
    gen = torch.Generator().manual_seed(3)
    li, lo = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    yi, yo = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 3, 2, 1])
    fi, fo = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen) + 1.0
    alpha, beta = 0.7, 0.3

    def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
        return -sum(
            float(torch.log(torch.softmax(logits[i], 0)[labels[i]])) for i in range(len(labels))
        ) / len(labels)

    pooled = torch.cat([fi, fo])
    n = len(pooled)
    h0 = sum(float(((pooled[i] - pooled[j]) ** 2).sum()) for i in range(n) for j in range(n) if i != j) / (
        n * n - n
    )
    kxx = sum(_kernel_sum(a, b, h0) for a in fi for b in fi) / 16
    kyy = sum(_kernel_sum(a, b, h0) for a in fo for b in fo) / 16
    kxy = sum(_kernel_sum(a, b, h0) for a in fi for b in fo) / 16
    mmd = kxx + kyy - 2 * kxy
    expected = mean_nll(li, yi) - min(1.0, alpha * mean_nll(lo, yo)) * min(1.0, beta * mmd)

    got = wang2022_loss(li, yi, lo, yo, fi, fo, alpha=alpha, beta=beta)
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert 0 < beta * mmd < 1 and alpha * mean_nll(lo, yo) > 1  # both cap branches exercised


def test_ntl_loss_finite_on_saturated_logits() -> None:
    logits = torch.full((2, 3), -200.0)
    logits[:, 0] = 200.0
    loss = wang2022_loss(
        logits,
        torch.tensor([0, 0]),
        logits.clone().requires_grad_(),
        torch.tensor([1, 2]),
        torch.randn(2, 4),
        torch.randn(2, 4),
    )
    assert torch.isfinite(loss)


# -------------------------------------------------------------------- config


def test_config_validation_names_field() -> None:
    with pytest.raises(pydantic.ValidationError, match="setting"):
        TeacherConfig(setting="my:setting")  # an id, not a component name
    with pytest.raises(pydantic.ValidationError, match="steps"):
        TeacherConfig(steps=0)
    with pytest.raises(pydantic.ValidationError, match="unknown_field"):
        TeacherConfig(unknown_field=1)  # type: ignore[call-arg]


# -------------------------------------------------------------- train / cache


def test_training_ignores_the_callers_thread_count() -> None:
    data = tiny_setting()
    config = TeacherConfig(kind="ntl", setting="mnist_m", **{**TINY, "widths": (16, 32), "steps": 5})
    before = torch.get_num_threads()
    try:
        weights = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            weights.append(train_teacher(config, data).state_dict())
            assert torch.get_num_threads() == threads  # restored
    finally:
        torch.set_num_threads(before)
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_shifted_translates_the_batch_and_pads_with_zeros() -> None:
    images = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4).repeat(2, 3, 1, 1)
    seen = set()
    for seed in range(30):
        out = shifted(images, 1, torch.Generator().manual_seed(seed))
        assert out.shape == images.shape and torch.equal(out[0], out[1])  # one offset per batch
        offsets = [
            (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if torch.equal(out, _translate(images, dy, dx))
        ]
        assert len(offsets) == 1
        seen.add(offsets[0])
    assert len(seen) == 9  # every offset in [-1, 1]^2 occurs


def _translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


@pytest.mark.parametrize("kind", ["sl", "ntl", "ntl_backdoor"])
def test_train_is_deterministic(kind: str) -> None:
    backdoor = kind == "ntl_backdoor"
    data = tiny_setting(backdoor=backdoor)
    config = TeacherConfig(kind=kind, setting="backdoor" if backdoor else "tiny", **TINY)
    a, b = train_teacher(config, data), train_teacher(config, data)
    assert not a.training
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    metrics = evaluate_teacher(a, data)
    assert set(metrics) == ({"id_acc", "ood_acc", "asr"} if backdoor else {"id_acc", "ood_acc"})
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_setting()
    config = TeacherConfig(kind="ntl", setting="tiny", **TINY)
    first = load_or_train_teacher(config, tmp_path, data=data)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [
        f"teacher-ntl-tiny-wang2022-convnet-{teacher_cache_key(config, data)[:16]}.pt"
    ]
    with pytest.raises(ValueError, match="'mnist_m' was given the data of setting 'tiny'"):
        load_or_train_teacher(config.model_copy(update={"setting": "mnist_m"}), tmp_path, data=data)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache miss: teacher was retrained")

    monkeypatch.setattr(teachers, "train_teacher", no_training)
    second = load_or_train_teacher(config, tmp_path, data=data)
    assert first.state_dict().keys() == second.state_dict().keys()
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert teacher_cache_key(config.model_copy(update={"seed": 1}), data) != teacher_cache_key(config, data)


def test_one_sl_teacher_serves_every_setting_and_ntl_teachers_do_not() -> None:
    data = tiny_setting()
    other_ood = dataclasses.replace(data, ood_train=data.id_test)
    sl = TeacherConfig(kind="sl", **TINY)
    for setting in ("rotated_mnist", "fashion", "backdoor"):
        again = sl.model_copy(update={"setting": setting, "data_seed": 3})
        assert teacher_cache_key(again, other_ood) == teacher_cache_key(sl, data)
    ntl = TeacherConfig(kind="ntl", setting="tiny", **TINY)
    assert teacher_cache_key(ntl, other_ood) != teacher_cache_key(ntl, data)
    assert teacher_cache_key(ntl.model_copy(update={"setting": "fashion"}), data) != teacher_cache_key(
        ntl, data
    )
    assert teacher_cache_key(sl.model_copy(update={"image_size": 16}), data) != teacher_cache_key(sl, data)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a loadable teacher cache file"),
        (b"PK\x03\x04 truncated zip", "not a loadable teacher cache file"),
        (None, "does not fit the configured teacher"),
    ],
    ids=["empty", "truncated", "other-architecture"],
)
def test_a_bad_cache_file_is_one_named_error(tmp_path: Path, content: bytes | None, reason: str) -> None:
    data = tiny_setting()
    config = TeacherConfig(kind="sl", **TINY)
    path = tmp_path / f"teacher-sl-convnet-{teacher_cache_key(config, data)[:16]}.pt"
    if content is None:
        save_atomic({"head.weight": torch.zeros(3, 3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as caught:
        load_or_train_teacher(config, tmp_path, data=data)
    assert caught.value.path == str(path)
    assert caught.value.__cause__ is None


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cache_refuses_pickled_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_setting()
    config = TeacherConfig(kind="sl", **TINY)
    key = teacher_cache_key(config, data)
    path = tmp_path / f"teacher-sl-convnet-{key[:16]}.pt"
    marker = tmp_path / "code-was-executed"
    torch.save({"head.weight": _Payload(marker)}, path)
    monkeypatch.setattr(teachers, "train_teacher", lambda *a, **k: pytest.fail("should not retrain"))
    with pytest.raises(ValueError, match=path.name):
        load_or_train_teacher(config, tmp_path, data=data)
    assert not marker.exists()
    assert path.exists()  # left for inspection, not silently overwritten


def test_evaluate_open_set_reports_id_only() -> None:
    data = tiny_setting()
    open_set = Setting("fashion", data.id_train, data.id_test, data.ood_train, data.ood_test, close_set=False)
    model = ConvNet((4,), num_classes=10)
    assert set(evaluate_teacher(model, open_set)) == {"id_acc"}
