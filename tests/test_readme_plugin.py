"""The README's "Writing a scorer plugin" example runs as written, next to the installed example plugin."""

from __future__ import annotations

import importlib.metadata
import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.plugins import AUTOLOAD_ENV

README = Path(__file__).resolve().parent.parent / "README.md"
NAME = "logit_gap"


def readme_plugin_code() -> str:
    text = README.read_text()
    section = text.split("## Writing a scorer plugin", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the README's plugin section should hold exactly one python block"
    return blocks[0]


def test_readme_scorer_plugin_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)  # entry points load, as for a user
    module = types.ModuleType("readme_scorer_plugin")
    exec(compile(readme_plugin_code(), str(README), "exec"), module.__dict__)  # noqa: S102 - the README, as written

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    # a weighting that reads scores, so the guard has a reason to score
    guard = Guard(GuardConfig(scorer=NAME, weighting="split"), teacher, plugins=[module])
    images = torch.rand(6, 3, 4, 4)
    scores = guard.score(images)
    assert scores.shape == (6,)
    assert torch.isfinite(scores).all()
    assert guard.registry.source_of(guard.registry.provider("scorer", NAME)) == "code"

    try:
        importlib.metadata.distribution("dfkd-guard-maxlogit")
    except importlib.metadata.PackageNotFoundError:
        return  # test_entrypoint_plugin fails on this; here the README example alone is checked
    assert ("scorer", "max_logit") in guard.registry.component_map()  # both coexist
