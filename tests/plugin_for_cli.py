"""A plugin module loaded by ``dfkd-guard plugins -p tests.plugin_for_cli`` in test_cli."""

import torch

from dfkd_guard import Component, hookimpl


@hookimpl
def dfkd_guard_components():
    return [Component("scorer", "always_ood", "every sample is OOD-like")]


@hookimpl
def dfkd_guard_score(scorer, images):
    return torch.ones(images.shape[0])
