"""The plugin registry: specs first, then built-ins, code plugins, entry points.

Each :class:`PluginRegistry` owns its own ``pluggy.PluginManager``; nothing is
global, so two guards in one process (or one per rank) never see each
other's plugins. Third-party plugins are found through the entry-point group
``dfkd_guard``; set ``DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them.

pluggy finds the plugins, orders them and calls the declaration and observer
hooks; the components the plugins declare are plain functions
(:mod:`dfkd_guard.components`) that :meth:`PluginRegistry.call_component`
calls directly, with the keyword arguments each one takes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from dfkd_guard import hookspecs
from dfkd_guard.components import COMPONENT_ARGUMENTS, COMPONENT_KINDS, Component, ComponentKind
from dfkd_guard.errors import PluginError

__all__ = ["AUTOLOAD_ENV", "BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "PluginRegistry", "RegisteredComponent"]

#: Modules registered as plugins in every registry, in this order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "dfkd_guard.scorers.logit_scores",
    "dfkd_guard.scorers.atesc",
    "dfkd_guard.scorers.odin",
    "dfkd_guard.scorers.bn_deviation",
    "dfkd_guard.weightings",
    "dfkd_guard.penalties",
)
ENTRY_POINT_GROUP = "dfkd_guard"
AUTOLOAD_ENV = "DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD"

#: Hooks of earlier versions, replaced by component functions; named in the error.
_REMOVED_HOOKS = ("dfkd_guard_score", "dfkd_guard_sample_weights", "dfkd_guard_generator_penalty")


@dataclass(frozen=True)
class RegisteredComponent:
    """A component together with the plugin that provides it.

    :param source: ``"built-in"``, ``"code"`` or ``"<distribution> <version>"``.
    """

    component: Component
    plugin_name: str
    source: str


def _plugin_name(plugin: object) -> str:
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    if isinstance(plugin, type):
        return f"{plugin.__module__}.{plugin.__qualname__}"
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}@{id(plugin):x}"


def _arguments_of(component: Component, plugin_name: str) -> tuple[str, ...] | None:
    """The keyword arguments ``component.function`` takes; None if it takes ``**kwargs``.

    :raises PluginError: the signature cannot be read, or names an argument
        the guard does not pass to a component of this kind.
    """
    where = f"{component.kind} {component.name!r}"
    allowed = COMPONENT_ARGUMENTS[component.kind]
    try:
        signature = inspect.signature(component.function)
    except (TypeError, ValueError) as exc:
        raise PluginError(plugin_name, where, f"cannot read the signature of its function: {exc}") from exc
    names: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            return None
        if parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY or parameter.name not in allowed:
            raise PluginError(
                plugin_name,
                where,
                f"its function takes {parameter.name!r}; a {component.kind} is called with keyword arguments "
                f"from {', '.join(allowed)}",
            )
        names.append(parameter.name)
    return tuple(names)


class PluginRegistry:
    """Registered plugins and the components they declare.

    :param plugins: extra plugin objects (modules, classes or instances with
        ``@hookimpl`` methods) registered after the built-ins.
    :param load_entrypoints: load plugins from the ``dfkd_guard`` entry-point
        group; default: yes unless ``DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :raises PluginError: a plugin fails to import, has a hook that is not in
        the contract, or declares a component name already taken.
    """

    def __init__(self, plugins: Iterable[object] = (), *, load_entrypoints: bool | None = None) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._sources: dict[str, str] = {}
        for module_name in BUILTIN_PLUGINS:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # re-raised naming the plugin
                raise PluginError(
                    module_name, "import", f"built-in plugin failed to import: {exc!r}"
                ) from exc
            self._register(module, module_name, "built-in")
        for plugin in plugins:
            self._register(plugin, _plugin_name(plugin), "code")
        if load_entrypoints is None:
            load_entrypoints = not os.environ.get(AUTOLOAD_ENV)
        if load_entrypoints:
            self._load_entrypoints()
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            message = str(exc)
            if any(repr(hook) in message for hook in _REMOVED_HOOKS):
                message += "; declare each component as one function instead (docs/plugins.md)"
            raise PluginError(self._name_of(exc.plugin), "check_pending", message) from exc
        # (kind, name) -> the keyword arguments its function takes; None: all (it has **kwargs)
        self._arguments: dict[tuple[str, str], tuple[str, ...] | None] = {}
        self._components = self._collect_components()

    # -- registration ------------------------------------------------------

    def _register(self, plugin: object, name: str, source: str) -> None:
        if self.manager.has_plugin(name):
            raise PluginError(name, "register", "a plugin with this name is already registered")
        try:
            self.manager.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(name, "register", str(exc)) from exc
        self._sources[name] = source

    def _load_entrypoints(self) -> None:
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or ep.name in seen:
                    continue
                seen.add(ep.name)
                dist_name = dist.metadata["Name"]
                try:
                    plugin = ep.load()
                except Exception as exc:  # re-raised naming the plugin
                    raise PluginError(
                        ep.name,
                        "import",
                        f"entry point {ep.value!r} of distribution {dist_name!r} failed: {exc!r}",
                    ) from exc
                self._register(plugin, ep.name, f"{dist_name} {dist.version}")

    def _name_of(self, plugin: object) -> str:
        return self.manager.get_name(plugin) or _plugin_name(plugin)

    def _collect_components(self) -> dict[tuple[str, str], RegisteredComponent]:
        found: dict[tuple[str, str], RegisteredComponent] = {}
        for impl in self.manager.hook.dfkd_guard_components.get_hookimpls():
            name = impl.plugin_name
            try:
                declared = impl.function()
                components = list(declared)
            except Exception as exc:  # re-raised naming the plugin
                raise PluginError(name, "dfkd_guard_components", f"raised {exc!r}") from exc
            for component in components:
                if not isinstance(component, Component):
                    raise PluginError(
                        name, "dfkd_guard_components", f"returned {component!r}, not a Component"
                    )
                key = (component.kind, component.name)
                if key in found:
                    raise PluginError(
                        name,
                        "dfkd_guard_components",
                        f"{component.kind} {component.name!r} is already declared by plugin {found[key].plugin_name!r}",
                    )
                self._arguments[key] = _arguments_of(component, name)
                found[key] = RegisteredComponent(component, name, self._sources[name])
        return found

    # -- queries -----------------------------------------------------------

    def components(self, kind: ComponentKind | None = None) -> list[RegisteredComponent]:
        """Registered components, sorted by kind then name."""
        if kind is not None and kind not in COMPONENT_KINDS:
            raise ValueError(f"kind must be one of {COMPONENT_KINDS}, got {kind!r}")
        order = {k: i for i, k in enumerate(COMPONENT_KINDS)}
        chosen = [c for (k, _), c in self._components.items() if kind is None or k == kind]
        return sorted(chosen, key=lambda c: (order[c.component.kind], c.component.name))

    def component_map(self) -> dict[tuple[str, str], Component]:
        """Components by ``(kind, name)``, for :meth:`GuardConfig.resolve`."""
        return {key: rc.component for key, rc in self._components.items()}

    def provider(self, kind: ComponentKind, name: str) -> str:
        """Name of the plugin that declared the ``kind`` component ``name``."""
        return self._components[(kind, name)].plugin_name

    # -- calls -------------------------------------------------------------

    def call_component(self, kind: ComponentKind, name: str, **kwargs: Any) -> Any:
        """Call the function of the ``kind`` component ``name`` with the arguments it takes.

        :raises PluginError: the function raised or returned None; names the
            providing plugin and the component.
        """
        provider = self.provider(kind, name)
        function = self._components[(kind, name)].component.function
        accepted = self._arguments[(kind, name)]
        if accepted is not None:
            kwargs = {arg: kwargs[arg] for arg in accepted if arg in kwargs}
        where = f"{kind} {name!r}"
        try:
            result = function(**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(provider, where, f"raised {exc!r}") from exc
        if result is None:
            raise PluginError(provider, where, "returned None")
        return result

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observability hook on every plugin, naming the one that raises."""
        for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls()):
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:
                raise PluginError(impl.plugin_name, hook_name, f"raised {exc!r}") from exc

    def source_of(self, plugin_name: str) -> str:
        """``"built-in"``, ``"code"`` or the distribution that provided the plugin."""
        return self._sources[plugin_name]
