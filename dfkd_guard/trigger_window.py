"""The trigger window: find a patch trigger on synthetic images, and label the student without it.

A backdoored teacher's trigger reaches the student through synthesis: the
teacher's BatchNorm statistics, partly gathered on triggered images, lead
the generator to draw the trigger, and the teacher's answers on those
images (soft ones too, not only the target label) teach the student what it
means. Dropping samples cannot stop that; labelling them as if the trigger
were absent does: the student sees the trigger and learns that it changes
nothing (docs/trigger_window.md).

A :class:`TriggerWindowSearch` collects a few rows of the student batches
after ``skip_batches``, then, once, blacks out every window of a grid in
turn (square windows, sides a fraction of the image side, stride half a
side) and measures, per class, the mean drop of the teacher's probability
over the collected images. A patch trigger is a small region that carries
one class far more than any other region does, and only that class: the
search takes the window of the largest class-specific drop (the top class's
drop less the next class's) and calls it a trigger when that drop is at least
``threshold`` times the best one of any window apart from it, and at least
``min_drop``. An ordinary teacher's informative windows (the strokes at the
centre) each lower the probability of whichever class the image holds, so
their drops spread over the classes and resemble each other; on black
backgrounds most windows change nothing, which is why the comparison is with
the runner-up, not with a typical window.

A backdoor rarely answers to one position only: a teacher trained with a
3x3 corner patch also answers to the patch shifted by a few pixels, and a
generator that seeks the student's disagreement with the teacher finds
those places once the found window is blacked out. So the search then
measures where the trigger works: it cuts the trigger as the generator drew
it (near the window, the pixels where the images whose answer the window
carried differ from the others), pastes it at every position onto the other
collected images, and keeps the positions where the teacher answers the
class at least 90% as strongly as where it was drawn. The box around them
(the *mask*) is what is blacked out. A trigger that works almost anywhere
(a texture; the box would cover more than half of the image) is masked where
the generator draws it, and a mask that still covers more than half of the
image cannot be removed without removing the image: then nothing is
relabelled. From then on :meth:`relabel` labels every student batch: a row
whose probability of the class the mask lowers by at least 0.1 is relabelled
with the teacher's answer without the mask (``rows = "lowered"``, the
default). With ``rows = "carrying"`` only when its mask content, pasted onto
another row of the batch, also makes that row answer the class (the trigger
travels with it; part of a clean digit of that class does not make another
image that digit); that check lets a trigger the generator draws only partly
through. After a search that found nothing the guard runs no extra forward.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt
from torch import nn

from dfkd_guard.inputs import teacher_logits
from dfkd_guard.normalization import Normalization

__all__ = ["TriggerWindow", "TriggerWindowConfig", "TriggerWindowSearch"]

_CHUNK = 256  # images per teacher forward of the search
_HOSTS = 256  # images the found trigger is pasted onto, at every position
_WORKS = 0.9  # a position where the pasted trigger reaches this share of its drawn effect is masked
_PASTES_PER_AXIS = 16  # positions per axis the trigger is pasted at, at most (plus where it was drawn)
_TINY = 1e-6  # floor of the runner-up's drop: a teacher that ignores every other window
_LOWERED = 0.1  # a relabelled row loses at least this much probability of the class without the mask
#: A mask larger than this share of the image would black out the image, not a trigger: nothing is relabelled.
MAX_MASK_FRACTION = 0.5


class TriggerWindowConfig(BaseModel):
    """When and how the guard searches for a patch trigger, and how sure it must be."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: StrictBool = Field(
        default=True, description="search for a trigger window and relabel student batches without it"
    )
    skip_batches: StrictInt = Field(
        default=300,
        ge=0,
        le=1_000_000,
        description="student batches ignored before collecting (synthesis settles first); at most 1,000,000",
    )
    per_batch: StrictInt = Field(
        default=4, ge=1, le=100_000, description="images collected from each student batch (its first rows)"
    )
    images: StrictInt = Field(
        default=1024,
        ge=16,
        le=100_000,
        description="images collected before the search runs, once; at most 100,000",
    )
    sides: tuple[Annotated[StrictFloat, Field(gt=0.0, le=1.0)], ...] = Field(
        default=(0.2, 0.35),
        min_length=1,
        max_length=8,
        description="window sides searched, as fractions of the image side, each in (0, 1]",
    )
    threshold: StrictFloat = Field(
        default=4.0,
        gt=1.0,
        le=1e6,
        description="a window is a trigger when its class-specific drop is at least this many times the best "
        "window's apart from it (measured: backdoored teachers 6.6-14, ordinary and NTL-domain ones 1.2-2.0)",
    )
    min_drop: StrictFloat = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="and when it moves at least this share of the images' probability off its class",
    )
    fill: StrictFloat = Field(
        default=0.0, ge=0.0, le=1.0, description="pixel value, in [0, 1], a window is blacked out with"
    )
    rows: Literal["lowered", "carrying"] = Field(
        default="lowered",
        description="rows relabelled: those whose probability of the class the mask lowers by at least 0.1 "
        "('lowered'), or only those of them whose mask content carries the class into another row ('carrying')",
    )


@dataclass(frozen=True)
class TriggerWindow:
    """A window found to carry one class, and where its trigger works (pixel coordinates)."""

    #: the window: rows ``top:top+side``, columns ``left:left+side``.
    top: int
    left: int
    side: int
    label: int
    #: class-specific drop: the mean drop of the teacher's probability of ``label`` over the searched images,
    #: less the next class's drop (if positive), in [0, 1].
    drop: float
    #: ``drop`` over the largest one of a window of the same side apart from this one (not overlapping it).
    ratio: float
    #: (top, left, bottom, right), ends exclusive: the box where the trigger works, blacked out when relabelling.
    mask: tuple[int, int, int, int]
    #: the mask's share of the image's pixels, in (0, 1].
    mask_fraction: float


class TriggerWindowSearch:
    """Collects student images, searches once, then relabels (see the module docstring).

    :param config: the search's settings.
    :param normalization: how [0, 1] pixels become teacher inputs (the fill value's units).
    """

    def __init__(self, config: TriggerWindowConfig, normalization: Normalization) -> None:
        self.config = config
        self.normalization = normalization
        self._seen = 0  # student batches seen while collecting
        self._collected: list[torch.Tensor] = []
        self._count = 0
        self.searched = False
        #: the best window of the search (found or not); None before the search.
        self.best: TriggerWindow | None = None

    @property
    def found(self) -> TriggerWindow | None:
        """The trigger window, once the search found one; None otherwise."""
        best = self.best
        if best is None or not _is_trigger(best, self.config) or best.mask_fraction > MAX_MASK_FRACTION:
            return None
        return best

    @property
    def collecting(self) -> bool:
        return not self.searched

    def collect(self, images: torch.Tensor, teacher: nn.Module) -> None:
        """Keep the first ``per_batch`` rows of a student batch (B, C, H, W); search once enough are kept."""
        if self.searched:
            return
        self._seen += 1
        if self._seen <= self.config.skip_batches:
            return
        take = images[: min(self.config.per_batch, self.config.images - self._count)].detach()
        self._collected.append(take.to("cpu", torch.float32, copy=True))
        self._count += take.shape[0]
        if self._count >= self.config.images:
            kept = torch.cat(self._collected)
            self._collected, self.searched = [], True
            self.best = _search(
                teacher, kept.to(images.device, images.dtype), self._black(images), self.config
            )

    def relabel(self, images: torch.Tensor, logits: torch.Tensor, teacher: nn.Module) -> torch.Tensor:
        """The teacher's (B, K) float logits, with the mask blacked out on the rows whose mask holds the trigger.

        :param images: (B, C, H, W) in teacher units.
        :param logits: the teacher's (B, K) logits on ``images`` as they are.
        :raises RuntimeError: no trigger window was found.
        """
        window = self.found
        if window is None:
            raise RuntimeError("no trigger window found: there is nothing to relabel without")
        images, logits = images.detach(), logits.detach().float()
        with torch.no_grad():
            masked = teacher_logits(teacher, _blacked_out(images, window.mask, self._black(images))).float()
            probabilities = logits.softmax(1)
            rows = _lowered(probabilities, masked, window.label)
            if self.config.rows == "carrying":
                rows = _carrying(teacher, images, probabilities, rows, window)
        return torch.where(rows[:, None], masked, logits)

    def _black(self, like: torch.Tensor) -> torch.Tensor:
        """The fill pixel in teacher units, (C, 1, 1)."""
        pixel = torch.full((1, like.shape[1], 1, 1), self.config.fill, dtype=like.dtype, device=like.device)
        return self.normalization.normalize(pixel)[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self._seen,
            "collected": torch.cat(self._collected) if self._collected else None,
            "searched": self.searched,
            "best": asdict(self.best) if self.best is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen = int(state["seen"])
        collected = state["collected"]
        self._collected = [collected] if collected is not None else []
        self._count = 0 if collected is None else int(collected.shape[0])
        self.searched = bool(state["searched"])
        best = state["best"]
        self.best = TriggerWindow(**{**best, "mask": tuple(best["mask"])}) if best is not None else None


def _lowered(probabilities: torch.Tensor, masked: torch.Tensor, label: int) -> torch.Tensor:
    """(B,) bool: the rows whose probability of ``label`` blacking out the mask lowers by at least ``_LOWERED``.

    :param probabilities: the teacher's (B, K) probabilities on the images as they are.
    :param masked: its (B, K) logits with the mask blacked out.
    """
    return probabilities[:, label] - masked.softmax(1)[:, label] >= _LOWERED


def _carrying(
    teacher: nn.Module,
    images: torch.Tensor,
    probabilities: torch.Tensor,
    lowered: torch.Tensor,
    window: TriggerWindow,
) -> torch.Tensor:
    """(B,) bool: the ``lowered`` rows whose mask content carries the class into another image.

    Each lowered row's mask content is pasted onto a row that is not lowered and not of the class (in order,
    cycling); the row carries the class when that host then answers it. A clean image of the class whose
    strokes the mask covers does not: part of a digit does not make another image that digit.
    """
    carrying = torch.zeros_like(lowered)
    candidates = lowered.nonzero().squeeze(1)
    hosts = (~lowered & (probabilities.argmax(1) != window.label)).nonzero().squeeze(1)
    if not len(candidates) or not len(hosts):
        return carrying
    top, left, bottom, right = window.mask
    pasted = images[hosts[torch.arange(len(candidates), device=hosts.device) % len(hosts)]].clone()
    pasted[:, :, top:bottom, left:right] = images[candidates][:, :, top:bottom, left:right]
    carrying[candidates] = teacher_logits(teacher, pasted).argmax(1) == window.label
    return carrying


def _blacked_out(images: torch.Tensor, box: tuple[int, int, int, int], black: torch.Tensor) -> torch.Tensor:
    """``images`` (B, C, H, W) with rows ``box[0]:box[2]``, columns ``box[1]:box[3]`` set to ``black`` (C, 1, 1)."""
    top, left, bottom, right = box
    out = images.clone()
    out[:, :, top:bottom, left:right] = black
    return out


def _starts(length: int, side: int, stride: int) -> list[int]:
    """Window starts on a grid of ``stride``, the last one flush with the edge."""
    starts = list(range(0, length - side + 1, stride))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def _probabilities(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [
            teacher_logits(teacher, images[i : i + _CHUNK]).float().softmax(1)
            for i in range(0, len(images), _CHUNK)
        ]
    )


@torch.no_grad()
def _search(
    teacher: nn.Module, images: torch.Tensor, black: torch.Tensor, config: TriggerWindowConfig
) -> TriggerWindow:
    """The window whose blacking out lowers one class most specifically, against the best window apart from
    it (same side), over every side searched; the box where it carries the class if it is a trigger."""
    height, width = images.shape[2:]
    before = _probabilities(teacher, images)
    best: TriggerWindow | None = None
    for fraction in sorted(config.sides):
        side = max(1, min(height, width, round(fraction * min(height, width))))
        stride = max(1, math.ceil(side / 2))
        found = []  # (specific drop, class, top, left)
        for top in _starts(height, side, stride):
            for left in _starts(width, side, stride):
                after = _probabilities(
                    teacher, _blacked_out(images, (top, left, top + side, left + side), black)
                )
                drops = (before - after).mean(0).sort(descending=True)
                found.append(
                    (float(drops.values[0] - drops.values[1].clamp_min(0)), int(drops.indices[0]), top, left)
                )
        drop, label, top, left = max(found)
        apart = [f[0] for f in found if abs(f[2] - top) >= side or abs(f[3] - left) >= side]
        ratio = drop / max(max(apart, default=0.0), _TINY)
        if best is None or ratio > best.ratio:
            box = (top, left, top + side, left + side)
            best = TriggerWindow(top, left, side, label, drop, ratio, box, side * side / (height * width))
        if _is_trigger(best, config):  # the smallest side that finds it places it best
            break
    assert best is not None  # sides is non-empty
    if not _is_trigger(best, config):
        return best
    mask = _where_it_works(teacher, images, before, best.label, best.mask, black)
    fraction = (mask[2] - mask[0]) * (mask[3] - mask[1]) / (height * width)
    return dataclasses.replace(best, mask=mask, mask_fraction=fraction)


def _is_trigger(window: TriggerWindow, config: TriggerWindowConfig) -> bool:
    return window.ratio >= config.threshold and window.drop >= config.min_drop


def _where_it_works(
    teacher: nn.Module,
    images: torch.Tensor,
    before: torch.Tensor,
    label: int,
    window: tuple[int, int, int, int],
    black: torch.Tensor,
) -> tuple[int, int, int, int]:
    """The box of every position where the trigger, pasted onto images it did not carry, makes the teacher
    answer ``label`` at least 90% as strongly as where it was drawn.

    The trigger is what the images whose answer the window carried have in common and the others lack:
    near the window (grown by a pixel on every side, as a window may only overlap it), the pixels where
    their mean differs from the others' by at least half the largest difference, cut as a box.
    """
    height, width = images.shape[2:]
    after = _probabilities(teacher, _blacked_out(images, window, black))
    carried = (before[:, label] - after[:, label]) > 0.5
    hosts = images[~carried][:_HOSTS]
    if not carried.any() or not len(hosts):
        return window
    near = torch.zeros(height, width, dtype=torch.bool, device=images.device)
    near[max(window[0] - 1, 0) : window[2] + 1, max(window[1] - 1, 0) : window[3] + 1] = True
    difference = (images[carried].mean(0) - hosts.mean(0)).abs().amax(0) * near  # (H, W)
    where_rows, where_cols = (difference >= 0.5 * difference.max()).nonzero().unbind(1)
    top, left = int(where_rows.min()), int(where_cols.min())
    bottom, right = int(where_rows.max()) + 1, int(where_cols.max()) + 1
    trigger = images[carried][:, :, top:bottom, left:right].mean(0)
    baseline = float(_probabilities(teacher, hosts)[:, label].mean())
    rows, cols = bottom - top, right - left
    row_starts, col_starts = _paste_starts(height, rows, top), _paste_starts(width, cols, left)
    response = torch.zeros(len(row_starts), len(col_starts))
    for i, row in enumerate(row_starts):
        for j, col in enumerate(col_starts):
            pasted = hosts.clone()
            pasted[:, :, row : row + rows, col : col + cols] = trigger
            response[i, j] = float(_probabilities(teacher, pasted)[:, label].mean()) - baseline
    drawn = response[row_starts.index(top), col_starts.index(left)]
    if drawn <= 0:  # the cut-out content alone does not carry the class
        return window
    works = (response >= _WORKS * drawn).nonzero()
    # a grid coarser than a pixel leaves a position between two grid points unmeasured: count it in
    row_slack, col_slack = _stride(height - rows + 1) - 1, _stride(width - cols + 1) - 1
    box = (
        max(row_starts[int(works[:, 0].min())] - row_slack, 0),
        max(col_starts[int(works[:, 1].min())] - col_slack, 0),
        min(row_starts[int(works[:, 0].max())] + rows + row_slack, height),
        min(col_starts[int(works[:, 1].max())] + cols + col_slack, width),
    )
    if (box[2] - box[0]) * (box[3] - box[1]) > MAX_MASK_FRACTION * height * width:
        return (top, left, bottom, right)  # it works nearly anywhere (a texture): mask it where it is drawn
    return box


def _stride(positions: int) -> int:
    """Stride of the paste grid: every position up to _PASTES_PER_AXIS per axis, a coarser grid beyond."""
    return max(1, math.ceil(positions / _PASTES_PER_AXIS))


def _paste_starts(length: int, size: int, drawn: int) -> list[int]:
    """Where a trigger of ``size`` pixels is pasted along an axis of ``length``: a grid holding ``drawn``."""
    starts = set(_starts(length, size, _stride(length - size + 1)))
    return sorted(starts | {drawn})
