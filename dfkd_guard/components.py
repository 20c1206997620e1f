"""What a plugin declares: named, parameterised components of a guard.

A plugin makes a scorer, weighting or generator penalty selectable by name in
a :class:`~dfkd_guard.config.GuardConfig` by returning a :class:`Component`
from :func:`~dfkd_guard.hookspecs.dfkd_guard_components`. The guard then
dispatches the matching method hook to that plugin, passing the component's
name and its validated parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

__all__ = ["Component", "ComponentKind", "COMPONENT_KINDS", "NoParams"]

ComponentKind = Literal["scorer", "weighting", "penalty"]
COMPONENT_KINDS: tuple[ComponentKind, ...] = get_args(ComponentKind)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class NoParams(BaseModel):
    """Parameters of a component that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Component:
    """A named scorer, weighting or penalty offered by a plugin.

    :param kind: which method hook the component answers.
    :param name: lower-case identifier used in configs (``"atesc"``); unique per kind.
    :param summary: one line for ``dfkd-guard plugins`` and the docs.
    :param params: pydantic model validating the component's parameters;
        use ``extra="forbid"`` so misspelt parameters are errors.
    """

    kind: ComponentKind
    name: str
    summary: str
    params: type[BaseModel] = field(default=NoParams)

    def __post_init__(self) -> None:
        if self.kind not in COMPONENT_KINDS:
            raise ValueError(f"Component.kind must be one of {COMPONENT_KINDS}, got {self.kind!r}")
        if not _NAME.match(self.name):
            raise ValueError(f"Component.name must match {_NAME.pattern}, got {self.name!r}")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise ValueError(f"Component.params of {self.name!r} must be a pydantic model class")
