"""One torch thread for code whose results must not depend on the machine.

With more intra-op threads torch splits float sums differently, so the same
seeded training gives other weights on another thread count. Benchmark
teachers and runs are keyed by their config alone; they train inside
:func:`one_thread`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["one_thread"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)``; the previous count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
