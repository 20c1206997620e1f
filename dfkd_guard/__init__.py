"""dfkd-guard: keep data-free knowledge distillation out of the OOD trap.

The public API::

    from dfkd_guard import Guard, GuardConfig, hookimpl, Component

See :mod:`dfkd_guard.hookspecs` for the plugin contract.
"""

from dfkd_guard.components import Component, NoParams
from dfkd_guard.config import ComponentChoice, ForgetConfig, GuardConfig, PenaltyChoice
from dfkd_guard.errors import ConfigError, DfkdGuardError, PluginError
from dfkd_guard.guard import Guard
from dfkd_guard.hookspecs import hookimpl, hookspec
from dfkd_guard.normalization import Normalization
from dfkd_guard.plugins import PluginRegistry
from dfkd_guard.sample_weights import SampleWeights

__version__ = "0.1.0"

__all__ = [
    "Component",
    "ComponentChoice",
    "ConfigError",
    "DfkdGuardError",
    "ForgetConfig",
    "Guard",
    "GuardConfig",
    "NoParams",
    "Normalization",
    "PenaltyChoice",
    "PluginError",
    "PluginRegistry",
    "SampleWeights",
    "hookimpl",
    "hookspec",
    "__version__",
]
