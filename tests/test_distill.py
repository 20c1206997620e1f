"""``dfkd-guard distill``: a teacher defined outside the package, trained on real digits, distilled by each method."""

from __future__ import annotations

import json
import os
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
    rest = rest[: rest.index("[adapter]")] + rest[rest.index("[optimizer]") :]
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
            "code.pt: not a loadable weights file of plain tensors",
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
        (lambda t: t.replace("iterations = 300", "iterations = 0"), "iterations"),
        (lambda t: t.replace("iterations = 300", 'iterations = "300"'), "iterations"),
        (lambda t: t + "\n[guard.normalization]\nmean = [0.5]\nstd = [0.5]\n", "guard"),
        (lambda t: t.replace("lr = 3e-3", "lr = nan"), "optimizer.lr"),
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


# -- torchrun: sharded synthesis, data-parallel student steps --------------------------------------------------------


def torchrun(config: Path, output: Path, processes: int = 2, **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command += ["-m", "dfkd_guard.cli", "distill", str(config), "--quiet", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def kill_every_process_of(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in entry.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass  # gone already


def finished(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def parallel_config(example: Path) -> Path:
    """Six DFQ iterations, SGD, whose guard judges the (ordinary) teacher after two scored batches."""
    path = write_config(example, "dfq", iterations=6)
    text = (
        path.read_text()
        .replace("skip_batches = 20", "skip_batches = 0")
        .replace("warmup_batches = 60", "warmup_batches = 2")
        .replace('kind = "adam"\nlr = 3e-3', 'kind = "sgd"\nlr = 0.05')
    )
    assert 'kind = "sgd"' in text
    path.write_text(text)
    return path


def test_two_processes_hold_one_student_and_one_verdict(example: Path, parallel_config: Path) -> None:
    out = finished(torchrun(parallel_config, example / "two"))
    assert "6 iterations on 2 processes, guard ordinary" in out
    assert out.count("run folder:") == 1  # only the first process reports
    summary = json.loads((example / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["students_identical"] is True
    assert summary["verdicts"] == ["ordinary", "ordinary"]


@pytest.mark.parametrize("method", ["deepinversion", "cmi"])
def test_pooled_methods_shard_synthesis_and_hold_one_student(example: Path, method: str) -> None:
    """Each process optimises half of every round's images; the gathered pools keep the students identical."""
    config = write_config(example, method, iterations=3)
    out = finished(torchrun(config, example / f"two-{method}"))
    summary = json.loads((example / f"two-{method}" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["students_identical"] is True, out
    assert len(set(summary["verdicts"])) == 1


def test_two_processes_match_one_with_the_same_global_batch(example: Path, parallel_config: Path) -> None:
    """Equal up to what each process computes on its rows alone: the student's and the generator's BatchNorm
    statistics and the class-balance term."""
    if not (example / "two" / "student.pt").exists():
        finished(torchrun(parallel_config, example / "two"))
    finished(torchrun(parallel_config, example / "one", processes=1))
    one = torch.load(example / "one" / "student.pt", weights_only=True)
    two = torch.load(example / "two" / "student.pt", weights_only=True)
    gaps = {k: float((one[k] - two[k]).abs().max()) for k in one if one[k].is_floating_point()}
    assert max(gaps.values()) < 1e-2, gaps
    assert max(gaps.values()) > 0  # not the same computation: the shards did run apart


def test_a_killed_parallel_run_resumes_on_two_processes_or_one(example: Path, parallel_config: Path) -> None:
    if not (example / "two" / "student.pt").exists():
        finished(torchrun(parallel_config, example / "two"))
    killed = example / "two-killed"
    process = torchrun(parallel_config, killed)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_every_process_of(str(killed))  # torchrun's workers run in sessions of their own
    process.communicate()
    assert not (killed / "student.pt").exists(), "the run finished before the kill: the test proved nothing"
    shutil.copytree(killed, example / "one-resumed")
    finished(torchrun(parallel_config, killed))
    expected = torch.load(example / "two" / "student.pt", weights_only=True)
    got = torch.load(killed / "student.pt", weights_only=True)
    assert all(torch.equal(expected[k], got[k]) for k in expected)  # same world size: bit for bit
    finished(
        torchrun(parallel_config, example / "one-resumed", processes=1)
    )  # another world size resumes too
    assert json.loads((example / "one-resumed" / "summary.json").read_text())["iterations"] == 6


def test_bfloat16_runs_under_autocast_and_a_resume_must_keep_it(
    example: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DFKD_GUARD_DEBUG", raising=False)
    config = write_config(example, "dfq", precision='"bfloat16"')
    text = (
        config.read_text()
        .replace("skip_batches = 20", "skip_batches = 0")
        .replace("warmup_batches = 60", "warmup_batches = 1")
    )
    config.write_text(text)
    output = example / "bf16"
    assert main(["distill", str(config), "--quiet", "--output", str(output)]) == 0
    assert "guard ordinary" in capsys.readouterr().out  # scored and judged under autocast
    assert json.loads((output / "summary.json").read_text())["synthesis_skipped"] == 0
    config.write_text(text.replace('precision = "bfloat16"', 'precision = "float32"'))
    assert main(["distill", str(config), "--quiet", "--output", str(output)]) == 2
    assert "run.precision: checkpoint 'bfloat16', now 'float32'" in capsys.readouterr().err
