"""What a plugin declares: named, parameterised components of a guard.

A component is one function carrying its kind, name, summary and parameter
model. The decorators :func:`scorer`, :func:`weighting` and :func:`penalty`
turn a function into a :class:`Component`; a plugin returns its components
from :func:`~dfkd_guard.hookspecs.dfkd_guard_components`, and a
:class:`~dfkd_guard.config.GuardConfig` selects one by name::

    @scorer("logit_gap", LogitGapParams)
    def logit_gap(logits, params):
        \"\"\"Negative gap between the two largest logits.\"\"\"
        top2 = logits.topk(2, dim=1).values
        return -params.scale * (top2[:, 0] - top2[:, 1])

The guard calls the function with keyword arguments only; it may accept any
subset of the arguments of its kind (:data:`COMPONENT_ARGUMENTS`). The call
contract of each kind:

* **scorer** ``(images, logits, teacher, normalization, params)``: called on
  every synthetic batch the student will see (once per image for pooled
  adapters). ``images`` float (B, C, H, W) in the teacher's input units,
  detached; ``logits`` float (B, K) teacher logits on them, detached (reuse
  them rather than running the teacher again when the score needs only
  logits); ``teacher`` the teacher's hook-free twin (eval mode, frozen,
  same tensors, no hooks), grad with respect to inputs enabled; ``normalization`` converts pixel budgets to input
  units; ``params`` the validated parameter model. Returns a float tensor
  (B,), finite, higher = more OOD-like.
* **weighting** ``(scores, logits, params)``: called before each student
  step. ``scores`` float (B,) from the scorer, higher = more OOD-like;
  ``logits`` float (B, K) teacher logits on the batch, detached. Returns
  :class:`~dfkd_guard.sample_weights.SampleWeights`: ``kd`` float (B,) in
  [0, 1] and ``forget`` bool (B,).
* **penalty** ``(images, logits, teacher, normalization, params)``: called
  inside each synthesis step, before ``backward()``, once per configured
  penalty. ``images`` as for a scorer but *keeping grad* to the generator (or
  the pixels being optimised); ``logits`` keep grad to ``images`` (not to the
  teacher's weights). Returns a scalar float tensor with grad to ``images``;
  lower is better for the generator. The guard multiplies it by the
  penalty's configured weight and sums the penalties.

Inputs are not the component's to change. ``images``, ``logits`` and
``scores`` are copies (a copy keeps the autograd graph), so editing them in
place never reaches the caller; a penalty's ``images`` are the exception, the
caller's own tensor (its ``logits`` were computed from it, and a copy would
cut that link), and changing them in place is an error. ``teacher`` is the
caller's module, never copied: a component must leave its parameters,
buffers (BatchNorm running statistics) and train/eval modes as they were.
With ``DFKD_GUARD_DEBUG=1`` every call is checked for that
(:mod:`dfkd_guard.plugins`).

A None result, an exception or a result that breaks the contract is a
:class:`~dfkd_guard.errors.PluginError` naming the plugin and the component.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict

__all__ = [
    "COMPONENT_ARGUMENTS",
    "COMPONENT_KINDS",
    "Component",
    "ComponentKind",
    "NoParams",
    "keyword_arguments",
    "penalty",
    "scorer",
    "weighting",
]

ComponentKind = Literal["scorer", "weighting", "penalty"]
COMPONENT_KINDS: tuple[ComponentKind, ...] = get_args(ComponentKind)

#: The keyword arguments the guard passes to a component function of each kind.
COMPONENT_ARGUMENTS: dict[ComponentKind, tuple[str, ...]] = {
    "scorer": ("images", "logits", "teacher", "normalization", "params"),
    "weighting": ("scores", "logits", "params"),
    "penalty": ("images", "logits", "teacher", "normalization", "params"),
}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def keyword_arguments(
    function: Callable[..., Any], kind: str, allowed: tuple[str, ...]
) -> tuple[str, ...] | None:
    """The keyword arguments ``function`` takes, all among ``allowed``; None if it takes ``**kwargs``.

    Shared by the guard's plugin registry and the bench's: a component is called
    with keyword arguments only, the subset of ``allowed`` its function names.

    :param kind: the component's kind, as the message names it.
    :raises ValueError: the signature cannot be read, or names a positional-only
        argument or one outside ``allowed``.
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot read the signature of its function: {exc}") from exc
    names: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            return None
        if parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY or parameter.name not in allowed:
            raise ValueError(
                f"its function takes {parameter.name!r}; a {kind} is called with keyword arguments "
                f"from {', '.join(allowed)}"
            )
        names.append(parameter.name)
    return tuple(names)


class NoParams(BaseModel):
    """Parameters of a component that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Component:
    """A named scorer, weighting or penalty offered by a plugin.

    Usually made by the :func:`scorer`, :func:`weighting` or :func:`penalty`
    decorator; constructing it directly registers any callable (a class
    instance with ``__call__``, say). Calling the component calls ``function``.

    :param kind: ``"scorer"``, ``"weighting"`` or ``"penalty"``.
    :param name: lower-case identifier used in configs (``"atesc"``); unique per kind.
    :param function: what the guard calls, with any subset of the kind's
        keyword arguments (:data:`COMPONENT_ARGUMENTS`).
    :param params: pydantic model validating the component's parameters;
        use ``extra="forbid"`` so misspelt parameters are errors.
    :param summary: one line for ``dfkd-guard plugins`` and the docs; default:
        the first line of ``function``'s docstring.
    """

    kind: ComponentKind
    name: str
    function: Callable[..., Any] = field(repr=False)
    params: type[BaseModel] = field(default=NoParams)
    summary: str = ""

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(f"Component.kind must be one of {COMPONENT_KINDS}, got {self.kind!r}")
        if not (isinstance(self.name, str) and _NAME.match(self.name)):
            raise ValueError(f"Component.name must match {_NAME.pattern}, got {self.name!r}")
        if not callable(self.function):
            raise TypeError(f"Component.function of {self.name!r} must be callable, got {self.function!r}")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise ValueError(f"Component.params of {self.name!r} must be a pydantic model class")
        if not self.summary:
            doc = inspect.getdoc(self.function) or ""
            object.__setattr__(self, "summary", doc.strip().split("\n", 1)[0].strip())
        if not self.summary:
            raise ValueError(
                f"{self.kind} {self.name!r} needs a summary: pass summary= or give its function a docstring"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


def _decorator(
    kind: ComponentKind, name: str, params: type[BaseModel], summary: str | None
) -> Callable[[Callable[..., Any]], Component]:
    def decorate(function: Callable[..., Any]) -> Component:
        return Component(kind, name, function, params, summary or "")

    return decorate


def scorer(
    name: str, params: type[BaseModel] = NoParams, *, summary: str | None = None
) -> Callable[[Callable[..., Any]], Component]:
    """Make a function the scorer ``name``.

    The function takes any of ``images, logits, teacher, normalization,
    params`` and returns float (B,), higher = more OOD-like (see the module
    docstring for shapes and units).

    :param params: the pydantic model of its parameters (default: none).
    :param summary: one line; default: the function's first docstring line.
    """
    return _decorator("scorer", name, params, summary)


def weighting(
    name: str, params: type[BaseModel] = NoParams, *, summary: str | None = None
) -> Callable[[Callable[..., Any]], Component]:
    """Make a function the weighting ``name``.

    The function takes any of ``scores, logits, params`` and returns
    :class:`~dfkd_guard.sample_weights.SampleWeights`.
    """
    return _decorator("weighting", name, params, summary)


def penalty(
    name: str, params: type[BaseModel] = NoParams, *, summary: str | None = None
) -> Callable[[Callable[..., Any]], Component]:
    """Make a function the generator penalty ``name``.

    The function takes any of ``images, logits, teacher, normalization,
    params`` and returns a scalar tensor with grad to ``images``, lower =
    better for the generator.
    """
    return _decorator("penalty", name, params, summary)
