"""A checkpoint resumes only the run that wrote it, and only intact: every other file is a named error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dfkd_guard import CheckpointError, Guard, GuardConfig
from dfkd_guard.adapters.checkpoint import load_checkpoint
from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer
from dfkd_guard.adapters.training import train
from dfkd_guard.adapters.vanilla import VanillaConfig, VanillaSynthesizer
from dfkd_guard.bench.models import ConvNet, Generator
from dfkd_guard.serialization import save_atomic

ITERATIONS = 3
OFF = GuardConfig(enabled=False)


def run(
    teacher: ConvNet,
    path: Path,
    iterations: int = ITERATIONS,
    *,
    guard: GuardConfig = OFF,
    config: VanillaConfig | None = None,
    widths: tuple[int, ...] = (4, 8),
    optimizer: str = "sgd",
    schedule: bool = False,
    kd_steps: int = 1,
    adapter: str = "vanilla",
    extend: bool = False,
) -> tuple[Any, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """Train a tiny vanilla (or DeepInversion) run with a checkpoint at ``path``; returns its parts."""
    torch.manual_seed(0)
    student = ConvNet(widths)
    g = Guard(guard, teacher, load_entrypoints=False)
    if adapter == "vanilla":
        synthesizer: Any = VanillaSynthesizer(
            teacher, student, Generator(8, base_channels=4), 8, g, config or VanillaConfig(batch_size=8)
        )
    else:
        synthesizer = DeepInversionSynthesizer(
            teacher, student, g, DeepInversionConfig(batch_size=4, student_batch_size=4, iterations=1)
        )
    opt = (
        torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(student.parameters(), lr=1e-3)
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations) if schedule else None
    try:
        train(
            synthesizer,
            opt,
            iterations,
            kd_steps=kd_steps,
            scheduler=sched,
            checkpoint_path=path,
            checkpoint_every=1,
            progress=False,
            extend=extend,
        )
    finally:
        synthesizer.close()
        g.close()
    return synthesizer, opt, sched


@pytest.fixture
def checkpoint(teacher: ConvNet, tmp_path: Path) -> Path:
    """A finished 3-iteration vanilla run, guard off, SGD, no scheduler."""
    path = tmp_path / "run.ckpt"
    run(teacher, path)
    return path


CHANGED_RUNS: list[tuple[str, dict[str, Any], str]] = [
    (
        "generator-lr",
        {"config": VanillaConfig(batch_size=8, generator_lr=2e-3)},
        "adapter.config.generator_lr",
    ),
    ("pool-size", {"config": VanillaConfig(batch_size=8, pool_size=64)}, "adapter.config.pool_size"),
    ("batch-size", {"config": VanillaConfig(batch_size=4)}, "adapter.config.batch_size"),
    ("guard-on", {"guard": GuardConfig()}, "guard.enabled"),
    ("scorer", {"guard": GuardConfig(enabled=False, scorer="msp")}, "guard.scorer.name"),
    ("temperature", {"guard": GuardConfig(enabled=False, kd_temperature=4.0)}, "guard.kd_temperature"),
    ("wider-student", {"widths": (8, 8)}, "student.body.0.weight"),
    ("sgd-to-adam", {"optimizer": "adam"}, "optimizer.kind"),
    ("scheduler-added", {"schedule": True}, "scheduler.kind"),
    ("kd-steps", {"kd_steps": 2}, "kd_steps"),
    ("fewer-iterations", {"iterations": 2}, "iterations"),
    ("more-iterations", {"iterations": 5}, "iterations"),
    ("deepinversion-checkpoint-in-vanilla", {"adapter": "deepinversion"}, "adapter.kind"),
]


@pytest.mark.parametrize(
    ("change", "field"), [(c, f) for _, c, f in CHANGED_RUNS], ids=[i for i, _, _ in CHANGED_RUNS]
)
def test_a_changed_run_is_refused_naming_the_fields_and_the_file(
    teacher: ConvNet, checkpoint: Path, change: dict[str, Any], field: str
) -> None:
    before = load_checkpoint(checkpoint)
    with pytest.raises(CheckpointError) as caught:
        run(teacher, checkpoint, **change)
    assert str(checkpoint) in str(caught.value)
    assert field in caught.value.fields, caught.value.fields
    assert field in str(caught.value)
    assert "different run" in str(caught.value)
    assert load_checkpoint(checkpoint)["iteration"] == before["iteration"]  # untouched


def test_other_teacher_weights_are_refused(teacher: ConvNet, checkpoint: Path) -> None:
    changed = ConvNet((8, 16, 32))
    changed.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        changed.state_dict()["body.1.running_mean"].add_(1e-3)  # a BN statistic, not even a weight
    with pytest.raises(CheckpointError, match="teacher.sha256") as caught:
        run(changed.eval(), checkpoint)
    assert caught.value.fields == ("teacher.sha256",)


def test_the_refusal_suggests_extend_when_only_the_budget_changed(teacher: ConvNet, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"extend=True"):
        run(teacher, checkpoint, 5)
    with pytest.raises(CheckpointError) as caught:
        run(teacher, checkpoint, 5, optimizer="adam")
    assert "extend=True" not in str(caught.value)


def test_extend_cannot_shorten_a_run(teacher: ConvNet, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match=r"cannot extend to 2 iterations: the checkpoint has done 3"):
        run(teacher, checkpoint, 2, extend=True)


def test_extend_still_refuses_every_other_change(teacher: ConvNet, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError) as caught:
        run(teacher, checkpoint, 5, optimizer="adam", extend=True)
    assert caught.value.fields == ("optimizer.kind",) or "optimizer.kind" in caught.value.fields
    assert "iterations" not in caught.value.fields


def test_extend_replays_the_schedule_on_the_new_budget(teacher: ConvNet, tmp_path: Path) -> None:
    """3 cosine iterations extended to 6 end on the learning rates of a 6-iteration run, not T_max = 3."""
    _, straight, _ = run(teacher, tmp_path / "straight.ckpt", 6, schedule=True)
    run(teacher, tmp_path / "extended.ckpt", 3, schedule=True)
    _, extended, scheduler = run(teacher, tmp_path / "extended.ckpt", 6, schedule=True, extend=True)
    assert scheduler is not None and scheduler.T_max == 6  # type: ignore[attr-defined]
    assert extended.param_groups[0]["lr"] == pytest.approx(straight.param_groups[0]["lr"], abs=1e-12)
    assert load_checkpoint(tmp_path / "extended.ckpt")["iteration"] == 6
    assert load_checkpoint(tmp_path / "extended.ckpt")["fingerprint"]["scheduler.T_max"] == 6


def test_extend_without_a_scheduler_matches_the_uninterrupted_student(
    teacher: ConvNet, tmp_path: Path
) -> None:
    straight, _, _ = run(teacher, tmp_path / "straight.ckpt", 5)
    run(teacher, tmp_path / "extended.ckpt", 3)
    extended, _, _ = run(teacher, tmp_path / "extended.ckpt", 5, extend=True)
    for name, value in straight.student.state_dict().items():
        assert torch.equal(value, extended.student.state_dict()[name]), name


# -- faults in the file itself ---------------------------------------------------------


def _flip_a_bit_of(tensor: torch.Tensor, path: Path) -> None:
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "the tensor's bytes must occur once in the file"
    data[at + len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path) -> None:
    torch.save({"model": torch.zeros(3)}, path)  # a plain torch file, not written by dfkd-guard


def _pickled_code(path: Path) -> None:
    path.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")


def _a_list(path: Path) -> None:
    torch.save([1, 2, 3], path)


def _a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


FAULTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated", _truncate, "not a loadable"),
    ("random-bytes", _garbage, "not a loadable"),
    ("empty", _empty, "not a loadable"),
    ("foreign-torch-file", _foreign, "not a dfkd-guard checkpoint written by"),
    ("pickled-code", _pickled_code, "not a loadable"),
    ("a-list", _a_list, "not a dfkd-guard checkpoint written by"),
    ("a-directory", _a_directory, "no dfkd-guard checkpoint there"),
]


@pytest.mark.parametrize(("damage", "reason"), [(d, r) for _, d, r in FAULTS], ids=[i for i, _, _ in FAULTS])
def test_a_damaged_checkpoint_is_refused_naming_the_file(
    teacher: ConvNet, checkpoint: Path, damage: Callable[[Path], None], reason: str
) -> None:
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=reason) as caught:
        run(teacher, checkpoint)
    assert caught.value.path == str(checkpoint)
    error = caught.value  # no pickle / zip traceback chained to it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_a_bit_flipped_student_weight_is_refused(teacher: ConvNet, checkpoint: Path) -> None:
    weight = load_checkpoint(checkpoint)["student"]["head.weight"]
    _flip_a_bit_of(weight, checkpoint)
    with pytest.raises(CheckpointError, match=r"corrupt: its content does not match the SHA-256 digest"):
        run(teacher, checkpoint)


def test_a_checkpoint_with_non_finite_weights_is_refused(teacher: ConvNet, checkpoint: Path) -> None:
    state = load_checkpoint(checkpoint)
    state["student"]["head.bias"][0] = float("nan")
    save_atomic(state, checkpoint)  # a valid digest over a diverged student
    with pytest.raises(CheckpointError, match=r"NaN or Inf in student\.head\.bias"):
        run(teacher, checkpoint)


def test_a_checkpoint_of_an_older_format_is_refused(teacher: ConvNet, checkpoint: Path) -> None:
    state = load_checkpoint(checkpoint)
    state["format"] = 7
    save_atomic(state, checkpoint)
    with pytest.raises(CheckpointError, match=r"checkpoint format 7, this version reads"):
        run(teacher, checkpoint)


def test_a_checkpoint_missing_a_part_is_a_named_error(teacher: ConvNet, checkpoint: Path) -> None:
    state = load_checkpoint(checkpoint)
    del state["synthesizer"]["pool"]
    save_atomic(state, checkpoint)
    with pytest.raises(CheckpointError, match=r"cannot restore the run from it: KeyError: 'pool'"):
        run(teacher, checkpoint)


# -- temporary files --------------------------------------------------------------------


def test_the_next_save_removes_temporary_files_of_killed_writes(tmp_path: Path) -> None:
    target = tmp_path / "run.ckpt"
    stale = [tmp_path / f".run.ckpt.{tag}.tmp" for tag in ("abcd1234", "zz_9yx00")]
    unrelated = [
        tmp_path / ".other.ckpt.abcd1234.tmp",
        tmp_path / ".run.ckpt.notmine.tmp",
        tmp_path / "keep.tmp",
    ]
    for file in (*stale, *unrelated):
        file.write_bytes(b"partial")
    save_atomic({"x": torch.ones(2)}, target)
    assert not any(file.exists() for file in stale)
    assert all(file.exists() for file in unrelated)
    assert torch.equal(load_checkpoint(target)["x"], torch.ones(2))


WRITER = textwrap.dedent(
    """
    import sys, torch
    from dfkd_guard.serialization import save_atomic
    state = {"w": torch.randn(4_000_000)}
    print("ready", flush=True)
    while True:
        save_atomic(state, sys.argv[1])
    """
)


def test_kills_inside_the_write_leave_no_orphan_after_the_next_save(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites a 16 MB checkpoint in a loop, 8 times; then one save cleans up."""
    target = tmp_path / "run.ckpt"
    orphans = 0
    for i in range(8):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.03 * i)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        orphans = max(orphans, len(list(tmp_path.glob(".run.ckpt.*.tmp"))))
        if target.exists():
            assert load_checkpoint(target)["w"].shape == (4_000_000,)  # always the old or the new file
    save_atomic({"w": torch.zeros(1)}, target)
    assert list(tmp_path.glob(".run.ckpt.*.tmp")) == []
    assert orphans >= 1, "no kill landed inside a write: the test proved nothing"
