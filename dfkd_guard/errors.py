"""Exceptions raised by dfkd-guard.

Every error says where the problem is: a configuration field, a file, or the
plugin and hook whose result was wrong.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DfkdGuardError", "PluginError"]


class DfkdGuardError(Exception):
    """Base class of every error raised by dfkd-guard."""


class ConfigError(DfkdGuardError, ValueError):
    """A guard configuration is invalid.

    ``field`` is the dotted path of the offending field (``"scorer.params.eps"``),
    ``source`` the file it was read from, if any.
    """

    def __init__(self, field: str, message: str, source: str | None = None) -> None:
        self.field = field
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}")


class PluginError(DfkdGuardError):
    """A plugin raised, or returned a result that breaks the hook contract.

    ``plugin`` is the name the plugin is registered under, ``hook`` the hook
    being called.
    """

    def __init__(self, plugin: str, hook: str, message: str) -> None:
        self.plugin = plugin
        self.hook = hook
        super().__init__(f"plugin {plugin!r}, hook {hook}: {message}")


class CheckpointError(DfkdGuardError, ValueError):
    """A checkpoint or cache file cannot be used: missing, corrupt, or from a different run.

    ``path`` is the file; ``fields`` lists the run settings that differ from
    the checkpoint's (empty when the file itself is the problem).
    """

    def __init__(self, path: object, message: str, fields: tuple[str, ...] = ()) -> None:
        self.path = str(path)
        self.fields = tuple(fields)
        super().__init__(f"{path}: {message}")
