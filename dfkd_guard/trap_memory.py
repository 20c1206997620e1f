"""The trap memory: OOD-like synthetic images from the BN-prior warm-up, for the student to forget.

While synthesis sits in an NTL teacher's OOD region (the warm-up of
:mod:`dfkd_guard.bn_prior`, before the corrected BN targets lead it out),
the OOD-like side of the guard's split is a sample of that region: the
inputs on which the teacher is deliberately wrong, confident and robust.
Once de-mixing has moved synthesis away, the student sees no such inputs
any more, and extrapolates the teacher's OOD behaviour from ID-like ones.

A :class:`TrapMemory` keeps the latest ``capacity`` OOD-like images of the
warm-up (first in, first out) and, after an NTL-like verdict, hands back
``count`` of them per student step, cycling through the memory in order (no
random draws, so a seeded run stays reproducible). The guard appends them to
the student's batch in its forget set (KD weight 0): the student learns to
answer them uniformly, as the published student side does with OOD-like
samples of the current batch, without forgetting the ID-like samples of
batches synthesised after the correction.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TrapMemory"]


class TrapMemory:
    """First-in-first-out store of OOD-like images, read back cyclically.

    :param capacity: images kept, >= 1.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._images: torch.Tensor | None = None  # (capacity, C, H, W) once the first image arrives
        self._size = 0
        self._write = 0
        self._read = 0

    def __len__(self) -> int:
        return self._size

    def add(self, images: torch.Tensor) -> None:
        """Store ``images`` (N, C, H, W), detached, overwriting the oldest once full.

        :raises ValueError: the image shape differs from the stored ones.
        """
        images = images.detach()
        if images.shape[0] == 0:
            return
        if self._images is None:
            self._images = images.new_zeros((self.capacity, *images.shape[1:]))
        elif images.shape[1:] != self._images.shape[1:]:
            raise ValueError(
                f"trap memory holds images {tuple(self._images.shape[1:])}, got {tuple(images.shape[1:])}"
            )
        images = images[-self.capacity :]
        slots = (self._write + torch.arange(images.shape[0])) % self.capacity
        self._images[slots.to(self._images.device)] = images.to(self._images)
        self._write = (self._write + images.shape[0]) % self.capacity
        self._size = min(self._size + images.shape[0], self.capacity)

    def recall(self, count: int) -> torch.Tensor:
        """The next ``count`` stored images (fewer if fewer are stored), float (count, C, H, W).

        Reads go round the stored images in slot order.

        :raises ValueError: the memory is empty or ``count`` < 1.
        """
        if self._images is None or count < 1:
            raise ValueError(f"cannot recall {count} images from a trap memory of {self._size}")
        count = min(count, self._size)
        slots = (self._read + torch.arange(count)) % self._size
        self._read = (self._read + count) % self._size
        return self._images[slots.to(self._images.device)].clone()

    def state_dict(self) -> dict[str, Any]:
        """The stored images and the read / write positions."""
        images = None if self._images is None else self._images[: self._size].clone()
        return {"capacity": self.capacity, "images": images, "write": self._write, "read": self._read}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        :raises ValueError: the state was saved with another capacity.
        """
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"trap memory state has capacity {state['capacity']}, this memory {self.capacity}"
            )
        images = state["images"]
        self._images, self._size = None, 0
        if images is not None and images.shape[0]:
            self._images = images.new_zeros((self.capacity, *images.shape[1:]))
            self._images[: images.shape[0]] = images
            self._size = int(images.shape[0])
        self._write, self._read = int(state["write"]), int(state["read"])
