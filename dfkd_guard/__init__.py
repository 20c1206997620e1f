"""dfkd-guard: keep data-free knowledge distillation out of the OOD trap.

The public API::

    from dfkd_guard import Guard, GuardConfig, GuardedBatch
    from dfkd_guard import hookimpl, scorer, weighting, penalty   # writing plugins
    from dfkd_guard import Processes                              # sharded synthesis under torchrun

See :mod:`dfkd_guard.guard` for a DFKD loop with the guard and
:mod:`dfkd_guard.hookspecs` for the plugin contract.
"""

from dfkd_guard.components import Component, NoParams, penalty, scorer, weighting
from dfkd_guard.config import ComponentChoice, ForgetConfig, GuardConfig, PenaltyChoice
from dfkd_guard.errors import CheckpointError, ConfigError, DfkdGuardError, PluginError
from dfkd_guard.guard import Guard
from dfkd_guard.guarded_batch import GuardedBatch
from dfkd_guard.hookspecs import hookimpl, hookspec
from dfkd_guard.logits_of import LogitsOf
from dfkd_guard.normalization import Normalization
from dfkd_guard.plugins import PluginRegistry
from dfkd_guard.processes import Processes
from dfkd_guard.sample_weights import SampleWeights

__version__ = "0.4.0"

__all__ = [
    "CheckpointError",
    "Component",
    "ComponentChoice",
    "ConfigError",
    "DfkdGuardError",
    "ForgetConfig",
    "Guard",
    "GuardConfig",
    "GuardedBatch",
    "LogitsOf",
    "NoParams",
    "Normalization",
    "PenaltyChoice",
    "PluginError",
    "PluginRegistry",
    "Processes",
    "SampleWeights",
    "__version__",
    "hookimpl",
    "hookspec",
    "penalty",
    "scorer",
    "weighting",
]
