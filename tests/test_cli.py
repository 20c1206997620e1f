"""The ``dfkd-guard`` command line."""

from __future__ import annotations

import json

import pytest

from dfkd_guard.cli import main
from dfkd_guard.plugins import DEBUG_ENV


def test_plugins_lists_every_builtin_with_its_source(capsys) -> None:
    assert main(["plugins", "--no-entrypoints", "--params"]) == 0
    out = capsys.readouterr().out
    for kind, name in [
        ("scorer", "atesc"),
        ("scorer", "bn_deviation"),
        ("weighting", "split"),
        ("penalty", "input_gradient"),
    ]:
        assert any(line.split()[:3] == [kind, name, "built-in"] for line in out.splitlines()), name
    assert "eps = 0.01568" in out  # --params shows defaults


def test_plugins_marks_code_plugins(capsys) -> None:
    assert main(["plugins", "--no-entrypoints", "-p", "tests.plugin_for_cli"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if " always_ood " in line)
    assert line.split()[:3] == ["scorer", "always_ood", "code"]


def test_plugins_names_a_module_that_does_not_import(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)  # what a user sees: one line, no traceback
    assert main(["plugins", "-p", "no_such_module_xyz"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("dfkd-guard: error: plugin 'no_such_module_xyz', hook import")


def test_check_config_prints_the_resolved_config(tmp_path, capsys) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('weighting = "split"\n[scorer]\nname = "energy"\nparams = { ood_when = "confident" }\n')
    assert main(["check-config", str(path)]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["scorer"] == {"name": "energy", "params": {"ood_when": "confident", "temperature": 1.0}}
    assert resolved["weighting"]["params"]["rule"] == "two_means"


def test_check_config_reports_the_file_and_field(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    path = tmp_path / "guard.json"
    path.write_text('{"scorer": {"name": "atesc", "params": {"steps": 0}}}')
    assert main(["check-config", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"dfkd-guard: error: {path}: scorer.params.steps: ")
    assert "greater than or equal to 1" in line
