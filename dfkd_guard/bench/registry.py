"""Named, parameterised components of the benchmark: settings, triggers, NTL losses, architectures.

A bench component is one function carrying its kind, name, summary and
parameter model, made by the decorators :func:`setting`, :func:`trigger`,
:func:`ntl_loss` and :func:`architecture` (as :mod:`dfkd_guard.components`
does for the guard's scorers)::

    class CrossParams(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        size: int = Field(5, ge=3, le=15)

    @trigger("cross", CrossParams)
    def cross(images, params):
        \"\"\"A white plus sign in the top-left corner.\"\"\"
        out = images.clone()
        out[:, :, 1 + params.size // 2, 1 : 1 + params.size] = 1.0
        out[:, :, 1 : 1 + params.size, 1 + params.size // 2] = 1.0
        return out

A bench config names a component in one of two ways:

* a registered name (``"checkerboard"``): the built-ins, and the components
  of installed distributions that declare an entry point in the group
  :data:`ENTRY_POINT_GROUP` (``dfkd_guard.bench``) naming a module (every
  component defined in it) or one component;
* ``"package.module:attribute"``: the component that attribute holds (or the
  component of that name defined in the module), the module imported with
  the config's ``import_dir`` (by default the config file's folder) first on
  the import path, so ``my_settings.py`` beside the config is
  ``"my_settings:cross"``. Importing runs the module's code: name only
  modules you trust.

The bench calls a component's function with keyword arguments only; it may
accept any subset of the arguments of its kind (:data:`ARGUMENTS`):

* **setting** ``(digits, labels, split, seed, params)``, once per split:
  ``digits`` float32 (N, 1, 28, 28) in [0, 1], the vendored MNIST images of
  ``split`` (``"train"`` or ``"test"``; the ID data of every setting);
  ``labels`` int64 (N,); ``seed`` the config's ``data_seed`` (derive seeds
  with :func:`~dfkd_guard.bench.data.subseed`). Returns ``(images,
  labels)``: the OOD domain of the split, float32 (M, 3, 32, 32) in [0, 1]
  and int64 (M,), digit labels when the setting is close-set
  (``close_set=True``, the default; OOD accuracy is then defined). The bench
  averages the images down to the config's ``image_size``.
* **trigger** ``(images, params)``: ``images`` float32 (N, 3, 32, 32) in
  [0, 1], a copy the trigger may change. Returns the triggered images, the
  same shape, in [0, 1]. A setting with a trigger is a backdoor setting: its
  OOD images are the triggered copies of its images whose label is not the
  target class, its NTL teacher learns to send them to the target class.
* **ntl_loss** ``(logits_id, labels_id, logits_ood, labels_ood, features_id,
  features_ood, params)``: one training step of an NTL teacher; logits float
  (B, K), labels int64 (B,), penultimate features float (B, D), with grad.
  Returns the scalar loss to minimise.
* **architecture** ``(widths, num_classes, image_size, params)``: ``widths``
  the stage widths of the config (``teacher_widths`` or ``student_widths``),
  ``image_size`` the side of the square 3-channel inputs. Returns a
  :class:`~dfkd_guard.bench.models.BenchNet` with ``num_classes`` logits.

A component that raises, or returns something that breaks its contract, is a
:class:`~dfkd_guard.errors.PluginError` naming it; an unknown name or invalid
parameters are a :class:`~dfkd_guard.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, get_args

from pydantic import BaseModel, ValidationError

from dfkd_guard.components import NoParams, keyword_arguments
from dfkd_guard.config import ComponentChoice, config_error
from dfkd_guard.errors import ConfigError
from dfkd_guard.imports import import_named
from dfkd_guard.plugins import AUTOLOAD_ENV

__all__ = [
    "ARGUMENTS",
    "BENCH_KINDS",
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "BenchComponent",
    "BenchKind",
    "BenchRegistry",
    "Resolved",
    "architecture",
    "default_registry",
    "ntl_loss",
    "resolve",
    "setting",
    "trigger",
]

BenchKind = Literal["setting", "trigger", "ntl_loss", "architecture"]
BENCH_KINDS: tuple[BenchKind, ...] = get_args(BenchKind)

#: The keyword arguments the bench passes to a component function of each kind.
ARGUMENTS: dict[BenchKind, tuple[str, ...]] = {
    "setting": ("digits", "labels", "split", "seed", "params"),
    "trigger": ("images", "params"),
    "ntl_loss": (
        "logits_id",
        "labels_id",
        "logits_ood",
        "labels_ood",
        "features_id",
        "features_ood",
        "params",
    ),
    "architecture": ("widths", "num_classes", "image_size", "params"),
}
ENTRY_POINT_GROUP = "dfkd_guard.bench"
#: Modules whose components are the built-ins, in this order.
BUILTIN_MODULES: tuple[str, ...] = (
    "dfkd_guard.bench.settings",
    "dfkd_guard.bench.triggers",
    "dfkd_guard.bench.ntl_losses",
    "dfkd_guard.bench.models",
)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class BenchComponent:
    """A named setting, trigger, NTL loss or architecture.

    Usually made by a decorator of this module. Calling it calls ``function``
    with the validated ``params`` and those of the keyword arguments it takes.

    :param kind: ``"setting"``, ``"trigger"``, ``"ntl_loss"`` or ``"architecture"``.
    :param name: lower-case identifier, unique per kind among the registered components.
    :param function: takes any subset of the kind's keyword arguments (:data:`ARGUMENTS`).
    :param params: pydantic model of its parameters; use ``extra="forbid"``.
    :param summary: one line; default: the first line of ``function``'s docstring.
    :param close_set: settings only: the OOD labels are digit labels.
    :param default_trigger: settings only: the trigger attached when a config names none
        (the setting is then always a backdoor setting).
    """

    kind: BenchKind
    name: str
    function: Callable[..., Any] = field(repr=False)
    params: type[BaseModel] = field(default=NoParams)
    summary: str = ""
    close_set: bool = True
    default_trigger: str | None = None
    #: the keyword arguments ``function`` takes; None: all of its kind (it takes ``**kwargs``)
    arguments: tuple[str, ...] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.kind not in BENCH_KINDS:
            raise ValueError(f"BenchComponent.kind must be one of {BENCH_KINDS}, got {self.kind!r}")
        if not (isinstance(self.name, str) and _NAME.match(self.name)):
            raise ValueError(f"BenchComponent.name must match {_NAME.pattern}, got {self.name!r}")
        where = f"{self.kind} {self.name!r}"
        if not callable(self.function):
            raise TypeError(f"the function of {where} must be callable, got {self.function!r}")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise ValueError(f"the params of {where} must be a pydantic model class")
        if self.kind != "setting" and (not self.close_set or self.default_trigger is not None):
            raise ValueError(f"{where}: close_set and default_trigger are options of settings")
        if not self.summary:
            doc = inspect.getdoc(self.function) or ""
            object.__setattr__(self, "summary", doc.strip().split("\n", 1)[0].strip())
        if not self.summary:
            raise ValueError(f"{where} needs a summary: pass summary= or give its function a docstring")
        object.__setattr__(self, "arguments", _arguments_of(self.function, self.kind, where))

    def __call__(self, params: BaseModel, **arguments: Any) -> Any:
        passed = {**arguments, "params": params}
        if self.arguments is not None:
            passed = {name: value for name, value in passed.items() if name in self.arguments}
        return self.function(**passed)


def _arguments_of(function: Callable[..., Any], kind: BenchKind, where: str) -> tuple[str, ...] | None:
    try:
        return keyword_arguments(function, kind, ARGUMENTS[kind])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _decorator(
    kind: BenchKind, name: str, params: type[BaseModel], summary: str | None, **options: Any
) -> Callable[[Callable[..., Any]], BenchComponent]:
    def decorate(function: Callable[..., Any]) -> BenchComponent:
        return BenchComponent(kind, name, function, params, summary or "", **options)

    return decorate


def setting(
    name: str,
    params: type[BaseModel] = NoParams,
    *,
    close_set: bool = True,
    default_trigger: str | None = None,
    summary: str | None = None,
) -> Callable[[Callable[..., Any]], BenchComponent]:
    """Make a function the setting ``name``: ``(digits, labels, split, seed, params) -> (images, labels)``.

    :param close_set: the OOD labels it returns are digit labels (OOD accuracy is defined).
    :param default_trigger: the trigger a config gets when it names none (a backdoor setting).
    """
    return _decorator("setting", name, params, summary, close_set=close_set, default_trigger=default_trigger)


def trigger(
    name: str, params: type[BaseModel] = NoParams, *, summary: str | None = None
) -> Callable[[Callable[..., Any]], BenchComponent]:
    """Make a function the backdoor trigger ``name``: ``(images, params) -> images``, (N, 3, 32, 32) in [0, 1]."""
    return _decorator("trigger", name, params, summary)


def ntl_loss(
    name: str, params: type[BaseModel] = NoParams, *, summary: str | None = None
) -> Callable[[Callable[..., Any]], BenchComponent]:
    """Make a function the NTL loss ``name``: logits, labels and features of ID and OOD -> scalar."""
    return _decorator("ntl_loss", name, params, summary)


def architecture(
    name: str, params: type[BaseModel] = NoParams, *, summary: str | None = None
) -> Callable[[Callable[..., Any]], BenchComponent]:
    """Make a function the architecture ``name``: ``(widths, num_classes, image_size, params) -> BenchNet``."""
    return _decorator("architecture", name, params, summary)


def _components_of(module: ModuleType) -> list[BenchComponent]:
    """The components defined in ``module`` (not those it imports), in definition order."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, BenchComponent)
        and getattr(value.function, "__module__", None) == module.__name__
    ]


class BenchRegistry:
    """The registered bench components: the built-ins, then those of the ``dfkd_guard.bench`` entry points.

    :param load_entrypoints: default: yes, unless ``DFKD_GUARD_DISABLE_PLUGIN_AUTOLOAD`` is set. An entry
        point that fails to load, or declares a name already taken, is skipped with a warning and
        listed in :attr:`failed_entrypoints`.
    """

    def __init__(self, *, load_entrypoints: bool | None = None) -> None:
        self._registered: dict[tuple[str, str], tuple[BenchComponent, str]] = {}
        self._imported: dict[tuple[str, str], tuple[BenchComponent, str]] = {}
        #: ``(entry point name, reason)`` of every entry point skipped.
        self.failed_entrypoints: list[tuple[str, str]] = []
        for module_name in BUILTIN_MODULES:
            for component in _components_of(importlib.import_module(module_name)):
                self._add([component], "built-in")
        if load_entrypoints is None:
            load_entrypoints = not os.environ.get(AUTOLOAD_ENV)
        if load_entrypoints:
            self._load_entrypoints()

    def _add(self, components: list[BenchComponent], source: str) -> None:
        for component in components:
            earlier = self._registered.get((component.kind, component.name))
            if earlier is not None:
                raise ValueError(f"{component.kind} {component.name!r} is already declared by {earlier[1]}")
        self._registered.update({(c.kind, c.name): (c, source) for c in components})

    def _load_entrypoints(self) -> None:
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP:
                    continue
                source = f"{dist.metadata['Name']} {dist.version}"
                try:
                    loaded = ep.load()
                    if isinstance(loaded, ModuleType):
                        components = _components_of(loaded)
                    elif isinstance(loaded, BenchComponent):
                        components = [loaded]
                    else:
                        raise TypeError(f"{ep.value!r} is neither a module nor a bench component")
                    self._add(components, source)
                except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not stop the others
                    message = (
                        f"entry point {ep.name!r} ({ep.value!r}) of distribution '{source}' skipped: {exc!r}"
                    )
                    self.failed_entrypoints.append((ep.name, message))
                    warnings.warn(f"dfkd-guard bench: {message}", stacklevel=3)

    def names(self, kind: BenchKind) -> list[str]:
        """The registered names of ``kind``, sorted."""
        return sorted(name for k, name in self._registered if k == kind)

    def components(self, kind: BenchKind) -> list[tuple[BenchComponent, str]]:
        """The registered components of ``kind`` with their source (``"built-in"`` or the distribution)."""
        return [self._registered[(kind, name)] for name in self.names(kind)]

    def get(self, kind: BenchKind, name: str, field: str, import_dir: Path | None = None) -> BenchComponent:
        """The component ``name`` of ``kind``: a registered name or ``"package.module:attribute"``.

        ``attribute`` is the module's attribute holding the component, or the
        name of a component of ``kind`` defined in the module.

        :param field: the config field that names it, for errors.
        :param import_dir: folder put first on the import path while a module is imported.
        :raises ConfigError: unknown name, module not importable, or not a component of ``kind``.
        """
        return self.find(kind, name, field, import_dir)[0]

    def find(
        self, kind: BenchKind, name: str, field: str, import_dir: Path | None = None
    ) -> tuple[BenchComponent, str]:
        """:meth:`get`, and where the component comes from: ``"built-in"``, a distribution, a module."""
        if ":" not in name:
            found = self._registered.get((kind, name))
            if found is None:
                known = ", ".join(self.names(kind)) or "none"
                raise ConfigError(
                    field, f"unknown {kind} {name!r}; registered: {known} (or name one as 'module:attribute')"
                )
            return found
        if (kind, name) not in self._imported:
            self._imported[(kind, name)] = _import_component(kind, name, field, import_dir)
        return self._imported[(kind, name)]


def _import_component(
    kind: BenchKind, name: str, field: str, import_dir: Path | None
) -> tuple[BenchComponent, str]:
    """The component ``"module:attribute"`` names (an attribute, else a component of that name in the
    module) and where it comes from."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            field, f"expected a registered {kind} name or 'package.module:attribute', got {name!r}"
        )
    module = import_named(module_name, import_dir, field)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if target is None:
        named = [c for c in _components_of(module) if c.kind == kind and c.name == attribute]
        if not named:
            known = ", ".join(c.name for c in _components_of(module) if c.kind == kind) or "none"
            raise ConfigError(
                field,
                f"module {module_name!r} has no attribute nor {kind} {attribute!r}; its {kind}s: {known}",
            )
        target = named[0]
    if not isinstance(target, BenchComponent):
        raise ConfigError(field, f"{name!r} is not a bench component: decorate it with @{kind}")
    if target.kind != kind:
        raise ConfigError(field, f"{name!r} is a {target.kind}, not a {kind}")
    return target, f"module {module_name} ({getattr(module, '__file__', None) or 'no file'})"


@cache
def default_registry() -> BenchRegistry:
    """The registry of this process, built on first use (entry points are read once)."""
    return BenchRegistry()


@dataclass(frozen=True)
class Resolved:
    """A component found by name, with its validated parameters.

    :param name: the name as the config gives it (``"patch"``, ``"my_settings:cross"``).
    :param source: where the component comes from: ``"built-in"``, ``"<distribution> <version>"``,
        ``"module <name> (<file>)"``.
    """

    name: str
    component: BenchComponent
    params: BaseModel
    source: str = "built-in"

    def record(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}`` with every parameter, defaults included (JSON data)."""
        return {"name": self.name, "params": self.params.model_dump(mode="json")}

    def describe(self) -> dict[str, Any]:
        """:meth:`record` with the component's summary and source."""
        return {**self.record(), "summary": self.component.summary, "source": self.source}

    def is_default(self, name: str) -> bool:
        """Whether this is the component ``name`` with its default parameters."""
        if self.name != name:
            return False
        try:
            return self.params == self.component.params()
        except ValidationError:  # a parameter without default: there are no default parameters
            return False

    def __call__(self, **arguments: Any) -> Any:
        return self.component(self.params, **arguments)


def resolve(
    kind: BenchKind,
    choice: ComponentChoice | str | dict[str, Any],
    field: str,
    import_dir: Path | None = None,
    registry: BenchRegistry | None = None,
) -> Resolved:
    """Find the component a config names and validate its parameters.

    :param choice: ``{"name": ..., "params": {...}}`` or a bare name.
    :param field: the dotted config field of ``choice``, for errors (``"settings.mine.trigger"``).
    :param registry: default: :func:`default_registry`.
    :raises ConfigError: naming ``<field>.name`` or ``<field>.params.<parameter>``.
    """
    if not isinstance(choice, ComponentChoice):
        try:
            choice = ComponentChoice.model_validate(choice)
        except ValidationError as exc:
            raise config_error(exc, prefix=field) from exc
    component, source = (registry or default_registry()).find(kind, choice.name, f"{field}.name", import_dir)
    try:
        params = component.params.model_validate(choice.params)
    except ValidationError as exc:
        raise config_error(exc, prefix=f"{field}.params") from exc
    return Resolved(choice.name, component, params, source)
