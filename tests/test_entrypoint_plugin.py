"""The example third-party plugin, installed from ``examples/custom_scorer_plugin``.

These tests use the *installed* distribution ``dfkd-guard-maxlogit`` and its
``dfkd_guard`` entry point, as a user's environment would. CI installs it with
``pip install ./examples/custom_scorer_plugin``; without it they fail rather
than skip, so a broken entry-point path cannot go unnoticed.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from dfkd_guard import ConfigError, Guard, GuardConfig, PluginRegistry
from dfkd_guard.cli import main
from dfkd_guard.plugins import AUTOLOAD_ENV

DISTRIBUTION = "dfkd-guard-maxlogit"
ENTRY_POINT = "maxlogit"
INSTALL_HINT = (
    f"the example plugin distribution {DISTRIBUTION!r} is not installed in this environment; "
    "run `pip install ./examples/custom_scorer_plugin` from the repository root (after `pip install -e .`)"
)


@pytest.fixture(autouse=True)
def _autoload_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry points are loaded whatever the caller's environment says."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)


def installed_version() -> str:
    """The installed plugin's version; fails the calling test (not an error, not a skip) when it is missing."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    if not any(ep.group == "dfkd_guard" and ep.name == ENTRY_POINT for ep in dist.entry_points):
        pytest.fail(
            f"{DISTRIBUTION} is installed without its dfkd_guard entry point {ENTRY_POINT!r}; {INSTALL_HINT}",
            pytrace=False,
        )
    return dist.version


def test_registry_lists_max_logit_from_its_distribution() -> None:
    version = installed_version()
    found = {(rc.component.kind, rc.component.name): rc for rc in PluginRegistry().components()}
    assert ("scorer", "max_logit") in found, INSTALL_HINT
    rc = found[("scorer", "max_logit")]
    assert rc.source.startswith(DISTRIBUTION)
    assert rc.source == f"{DISTRIBUTION} {version}"
    assert rc.plugin_name == ENTRY_POINT
    assert "max logit" in rc.component.summary


def test_guard_scores_with_the_negative_max_logit(teacher: torch.nn.Module, images: torch.Tensor) -> None:
    installed_version()
    with torch.no_grad():
        logits = teacher(images)
    guard = Guard(GuardConfig(scorer="max_logit"), teacher)
    expected = -logits.max(dim=1).values
    torch.testing.assert_close(guard.score(images, logits), expected)
    torch.testing.assert_close(guard.score(images), expected)  # the guard runs the teacher itself

    confident = Guard(GuardConfig(scorer={"name": "max_logit", "params": {"ood_when": "confident"}}), teacher)
    torch.testing.assert_close(confident.score(images, logits), -expected)


def test_max_logit_params_are_validated(teacher: torch.nn.Module) -> None:
    installed_version()
    with pytest.raises(ConfigError, match="scorer.params.ood_whn"):
        Guard(GuardConfig(scorer={"name": "max_logit", "params": {"ood_whn": "confident"}}), teacher)


def test_disabling_autoload_hides_the_plugin(
    monkeypatch: pytest.MonkeyPatch, teacher: torch.nn.Module, capsys: pytest.CaptureFixture[str]
) -> None:
    installed_version()
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    names = {rc.component.name for rc in PluginRegistry().components("scorer")}
    assert "max_logit" not in names
    assert "atesc" in names  # built-ins stay
    with pytest.raises(ConfigError, match="unknown scorer 'max_logit'"):
        Guard(GuardConfig(scorer="max_logit"), teacher)
    assert main(["plugins"]) == 0
    assert " max_logit " not in capsys.readouterr().out
    # An explicit request still loads it.
    assert "max_logit" in {
        rc.component.name for rc in PluginRegistry(load_entrypoints=True).components("scorer")
    }


def test_plugins_command_shows_it_with_its_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    version = installed_version()
    assert main(["plugins"]) == 0
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.split()[:2] == ["scorer", "max_logit"]
    ]
    assert len(lines) == 1, INSTALL_HINT
    assert lines[0].split()[2:5] == [DISTRIBUTION, version, ENTRY_POINT]

    assert main(["plugins", "--no-entrypoints"]) == 0
    assert " max_logit " not in capsys.readouterr().out
