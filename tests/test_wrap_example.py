"""``examples/wrap_existing_loop.py`` is ``examples/existing_loop.py`` plus a few inserted lines, and both run."""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "examples" / "existing_loop.py"
GUARDED = ROOT / "examples" / "wrap_existing_loop.py"
DOC = ROOT / "docs" / "wrap_existing_loop.md"
MAX_ADDED_LINES = 10


def unified_diff() -> list[str]:
    """The diff shown in the docs: paths relative to the repository root, no timestamps."""
    plain = PLAIN.read_text(encoding="utf-8").splitlines()
    guarded = GUARDED.read_text(encoding="utf-8").splitlines()
    return list(difflib.unified_diff(plain, guarded, "examples/existing_loop.py", "examples/wrap_existing_loop.py", lineterm=""))


def test_guard_is_a_pure_insertion_of_few_lines() -> None:
    plain = PLAIN.read_text(encoding="utf-8").splitlines()
    guarded = GUARDED.read_text(encoding="utf-8").splitlines()
    opcodes = difflib.SequenceMatcher(a=plain, b=guarded, autojunk=False).get_opcodes()
    changes = [op for op in opcodes if op[0] != "equal"]
    assert changes, "the guarded example is identical to the plain one"
    assert {op[0] for op in changes} == {"insert"}, f"lines removed or changed: {changes}"
    added = sum(j2 - j1 for _, _, _, j1, j2 in changes)
    assert added <= MAX_ADDED_LINES, f"{added} lines added, at most {MAX_ADDED_LINES} allowed"


def test_doc_shows_the_real_diff() -> None:
    blocks = re.findall(r"^```diff\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)
    assert len(blocks) == 1, "docs/wrap_existing_loop.md must hold exactly one ```diff block"
    assert blocks[0].splitlines() == unified_diff(), (
        "the diff in docs/wrap_existing_loop.md is stale; regenerate it with\n"
        "  diff -u examples/existing_loop.py examples/wrap_existing_loop.py (without the timestamps)"
    )


def test_plain_loop_uses_dfkd_guard_only_for_the_demo_objects() -> None:
    tree = ast.parse(PLAIN.read_text(encoding="utf-8"))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    ours = [name for name in imported if name.split(".")[0] == "dfkd_guard"]
    assert ours and all(name.startswith("dfkd_guard.bench.") for name in ours), ours


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dfkd_guard.bench.data import build_setting
    from dfkd_guard.bench.teachers import TeacherConfig, train_teacher

    config = TeacherConfig(kind="sl", steps=60, lr=1e-2, widths=(8, 16, 32))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(train_teacher(config, build_setting("mnist_m")).state_dict(), path)
    return path


@pytest.mark.parametrize("example", [PLAIN, GUARDED], ids=["plain", "guarded"])
def test_example_runs(example: Path, teacher_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load(example)
    argv = ["--steps", "3", "--teacher", str(teacher_file), "--batch-size", "16", "--nz", "16", "--ngf", "8"]
    accuracy = module.main(argv)
    out = capsys.readouterr().out
    match = re.search(r"student accuracy on MNIST test: (\d\.\d+)", out)
    assert match, out
    assert 0.0 <= float(match.group(1)) <= 1.0 and float(match.group(1)) == pytest.approx(accuracy, abs=1e-4)
    assert "iter 3/3" in out
