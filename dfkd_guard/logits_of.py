"""A teacher that returns its logits alone, for networks that return several outputs.

The guard and its scorers call the teacher and expect logits (B, K). A
network that returns ``(logits, features)`` or a dict is wrapped::

    teacher = LogitsOf(resnet_returning_features, output=0)   # or output="logits"
    guard = Guard(config, teacher)
    t_out = teacher(x)                                          # the loop calls the wrapper too

The wrapper holds the network as its only child, so its BatchNorm layers,
weights and train/eval mode are the network's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LogitsOf"]


class LogitsOf(nn.Module):
    """``network(x)[output]``: the logits of a network with several outputs.

    :param network: returns a tuple, list or dict of which one entry is the logits.
    :param output: the index (tuple, list) or key (dict) of the logits.
    """

    def __init__(self, network: nn.Module, output: int | str = 0) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        self.network = network
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of ``x`` (B, C, H, W)."""
        outputs: Any = self.network(x)
        try:
            return outputs[self.output]
        except (IndexError, KeyError, TypeError) as exc:
            raise ValueError(
                f"LogitsOf(output={self.output!r}): {type(self.network).__name__} returned "
                f"a {type(outputs).__name__} without that entry"
            ) from exc

    def extra_repr(self) -> str:
        return f"output={self.output!r}"
