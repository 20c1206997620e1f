"""Exceptions raised by dfkd-guard.

Every error says where the problem is: a configuration field, a file, or the
plugin and hook whose result was wrong.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DfkdGuardError", "PluginError"]


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
