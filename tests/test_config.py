"""Config errors name the field (and the file they came from)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dfkd_guard import ConfigError, Guard, GuardConfig

TOML = """
kd_temperature = 2.0

[scorer]
name = "atesc"
params = { eps = 0.0313, steps = 5, measure = "margin" }

[weighting]
name = "split"
params = { rule = "flip" }

[forget]
kind = "uniform"
weight = 0.5

[[penalties]]
name = "confidence"
weight = 0.1
params = { score = "msp" }

[normalization]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
"""


def test_toml_and_json_files_give_the_same_guard(tmp_path, teacher) -> None:
    toml_path = tmp_path / "guard.toml"
    toml_path.write_text(TOML)
    from_toml = GuardConfig.from_file(toml_path)
    json_path = tmp_path / "guard.json"
    json_path.write_text(json.dumps(from_toml.model_dump()))
    assert GuardConfig.from_file(json_path) == from_toml
    guard = Guard(toml_path, teacher, load_entrypoints=False)
    assert guard.resolved.scorer.params.steps == 5
    assert guard.resolved.penalties[0].weight == 0.1
    assert guard.config.normalization.std == (0.25, 0.25, 0.25)


def test_shorthand_names_and_defaults() -> None:
    config = GuardConfig(scorer="energy")
    assert config.scorer.name == "energy" and config.scorer.params == {}
    # defaults: atesc scores drive the BN-prior de-mixing; no student-side split or forgetting (docs/bn_prior.md)
    assert GuardConfig().scorer.name == "atesc" and GuardConfig().weighting.name == "none"
    assert GuardConfig().penalties == () and GuardConfig().forget.kind == "none"
    assert GuardConfig().bn_prior.demix and GuardConfig().weighting.name == "none"


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        (
            {"scorer": "mahalanobis"},
            "scorer.name",
            "unknown scorer 'mahalanobis'; registered: atesc, bn_deviation, energy",
        ),
        ({"weighting": "hard"}, "weighting.name", "unknown weighting 'hard'"),
        ({"penalties": ["confidence", "nope"]}, "penalties[1].name", "unknown penalty 'nope'"),
        ({"scorer": {"name": "atesc", "params": {"eps": -1}}}, "scorer.params.eps", "greater than 0"),
        ({"scorer": {"name": "atesc", "params": {"steps": "many"}}}, "scorer.params.steps", "valid integer"),
        ({"scorer": {"name": "atesc", "params": {"epsilon": 0.1}}}, "scorer.params.epsilon", "Extra inputs"),
        (
            {"scorer": {"name": "msp", "params": {"ood_when": "sometimes"}}},
            "scorer.params.ood_when",
            "'unconfident' or 'confident'",
        ),
        (
            {"weighting": {"name": "split", "params": {"quantile": 1.5}}},
            "weighting.params.quantile",
            "less than 1",
        ),
    ],
)
def test_component_errors_name_the_field(teacher, config, field, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Guard(config, teacher, load_entrypoints=False)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"kd_temperature": 0}, "kd_temperature"),
        ({"forget": {"kind": "gaussian"}}, "forget.kind"),
        ({"forget": {"weight": -1}}, "forget.weight"),
        ({"penalties": [{"name": "confidence", "weight": -0.1}]}, "penalties.0.weight"),
        ({"normalization": {"mean": [0.5], "std": [0.0]}}, "normalization"),
        ({"scorer": 3}, "scorer"),
        ({"scorers": "msp"}, "scorers"),
    ],
)
def test_top_level_errors_name_the_field(teacher, config, field) -> None:
    with pytest.raises(ConfigError) as info:
        Guard(config, teacher, load_entrypoints=False)
    assert info.value.field == field
    with pytest.raises(ValidationError):  # direct construction raises pydantic's own error
        GuardConfig(**config)


def test_file_errors_name_the_file_and_field(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("kd_temperature = -1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: kd_temperature: ") as info:
        GuardConfig.from_file(bad)
    assert info.value.source == str(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[scorer\n")
    with pytest.raises(ConfigError, match=rf"^{broken}: <file>: not valid TOML"):
        GuardConfig.from_file(broken)
    with pytest.raises(ConfigError, match="unknown config suffix '.yaml'"):
        GuardConfig.from_file(tmp_path / "guard.yaml")
    with pytest.raises(ConfigError, match="cannot read config"):
        GuardConfig.from_file(tmp_path / "missing.toml")
