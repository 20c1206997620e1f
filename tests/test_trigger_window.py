"""The trigger-window search: it finds a patch that carries one class, stays silent without one, relabels."""

import pytest
import torch
from torch import nn

from dfkd_guard import ConfigError, Guard, GuardConfig
from dfkd_guard.bench.data import build_setting
from dfkd_guard.bench.teachers import TeacherConfig, load_or_train_teacher
from dfkd_guard.normalization import Normalization
from dfkd_guard.trigger_window import TriggerWindowConfig, TriggerWindowSearch

SIZE = 16


class RegionTeacher(nn.Module):
    """Logits from the means of the 16 4x4 blocks (a fixed random map: every region informs a little),
    plus, if ``patch``, a class-0 logit that a white 3x3 patch at rows and columns 12:15 switches on."""

    def __init__(self, patch: bool, anywhere_from: int | None = None) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.blocks = nn.Parameter(torch.randn(10, 16, generator=generator), requires_grad=False)
        self.patch = patch
        self.anywhere_from = anywhere_from  # the patch also works at any position from this row and column on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4).flatten(1)  # (B, 16)
        logits = 0.5 * blocks @ self.blocks.T
        if self.patch:
            start = 12 if self.anywhere_from is None else self.anywhere_from
            darkest = -nn.functional.max_pool2d(-x.amin(1, keepdim=True), 3, stride=1)  # (B, 1, 14, 14)
            fires = darkest[:, 0, start:13, start:13].flatten(1).amax(1) > 0.9
            logits[:, 0] = logits[:, 0] + 20 * fires.float()
        return logits


def _images(count: int, seed: int = 1) -> torch.Tensor:
    """Noise in [0, 0.7]; every third image holds the patch."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, SIZE, SIZE, generator=generator) * 0.7
    images[::3, :, 12:15, 12:15] = 1.0
    return images


def _search(teacher: nn.Module, fed: torch.Tensor, **config) -> TriggerWindowSearch:
    """The search fed ``fed`` in student batches of 64 (by default: one skipped, 256 images searched)."""
    settings = {"skip_batches": 1, "per_batch": 64, "images": 256, **config}
    search = TriggerWindowSearch(TriggerWindowConfig(**settings), Normalization())
    for batch in fed.split(64):
        search.collect(batch, teacher)
    return search


def test_search_finds_the_patch_that_carries_one_class():
    search = _search(RegionTeacher(patch=True), _images(64 * 5))
    found = search.found
    assert found is not None
    assert found.label == 0
    rows = set(range(found.top, found.top + found.side))
    cols = set(range(found.left, found.left + found.side))
    assert rows & {12, 13, 14} and cols & {12, 13, 14}
    assert found.ratio >= 6.0


def test_mask_covers_every_position_where_the_trigger_works():
    found = _search(RegionTeacher(patch=True, anywhere_from=9), _images(64 * 5)).found
    assert found is not None and found.label == 0
    assert found.mask == (9, 9, 15, 15)  # 3x3 patches at rows and columns 9..12
    assert found.mask_fraction == pytest.approx(36 / 256)


class CornerTeacher(nn.Module):
    """40x40 images: class 0 when a white 3x3 patch lies anywhere from row and column 24 on, else by brightness."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        darkest = -nn.functional.max_pool2d(-x.amin(1, keepdim=True), 3, stride=1)[:, 0]  # (B, 38, 38)
        fires = darkest[:, 24:, 24:].flatten(1).amax(1) > 0.9
        brightness = x.mean((1, 2, 3), keepdim=True).squeeze(-1).squeeze(-1)  # (B, 1)
        logits = torch.cat([torch.zeros_like(brightness), brightness * torch.arange(1.0, 10.0)], 1)
        logits[:, 0] = logits[:, 0] + 20 * fires.float()
        return logits


def test_mask_on_a_coarse_grid_still_covers_where_the_trigger_works():
    """38 positions per axis are pasted on a grid of stride 3; the mask takes in the unmeasured ones."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(64 * 5, 1, 40, 40, generator=generator) * 0.7
    images[::3, :, 30:33, 30:33] = 1.0
    found = _search(CornerTeacher(), images).found
    assert found is not None and found.label == 0
    top, left, bottom, right = found.mask
    assert 24 - 2 <= top <= 24 and 24 - 2 <= left <= 24 and bottom == right == 40


def test_a_trigger_that_works_everywhere_is_masked_where_it_is_drawn():
    found = _search(RegionTeacher(patch=True, anywhere_from=0), _images(64 * 5)).found
    assert found is not None and found.mask == (12, 12, 15, 15)


@pytest.fixture(scope="module")
def backdoor(tmp_path_factory: pytest.TempPathFactory):
    """Real digits at 16x16, a fifth of them with the backdoor setting's trigger, and two tiny real teachers."""
    setting = build_setting("backdoor", seed=0, image_size=SIZE)
    cache = tmp_path_factory.mktemp("teachers")
    teachers = {
        kind: load_or_train_teacher(
            TeacherConfig(kind=kind, setting="backdoor", steps=300, widths=(8, 16, 32), image_size=SIZE),
            cache,
            data=setting,
        ).eval()
        for kind in ("ntl_backdoor", "sl")
    }
    images = torch.cat([setting.clean_ood_test[:820], setting.ood_test.images[820:1024]])
    region = (setting.ood_test.images != setting.clean_ood_test).any(1).float().mean(0) >= 0.5  # (H, W)
    return setting, teachers, images, region


def _real_search(teacher: nn.Module, images: torch.Tensor) -> TriggerWindowSearch:
    """The default number of images, shuffled, none skipped."""
    shuffled = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    return _search(teacher, shuffled, skip_batches=0, images=TriggerWindowConfig().images)


def test_search_finds_a_real_backdoor_and_masks_its_trigger(backdoor):
    setting, teachers, images, region = backdoor
    found = _real_search(teachers["ntl_backdoor"], images).found
    assert found is not None and found.label == setting.target_class
    top, left, bottom, right = found.mask
    masked = torch.zeros_like(region)
    masked[top:bottom, left:right] = True
    assert bool((region <= masked).all())  # every trigger pixel is blacked out
    assert found.mask_fraction <= 0.5


def test_relabelling_a_real_backdoor_spares_clean_digits_of_its_class(backdoor):
    setting, teachers, images, _ = backdoor
    teacher = teachers["ntl_backdoor"]
    search = _real_search(teacher, images)
    assert search.found is not None
    target = setting.target_class
    ours = setting.id_test.images[setting.id_test.labels == target][:100]
    triggered = setting.ood_test.images[:100]
    batch = torch.cat([ours, triggered])
    with torch.no_grad():
        logits = teacher(batch)
        answers = search.relabel(batch, logits, teacher).argmax(1)
    assert (logits[len(ours) :].argmax(1) == target).float().mean() > 0.9  # the backdoor works
    assert (answers[len(ours) :] != target).float().mean() > 0.9  # the relabelled answers ignore it
    assert (answers[: len(ours)] == target).float().mean() > 0.8  # clean digits of the class keep it


def test_search_stays_silent_on_a_real_ordinary_teacher(backdoor):
    _, teachers, images, _ = backdoor
    search = _real_search(teachers["sl"], images)
    assert search.best is not None and search.found is None


def test_search_waits_for_skipped_batches_and_enough_images():
    search = _search(RegionTeacher(patch=True), _images(64 * 4))  # 1 skipped + 192 collected < 256
    assert search.collecting and search.found is None


def test_guard_labels_triggered_rows_without_the_mask_once_found():
    teacher = RegionTeacher(patch=True).eval()
    guard = Guard(
        {"trigger_window": {"skip_batches": 0, "per_batch": 64, "images": 256}},
        teacher,
        load_entrypoints=False,
    )
    images = _images(64 * 4)
    for batch in images.split(64):
        guard.student_batch(batch, teacher(batch))
    window = guard.trigger
    assert window is not None and window.label == 0
    assert window.mask == (12, 12, 15, 15)  # the patch, though the window found may only overlap it
    batch = _images(64, seed=2)  # rows 0, 3, 6, ... hold the patch
    logits = teacher(batch)
    guarded = guard.student_batch(batch, logits)
    blacked = batch.clone()
    blacked[:, :, 12:15, 12:15] = 0.0
    triggered = torch.zeros(64, dtype=torch.bool)
    triggered[::3] = True
    torch.testing.assert_close(guarded.teacher_logits[triggered], teacher(blacked)[triggered])
    torch.testing.assert_close(guarded.teacher_logits[~triggered], logits[~triggered])
    assert (guarded.teacher_logits.argmax(1) == 0).float().mean() < (logits.argmax(1) == 0).float().mean()
    assert torch.equal(guarded.images, batch)  # the student still sees the trigger


def test_lowered_rows_are_relabelled_without_another_row_to_confirm_them():
    teacher = RegionTeacher(patch=True).eval()
    batch = _images(64, seed=2)
    batch[:, :, 12:15, 12:15] = 1.0  # every row holds the patch: no row is left to paste it onto
    blacked = batch.clone()
    blacked[:, :, 12:15, 12:15] = 0.0
    relabelled = {}
    for rows in ("carrying", "lowered"):
        config = {"trigger_window": {"skip_batches": 0, "per_batch": 64, "images": 256, "rows": rows}}
        guard = Guard(config, teacher, load_entrypoints=False)
        for fed in _images(64 * 4).split(64):
            guard.student_batch(fed, teacher(fed))
        assert guard.trigger is not None and guard.trigger.mask == (12, 12, 15, 15)
        relabelled[rows] = guard.student_batch(batch, teacher(batch)).teacher_logits
    torch.testing.assert_close(relabelled["carrying"], teacher(batch))  # nothing confirms the trigger
    torch.testing.assert_close(relabelled["lowered"], teacher(blacked))


def test_guard_state_round_trips_the_search():
    teacher = RegionTeacher(patch=True).eval()
    config = {"trigger_window": {"skip_batches": 0, "per_batch": 64, "images": 256}}
    guard = Guard(config, teacher, load_entrypoints=False)
    images = _images(64 * 4)
    for batch in images[:128].split(64):
        guard.student_batch(batch, teacher(batch))
    resumed = Guard(config, teacher, load_entrypoints=False)
    resumed.load_state_dict(guard.state_dict())
    for g in (guard, resumed):
        for batch in images[128:].split(64):
            g.student_batch(batch, teacher(batch))
    assert guard.trigger == resumed.trigger and guard.trigger is not None


def test_disabled_search_runs_nothing():
    teacher = RegionTeacher(patch=True).eval()
    guard = Guard({"trigger_window": {"enabled": False}}, teacher, load_entrypoints=False)
    assert guard.trigger_search is None and guard.trigger is None
    assert "trigger_window=off" in repr(guard)


@pytest.mark.parametrize(
    ("field", "value"),
    [("sides", [0.0]), ("sides", [1.5]), ("sides", []), ("threshold", 1.0), ("images", 8), ("fill", 2.0)],
)
def test_bad_search_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"trigger_window.{field}"):
        GuardConfig.from_mapping({"trigger_window": {field: value}})
