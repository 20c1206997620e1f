"""The guarded examples are their plain loops plus at most 8 lines, run, and get what the adapters get."""

from __future__ import annotations

import ast
import copy
import difflib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch

from dfkd_guard import Guard, GuardConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "wrap_existing_loop.md"
#: (plain loop, guarded copy, command-line options of a short run)
PAIRS = {
    "generator": (
        "existing_loop.py",
        "wrap_existing_loop.py",
        ["--steps", "3", "--batch-size", "16", "--nz", "16", "--ngf", "8"],
    ),
    "pool": (
        "existing_pool_loop.py",
        "wrap_existing_pool_loop.py",
        ["--rounds", "2", "--iterations", "3", "--kd-steps", "2", "--batch-size", "16"],
    ),
}
MAX_CHANGED_LINES = 8


def read_lines(name: str) -> list[str]:
    return (ROOT / "examples" / name).read_text(encoding="utf-8").splitlines()


def unified_diff(plain: str, guarded: str) -> list[str]:
    """The diff shown in the docs: paths relative to the repository root, no timestamps."""
    return list(
        difflib.unified_diff(
            read_lines(plain), read_lines(guarded), f"examples/{plain}", f"examples/{guarded}", lineterm=""
        )
    )


@pytest.mark.parametrize("pair", PAIRS)
def test_guard_changes_at_most_eight_marked_lines(pair: str) -> None:
    plain, guarded = PAIRS[pair][:2]
    opcodes = difflib.SequenceMatcher(
        a=read_lines(plain), b=read_lines(guarded), autojunk=False
    ).get_opcodes()
    guarded_lines = read_lines(guarded)
    changed = [
        line
        for tag, _, _, j1, j2 in opcodes
        if tag != "equal"
        for line in guarded_lines[j1:j2]
        if line.strip()
    ]
    assert changed, "the guarded example is identical to the plain one"
    assert all(tag != "delete" for tag, *_ in opcodes), "the guard removes no line of the loop"
    assert len(changed) <= MAX_CHANGED_LINES, f"{len(changed)} lines added or changed: {changed}"
    assert all(line.rstrip().endswith("# guard") for line in changed), changed


@pytest.mark.parametrize("pair", PAIRS)
def test_examples_import_no_adapter(pair: str) -> None:
    for name in PAIRS[pair][:2]:
        tree = ast.parse((ROOT / "examples" / name).read_text(encoding="utf-8"))
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        ]
        assert not [m for m in imported if m.startswith("dfkd_guard.adapters")], name
        ours = [m for m in imported if m.split(".")[0] == "dfkd_guard"]
        assert all(m == "dfkd_guard" or m.startswith("dfkd_guard.bench.") for m in ours), ours


def test_doc_shows_the_real_diffs() -> None:
    blocks = re.findall(
        r"^```diff\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE
    )
    assert [block.splitlines() for block in blocks] == [unified_diff(*PAIRS[p][:2]) for p in PAIRS], (
        "the diffs in docs/wrap_existing_loop.md are stale; regenerate them with\n"
        "  diff -u examples/existing_loop.py examples/wrap_existing_loop.py (and the pool pair), without timestamps"
    )


def load(name: str) -> ModuleType:
    path = ROOT / "examples" / name
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


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("guarded", [False, True], ids=["plain", "guarded"])
def test_example_runs(
    pair: str, guarded: bool, teacher_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain_name, guarded_name, argv = PAIRS[pair]
    module = load(guarded_name if guarded else plain_name)
    accuracy = module.main([*argv, "--teacher", str(teacher_file)])
    out = capsys.readouterr().out
    match = re.search(r"student accuracy on MNIST test: (\d\.\d+)", out)
    assert match, out
    assert 0.0 <= float(match.group(1)) <= 1.0 and float(match.group(1)) == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.parametrize("separation", [0.0, 0.1], ids=["ntl-like", "default-calibration"])
def test_wrapped_generator_loop_matches_the_vanilla_adapter(teacher_file: Path, separation: float) -> None:
    """Same teacher, seed and terms: the hand-wrapped loop and the adapter end with the same guard and student."""
    from dfkd_guard.adapters.training import train
    from dfkd_guard.adapters.vanilla import VanillaConfig, VanillaSynthesizer
    from dfkd_guard.bench.models import Generator, make_student, make_teacher

    example = load("wrap_existing_loop.py")
    teacher = make_teacher(widths=(8, 16, 32))
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True))
    teacher.eval().requires_grad_(False)
    config = GuardConfig(bn_prior={"skip_batches": 2, "warmup_batches": 6, "ntl_separation": separation})
    torch.manual_seed(0)
    student, generator = make_student(widths=(4, 8, 16)), Generator(latent_dim=16, base_channels=8)
    students = [student, copy.deepcopy(student)]
    generators = [generator, copy.deepcopy(generator)]

    def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    wrapped = example.Synthesizer(teacher, students[0], generators[0], 16, batch_size=16)
    wrapped.guard.close()
    wrapped.guard = Guard(config, teacher)
    torch.manual_seed(1)
    example.train(wrapped, teacher, students[0], sgd(students[0]), steps=10, kd_steps=2, log_every=100)
    wrapped.guard.close()
    wrapped.remove_hooks()

    adapter_config = VanillaConfig(batch_size=16, generator_lr=1e-2, oh=1.0, bn=10.0, adv=1.0, balance=0.0)
    with Guard(config, teacher) as guard:
        adapter = VanillaSynthesizer(teacher, students[1], generators[1], 16, guard, adapter_config)
        torch.manual_seed(1)
        train(adapter, sgd(students[1]), 10, kd_steps=2, progress=False)
        adapter.close()
        ours, theirs = wrapped.guard.bn_prior, guard.bn_prior
        assert ours is not None and theirs is not None
        assert ours.verdict == theirs.verdict != "warming up"
        assert ours.weights == theirs.weights and ours.separation == theirs.separation
        for (m1, v1), (m2, v2) in zip(wrapped.guard.bn_targets(), guard.bn_targets()):
            assert torch.equal(m1, m2) and torch.equal(v1, v2)
    for a, b in zip(students[0].state_dict().values(), students[1].state_dict().values()):
        assert torch.equal(a, b)
