"""The Guard leaves the teacher as it found it and reports broken plugins by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfkd_guard import (
    Component,
    Guard,
    GuardConfig,
    PluginError,
    SampleWeights,
    hookimpl,
    penalty,
    scorer,
    weighting,
)

SCORERS = ["atesc", "msp", "energy", "entropy", "odin", "bn_deviation"]


@pytest.mark.parametrize("scorer", SCORERS)
def test_scoring_restores_mode_grad_flags_and_the_recorded_bn_inputs(teacher, images, scorer) -> None:
    teacher.train()
    teacher.body[0].weight.requires_grad_(False)  # a mixed grad state must survive
    flags = [p.requires_grad for p in teacher.parameters()]
    running = [b.clone() for b in teacher.buffers()]
    guard = Guard(GuardConfig(scorer=scorer), teacher, load_entrypoints=False)
    loop_batch = torch.rand(5, 3, 8, 8)
    teacher(loop_batch)  # the loop's forward: its BN inputs are what bn_loss() matches
    before = [x.clone() for x in guard.bn_inputs()]
    running = [b.clone() for b in teacher.buffers()]

    guard.score(images)

    assert all(torch.equal(a, b) for a, b in zip(guard.bn_inputs(), before))  # scoring recorded nothing
    assert all(m.training for m in teacher.modules())
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(running, teacher.buffers()))
    assert all(p.grad is None for p in teacher.parameters())
    guard.close()


def test_teacher_state_is_restored_when_a_scorer_raises(teacher, images) -> None:
    class Broken:
        @hookimpl
        def dfkd_guard_components(self):
            return [Component("scorer", "broken", self.score, summary="raises")]

        def score(self):
            raise RuntimeError("boom")

    teacher.train()
    guard = Guard(GuardConfig(scorer="broken"), teacher, plugins=[Broken()], load_entrypoints=False)
    with pytest.raises(
        PluginError, match=r"plugin '[\w.<>]*Broken@\w+', hook scorer 'broken': raised .*boom"
    ):
        guard.score(images)
    assert all(m.training for m in teacher.modules())
    assert all(p.requires_grad for p in teacher.parameters())


def test_scoring_works_inside_no_grad(teacher, images) -> None:
    guard = Guard(GuardConfig(scorer="atesc"), teacher, load_entrypoints=False)
    with torch.no_grad():
        scores = guard.score(images)
    torch.testing.assert_close(scores, guard.score(images))


def scorer_returning(value):
    class Plugin:
        @hookimpl
        def dfkd_guard_components(self):
            return [custom]

    @scorer("custom", summary="test scorer")
    def custom(images):
        return value(images)

    return Plugin()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (lambda x: torch.zeros(len(x), 1), r"returned shape \(12, 1\), wanted \(12,\)"),
        (lambda x: torch.full((len(x),), float("nan")), "NaN or Inf"),
        (lambda x: [0.0] * len(x), "returned list, wanted a float tensor"),
    ],
)
def test_bad_scorer_results_name_the_plugin_and_hook(teacher, images, value, message) -> None:
    guard = Guard(
        GuardConfig(scorer="custom"), teacher, plugins=[scorer_returning(value)], load_entrypoints=False
    )
    with pytest.raises(PluginError, match=message) as info:
        guard.score(images)
    assert info.value.hook == "scorer 'custom'"
    assert "Plugin@" in info.value.plugin


def test_a_none_result_names_the_plugin_and_component(teacher, images) -> None:
    guard = Guard(
        GuardConfig(scorer="custom"),
        teacher,
        plugins=[scorer_returning(lambda x: None)],
        load_entrypoints=False,
    )
    with pytest.raises(PluginError, match=r"Plugin@\w+', hook scorer 'custom': returned None"):
        guard.score(images)


def test_bad_weights_name_the_plugin(teacher) -> None:
    @weighting("bad")
    def bad(scores):
        """weights out of range"""
        return SampleWeights(scores * 0 + 2.0, torch.zeros_like(scores, dtype=torch.bool))

    class BadWeights:
        @hookimpl
        def dfkd_guard_components(self):
            return [bad]

    config = GuardConfig(weighting="bad", bn_prior={"demix": False})
    guard = Guard(config, teacher, plugins=[BadWeights()], load_entrypoints=False)
    with pytest.raises(PluginError, match=r"weighting 'bad': kd weights must lie in \[0, 1\]"):
        guard.weigh(torch.zeros(3, 3, 8, 8), torch.zeros(3, 4), torch.zeros(3))


def test_bad_penalty_names_the_plugin(teacher, images) -> None:
    @penalty("vector", summary="not a scalar")
    def vector(logits):
        return logits.sum(1)

    class BadPenalty:
        @hookimpl
        def dfkd_guard_components(self):
            return [vector]

    guard = Guard({"penalties": ["vector"]}, teacher, plugins=[BadPenalty()], load_entrypoints=False)
    with pytest.raises(PluginError, match=r"penalty 'vector': returned \(12,\), wanted a scalar"):
        guard.generator_penalty(images.requires_grad_(True))


def test_duplicate_component_names_are_an_error_naming_both_plugins(teacher) -> None:
    class Another:
        @hookimpl
        def dfkd_guard_components(self):
            return [Component("scorer", "msp", lambda logits: logits[:, 0], summary="clash")]

    with pytest.raises(
        PluginError, match=r"scorer 'msp' is already declared by plugin 'dfkd_guard.scorers.logit_scores'"
    ):
        Guard(None, teacher, plugins=[Another()], load_entrypoints=False)


def test_a_component_function_taking_an_unknown_argument_is_refused(teacher) -> None:
    @penalty("ghost", summary="asks for what the guard does not pass")
    def ghost(logits, scores):
        return logits.mean()

    class Typo:
        @hookimpl
        def dfkd_guard_components(self):
            return [ghost]

    with pytest.raises(
        PluginError, match=r"Typo@\w+', hook penalty 'ghost': its function takes 'scores'"
    ) as info:
        Guard(None, teacher, plugins=[Typo()], load_entrypoints=False)
    assert "images, logits, teacher, normalization, params" in str(info.value)


def test_a_component_is_called_with_the_arguments_it_takes(teacher, images) -> None:
    seen = {}

    class CallableScorer:
        def __call__(self, params, **rest):  # an instance with __call__; **rest receives the others
            seen.update(rest, params=params)
            return rest["logits"][:, 0]

    class Plugin:
        @hookimpl
        def dfkd_guard_components(self):
            return [Component("scorer", "instance", CallableScorer(), summary="a callable instance")]

    Guard(GuardConfig(scorer="instance"), teacher, plugins=[Plugin()], load_entrypoints=False).score(images)
    assert sorted(seen) == ["images", "logits", "normalization", "params", "teacher"]


def test_component_declaration_errors() -> None:
    with pytest.raises(ValueError, match="needs a summary"):
        Component("scorer", "anonymous", lambda logits: logits[:, 0])
    with pytest.raises(TypeError, match="must be callable"):
        Component("scorer", "old_style", "a summary string in the function's place")

    @scorer("documented")
    def documented(logits):
        """First line.

        More text.
        """
        return logits[:, 0]

    assert (documented.kind, documented.name, documented.summary) == ("scorer", "documented", "First line.")
    assert documented(logits=torch.ones(2, 3)).tolist() == [1.0, 1.0]  # the component calls its function


def test_old_style_method_hooks_are_refused_with_a_hint(teacher) -> None:
    class OldStyle:
        @hookimpl
        def dfkd_guard_score(self, scorer, logits):
            return None

    with pytest.raises(PluginError, match=r"unknown hook 'dfkd_guard_score'.*one function"):
        Guard(None, teacher, plugins=[OldStyle()], load_entrypoints=False)


def test_a_hook_outside_the_contract_is_refused(teacher) -> None:
    class Typo:
        @hookimpl
        def dfkd_guard_scroe(self):
            return None

    with pytest.raises(PluginError, match="dfkd_guard_scroe"):
        Guard(None, teacher, plugins=[Typo()], load_entrypoints=False)


def test_two_guards_do_not_share_plugins(teacher, images) -> None:
    plugin = scorer_returning(lambda x: torch.arange(len(x), dtype=torch.float32))
    with_plugin = Guard(GuardConfig(scorer="custom"), teacher, plugins=[plugin], load_entrypoints=False)
    plain = Guard(GuardConfig(scorer="msp"), teacher, load_entrypoints=False)
    assert ("scorer", "custom") not in plain.registry.component_map()
    assert with_plugin.score(images).tolist() == list(range(12))
    assert plain.score(images).shape == (12,)


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(5, 3 * 8 * 8)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(-1, 3, 8, 8)


@pytest.mark.parametrize("penalty", ["confidence", "input_gradient"])
def test_penalty_grad_reaches_the_generator_not_the_teacher(teacher, penalty) -> None:
    generator = Generator()
    guard = Guard({"penalties": [{"name": penalty, "weight": 0.5}]}, teacher, load_entrypoints=False)
    images = generator(torch.randn(6, 5))
    value = guard.generator_penalty(images)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert generator.net.weight.grad is not None and generator.net.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_penalties_are_weighted_and_summed(teacher, images) -> None:
    logits = torch.randn(12, 4)
    both = Guard(
        {
            "penalties": [
                {"name": "confidence", "weight": 2.0},
                {"name": "confidence", "weight": 0.5, "params": {"score": "msp"}},
            ]
        },
        teacher,
        load_entrypoints=False,
    )
    expected = 2.0 * torch.logsumexp(logits, 1).mean() + 0.5 * torch.softmax(logits, 1).max(1).values.mean()
    torch.testing.assert_close(both.generator_penalty(images, logits), expected)
    off = Guard({"enabled": False, "penalties": ["confidence"]}, teacher, load_entrypoints=False)
    assert off.generator_penalty(images, logits).item() == 0.0


def test_input_gradient_penalty_matches_its_formula(teacher) -> None:
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    guard = Guard(
        {"penalties": ["input_gradient"], "normalization": {"mean": [0.5], "std": [0.25]}},
        teacher,
        load_entrypoints=False,
    )
    value = guard.generator_penalty(x)
    teacher.eval()
    logits = teacher(x)
    loss = nn.functional.cross_entropy(logits, logits.argmax(1), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    expected = -torch.log((grad / 0.25).flatten(1).abs().sum(1) + 1e-6).mean()
    torch.testing.assert_close(value, expected)


def test_observer_plugins_see_scores_weights_and_steps(teacher, images) -> None:
    seen: list[tuple[str, object]] = []

    class Observer:
        @hookimpl
        def dfkd_guard_batch_scored(self, scorer, scores):
            seen.append(("scored", scorer))

        @hookimpl
        def dfkd_guard_batch_weighted(self, weights):
            seen.append(("weighted", weights.forgotten_fraction))

        @hookimpl
        def dfkd_guard_step_finished(self, step, metrics):
            seen.append(("step", (step, metrics["loss"])))

    teacher.eval()
    guard = Guard(GuardConfig(scorer="energy"), teacher, plugins=[Observer()], load_entrypoints=False)
    logits = teacher(images).detach()
    guard.student_batch(images, logits)
    guard.step_finished(3, {"loss": 1.5})
    assert [kind for kind, _ in seen] == ["scored", "weighted", "step"]
    assert seen[2] == ("step", (3, 1.5))


def test_observer_errors_name_the_plugin(teacher, images) -> None:
    class Noisy:
        @hookimpl
        def dfkd_guard_step_finished(self):
            raise KeyError("metric")

    guard = Guard(None, teacher, plugins=[Noisy()], load_entrypoints=False)
    with pytest.raises(PluginError, match=r"Noisy@\w+', hook dfkd_guard_step_finished: raised KeyError"):
        guard.step_finished(0, {})


def test_a_teacher_that_is_not_a_module_is_refused() -> None:
    """Bad tensors at every entry point: tests/bad_inputs/test_tensor_inputs.py."""
    with pytest.raises(TypeError, match="teacher must be a torch.nn.Module"):
        Guard(None, "teacher.pt")  # type: ignore[arg-type]


def test_repr_lists_components_and_parameters(teacher) -> None:
    config = {"scorer": {"name": "atesc", "params": {"steps": 5}}, "weighting": "split"}
    text = repr(Guard(config, teacher, load_entrypoints=False))
    assert "scorer=atesc(" in text and "steps=5" in text and "weighting=split(rule='two_means'" in text


def test_one_guards_scoring_leaves_another_guards_bn_record_alone(teacher, images) -> None:
    first = Guard(None, teacher, load_entrypoints=False)
    second = Guard({"scorer": "msp"}, teacher, load_entrypoints=False)
    teacher(images)  # the loop's forward, recorded by both
    before = [x.clone() for x in second.bn_inputs()]
    first.score(images + 0.5)  # atesc runs the teacher on perturbed images
    assert all(torch.equal(a, b) for a, b in zip(before, second.bn_inputs()))
    assert second._recorder is not None and second._recorder.holds(images)
    first.close()
    second.close()


def test_a_closed_guard_says_so(teacher, images) -> None:
    with Guard(None, teacher, load_entrypoints=False) as guard:
        teacher(images)
        assert torch.isfinite(guard.bn_loss())
    with pytest.raises(RuntimeError, match="the guard is closed"):
        guard.bn_loss()
    with pytest.raises(RuntimeError, match="the guard is closed"):
        guard.student_batch(images, teacher(images))  # the warm-up would observe BN inputs
    assert guard.score(images).shape == (len(images),)  # scoring needs no hooks
    assert len(guard.bn_targets()) == 2  # nor do the targets


def test_observers_get_copies_of_the_guards_tensors(teacher, images) -> None:
    class Vandal:
        @hookimpl
        def dfkd_guard_batch_scored(self, scorer, scores, logits) -> None:
            scores.zero_()
            logits.zero_()

        @hookimpl
        def dfkd_guard_batch_weighted(self, weighting, scores, weights) -> None:
            weights.kd.zero_()
            weights.forget.fill_(True)

    config = {"weighting": "split", "forget": {"kind": "uniform"}, "bn_prior": {"demix": False}}
    clean = Guard(config, teacher, load_entrypoints=False)
    vandalised = Guard(config, teacher, plugins=[Vandal()], load_entrypoints=False)
    logits = teacher(images).detach()
    a, b = clean.student_batch(images, logits), vandalised.student_batch(images, logits)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.weights.kd, b.weights.kd)
    assert torch.equal(a.weights.forget, b.weights.forget) and bool(b.weights.kd.gt(0).any())


def test_intervened_says_whether_the_guard_changes_anything(teacher, images) -> None:
    assert not Guard({"enabled": False}, teacher).intervened
    quiet = Guard({"bn_prior": {"skip_batches": 0, "warmup_batches": 1, "ntl_separation": 100.0}}, teacher)
    batch = quiet.student_batch(images, teacher(images).detach())
    assert quiet.bn_prior.verdict == "ordinary" and not quiet.intervened
    assert torch.equal(batch.weights.kd, torch.ones(len(images)))
    judged = Guard({"bn_prior": {"skip_batches": 0, "warmup_batches": 1, "ntl_separation": 0.0}}, teacher)
    judged.student_batch(images, teacher(images).detach())
    assert judged.bn_prior.verdict == "ntl-like" and judged.intervened  # corrected BN targets
    assert Guard({"penalties": [{"name": "confidence", "weight": 1.0}]}, teacher).intervened

    class OwnTargets(Guard):
        def bn_targets(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return super().bn_targets()

    assert OwnTargets(None, teacher).intervened
