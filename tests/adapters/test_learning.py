"""DeepInversion and CMI distil: a short run on a tiny SL teacher of real 16x16 digits gives a student far above chance.

(The vanilla adapter's counterpart is ``test_adapters.py::test_vanilla_student_learns_from_the_teacher``.)
"""

from __future__ import annotations

import pytest
import torch

from dfkd_guard import Guard, GuardConfig
from dfkd_guard.adapters.base import Synthesizer
from dfkd_guard.adapters.cmi import CMIConfig, CMISynthesizer
from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer
from dfkd_guard.adapters.training import train
from dfkd_guard.bench.data import Setting, build_setting
from dfkd_guard.bench.models import ConvNet, Generator
from dfkd_guard.bench.teachers import load_or_train_teacher
from tests.adapters.conftest import TINY_TEACHER

SIDE = 16


@pytest.fixture(scope="module")
def digits() -> Setting:
    return build_setting("mnist_m", seed=0, image_size=SIDE)


@pytest.fixture(scope="module")
def teacher16(digits: Setting, tmp_path_factory: pytest.TempPathFactory) -> ConvNet:
    """An 8-16-32 CNN trained for 300 steps on real 16x16 digits (about 95% test accuracy)."""
    recipe = TINY_TEACHER.model_copy(update={"image_size": SIDE, "steps": 300, "shift": 1, "lr": 3e-3})
    return load_or_train_teacher(recipe, tmp_path_factory.mktemp("teachers16"), data=digits).eval()


def synthesizer(name: str, teacher: ConvNet, student: ConvNet, guard: Guard) -> tuple[Synthesizer, int]:
    """The adapter at a seconds-long scale, and its number of rounds."""
    shape = (3, SIDE, SIDE)
    if name == "deepinversion":
        config = DeepInversionConfig(
            batch_size=64, student_batch_size=64, iterations=60, flip=False, jitter=1, replay_shift=2
        )
        return DeepInversionSynthesizer(teacher, student, guard, config, shape), 6
    config = CMIConfig(
        batch_size=32, student_batch_size=64, iterations=40, bn=10.0, flip=False, view_shift=1, replay_shift=1
    )
    generator = Generator(latent_dim=16, base_channels=8, img_size=SIDE)
    return CMISynthesizer(teacher, student, generator, 16, guard, config, shape), 8


@pytest.mark.parametrize("name", ["deepinversion", "cmi"])
def test_a_short_run_distils_real_digits_far_above_chance(name, teacher16, digits) -> None:
    images, labels = digits.id_test.images[:500], digits.id_test.labels[:500]
    with torch.no_grad():
        assert float((teacher16(images).argmax(1) == labels).float().mean()) > 0.9
    torch.manual_seed(0)
    student = ConvNet((8, 16, 32))
    guard = Guard(GuardConfig(enabled=False, kd_temperature=20.0), teacher16, load_entrypoints=False)
    adapter, rounds = synthesizer(name, teacher16, student, guard)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)

    def accuracy() -> dict[str, float]:
        student.eval()
        with torch.no_grad():
            return {"acc": float((student(images).argmax(1) == labels).float().mean())}

    before = accuracy()["acc"]
    result = train(adapter, optimizer, rounds, kd_steps=30, evaluate=accuracy, progress=False)
    adapter.close()
    guard.close()
    after = result.evaluations[-1][1]["acc"]
    assert after > max(before + 0.25, 0.4), (
        before,
        after,
    )  # chance is 0.1; real digits the student never saw
