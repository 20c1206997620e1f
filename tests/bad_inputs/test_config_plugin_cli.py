"""Bad inputs to configs, plugins and the command line: each is a clear error naming what is wrong.

Every case checks the exception type and that the error names the field,
file (and line), plugin or argument at fault.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from dfkd_guard import ConfigError, Guard, GuardConfig, PluginError, PluginRegistry, hookimpl
from dfkd_guard.cli import main
from dfkd_guard.components import Component, penalty, scorer, weighting
from dfkd_guard.plugins import AUTOLOAD_ENV, DEBUG_ENV
from dfkd_guard.sample_weights import SampleWeights

NAN = float("nan")
INF = float("inf")


class Plugin:
    """A code plugin declaring the given components."""

    def __init__(self, *components: Component) -> None:
        self.components = components

    @hookimpl
    def dfkd_guard_components(self) -> list[Component]:
        return list(self.components)


def expect_config_error(call: Callable[[], object], field: str, message: str) -> ConfigError:
    """Run ``call``; it must raise a ConfigError for ``field`` whose text names it and matches ``message``."""
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert info.value.field == field
    assert f"{field}: " in str(info.value)
    return info.value


# -- configs as mappings -------------------------------------------------------------------------

MAPPINGS = [
    pytest.param({"enabled": "off"}, "enabled", "valid boolean", id="enabled-string-off"),
    pytest.param({"enabled": 1}, "enabled", "valid boolean", id="enabled-int"),
    pytest.param({"kd_temperature": NAN}, "kd_temperature", "finite number", id="kd_temperature-nan"),
    pytest.param({"kd_temperature": -INF}, "kd_temperature", "finite number", id="kd_temperature-minus-inf"),
    pytest.param(
        {"kd_temperature": 101}, "kd_temperature", "less than or equal to 100", id="kd_temperature-cap"
    ),
    pytest.param({"kd_temperature": "2"}, "kd_temperature", "valid number", id="kd_temperature-string"),
    pytest.param({"forget": {"memory": 3.5}}, "forget.memory", "valid integer", id="forget.memory-fraction"),
    pytest.param({"forget": {"memory": "3"}}, "forget.memory", "valid integer", id="forget.memory-string"),
    pytest.param({"forget": {"memory": True}}, "forget.memory", "valid integer", id="forget.memory-bool"),
    pytest.param(
        {"forget": {"memory": 1_000_001}},
        "forget.memory",
        "less than or equal to 1000000",
        id="forget.memory-cap",
    ),
    pytest.param(
        {"forget": {"recall": 100_001}},
        "forget.recall",
        "less than or equal to 100000",
        id="forget.recall-cap",
    ),
    pytest.param(
        {"forget": {"recall": 0}}, "forget.recall", "greater than or equal to 1", id="forget.recall-zero"
    ),
    pytest.param(
        {"forget": {"weight": 1e7}}, "forget.weight", "less than or equal to 1000000", id="forget.weight-cap"
    ),
    pytest.param({"forget": {"weight": NAN}}, "forget.weight", "finite number", id="forget.weight-nan"),
    pytest.param(
        {"penalties": [{"name": "confidence", "weight": 2e6}]},
        "penalties.0.weight",
        "less than or equal to 1000000",
        id="penalty.weight-cap",
    ),
    pytest.param(
        {"penalties": ["energy", {"name": "confidence", "weight": INF}]},
        "penalties.1.weight",
        "finite number",
        id="penalty.weight-inf",
    ),
    pytest.param(
        {"penalties": [{"name": "confidence", "weight": True}]},
        "penalties.0.weight",
        "valid number",
        id="penalty.weight-bool",
    ),
    pytest.param({"penalties": "confidence"}, "penalties", "valid tuple", id="penalties-not-a-list"),
    pytest.param(
        {"bn_prior": {"demix": "yes"}}, "bn_prior.demix", "valid boolean", id="bn_prior.demix-string"
    ),
    pytest.param(
        {"bn_prior": {"warmup_batches": 1_000_001}},
        "bn_prior.warmup_batches",
        "less than or equal to 1000000",
        id="bn_prior.warmup_batches-cap",
    ),
    pytest.param(
        {"bn_prior": {"skip_batches": 2.5}},
        "bn_prior.skip_batches",
        "valid integer",
        id="bn_prior.skip_batches-float",
    ),
    pytest.param(
        {"bn_prior": {"ntl_separation": NAN}},
        "bn_prior.ntl_separation",
        "finite",
        id="bn_prior.ntl_separation-nan",
    ),
    pytest.param(
        {"bn_prior": {"ntl_separation": 101.0}},
        "bn_prior.ntl_separation",
        "less than or equal to 100",
        id="bn_prior.ntl_separation-cap",
    ),
    pytest.param(
        {"bn_prior": {"split": {"rule": "threshold", "threshold": INF}}},
        "bn_prior.split.threshold",
        "finite number",
        id="bn_prior.split.threshold-inf",
    ),
    pytest.param(
        {"normalization": {"mean": [0.5], "std": [NAN]}},
        "normalization.std.0",
        "finite number",
        id="normalization.std-nan",
    ),
    pytest.param(
        {"normalization": {"mean": [0.5, INF], "std": [0.2, 0.2]}},
        "normalization.mean.1",
        "finite number",
        id="normalization.mean-inf",
    ),
    pytest.param(
        {"normalization": {"mean": [], "std": []}},
        "normalization.mean",
        "at least 1 item",
        id="normalization-empty",
    ),
    pytest.param(
        {"normalization": {"mean": [0.5], "std": ["0.25"]}},
        "normalization.std.0",
        "valid number",
        id="normalization.std-string",
    ),
    pytest.param([1, 2], "<config>", "valid dictionary", id="config-not-a-mapping"),
]


@pytest.mark.parametrize(("config", "field", "message"), MAPPINGS)
def test_bad_config_mapping_names_the_field(config: object, field: str, message: str) -> None:
    exc = expect_config_error(lambda: GuardConfig.from_mapping(config), field, message)
    assert str(exc).startswith(f"{field}: ") and exc.source is None


# -- built-in and third-party component params ------------------------------------------------------


class LooseParams(BaseModel):
    """A third-party params model that, unlike the built-ins, lets NaN and Inf through."""

    model_config = ConfigDict(extra="forbid")

    scale: float = 1.0
    bounds: list[float] = [0.0, 1.0]


@scorer("loose", LooseParams)
def loose(logits: torch.Tensor, params: LooseParams) -> torch.Tensor:
    """scaled negative max logit"""
    return -params.scale * logits.amax(dim=1)


PARAMS = [
    pytest.param(
        {"scorer": {"name": "atesc", "params": {"steps": 101}}},
        "scorer.params.steps",
        "less than or equal to 100",
        id="atesc.steps-cap",
    ),
    pytest.param(
        {"scorer": {"name": "atesc", "params": {"steps": 3.5}}},
        "scorer.params.steps",
        "valid integer",
        id="atesc.steps-fraction",
    ),
    pytest.param(
        {"scorer": {"name": "atesc", "params": {"steps": "3"}}},
        "scorer.params.steps",
        "valid integer",
        id="atesc.steps-string",
    ),
    pytest.param(
        {"scorer": {"name": "atesc", "params": {"eps": NAN}}},
        "scorer.params.eps",
        "finite number",
        id="atesc.eps-nan",
    ),
    pytest.param(
        {"scorer": {"name": "atesc", "params": {"step_size": 2.0}}},
        "scorer.params.step_size",
        "less than or equal to 1",
        id="atesc.step_size-cap",
    ),
    pytest.param(
        {"scorer": {"name": "atesc", "params": {"clip_to_pixel_range": "true"}}},
        "scorer.params.clip_to_pixel_range",
        "valid boolean",
        id="atesc.clip-string",
    ),
    pytest.param(
        {"scorer": {"name": "energy", "params": {"temperature": 1e5}}},
        "scorer.params.temperature",
        "less than or equal to 10000",
        id="energy.temperature-cap",
    ),
    pytest.param(
        {"scorer": {"name": "odin", "params": {"temperature": INF}}},
        "scorer.params.temperature",
        "finite number",
        id="odin.temperature-inf",
    ),
    pytest.param(
        {"scorer": {"name": "odin", "params": {"temperature": 1e6}}},
        "scorer.params.temperature",
        "less than or equal to 100000",
        id="odin.temperature-cap",
    ),
    pytest.param(
        {"weighting": {"name": "split", "params": {"rule": "threshold", "threshold": NAN}}},
        "weighting.params.threshold",
        "finite number",
        id="split.threshold-nan",
    ),
    pytest.param(
        {"weighting": {"name": "split", "params": {"quantile": INF}}},
        "weighting.params.quantile",
        "finite number",
        id="split.quantile-inf",
    ),
    pytest.param(
        {"weighting": {"name": "soft", "params": {"width": 1000.0}}},
        "weighting.params.width",
        "less than or equal to 100",
        id="soft.width-cap",
    ),
    pytest.param(
        {"penalties": [{"name": "confidence", "params": {"temperature": 1e5}}]},
        "penalties[0].params.temperature",
        "less than or equal to 10000",
        id="confidence.temperature-cap",
    ),
    pytest.param(
        {"penalties": ["confidence", {"name": "input_gradient", "params": {"floor": 10.0}}]},
        "penalties[1].params.floor",
        "less than or equal to 1",
        id="input_gradient.floor-cap",
    ),
    pytest.param(
        {"scorer": {"name": "loose", "params": {"scale": NAN}}},
        "scorer.params.scale",
        "must be a finite number, got nan",
        id="third-party-param-nan",
    ),
    pytest.param(
        {"scorer": {"name": "loose", "params": {"bounds": [0.0, INF]}}},
        "scorer.params.bounds.1",
        "must be a finite number, got inf",
        id="third-party-nested-inf",
    ),
]


@pytest.mark.parametrize(("config", "field", "message"), PARAMS)
def test_bad_component_params_name_the_field(config: dict, field: str, message: str) -> None:
    components = PluginRegistry([Plugin(loose)], load_entrypoints=False).component_map()
    config = GuardConfig.from_mapping(config)
    exc = expect_config_error(lambda: config.resolve(components), field, message)
    assert str(exc).startswith(f"{field}: ")


def test_a_file_config_resolves_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text('[scorer]\nname = "atesc"\nparams = { steps = 1000 }\n', encoding="utf-8")
    config = GuardConfig.from_file(path)
    exc = expect_config_error(
        lambda: config.resolve(PluginRegistry(load_entrypoints=False).component_map(), source=str(path)),
        "scorer.params.steps",
        "less than or equal to 100",
    )
    assert exc.source == str(path) and str(exc).startswith(f"{path}: scorer.params.steps: ")


# -- config files ------------------------------------------------------------------------------------

DIRECTORY = object()  # write a directory of that name instead of a file
DEEP = 50_000

FILES = [
    pytest.param(
        "guard.toml",
        b"kd_temperature = 1.0\n# caf\xe9\n",
        "<file>",
        r"not UTF-8 text: byte 0xe9 at line 2",
        id="toml-not-utf8",
    ),
    pytest.param(
        "guard.json",
        b'{"kd_temperature": 1.0,\n "enabled": "\xff"}',
        "<file>",
        r"not UTF-8 text: byte 0xff at line 2",
        id="json-not-utf8",
    ),
    pytest.param(
        "guard.yaml", "kd_temperature: 1.0\n", "<file>", r"unknown config suffix '\.yaml'", id="yaml-suffix"
    ),
    pytest.param("guard", "kd_temperature = 1.0\n", "<file>", r"unknown config suffix ''", id="no-suffix"),
    pytest.param("absent.toml", None, "<file>", r"cannot read config: .*No such file", id="missing-file"),
    pytest.param("folder.json", DIRECTORY, "<file>", r"cannot read config: .*Is a directory", id="directory"),
    pytest.param(
        "guard.toml",
        "kd_temperature = 1.0\n\n[scorer\n",
        "<file>",
        r"not valid TOML: .*\(at line 3, column 8\)",
        id="toml-syntax-line-3",
    ),
    pytest.param(
        "guard.toml",
        "enabled = true\nenabled = false\n",
        "<file>",
        r"not valid TOML: .*line 2",
        id="toml-duplicate-key",
    ),
    pytest.param(
        "guard.json",
        '{\n  "kd_temperature": 1.0,\n  "enabled":\n}\n',
        "<file>",
        r"not valid JSON: .*line 4 column 1",
        id="json-syntax-line-4",
    ),
    pytest.param(
        "guard.json",
        '{"enabled": true,}',
        "<file>",
        r"not valid JSON: .*line 1 column 18",
        id="json-trailing-comma",
    ),
    pytest.param(
        "guard.json", "", "<file>", r"not valid JSON: Expecting value: line 1 column 1", id="json-empty"
    ),
    pytest.param(
        "guard.json",
        "[" * DEEP + "]" * DEEP,
        "<file>",
        "not valid JSON: nested too deeply",
        id="json-nested-too-deeply",
    ),
    pytest.param(
        "guard.toml",
        "a = " + "[" * DEEP + "]" * DEEP,
        "<file>",
        "not valid TOML: nested too deeply",
        id="toml-nested-too-deeply",
    ),
    pytest.param("guard.json", "[1, 2]", "<config>", "valid dictionary", id="json-top-level-list"),
    pytest.param("guard.toml", "kd_temperature = nan\n", "kd_temperature", "finite number", id="toml-nan"),
    pytest.param(
        "guard.json", '{"forget": {"weight": Infinity}}', "forget.weight", "finite number", id="json-infinity"
    ),
    pytest.param(
        "guard.json",
        '{"normalization": {"mean": [0.5, NaN], "std": [0.2, 0.2]}}',
        "normalization.mean.1",
        "finite number",
        id="json-nan-in-list",
    ),
    pytest.param("guard.toml", 'enabled = "off"\n', "enabled", "valid boolean", id="toml-enabled-off"),
    pytest.param(
        "guard.toml", "[forget]\nmemory = 3.0\n", "forget.memory", "valid integer", id="toml-memory-float"
    ),
    pytest.param(
        "guard.toml",
        "[bn_prior]\nwarmup_batches = 10_000_000\n",
        "bn_prior.warmup_batches",
        "less than or equal to 1000000",
        id="toml-warmup-cap",
    ),
]


@pytest.mark.parametrize(("name", "content", "field", "message"), FILES)
def test_bad_config_file_names_the_file_and_field(
    tmp_path: Path, name: str, content: str | bytes | object | None, field: str, message: str
) -> None:
    path = tmp_path / name
    if content is DIRECTORY:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    exc = expect_config_error(lambda: GuardConfig.from_file(path), field, message)
    assert exc.source == str(path)
    assert str(exc).startswith(f"{path}: {field}: ")


def test_lists_ints_and_a_bom_still_load(tmp_path: Path) -> None:
    """Not bad inputs: TOML/JSON lists become tuples, ints are taken for floats, a UTF-8 BOM is skipped."""
    path = tmp_path / "guard.json"
    text = '{"kd_temperature": 2, "penalties": ["confidence", {"name": "input_gradient", "weight": 1}],'
    text += ' "normalization": {"mean": [0, 0.5, 1], "std": [1, 1, 1]}}'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    config = GuardConfig.from_file(path)
    assert config.kd_temperature == 2.0 and isinstance(config.kd_temperature, float)
    assert [p.name for p in config.penalties] == ["confidence", "input_gradient"]
    assert config.normalization.mean == (0.0, 0.5, 1.0) and config.penalties[1].weight == 1.0


# -- plugins: inputs are copies, the teacher is checked in debug mode -------------------------------


@scorer("scribbles")
def scribbles(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """scores, then edits its inputs in place"""
    scores = -logits.amax(dim=1)
    images.zero_()
    logits.fill_(NAN)
    return scores


@weighting("scribbles_scores")
def scribbles_scores(scores: torch.Tensor) -> SampleWeights:
    """keeps every sample, then edits the scores in place"""
    weights = SampleWeights.keep_all(scores.numel())
    scores.fill_(NAN)
    return weights


@penalty("scribbles_images")
def scribbles_images(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """edits the generator's output in place"""
    images.mul_(0.5)
    return logits.mean()


def test_a_scorer_editing_its_inputs_leaves_the_callers_batch_intact(teacher, images) -> None:
    guard = Guard({"scorer": "scribbles"}, teacher, plugins=[Plugin(scribbles)], load_entrypoints=False)
    with torch.no_grad():
        logits = teacher(images)
    images_before, logits_before = images.clone(), logits.clone()
    scores = guard.score(images, logits)
    torch.testing.assert_close(images, images_before, rtol=0, atol=0)
    torch.testing.assert_close(logits, logits_before, rtol=0, atol=0)
    torch.testing.assert_close(scores, -logits_before.amax(dim=1))


def test_a_weighting_editing_the_scores_leaves_the_callers_scores_intact(teacher, images) -> None:
    config = {"scorer": "msp", "weighting": "scribbles_scores", "bn_prior": {"demix": False}}
    guard = Guard(config, teacher, plugins=[Plugin(scribbles_scores)], load_entrypoints=False)
    with torch.no_grad():
        logits = teacher(images)
    scores = torch.linspace(0.0, 1.0, images.shape[0])
    batch = guard.weigh(images, logits, scores)
    torch.testing.assert_close(scores, torch.linspace(0.0, 1.0, images.shape[0]), rtol=0, atol=0)
    assert torch.isfinite(batch.scores).all()


def test_a_penalty_editing_the_generators_output_is_an_error(teacher, images) -> None:
    guard = Guard(
        {"penalties": ["scribbles_images"]},
        teacher,
        plugins=[Plugin(scribbles_images)],
        load_entrypoints=False,
    )
    generated = images.clone().requires_grad_(True) * 1.0  # a non-leaf, like a generator's output
    with pytest.raises(PluginError, match="changed its images in place") as info:
        guard.generator_penalty(generated)
    assert info.value.plugin == guard.registry.provider("penalty", "scribbles_images")
    assert info.value.hook == "penalty 'scribbles_images'" and info.value.plugin in str(info.value)


def test_penalty_copies_keep_grad_to_the_generator(teacher, images) -> None:
    """Not a bad input: the logits a penalty gets are a copy that still carries grad to the images."""
    guard = Guard({"penalties": ["confidence", "input_gradient"]}, teacher, load_entrypoints=False)
    generated = images.clone().requires_grad_(True)
    guard.generator_penalty(generated).backward()
    assert generated.grad is not None and generated.grad.abs().sum() > 0


@scorer("nudges_weights")
def nudges_weights(logits: torch.Tensor, teacher: torch.nn.Module) -> torch.Tensor:
    """moves a weight of the teacher"""
    with torch.no_grad():
        teacher.head.weight.add_(1.0)
    return -logits.amax(dim=1)


@scorer("shifts_running_mean")
def shifts_running_mean(logits: torch.Tensor, teacher: torch.nn.Module) -> torch.Tensor:
    """moves the running mean of the teacher's first BN layer"""
    teacher.body[1].running_mean.add_(1.0)
    return -logits.amax(dim=1)


@scorer("forward_in_train_mode")
def forward_in_train_mode(images: torch.Tensor, teacher: torch.nn.Module) -> torch.Tensor:
    """runs the teacher in train mode, which updates its BN running statistics"""
    teacher.train()
    with torch.no_grad():
        return -teacher(images).amax(dim=1)


@scorer("leaves_train_mode")
def leaves_train_mode(logits: torch.Tensor, teacher: torch.nn.Module) -> torch.Tensor:
    """switches one BN layer of the teacher to train mode"""
    teacher.body[4].train()
    return -logits.amax(dim=1)


#: The teacher a plugin holds itself instead of taking it as an argument (set by the test).
HELD: dict[str, torch.nn.Module] = {}


@scorer("hidden_teacher")
def hidden_teacher(logits: torch.Tensor) -> torch.Tensor:
    """changes a teacher it holds itself"""
    with torch.no_grad():
        HELD["teacher"].head.bias.add_(1.0)
    return -logits.amax(dim=1)


@penalty("nudges_in_penalty")
def nudges_in_penalty(logits: torch.Tensor, teacher: torch.nn.Module) -> torch.Tensor:
    """moves a BN weight of the teacher while computing its value"""
    with torch.no_grad():
        teacher.body[4].weight.mul_(2.0)
    return logits.mean()


TEACHER_CHANGES = [
    pytest.param(
        nudges_weights, "changed the teacher's parameter 'head.weight'", id="scorer-changes-a-weight"
    ),
    pytest.param(
        shifts_running_mean,
        "changed the teacher's buffer 'body.1.running_mean'",
        id="scorer-shifts-bn-running-mean",
    ),
    pytest.param(
        forward_in_train_mode,
        "changed the teacher's buffer 'body.1.num_batches_tracked'",
        id="scorer-forward-in-train-mode",
    ),
    pytest.param(
        leaves_train_mode,
        "changed the teacher's mode: module 'body.4' is now in train mode",
        id="scorer-leaves-bn-in-train-mode",
    ),
    pytest.param(
        hidden_teacher, "changed the teacher's parameter 'head.bias'", id="scorer-changes-a-teacher-it-holds"
    ),
    pytest.param(
        nudges_in_penalty, "changed the teacher's parameter 'body.4.weight'", id="penalty-changes-a-bn-weight"
    ),
]


@pytest.mark.parametrize(("component", "message"), TEACHER_CHANGES)
def test_debug_mode_catches_a_plugin_changing_the_teacher(
    monkeypatch: pytest.MonkeyPatch, teacher, images, component: Component, message: str
) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    monkeypatch.setitem(HELD, "teacher", teacher)
    kind, name = component.kind, component.name
    config = {"penalties": [name]} if kind == "penalty" else {"scorer": name}
    guard = Guard(config, teacher, plugins=[Plugin(component)], load_entrypoints=False)
    with pytest.raises(
        PluginError, match=rf"{kind} '{name}': {message} \(checked because {DEBUG_ENV} is set\)"
    ) as info:
        if kind == "penalty":
            guard.generator_penalty(images.clone().requires_grad_(True))
        else:
            guard.score(images)
    assert info.value.plugin == guard.registry.provider(kind, name)
    assert info.value.plugin.startswith(f"{__name__}.Plugin@") and info.value.plugin in str(info.value)


def test_without_debug_mode_the_teacher_is_not_checked(
    monkeypatch: pytest.MonkeyPatch, teacher, images
) -> None:
    """The check costs a copy of the teacher per call, so it runs in debug mode only ("0" is off)."""
    monkeypatch.setenv(DEBUG_ENV, "0")
    guard = Guard(
        {"scorer": "nudges_weights"}, teacher, plugins=[Plugin(nudges_weights)], load_entrypoints=False
    )
    before = teacher.head.weight.clone()
    guard.score(images)
    assert torch.equal(teacher.head.weight, before + 1.0)


# -- plugins: entry points ---------------------------------------------------------------------------

GOOD_MODULE = '''
from dfkd_guard import hookimpl, scorer


@scorer("fake_ok")
def fake_ok(logits):
    """a working entry-point scorer"""
    return -logits.amax(dim=1)


@hookimpl
def dfkd_guard_components():
    return [fake_ok]
'''


class EntryPoints:
    """Fake installed distributions: ``.dist-info`` folders and modules on ``sys.path``.

    ``dfkd-guard-fakeok`` (entry point ``fakeok``, scorer ``fake_ok``) is
    installed first on the path; :meth:`install` adds a distribution after it.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.first, self.second = root / "first", root / "second"
        self.modules: list[str] = []
        for folder in (self.second, self.first):  # first ends up first on sys.path
            folder.mkdir()
            monkeypatch.syspath_prepend(str(folder))
        self._write(
            self.first, "dfkd-guard-fakeok", {"fakeok": "dfkd_fake_ok"}, {"dfkd_fake_ok": GOOD_MODULE}
        )

    def install(self, distribution: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        self._write(self.second, distribution, entry_points, modules)

    def _write(
        self, folder: Path, distribution: str, entry_points: dict[str, str], modules: dict[str, str]
    ) -> None:
        info = folder / f"{distribution.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[dfkd_guard]\n{lines}")
        for module, source in modules.items():
            (folder / f"{module}.py").write_text(source)
            self.modules.append(module)
        importlib.invalidate_caches()


@pytest.fixture
def entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EntryPoints]:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    fake = EntryPoints(tmp_path, monkeypatch)
    yield fake
    for module in fake.modules:
        sys.modules.pop(module, None)


OLD_HOOK_MODULE = """
from dfkd_guard import hookimpl


@hookimpl
def dfkd_guard_score(images):
    return images
"""

DECLARATION_RAISES_MODULE = """
from dfkd_guard import hookimpl


@hookimpl
def dfkd_guard_components():
    raise KeyError("oops")
"""

BROKEN_ENTRY_POINTS = [
    pytest.param("dfkd_no_such_module_xyz", {}, r"failed to load: ModuleNotFoundError", id="module-missing"),
    pytest.param(
        "dfkd_broken_import",
        {"dfkd_broken_import": "raise RuntimeError('broken at import')\n"},
        r"failed to load: RuntimeError\('broken at import'\)",
        id="import-raises-runtime-error",
    ),
    pytest.param("dfkd_fake_ok:nope", {}, r"failed to load: AttributeError", id="attribute-missing"),
    pytest.param(
        "dfkd_old_hook",
        {"dfkd_old_hook": OLD_HOOK_MODULE},
        r"failed to register: .*unknown hook 'dfkd_guard_score'",
        id="hook-outside-the-contract",
    ),
    pytest.param(
        "dfkd_decl_raises",
        {"dfkd_decl_raises": DECLARATION_RAISES_MODULE},
        r"failed to register: .*hook dfkd_guard_components: raised KeyError\('oops'\)",
        id="declaration-raises",
    ),
    pytest.param(
        "dfkd_takes_msp",
        {"dfkd_takes_msp": GOOD_MODULE.replace('@scorer("fake_ok")', '@scorer("msp")')},
        (
            r"failed to register: .*scorer 'msp' is already declared by plugin "
            r"'dfkd_guard\.scorers\.logit_scores'"
        ),
        id="name-already-taken",
    ),
    pytest.param(
        "dfkd_bad_arg",
        {
            "dfkd_bad_arg": GOOD_MODULE.replace('@scorer("fake_ok")', '@scorer("bad_arg")').replace(
                "(logits)", "(labels)"
            )
        },
        r"failed to register: .*its function takes 'labels'",
        id="function-takes-an-unknown-argument",
    ),
]


@pytest.mark.parametrize(("value", "modules", "reason"), BROKEN_ENTRY_POINTS)
def test_a_broken_entry_point_is_skipped_and_the_others_load(
    entry_points: EntryPoints, value: str, modules: dict[str, str], reason: str
) -> None:
    entry_points.install("dfkd-guard-broken", {"broken": value}, modules)
    with pytest.warns(
        UserWarning, match=rf"skipped plugin entry point 'broken' .*'dfkd-guard-broken 1\.0' {reason}"
    ):
        registry = PluginRegistry()
    [(name, message)] = registry.failed_entrypoints
    assert name == "broken" and "dfkd-guard-broken" in message
    loaded = {(rc.component.name, rc.plugin_name) for rc in registry.components()}
    assert ("fake_ok", "fakeok") in loaded and ("max_logit", "maxlogit") in loaded  # the others load
    assert ("msp", "dfkd_guard.scorers.logit_scores") in loaded
    assert not registry.manager.has_plugin("broken") and all(plugin != "broken" for _, plugin in loaded)


def test_an_entry_point_name_taken_by_another_distribution_is_skipped(entry_points: EntryPoints) -> None:
    entry_points.install("dfkd-guard-clash", {"fakeok": "dfkd_clash"}, {"dfkd_clash": GOOD_MODULE})
    with pytest.warns(UserWarning, match=r"entry point 'fakeok' .*'dfkd-guard-clash 1\.0' has the name"):
        registry = PluginRegistry()
    assert registry.failed_entrypoints == [
        (
            "fakeok",
            (
                "entry point 'fakeok' ('dfkd_clash') of distribution 'dfkd-guard-clash 1.0' "
                "has the name of an entry point of 'dfkd-guard-fakeok'"
            ),
        )
    ]
    assert registry.source_of("fakeok") == "dfkd-guard-fakeok 1.0"


def test_a_broken_code_plugin_still_raises() -> None:
    class DeclarationRaises:
        @hookimpl
        def dfkd_guard_components(self) -> list[Component]:
            raise KeyError("oops")

    with pytest.raises(
        PluginError, match=r"DeclarationRaises@\w+', hook dfkd_guard_components: raised KeyError"
    ):
        PluginRegistry([DeclarationRaises()], load_entrypoints=False)


def test_plugins_command_lists_a_failed_entry_point_and_succeeds(
    entry_points: EntryPoints, capsys: pytest.CaptureFixture[str]
) -> None:
    entry_points.install("dfkd-guard-broken", {"broken": "dfkd_no_such_module_xyz"}, {})
    with pytest.warns(UserWarning, match="entry point 'broken'"):
        assert main(["plugins", "--params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    [failed] = [line for line in lines if line.startswith("FAILED")]
    assert failed.split()[:4] == ["FAILED", "-", "entry", "point"] and " broken " in failed
    assert "'dfkd-guard-broken 1.0' failed to load: ModuleNotFoundError" in failed
    assert any(line.split()[:3] == ["scorer", "fake_ok", "dfkd-guard-fakeok"] for line in lines)


# -- the command line --------------------------------------------------------------------------------


@pytest.fixture
def user_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user sees: debug mode off."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def write(path: Path, content: str | bytes) -> str:
    """Write ``content`` to ``path``; its path as a command-line argument."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def folder(path: Path) -> str:
    """Make a directory at ``path``; its path as a command-line argument."""
    path.mkdir()
    return str(path)


def module_on_path(path: Path, name: str, source: str) -> str:
    """A plugin module ``name`` on ``sys.path``; its name as a command-line argument."""
    write(path / f"{name}.py", source)
    sys.path.insert(0, str(path))
    importlib.invalidate_caches()
    return name


BAD_SIGNATURE_MODULE = """
from dfkd_guard import hookimpl


@hookimpl
def dfkd_guard_components(bogus):
    return []
"""


CLI = [
    pytest.param(
        lambda d: ["check-config", str(d / "absent.toml")],
        ["absent.toml: <file>: cannot read config"],
        id="check-config-missing-file",
    ),
    pytest.param(
        lambda d: ["check-config", folder(d / "conf.toml")],
        ["conf.toml: <file>: cannot read config", "Is a directory"],
        id="check-config-directory",
    ),
    pytest.param(
        lambda d: ["check-config", write(d / "guard.toml", b"# \xe9\n")],
        ["guard.toml: <file>: not UTF-8 text: byte 0xe9 at line 1"],
        id="check-config-not-utf8",
    ),
    pytest.param(
        lambda d: ["check-config", write(d / "guard.yml", "")],
        ["guard.yml: <file>: unknown config suffix '.yml'"],
        id="check-config-suffix",
    ),
    pytest.param(
        lambda d: ["check-config", write(d / "guard.toml", "\n[scorer\n")],
        ["guard.toml: <file>: not valid TOML", "(at line 2, column 8)"],
        id="check-config-toml-syntax",
    ),
    pytest.param(
        lambda d: ["check-config", write(d / "guard.json", '{"kd_temperature": NaN}')],
        ["guard.json: kd_temperature: Input should be a finite number"],
        id="check-config-nan",
    ),
    pytest.param(
        lambda d: ["check-config", write(d / "guard.toml", 'enabled = "off"\n')],
        ["guard.toml: enabled: Input should be a valid boolean"],
        id="check-config-enabled-off",
    ),
    pytest.param(
        lambda d: [
            "check-config",
            write(d / "guard.toml", "[scorer]\nname = 'atesc'\nparams = { steps = 1000 }\n"),
        ],
        ["guard.toml: scorer.params.steps: Input should be less than or equal to 100"],
        id="check-config-param-cap",
    ),
    pytest.param(
        lambda d: ["check-config", write(d / "guard.toml", "scorer = 'nope'\n")],
        ["guard.toml: scorer.name: unknown scorer 'nope'"],
        id="check-config-unknown-scorer",
    ),
    pytest.param(
        lambda d: [
            "plugins",
            "--no-entrypoints",
            "-p",
            module_on_path(d, "dfkd_raises_on_import", "raise RuntimeError('first line\\nsecond line')\n"),
        ],
        [
            (
                "plugin 'dfkd_raises_on_import', hook import: cannot import plugin module: "
                "RuntimeError('first line\\nsecond line')"
            )
        ],
        id="plugins-module-raises-on-import",
    ),
    pytest.param(
        lambda d: ["plugins", "-p", module_on_path(d, "dfkd_bad_signature", BAD_SIGNATURE_MODULE)],
        [
            (
                "plugin 'dfkd_bad_signature', hook register: Plugin 'dfkd_bad_signature' for hook "
                "'dfkd_guard_components'; hookimpl definition: dfkd_guard_components(bogus); Argument(s) {'bogus'}"
            )
        ],
        id="plugins-module-hook-signature-multi-line-message",
    ),
    pytest.param(
        lambda d: ["plugins", "--no-entrypoints", "-p", "dfkd_no_such_module_xyz"],
        ["plugin 'dfkd_no_such_module_xyz', hook import", "ModuleNotFoundError"],
        id="plugins-module-missing",
    ),
    pytest.param(
        lambda d: ["plugins", "--no-entrypoints", "-p", "tests.plugin_for_cli", "-p", "tests.plugin_for_cli"],
        ["plugin 'tests.plugin_for_cli', hook register: a plugin with this name is already registered"],
        id="plugins-module-twice",
    ),
    pytest.param(
        lambda d: ["bench", "--config", str(d / "absent.toml"), "--out", str(d / "never")],
        ["absent.toml: <file>: cannot read config"],
        id="bench-config-missing",
    ),
    pytest.param(
        lambda d: [
            "bench",
            "--config",
            write(d / "bench.json", b'{"seeds": [1]\xff}'),
            "--out",
            str(d / "never"),
        ],
        ["bench.json: <file>: not UTF-8 text: byte 0xff at line 1"],
        id="bench-config-not-utf8",
    ),
    pytest.param(
        lambda d: [
            "bench",
            "--config",
            write(d / "bench.toml", "seeds = [nan]\n"),
            "--out",
            str(d / "never"),
        ],
        ["bench.toml: seeds.0"],
        id="bench-config-bad-value",
    ),
    pytest.param(
        lambda d: ["bench", "--report-only", "--out", write(d / "out.txt", "a file")],
        ["Not a directory", "out.txt"],
        id="bench-report-only-out-is-a-file",
    ),
    pytest.param(
        lambda d: ["bench", "--tiny", "--out", write(d / "out.txt", "a file")],
        ["Not a directory", "out.txt"],
        id="bench-tiny-out-is-a-file",
    ),
]


@pytest.mark.usefixtures("user_mode")
@pytest.mark.parametrize(("argv", "expected"), CLI)
def test_cli_user_error_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: Callable[[Path], list[str]],
    expected: list[str],
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # module_on_path() adds to it
    assert main(argv(tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    [line] = captured.err.splitlines()
    assert line.startswith("dfkd-guard: error: ")
    for text in expected:
        assert text in line
    assert not (tmp_path / "never").exists()


ARGPARSE = [
    pytest.param(["check-config"], "the following arguments are required: path", id="check-config-no-path"),
    pytest.param(
        ["no-such-command"], "argument COMMAND: invalid choice: 'no-such-command'", id="unknown-command"
    ),
    pytest.param(["plugins", "--bogus"], "unrecognized arguments: --bogus", id="plugins-unknown-option"),
    pytest.param(
        ["bench", "--seeds", "a,b"], "argument --seeds: expected comma-separated integers", id="bench-seeds"
    ),
    pytest.param(
        ["bench-scorers", "--teachers", "nope"], "argument --teachers:", id="bench-scorers-teachers"
    ),
    pytest.param(["bench-adapters", "--batch", "0"], "argument --batch:", id="bench-adapters-batch"),
    pytest.param(
        ["demo", "--iterations", "0"], "argument --iterations: must be >= 1, got 0", id="demo-iterations"
    ),
]


@pytest.mark.usefixtures("user_mode")
@pytest.mark.parametrize(("argv", "message"), ARGPARSE)
def test_cli_bad_arguments_exit_2_naming_the_argument(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("dfkd-guard") and ": error: " in last and message in last


def test_cli_in_debug_mode_prints_the_traceback_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert main(["check-config", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "FileNotFoundError" in err and "ConfigError" in err
    assert err.splitlines()[-1].startswith("dfkd-guard: error: ") and "absent.toml" in err.splitlines()[-1]


def test_the_installed_command_prints_one_line(tmp_path: Path) -> None:
    """End to end, in a fresh interpreter: one line on stderr, exit 2, no traceback."""
    path = write(tmp_path / "guard.toml", b"kd_temperature = 1.0\n\xff\n")
    env = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "dfkd_guard.cli", "check-config", path],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        (
            f"dfkd-guard: error: {path}: <file>: not UTF-8 text: byte 0xff at line 2 (offset 21); "
            "save the file as UTF-8"
        )
    ]
