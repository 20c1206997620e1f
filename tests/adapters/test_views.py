"""random_shift: per-image translations with repeated edges, optional mirror, differentiable, seeded."""

from __future__ import annotations

import pytest
import torch

from dfkd_guard.adapters.views import random_shift


def test_every_view_is_a_whole_pixel_translation_of_its_own_image() -> None:
    torch.manual_seed(0)
    images = torch.rand(32, 2, 7, 9)
    views = random_shift(images, 2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="replicate")
    offsets = set()
    for image, view in zip(padded, views):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(image[:, dy : dy + 7, dx : dx + 9], view)
        ]
        assert found, "a view is not a crop of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 5  # offsets are drawn per image, not once per batch


def test_flip_mirrors_about_half_of_the_images() -> None:
    torch.manual_seed(0)
    images = torch.rand(200, 1, 4, 5)
    views = random_shift(images, 0, flip=True)
    mirrored = [torch.equal(v, i.flip(-1)) for i, v in zip(images, views)]
    kept = [torch.equal(v, i) for i, v in zip(images, views)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 70 < sum(mirrored) < 130


def test_gradients_reach_the_images_and_a_seed_repeats_the_views() -> None:
    images = torch.rand(4, 3, 8, 8, requires_grad=True)
    torch.manual_seed(3)
    first = random_shift(images, 1, flip=True)
    first.sum().backward()
    assert images.grad is not None and images.grad.sum() == pytest.approx(4 * 3 * 8 * 8)
    torch.manual_seed(3)
    assert torch.equal(random_shift(images, 1, flip=True), first)


def test_no_shift_and_no_flip_is_the_batch_itself_and_bad_input_is_refused() -> None:
    images = torch.rand(2, 3, 4, 4)
    assert random_shift(images, 0) is images
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(images, -1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_shift(images[0], 1)
