"""RunLog: one JSON line per iteration, a resumed run keeps one line per iteration, TensorBoard scalars beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dfkd_guard import Guard
from dfkd_guard.distill.run_log import RunLog
from tests.conftest import SmallCNN


def test_lines_scalars_and_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = RunLog(path)
    guard = Guard({"bn_prior": {"skip_batches": 0, "warmup_batches": 1}}, SmallCNN().eval(), plugins=[log])
    log.watch(guard)
    images = torch.rand(8, 3, 8, 8)
    for step in range(3):
        guard.student_batch(images, guard.teacher(images).detach())  # the first batch decides the verdict
        guard.step_finished(step, {"loss/student": 1.0 / (step + 1), "synthesis/total": float("nan")})
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3]
    assert lines[0]["synthesis/total"] is None  # NaN is not JSON: written as null
    assert lines[-1]["guard/verdict"] in ("ordinary", "ntl-like") and "guard/separation" in lines[-1]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss/student")] == pytest.approx([1.0, 0.5, 1.0 / 3])  # float32
    path.write_text(path.read_text() + '{"iteration": 4, "cut by a ki')  # a line a kill cut short
    RunLog(path, resumed_at=2, tensorboard=False)
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2]
