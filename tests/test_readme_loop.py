"""README's own-loop example, run as it is: a frozen eval-mode teacher, the default guard, a logged verdict."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def own_loop_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The guard in your own loop") :]
    match = re.search(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    assert match, "README's own-loop section has no python block"
    return match.group(1)


def test_readme_loop_runs_with_the_default_guard(caplog: pytest.LogCaptureFixture) -> None:
    namespace: dict[str, object] = {"__name__": "readme_loop"}
    with caplog.at_level(logging.INFO, logger="dfkd_guard"):
        exec(compile(own_loop_block(), str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    guard, teacher = namespace["guard"], namespace["teacher"]
    assert guard.config == type(guard.config)()  # the default config
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert guard.bn_prior is not None and guard.bn_prior.verdict == "ordinary"
    assert any("BN prior:" in r.getMessage() and "ordinary teacher" in r.getMessage() for r in caplog.records)
    assert torch.isfinite(torch.stack([p.detach().sum() for p in namespace["student"].parameters()])).all()
    guard.close()
