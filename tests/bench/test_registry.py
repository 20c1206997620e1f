"""The bench's registry: settings, triggers, NTL losses and architectures of your own, named in a config."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dfkd_guard.bench.config import ADAPTERS, BenchConfig
from dfkd_guard.bench.data import build_setting, load_photos
from dfkd_guard.bench.models import BenchNet, build_network
from dfkd_guard.bench.registry import BenchRegistry, ntl_loss, resolve, setting, trigger
from dfkd_guard.bench.runner import RunSpec, preflight, run_bench, run_id, teacher_config
from dfkd_guard.bench.teachers import TeacherConfig, cache_path, teacher_cache_key, train_teacher
from dfkd_guard.bn_statistics import batchnorm_layers
from dfkd_guard.cli import main
from dfkd_guard.errors import ConfigError, PluginError
from dfkd_guard.plugins import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "bench_plugin" / "mine.toml"
DOCS = ROOT / "docs" / "benchmark.md"


def _named(value: object) -> object:
    """A component's description without its summary and source (its name and parameters)."""
    if isinstance(value, dict) and "source" in value:
        return {"name": value["name"], "params": value["params"]}
    return value


def _records(out: Path) -> dict[str, dict]:
    """Stored run records by ``<setting>-<adapter>-<row>``."""
    return {p.name.split("-seed")[0]: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}


# -- components of one's own, through the public command line ------------------------------------------


def test_the_example_setting_and_trigger_run_from_their_own_file_and_the_records_name_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["bench", "--config", str(EXAMPLE), "--out", str(out), "--workers", "2"]) == 0
    records = _records(out)
    assert sorted(records) == [
        f"{s}-vanilla-{row}" for s in ("inverted", "inverted_cross") for row in ("ntl", "ntl_guard", "sl")
    ]
    backdoor = records["inverted_cross-vanilla-ntl_guard"]
    inverted = {"name": "my_settings:inverted", "params": {"background": 0.9}}
    cross = {"name": "my_settings:cross", "params": {"size": 7, "value": 1.0, "corner": "top_left"}}
    setting = backdoor["components"]["setting"]
    assert {key: _named(value) for key, value in setting.items()} == {
        "id": "inverted_cross",
        "setting": inverted,
        "close_set": True,
        "trigger": cross,
        "target_class": 3,
    }
    assert setting["setting"]["summary"].startswith("MNIST with inverted grey levels")
    module = str(EXAMPLE.parent / "my_settings.py")
    assert setting["trigger"]["source"] == setting["setting"]["source"] == f"module my_settings ({module})"
    # what the run id hashes: the same, without summaries and sources
    assert backdoor["config"]["setting_spec"] == {key: _named(value) for key, value in setting.items()}
    teacher = backdoor["components"]["teacher"]
    assert teacher["recipe"] == backdoor["teacher_kind"] == "ntl_backdoor" and teacher["target_class"] == 3
    assert _named(teacher["ntl_loss"]) == {"name": "wang2022", "params": {"alpha": 0.1, "beta": 0.1}}
    assert teacher["ntl_loss"]["source"] == "built-in" and "Wang et al." in teacher["ntl_loss"]["summary"]
    assert _named(teacher["architecture"]) == {"name": "convnet", "params": {}} and teacher["widths"] == [
        8,
        16,
    ]
    assert {"asr", "asr_minus_clean", "oacc"} <= set(backdoor["final"])
    plain = records["inverted-vanilla-ntl"]
    assert _named(plain["components"]["setting"]["setting"]) == inverted
    assert plain["components"]["setting"]["trigger"] is None and plain["teacher_kind"] == "ntl"
    assert "asr" not in plain["final"] and "oacc" in plain["final"]
    assert records["inverted-vanilla-sl"]["components"]["teacher"]["ntl_loss"] is None
    teachers = sorted(p.name.rsplit("-", 1)[0] for p in (out / "teachers").glob("*.pt"))
    assert teachers == [
        "teacher-ntl-inverted-wang2022-convnet",
        "teacher-ntl_backdoor-inverted_cross+my_settings.cross-wang2022-convnet",
        "teacher-sl-convnet",
    ]
    report = (out / "report.md").read_text()
    assert (
        '| inverted_cross | `my_settings:inverted(background=0.9)` | `my_settings:cross(size=7, value=1.0, corner="top_left")` | 3 |'
        in report
    )

    # --settings picks settings of the config by id; their runs are found, not trained again
    capsys.readouterr()
    assert main(["bench", "--config", str(EXAMPLE), "--out", str(out), "--settings", "inverted_cross"]) == 0
    assert "0 runs trained, 3 already finished" in capsys.readouterr().err
    assert "| inverted |" not in (out / "report.md").read_text()


def test_the_cross_trigger_is_stamped_on_the_non_target_images_of_the_setting() -> None:
    config = BenchConfig.from_file(EXAMPLE)
    data = config.setting("inverted_cross").build(config.data_seed, 32)
    plain = config.setting("inverted").build(config.data_seed, 32)
    keep = plain.ood_test.labels != 3
    assert torch.equal(data.clean_ood_test, plain.ood_test.images[keep])
    assert torch.equal(data.ood_test.labels, plain.ood_test.labels[keep]) and data.target_class == 3
    changed = (data.ood_test.images != data.clean_ood_test).any(dim=(0, 1))
    cross = torch.zeros(32, 32, dtype=torch.bool)
    cross[1 + 3, 1:8] = cross[1:8, 1 + 3] = True  # 7-pixel arms, 1 pixel from the top-left corner
    assert torch.equal(changed, cross)


# -- backdoors: triggers attached to settings --------------------------------------------------------------


def test_two_backdoor_settings_with_different_triggers_and_targets_in_one_config(tmp_path: Path) -> None:
    config = BenchConfig.tiny(
        settings={
            "backdoor": {},
            "checker7": {
                "setting": "backdoor",
                "trigger": {"name": "checkerboard", "params": {"size": 6, "position": "top_left"}},
                "target_class": 7,
            },
            "blended": {"setting": "mnist_m", "trigger": "blend", "target_class": 5},
        },
        adapters={"backdoor": ["vanilla"], "checker7": ["vanilla"], "blended": ["vanilla"]},
        rows=["ntl"],
    )
    assert run_bench(config, tmp_path, progress=False).ran
    records = _records(tmp_path)
    triggers = {s: _named(r["components"]["setting"]["trigger"]) for s, r in records.items()}
    assert triggers["backdoor-vanilla-ntl"] == {
        "name": "patch",
        "params": {"size": 4, "position": "bottom_right", "margin": 1, "value": 1.0},
    }
    assert triggers["checker7-vanilla-ntl"]["params"]["position"] == "top_left"
    assert triggers["blended-vanilla-ntl"] == {
        "name": "blend",
        "params": {"alpha": 0.2, "image": "photo", "photo": 0, "seed": 0},
    }
    targets = {s: r["components"]["teacher"]["target_class"] for s, r in records.items()}
    assert targets == {"backdoor-vanilla-ntl": 0, "checker7-vanilla-ntl": 7, "blended-vanilla-ntl": 5}
    assert all(r["teacher_kind"] == "ntl_backdoor" and "asr" in r["final"] for r in records.values())
    # the built-in backdoor keeps the run config (and id) of version 0.3; the others hold what they are
    assert "setting_spec" not in records["backdoor-vanilla-ntl"]["config"]
    assert records["checker7-vanilla-ntl"]["config"]["setting_spec"]["target_class"] == 7
    assert len(list((tmp_path / "teachers").glob("teacher-ntl_backdoor-*.pt"))) == 3
    assert list(
        (tmp_path / "teachers").glob("teacher-ntl_backdoor-checker7+checkerboard-wang2022-convnet-*.pt")
    )

    checker = config.setting("checker7").build(0, 32)
    assert not bool((checker.ood_test.labels == 7).any()) and bool((checker.ood_test.labels == 0).any())
    board = checker.ood_test.images[0, 0, 1:7, 1:7]
    expected = ((torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2 == 0).float()
    assert torch.equal(board, expected)
    blended = config.setting("blended").build(0, 32)
    photo = F.adaptive_avg_pool2d(load_photos()[:1], 32)[0]
    torch.testing.assert_close(blended.ood_test.images, 0.8 * blended.clean_ood_test + 0.2 * photo)


# -- NTL losses ------------------------------------------------------------------------------------------------


@ntl_loss("flat_ood")
def flat_ood(logits_id: torch.Tensor, labels_id: torch.Tensor, logits_ood: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on ID, minus the OOD logits' spread (a test loss)."""
    return F.cross_entropy(logits_id, labels_id) + logits_ood.std(dim=1).mean()


def test_the_ntl_loss_is_part_of_the_teacher_cache_key_and_of_the_run_id(tmp_path: Path) -> None:
    data = build_setting("rotated_mnist", image_size=16)
    small = {"setting": "rotated_mnist", "steps": 3, "batch_size": 8, "widths": (4, 8), "image_size": 16}
    losses = {
        "wang2022": "wang2022",
        "wang2022, alpha 0.2": {"name": "wang2022", "params": {"alpha": 0.2}},
        "outlier_exposure": "outlier_exposure",
        "custom": f"{__name__}:flat_ood",
    }
    teachers = {name: TeacherConfig(kind="ntl", ntl_loss=loss, **small) for name, loss in losses.items()}
    keys = {name: teacher_cache_key(teacher, data) for name, teacher in teachers.items()}
    assert len(set(keys.values())) == 4
    # defaults written out are the defaults: the same teacher, the same key
    explicit = {"name": "wang2022", "params": {"alpha": 0.1, "beta": 0.1}}
    assert teacher_cache_key(TeacherConfig(kind="ntl", ntl_loss=explicit, **small), data) == keys["wang2022"]
    assert cache_path(teachers["custom"], data, tmp_path, keys["custom"]).name.startswith(
        f"teacher-ntl-rotated_mnist-{__name__}.flat_ood-convnet-"
    )
    head = {name: train_teacher(teacher, data).head.weight for name, teacher in teachers.items()}
    assert not torch.equal(head["custom"], head["wang2022"])
    assert not torch.equal(head["outlier_exposure"], head["wang2022"])

    config = BenchConfig.tiny()
    custom_config = BenchConfig.tiny(ntl_loss=f"{__name__}:flat_ood")
    ntl = RunSpec("rotated_mnist", "vanilla", "ntl", 0)
    assert run_id(custom_config, ntl) != run_id(config, ntl)
    assert teacher_config(custom_config, "rotated_mnist", "ntl").identity()["ntl_loss"] == {
        "name": f"{__name__}:flat_ood",
        "params": {},
    }
    # the SL teacher has no NTL loss: the same teacher, only its row's reference NTL teacher differs
    assert teacher_config(custom_config, "rotated_mnist", "sl") == teacher_config(
        config, "rotated_mnist", "sl"
    )
    per_setting = BenchConfig.tiny(settings={"rotated_mnist": {"ntl_loss": "outlier_exposure"}})
    assert run_id(per_setting, ntl) != run_id(config, ntl) != run_id(custom_config, ntl)


def test_outlier_exposure_matches_its_formula() -> None:
    from dfkd_guard.bench.ntl_losses import outlier_exposure_loss

    logits_id, logits_ood = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0])
    ce_id = -torch.log_softmax(logits_id, 1)[0, 0]
    uniform = [-torch.log_softmax(row, 0).mean() for row in logits_ood]
    expected = ce_id + 0.3 * (uniform[0] + uniform[1]) / 2
    assert float(outlier_exposure_loss(logits_id, labels, logits_ood, 0.3)) == pytest.approx(float(expected))
    assert float(uniform[1]) == pytest.approx(float(torch.log(torch.tensor(3.0))))  # uniform: log K


# -- architectures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "batchnorm"), [("convnet", True), ("resnet", True), ("vgg", True), ("convnet_nobn", False)]
)
@pytest.mark.parametrize("image_size", [32, 16])
def test_every_architecture_classifies_small_images(name: str, batchnorm: bool, image_size: int) -> None:
    network = build_network(
        resolve("architecture", name, "teacher_architecture"), (8, 16, 32), 10, image_size, "x"
    )
    x = torch.rand(4, 3, image_size, image_size)
    assert isinstance(network, BenchNet) and network(x).shape == (4, 10)
    assert network.features(x).shape == (4, 32) and network.feature_dim == 32
    assert bool(batchnorm_layers(network)) == batchnorm
    with pytest.raises(ConfigError, match="stages halve") as info:
        build_network(resolve("architecture", name, "f"), (4,) * 6, 10, 16, "student_widths")
    assert info.value.field == "student_widths"


def test_a_teacher_without_batchnorm_is_checked_and_runs_with_what_does_not_need_it(tmp_path: Path) -> None:
    without_bn = BenchConfig.tiny(teacher_architecture="convnet_nobn")
    with pytest.raises(ConfigError, match="'convnet_nobn' has no BatchNorm layer: BN matching") as info:
        preflight(without_bn)
    assert info.value.field == "vanilla.bn"
    no_bn_matching = {name: getattr(without_bn, name).model_copy(update={"bn": 0.0}) for name in ADAPTERS}
    without_bn = without_bn.updated(**{name: value.model_dump() for name, value in no_bn_matching.items()})
    with pytest.raises(ConfigError, match="the ntl_oracle row replaces BN targets") as info:
        preflight(without_bn)
    assert info.value.field == "rows"
    with pytest.raises(ConfigError, match="cmi needs one") as info:
        preflight(without_bn.updated(rows=["sl", "ntl"]))
    assert info.value.field == "adapters.backdoor"
    config = BenchConfig.tiny(
        settings=["rotated_mnist"],
        adapters={"rotated_mnist": ["vanilla"]},
        rows=["sl", "ntl", "ntl_guard"],
        teacher_architecture="convnet_nobn",
        student_architecture={"name": "resnet", "params": {"blocks": 2}},
        vanilla=BenchConfig.tiny().vanilla.model_copy(update={"bn": 0.0}),
        auroc_scorers=["msp", "energy"],
    )
    with pytest.raises(ConfigError) as info:
        preflight(config.updated(auroc_scorers=["msp", "bn_deviation"]))
    assert info.value.field == "auroc_scorers[1]"
    assert len(run_bench(config, tmp_path, progress=False).ran) == 3
    record = _records(tmp_path)["rotated_mnist-vanilla-ntl"]
    assert _named(record["components"]["teacher"]["architecture"]) == {"name": "convnet_nobn", "params": {}}
    assert _named(record["components"]["student"]["architecture"]) == {
        "name": "resnet",
        "params": {"blocks": 2},
    }
    assert record["config"]["teacher"]["architecture"]["name"] == "convnet_nobn"
    assert record["config"]["student_architecture"]["params"] == {"blocks": 2}
    assert list((tmp_path / "teachers").glob("teacher-ntl-rotated_mnist-wang2022-convnet_nobn-*.pt"))


# -- names, parameters and contracts: errors that say where ------------------------------------------------


BROKEN = '''
import torch
from dfkd_guard.bench.registry import setting, trigger

@setting("wrong_shape")
def wrong_shape(digits, labels):
    """images of the wrong size"""
    return torch.zeros(len(digits), 3, 28, 28), labels

@trigger("no_op")
def no_op(images):
    """changes nothing"""
    return images

@trigger("dot")
def make_dot(images):
    """a white pixel in the top-left corner"""
    out = images.clone()
    out[:, :, 0, 0] = 1.0
    return out

not_a_component = 3
'''


@pytest.fixture
def broken_module(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "bench_broken.py").write_text(BROKEN)
    yield tmp_path
    sys.modules.pop("bench_broken", None)


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        (
            {"x": {"setting": "svhn"}},
            "settings.x.setting",
            "unknown setting 'svhn'; registered: backdoor, fashion",
        ),
        ({"x": {"setting": "bench_nope:x"}}, "settings.x.setting", "cannot import 'bench_nope'"),
        (
            {"x": {"setting": "bench_broken:nope"}},
            "settings.x.setting",
            "has no attribute nor setting 'nope'; its settings: wrong_shape",
        ),
        (
            {"x": {"setting": "bench_broken:not_a_component"}},
            "settings.x.setting",
            "decorate it with @setting",
        ),
        ({"x": {"setting": "bench_broken:no_op"}}, "settings.x.setting", "is a trigger, not a setting"),
        (
            {"x": {"setting": "rotated_mnist", "params": {"angel": 3}}},
            "settings.x.params.angel",
            "Extra inputs",
        ),
        ({"x": {"setting": "mnist_m", "target_class": 3}}, "settings.x.target_class", "has no trigger"),
        ({"backdoor": {"trigger": "sparkle"}}, "settings.backdoor.trigger.name", "unknown trigger 'sparkle'"),
        (
            {"backdoor": {"trigger": {"name": "patch", "params": {"size": 40}}}},
            "settings.backdoor.trigger.params.size",
            "less than or equal to 32",
        ),
        (
            {"backdoor": {"trigger": {"name": "patch", "params": {"position": [30, 30]}}}},
            "settings.backdoor.trigger.params",
            "does not fit 32x32",
        ),
        ({"backdoor": {"target_class": 10}}, "settings.backdoor.target_class", "less than or equal to 9"),
    ],
)
def test_config_errors_name_the_field_and_the_file(
    broken_module: Path, settings: dict, field: str, message: str
) -> None:
    path = broken_module / "bench.json"
    path.write_text(json.dumps({"settings": settings, "adapters": {k: ["vanilla"] for k in settings}}))
    with pytest.raises(ConfigError) as info:
        BenchConfig.from_file(path)
    assert info.value.field == field and info.value.source == str(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"ntl_loss": "mse"}, "ntl_loss.name"),
        ({"ntl_loss": {"name": "wang2022", "params": {"alpha": -1}}}, "ntl_loss.params.alpha"),
        (
            {"teacher_architecture": {"name": "resnet", "params": {"depth": 3}}},
            "teacher_architecture.params.depth",
        ),
        ({"student_architecture": "mlp"}, "student_architecture.name"),
        ({"settings": {"backdoor": {"ntl_loss": "mse"}}}, "settings.backdoor.ntl_loss.name"),
    ],
)
def test_losses_and_architectures_are_checked_when_the_config_is_read(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BenchConfig.tiny(**values)
    assert info.value.field == field


def test_a_setting_or_trigger_that_breaks_its_contract_is_named(broken_module: Path) -> None:
    from dfkd_guard.bench.settings import SettingSpec, resolve_setting

    shape = resolve_setting("x", SettingSpec(setting="bench_broken:wrong_shape"), "x", broken_module)
    with pytest.raises(
        PluginError, match=r"plugin 'bench_broken:wrong_shape', hook setting: split 'train'.*32, 32"
    ):
        shape.build(0)
    no_op = SettingSpec(setting="mnist_m", trigger="bench_broken:no_op")
    with pytest.raises(
        PluginError, match=r"plugin 'bench_broken:no_op', hook trigger: left the images unchanged"
    ):
        resolve_setting("x", no_op, "x", broken_module).build(0)


def test_a_module_component_is_named_by_attribute_or_by_its_name(broken_module: Path) -> None:
    by_attribute = resolve("trigger", "bench_broken:make_dot", "t", broken_module)
    by_name = resolve("trigger", "bench_broken:dot", "t", broken_module)
    assert by_attribute.component is by_name.component and by_name.component.name == "dot"
    assert by_name.describe() == {
        "name": "bench_broken:dot",
        "params": {},
        "summary": "a white pixel in the top-left corner",
        "source": f"module bench_broken ({broken_module.resolve() / 'bench_broken.py'})",
    }


def test_a_component_must_take_only_the_arguments_of_its_kind() -> None:
    with pytest.raises(ValueError, match=r"trigger 'bad': its function takes 'labels'"):

        @trigger("bad")
        def bad(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            """takes labels"""
            return images

    with pytest.raises(ValueError, match="needs a summary"):
        setting("undocumented")(lambda digits, labels: (digits, labels))


# -- entry points -------------------------------------------------------------------------------------------


PLUGIN = '''
from pydantic import BaseModel, ConfigDict
from dfkd_guard.bench.registry import trigger
from dfkd_guard.bench.triggers import patch  # imported, not declared here: not registered again


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float = 0.5


@trigger("grey_frame", Params)
def grey_frame(images, params):
    """A grey frame around the image."""
    out = images.clone()
    out[:, :, [0, -1], :] = params.value
    out[:, :, :, [0, -1]] = params.value
    return out
'''


def _install(folder: Path, distribution: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    info = folder / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dfkd_guard.bench]\n{lines}")
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(source)


def test_an_entry_point_distribution_registers_its_components(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    _install(tmp_path, "bench-frames", {"frames": "bench_frames"}, {"bench_frames": PLUGIN})
    _install(tmp_path, "bench-clash", {"clash": "dfkd_guard.bench.triggers:blend"}, {})
    importlib.invalidate_caches()
    try:
        with pytest.warns(
            UserWarning, match=r"entry point 'clash' .*'bench-clash 1.0' skipped: .*'blend' is already"
        ):
            registry = BenchRegistry()
    finally:
        sys.modules.pop("bench_frames", None)
    assert registry.names("trigger") == ["blend", "checkerboard", "grey_frame", "patch"]
    assert {c.name: source for c, source in registry.components("trigger")}[
        "grey_frame"
    ] == "bench-frames 1.0"
    frame = resolve("trigger", {"name": "grey_frame", "params": {"value": 0.25}}, "t", registry=registry)
    assert frame.record() == {"name": "grey_frame", "params": {"value": 0.25}}
    assert float(frame(images=torch.zeros(1, 3, 32, 32))[0, 0, 0, 5]) == 0.25
    assert [name for name, _ in registry.failed_entrypoints] == ["clash"]


# -- stable ids, documented components -------------------------------------------------------------------------


def test_the_runs_of_the_default_config_keep_their_ids() -> None:
    """The ids version 0.5 gives these runs (bench code version 6, the DeepInversion and CMI budgets of session 13,
    guarded runs with the trigger window relabelling the rows it lowers):
    a change that moves one reruns stored runs, so it must be deliberate (bump ``CODE_VERSION``, update here)."""
    config = BenchConfig()
    expected = [
        "backdoor-vanilla-ntl_guard-seed0-f2c95c9ba693",
        "mnist_m-cmi-ntl_guard-seed0-4bb49d203334",
        "mnist_m-cmi-sl-seed2-1e59ac9617a0",
        "fashion-vanilla-ntl-seed1-0f028b9629c2",
        "rotated_mnist-vanilla-ntl_oracle-seed0-4371df9ea7bb",
        "mnist_m-deepinversion-ntl-seed1-75b833feb670",
    ]
    for run in expected:
        setting, adapter, row, seed = re.match(r"(\w+)-(\w+)-(\w+)-seed(\d)-", run).groups()
        assert run_id(config, RunSpec(setting, adapter, row, int(seed))) == run


def test_every_builtin_bench_component_and_parameter_is_documented() -> None:
    text = DOCS.read_text()
    sections = dict(re.findall(r"^#### `(\w+)`\n(.*?)(?=^#|\Z)", text, flags=re.MULTILINE | re.DOTALL))
    registry = BenchRegistry(load_entrypoints=False)
    problems = []
    for kind in ("setting", "trigger", "ntl_loss", "architecture"):
        for component, _ in registry.components(kind):
            section = sections.get(component.name)
            if section is None:
                problems.append(f"{kind} {component.name!r} has no '#### `{component.name}`' section")
                continue
            problems += [
                f"parameter {component.name}.{p} is not in its section's table"
                for p in component.params.model_fields
                if f"| `{p}` |" not in section
            ]
    assert not problems, "\n".join(problems)
