"""``dfkd-guard distill``: a teacher defined outside the package, trained on real digits, distilled by each method."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dfkd_guard.cli import main
from dfkd_guard.distill.config import DistillConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distill"
TINY = {
    "dfq": "batch_size = 16\n",
    "deepinversion": "batch_size = 8\nstudent_batch_size = 8\niterations = 2\n",
    "cmi": "batch_size = 8\nstudent_batch_size = 8\niterations = 2\nbank_size = 64\nn_neg = 16\n",
}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example folder with a teacher trained for 60 steps on the vendored digits by its own script."""
    folder = tmp_path_factory.mktemp("distill")
    for name in ("my_models.py", "train_teacher.py", "digits.toml"):
        shutil.copy(EXAMPLE / name, folder / name)
    subprocess.run(
        [sys.executable, str(folder / "train_teacher.py"), "--steps", "60"], check=True, capture_output=True
    )
    assert (folder / "teacher.pt").is_file() and (folder / "digits_test.npz").is_file()
    return folder


def write_config(folder: Path, method: str, iterations: int = 2, **extra: str) -> Path:
    """digits.toml with a tiny budget for ``method`` and the ``extra`` top-level settings."""
    text = (EXAMPLE / "digits.toml").read_text()
    head, _, rest = text.partition("[images]")
    replaced = ("method", "iterations", "output", "checkpoint_every", "kd_steps", *extra)
    lines = [line for line in head.splitlines() if not line.startswith(replaced)]
    rest = rest.replace(
        "[adapter]                             # DFQ's term weights, with a smaller batch for a CPU\nbatch_size = 64\n",
        "",
    )
    config = "\n".join(
        [
            f'method = "{method}"',
            f"iterations = {iterations}",
            "kd_steps = 1",
            "checkpoint_every = 1",
            f'output = "{folder / ("run-" + method)}"',
            *(f"{k} = {v}" for k, v in extra.items()),
            *lines,
            "[images]" + rest,
            "[adapter]",
            TINY[method],
        ]
    )
    path = folder / f"{method}.toml"
    path.write_text(config)
    return path


def test_the_example_config_is_valid() -> None:
    config = DistillConfig.from_file(EXAMPLE / "digits.toml")
    assert config.method == "dfq" and config.images.shape == (1, 28, 28)
    assert config.guard_config().normalization == config.images.normalization


@pytest.mark.parametrize("method", ["dfq", "deepinversion", "cmi"])
def test_each_method_distils_the_teacher_into_a_run_folder(
    example: Path, method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(example, method)
    assert main(["distill", str(config), "--quiet"]) == 0
    digit_net = sys.modules["my_models"].DigitNet  # imported by distill from beside the config
    out = capsys.readouterr().out
    assert f"{method}: 2 iterations" in out and "student accuracy" in out
    run = example / f"run-{method}"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2]
    assert lines[-1]["guard/verdict"] == "warming up"  # 20 batches are skipped first
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == method and 0.0 <= summary["student_accuracy"] <= 1.0
    assert summary["teacher_accuracy"] > 0.3  # 60 steps on real digits: far above chance
    student = digit_net(width=8)
    student.load_state_dict(torch.load(run / "student.pt", weights_only=True))  # a plain state dict
    assert "| guard | warming up |" in (run / "report.md").read_text()


def test_a_killed_run_resumes_to_the_uninterrupted_student(example: Path) -> None:
    """Every run in a fresh process of the command line (the thread count, like the seed, is the process's)."""
    config = write_config(example, "dfq", iterations=6)

    def command(output: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dfkd_guard.cli",
            "distill",
            str(config),
            "--quiet",
            "--output",
            str(output),
        ]

    subprocess.run(command(example / "straight"), check=True)
    killed = example / "killed"
    process = subprocess.Popen(command(killed))
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "student.pt").exists(), "the run finished before the kill: the test proved nothing"
    subprocess.run(command(killed), check=True)

    expected = torch.load(example / "straight" / "student.pt", weights_only=True)
    got = torch.load(killed / "student.pt", weights_only=True)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3, 4, 5, 6]  # no iteration logged twice


def test_a_changed_config_is_refused_and_extend_continues(
    example: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DFKD_GUARD_DEBUG", raising=False)  # one line, no traceback
    first = write_config(example, "dfq", iterations=2)
    output = example / "changed"
    assert main(["distill", str(first), "--quiet", "--output", str(output)]) == 0
    capsys.readouterr()
    changed = write_config(example, "dfq", iterations=2, seed="0", latent_dim="32")
    assert main(["distill", str(changed), "--quiet", "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert (
        error.count("\n") == 1 and "checkpoint.ckpt" in error and "adapter.generator.project.weight" in error
    )
    longer = write_config(example, "dfq", iterations=3)
    assert main(["distill", str(longer), "--quiet", "--output", str(output)]) == 2
    assert "extend=True" in capsys.readouterr().err
    assert main(["distill", str(longer), "--quiet", "--output", str(output), "--extend"]) == 0
    assert len((output / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda t: t.replace('weights = "teacher.pt"', 'weights = "missing.pt"'),
            "missing.pt: no weights file there",
        ),
        (
            lambda t: t.replace('weights = "teacher.pt"', 'weights = "code.pt"'),
            "code.pt: not a weights file of plain tensors",
        ),
        (
            lambda t: t.replace('weights = "teacher.pt"', 'weights = "other.pt"'),
            "other.pt: the weights do not fit",
        ),
        (lambda t: t.replace('model = "my_models:DigitNet"', 'model = "my_models:Nope"', 1), "teacher.model"),
        (
            lambda t: t.replace('model = "my_models:DigitNet"', 'model = "no_such_module:X"', 1),
            "cannot import 'no_such_module'",
        ),
        (lambda t: t.replace('model = "my_models:DigitNet"', 'model = "my_models"', 1), "teacher.model"),
        (lambda t: t.replace("kwargs = { width = 8 }", "kwargs = { depth = 8 }"), "student.kwargs"),
        (lambda t: t.replace('method = "dfq"', 'method = "dfgan"'), "method"),
        (lambda t: t.replace('device = "auto"', 'device = "tpu"'), "device"),
        (lambda t: t.replace("shape = [1, 28, 28]", "shape = [1, 28]"), "images.shape"),
        (lambda t: t.replace("shape = [1, 28, 28]", "shape = [1, 30, 30]"), "generator.model"),
        (lambda t: t.replace("batch_size = 64", "batch_size = 0"), "adapter"),
        (lambda t: t.replace("batch_size = 64", "batchsize = 64"), "batchsize"),
        (lambda t: t.replace('data = "digits_test.npz"', 'data = "nothing.npz"'), "evaluation.data"),
        (lambda t: t.replace("iterations = 200", "iterations = 0"), "iterations"),
        (lambda t: t.replace("iterations = 200", 'iterations = "200"'), "iterations"),
        (lambda t: t + "\n[guard.normalization]\nmean = [0.5]\nstd = [0.5]\n", "guard"),
        (lambda t: t.replace("lr = 0.05", "lr = nan"), "optimizer.lr"),
    ],
    ids=[
        "missing-weights",
        "pickled-code-weights",
        "weights-of-another-network",
        "unknown-attribute",
        "unknown-module",
        "model-without-callable",
        "unknown-kwarg",
        "unknown-method",
        "unknown-device",
        "short-shape",
        "shape-the-generator-cannot-make",
        "bad-adapter-value",
        "unknown-adapter-setting",
        "missing-evaluation-data",
        "zero-iterations",
        "string-iterations",
        "two-normalizations",
        "nan-lr",
    ],
)
def test_a_bad_distill_config_is_one_line_naming_it(
    example: Path, edit, named: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DFKD_GUARD_DEBUG", raising=False)
    (example / "code.pt").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    torch.save({"weight": torch.zeros(2)}, example / "other.pt")
    config = example / "bad.toml"
    config.write_text(edit((EXAMPLE / "digits.toml").read_text()))
    assert main(["distill", str(config), "--quiet", "--output", str(example / "bad-run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dfkd-guard: error: ") and error.count("\n") == 1, error
    assert named in error
    assert "Traceback" not in error
