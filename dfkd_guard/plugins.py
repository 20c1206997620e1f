"""The plugin registry: specs first, then built-ins, code plugins, entry points.

Each :class:`PluginRegistry` owns its own ``pluggy.PluginManager``; nothing is
global, so two guards in one process (or one per rank) never see each
other's plugins. Third-party plugins are found through the entry-point group
``dfkd_guard``; set ``DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from dfkd_guard import hookspecs
from dfkd_guard.components import COMPONENT_KINDS, Component, ComponentKind
from dfkd_guard.errors import PluginError

__all__ = ["BUILTIN_PLUGINS", "AUTOLOAD_ENV", "ENTRY_POINT_GROUP", "RegisteredComponent", "PluginRegistry"]

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

_METHOD_HOOKS: dict[ComponentKind, str] = {
    "scorer": "dfkd_guard_score",
    "weighting": "dfkd_guard_sample_weights",
    "penalty": "dfkd_guard_generator_penalty",
}
_NAME_ARGUMENT: dict[ComponentKind, str] = {"scorer": "scorer", "weighting": "weighting", "penalty": "penalty"}


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
            except Exception as exc:  # noqa: BLE001 - re-raised naming the plugin
                raise PluginError(module_name, "import", f"built-in plugin failed to import: {exc!r}") from exc
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
            raise PluginError(self._name_of(exc.plugin), "check_pending", str(exc)) from exc
        self._components = self._collect_components()
        self._callers: dict[tuple[str, str], Any] = {}

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
                except Exception as exc:  # noqa: BLE001 - re-raised naming the plugin
                    raise PluginError(
                        ep.name, "import", f"entry point {ep.value!r} of distribution {dist_name!r} failed: {exc!r}"
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
            except Exception as exc:  # noqa: BLE001 - re-raised naming the plugin
                raise PluginError(name, "dfkd_guard_components", f"raised {exc!r}") from exc
            for component in components:
                if not isinstance(component, Component):
                    raise PluginError(name, "dfkd_guard_components", f"returned {component!r}, not a Component")
                hook_name = _METHOD_HOOKS[component.kind]
                if not any(i.plugin_name == name for i in getattr(self.manager.hook, hook_name).get_hookimpls()):
                    raise PluginError(
                        name,
                        "dfkd_guard_components",
                        f"declares {component.kind} {component.name!r} but does not implement {hook_name}",
                    )
                key = (component.kind, component.name)
                if key in found:
                    raise PluginError(
                        name,
                        "dfkd_guard_components",
                        f"{component.kind} {component.name!r} is already declared by plugin {found[key].plugin_name!r}",
                    )
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
        """Call the method hook of ``kind`` on the plugin that declared ``name``.

        :raises PluginError: the plugin raised or returned None.
        """
        provider = self.provider(kind, name)
        hook_name = _METHOD_HOOKS[kind]
        caller = self._callers.get((hook_name, provider))
        if caller is None:
            others = [p for n, p in self.manager.list_name_plugin() if n != provider]
            caller = self.manager.subset_hook_caller(hook_name, remove_plugins=others)
            self._callers[(hook_name, provider)] = caller
        try:
            result = caller(**{_NAME_ARGUMENT[kind]: name}, **kwargs)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(provider, hook_name, f"{kind} {name!r} raised {exc!r}") from exc
        if result is None:
            raise PluginError(provider, hook_name, f"declared {kind} {name!r} but returned None for it")
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
