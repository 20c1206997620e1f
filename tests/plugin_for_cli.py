"""A plugin module loaded by ``dfkd-guard plugins -p tests.plugin_for_cli`` in test_cli."""

import torch

from dfkd_guard import hookimpl, scorer


@scorer("always_ood")
def always_ood(images):
    """every sample is OOD-like"""
    return torch.ones(images.shape[0])


@hookimpl
def dfkd_guard_components():
    return [always_ood]
