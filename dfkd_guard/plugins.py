"""The plugin registry: specs first, then built-ins, code plugins, entry points.

Each :class:`PluginRegistry` owns its own ``pluggy.PluginManager``; nothing is
global, so two guards in one process (or one per rank) never see each
other's plugins. Third-party plugins are found through the entry-point group
``dfkd_guard``; set ``DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them. An
entry point that fails to load or to register is skipped with a warning and
listed in :attr:`PluginRegistry.failed_entrypoints`; the others still load.

pluggy finds the plugins, orders them and calls the declaration and observer
hooks; the components the plugins declare are plain functions
(:mod:`dfkd_guard.components`) that :meth:`PluginRegistry.call_component`
calls directly, with the keyword arguments each one takes, on copies of the
caller's tensors. With ``DFKD_GUARD_DEBUG`` set (not ``0``) it also checks
that a call left the teacher's parameters, buffers and modes as they were.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy
import torch
from torch import nn

from dfkd_guard import hookspecs
from dfkd_guard.components import (
    COMPONENT_ARGUMENTS,
    COMPONENT_KINDS,
    Component,
    ComponentKind,
    keyword_arguments,
)
from dfkd_guard.errors import PluginError
from dfkd_guard.sample_weights import SampleWeights

__all__ = [
    "AUTOLOAD_ENV",
    "BUILTIN_PLUGINS",
    "DEBUG_ENV",
    "ENTRY_POINT_GROUP",
    "PluginRegistry",
    "RegisteredComponent",
    "debug_mode",
]

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
#: Set to anything but "" or "0": components are checked for changing the teacher, the CLI prints tracebacks.
DEBUG_ENV = "DFKD_GUARD_DEBUG"

#: Tensor arguments a component gets a copy of (but a penalty's images, see call_component).
_COPIED_ARGUMENTS = ("images", "logits", "scores")

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


def debug_mode() -> bool:
    """Whether ``DFKD_GUARD_DEBUG`` is set to something other than ``""`` or ``"0"``."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


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
    try:
        return keyword_arguments(component.function, component.kind, COMPONENT_ARGUMENTS[component.kind])
    except ValueError as exc:
        raise PluginError(plugin_name, f"{component.kind} {component.name!r}", str(exc)) from exc


@dataclass(frozen=True)
class _TeacherSnapshot:
    """A copy of the teacher's ``state_dict()`` tensors and of every module's train/eval mode."""

    teacher: nn.Module
    tensors: dict[str, torch.Tensor]
    modes: dict[str, bool]

    @classmethod
    def of(cls, teacher: nn.Module) -> _TeacherSnapshot:
        return cls(
            teacher,
            {key: value.detach().clone() for key, value in teacher.state_dict().items()},
            {key: module.training for key, module in teacher.named_modules()},
        )

    def change(self) -> str | None:
        """What differs in the teacher now (the first difference), or None."""
        teacher = self.teacher
        parameters = {key for key, _ in teacher.named_parameters()}
        tensors = teacher.state_dict()
        for key in sorted(self.tensors.keys() | tensors.keys()):
            what = "parameter" if key in parameters else "buffer"
            if key not in tensors:
                return f"removed the teacher's {what} {key!r}"
            if key not in self.tensors:
                return f"added the {what} {key!r} to the teacher"
            if not _same(self.tensors[key], tensors[key]):
                return f"changed the teacher's {what} {key!r}"
        modes = {key: module.training for key, module in teacher.named_modules()}
        for key, training in modes.items():
            if self.modes.get(key, training) != training:
                module = f"module {key!r}" if key else "the teacher"
                return (
                    f"changed the teacher's mode: {module} is now in {'train' if training else 'eval'} mode"
                )
        return None


def _copy(value: Any) -> Any:
    """A tensor or :class:`SampleWeights` an observer may edit without touching the guard's own."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, SampleWeights):
        return SampleWeights(value.kd.clone(), value.forget.clone())
    return value


def _same(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Same shape, dtype and values (NaN equal to NaN)."""
    if before.shape != after.shape or before.dtype != after.dtype:
        return False
    if before.is_floating_point() or before.is_complex():
        nan = before.isnan()
        return torch.equal(nan, after.isnan()) and torch.equal(before[~nan], after[~nan])
    return torch.equal(before, after)


class PluginRegistry:
    """Registered plugins and the components they declare.

    :param plugins: extra plugin objects (modules, classes or instances with
        ``@hookimpl`` methods) registered after the built-ins.
    :param load_entrypoints: load plugins from the ``dfkd_guard`` entry-point
        group; default: yes unless ``DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :raises PluginError: a built-in or code plugin fails to import, has a hook
        that is not in the contract, or declares a component name already
        taken. A broken entry point is skipped with a warning instead.
    """

    def __init__(self, plugins: Iterable[object] = (), *, load_entrypoints: bool | None = None) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._sources: dict[str, str] = {}
        # (kind, name) -> the keyword arguments its function takes; None: all (it has **kwargs)
        self._arguments: dict[tuple[str, str], tuple[str, ...] | None] = {}
        self._components: dict[tuple[str, str], RegisteredComponent] = {}
        #: ``(entry point name, reason)`` of every entry point skipped because it failed to load or register.
        self.failed_entrypoints: list[tuple[str, str]] = []
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
        self._check_pending()
        for name in self._sources:
            self._add_components(name)
        if load_entrypoints is None:
            load_entrypoints = not os.environ.get(AUTOLOAD_ENV)
        if load_entrypoints:
            self._load_entrypoints()

    # -- registration ------------------------------------------------------

    def _register(self, plugin: object, name: str, source: str) -> None:
        if self.manager.has_plugin(name):
            raise PluginError(name, "register", "a plugin with this name is already registered")
        try:
            self.manager.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(name, "register", str(exc)) from exc
        self._sources[name] = source

    def _check_pending(self) -> None:
        """Every registered hook is in the contract; raises naming the first plugin with one that is not."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            message = str(exc)
            if any(repr(hook) in message for hook in _REMOVED_HOOKS):
                message += "; declare each component as one function instead (docs/plugins.md)"
            raise PluginError(self._name_of(exc.plugin), "check_pending", message) from exc

    def _load_entrypoints(self) -> None:
        """Register every ``dfkd_guard`` entry point; skip, warn about and record the broken ones."""
        seen: dict[str, str] = {}  # entry-point name -> the distribution that provided it
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                dist_name = dist.metadata["Name"]
                where = f"entry point {ep.name!r} ({ep.value!r}) of distribution '{dist_name} {dist.version}'"
                if ep.name in seen:
                    if seen[ep.name] != dist_name:  # the same distribution found twice on sys.path is fine
                        self._skip(ep.name, where, f"has the name of an entry point of {seen[ep.name]!r}")
                    continue
                seen[ep.name] = dist_name
                try:
                    self._register(ep.load(), ep.name, f"{dist_name} {dist.version}")
                except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not stop others
                    self._skip(ep.name, where, f"failed to load: {exc!r}")
                    continue
                try:
                    self._check_pending()
                    self._add_components(ep.name)
                except PluginError as exc:
                    self.manager.unregister(name=ep.name)
                    del self._sources[ep.name]
                    self._skip(ep.name, where, f"failed to register: {exc}")

    def _skip(self, name: str, where: str, reason: str) -> None:
        message = f"{where} {reason}"
        self.failed_entrypoints.append((name, message))
        warnings.warn(f"dfkd-guard: skipped plugin {message}", stacklevel=3)

    def _name_of(self, plugin: object) -> str:
        return self.manager.get_name(plugin) or _plugin_name(plugin)

    def _add_components(self, name: str) -> None:
        """Add the components plugin ``name`` declares; nothing is added if one of them is wrong.

        :raises PluginError: the declaration hook raised or returned something
            that is not a new, well-formed component.
        """
        plugin = self.manager.get_plugin(name)
        impls = [i for i in self.manager.hook.dfkd_guard_components.get_hookimpls() if i.plugin is plugin]
        found: dict[tuple[str, str], RegisteredComponent] = {}
        arguments: dict[tuple[str, str], tuple[str, ...] | None] = {}
        for impl in impls:
            try:
                components = list(impl.function())
            except Exception as exc:  # re-raised naming the plugin
                raise PluginError(name, "dfkd_guard_components", f"raised {exc!r}") from exc
            for component in components:
                if not isinstance(component, Component):
                    raise PluginError(
                        name, "dfkd_guard_components", f"returned {component!r}, not a Component"
                    )
                key = (component.kind, component.name)
                earlier = self._components.get(key) or found.get(key)
                if earlier is not None:
                    raise PluginError(
                        name,
                        "dfkd_guard_components",
                        f"{component.kind} {component.name!r} is already declared by plugin "
                        f"{earlier.plugin_name!r}",
                    )
                arguments[key] = _arguments_of(component, name)
                found[key] = RegisteredComponent(component, name, self._sources[name])
        self._arguments.update(arguments)
        self._components.update(found)

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

        ``images``, ``logits`` and ``scores`` are passed as copies (which keep
        their autograd graph), so a component that edits them in place does
        not change the caller's batch. A penalty is the exception for
        ``images``: it differentiates its ``logits`` with respect to them, and
        a copy would not be in that graph, so it gets the caller's tensor and
        an in-place change to it is an error. The teacher is never copied; in
        debug mode (:func:`debug_mode`) a call that changes its parameters,
        buffers or train/eval modes is an error.

        :raises PluginError: the function raised, returned None, edited a
            penalty's images in place, or (debug mode) changed the teacher;
            names the providing plugin and the component.
        """
        provider = self.provider(kind, name)
        function = self._components[(kind, name)].component.function
        accepted = self._arguments[(kind, name)]
        where = f"{kind} {name!r}"
        teacher = kwargs.get("teacher")  # checked even if the function does not take it: it may hold one
        snapshot = _TeacherSnapshot.of(teacher) if isinstance(teacher, nn.Module) and debug_mode() else None
        if accepted is not None:
            kwargs = {arg: kwargs[arg] for arg in accepted if arg in kwargs}
        shared = kwargs.get("images") if kind == "penalty" else None
        if not isinstance(shared, torch.Tensor):
            shared = None
        version = shared._version if shared is not None else 0
        kwargs = {
            arg: value.clone()
            if arg in _COPIED_ARGUMENTS and isinstance(value, torch.Tensor) and value is not shared
            else value
            for arg, value in kwargs.items()
        }
        try:
            result = function(**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(provider, where, f"raised {exc!r}") from exc
        if shared is not None and shared._version != version:
            raise PluginError(
                provider,
                where,
                "changed its images in place; a penalty must leave the generator's output as it is",
            )
        if snapshot is not None:
            change = snapshot.change()
            if change is not None:
                raise PluginError(provider, where, f"{change} (checked because {DEBUG_ENV} is set)")
        if result is None:
            raise PluginError(provider, where, "returned None")
        return result

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observability hook on every plugin (on copies of its tensors), naming the one that raises."""
        for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls()):
            arguments = {arg: kwargs[arg] for arg in impl.argnames}
            try:
                impl.function(**{name: _copy(value) for name, value in arguments.items()})
            except Exception as exc:
                raise PluginError(impl.plugin_name, hook_name, f"raised {exc!r}") from exc

    def source_of(self, plugin_name: str) -> str:
        """``"built-in"``, ``"code"`` or the distribution that provided the plugin."""
        return self._sources[plugin_name]
