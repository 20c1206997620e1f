"""Validated configuration of a :class:`~dfkd_guard.guard.Guard`.

A config names one scorer, one weighting and any number of generator
penalties, each with its own parameters, plus the forgetting term, the KD
temperature and the BN-prior de-mixing (:mod:`dfkd_guard.bn_prior`).
Component names and their parameters are checked against the plugins
actually registered when the guard is built (:meth:`GuardConfig.resolve`),
so a misspelt name or an out-of-range parameter is a
:class:`~dfkd_guard.errors.ConfigError` naming the field. No number may be
NaN or infinite (in third-party parameters too), booleans and integers are
not converted from strings or floats, and every count and multiplier has an
upper bound beyond which it can only be a typo (each field says which).

In TOML::

    kd_temperature = 1.0

    [scorer]
    name = "atesc"
    params = { eps = 0.0157, steps = 3 }

    [weighting]
    name = "split"
    params = { rule = "two_means" }

    [forget]
    kind = "uniform"
    weight = 1.0

    [[penalties]]
    name = "confidence"
    weight = 0.1

    [bn_prior]
    demix = true
    warmup_batches = 100

    [trigger_window]
    threshold = 4.0
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)

from dfkd_guard.bn_prior import BNPriorConfig
from dfkd_guard.errors import ConfigError
from dfkd_guard.normalization import Normalization
from dfkd_guard.trigger_window import TriggerWindowConfig

if TYPE_CHECKING:
    from dfkd_guard.components import Component, ComponentKind

if sys.version_info >= (3, 11):
    from typing import Self

    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib
    from typing_extensions import Self

__all__ = ["ComponentChoice", "FileConfig", "ForgetConfig", "GuardConfig", "PenaltyChoice", "ResolvedChoice"]

#: Largest penalty or forgetting weight: far above any useful loss scale, so a larger one is a typo.
MAX_WEIGHT = 1e6


class ComponentChoice(BaseModel):
    """A component selected by name, with its parameters.

    A bare string is accepted as shorthand for ``{"name": ...}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="registered component name, e.g. 'atesc'")
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated by the component's params model"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class PenaltyChoice(ComponentChoice):
    """A generator penalty and the weight its value is multiplied by."""

    weight: StrictFloat = Field(
        default=1.0,
        ge=0.0,
        le=MAX_WEIGHT,
        description="multiplier of the penalty in the synthesis loss, at most 1e6",
    )


class ForgetConfig(BaseModel):
    """The forgetting term applied to samples in the forget mask."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["uniform", "none"] = Field(
        default="uniform", description="'uniform': KL(uniform || student); 'none': no term"
    )
    weight: StrictFloat = Field(
        default=1.0,
        ge=0.0,
        le=MAX_WEIGHT,
        description="lambda, multiplier of the forgetting term, at most 1e6",
    )
    memory: StrictInt = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="OOD-like images of the BN-prior warm-up kept for the student to forget after an NTL-like "
        "verdict (0: none; dfkd_guard/trap_memory.py); at most 1,000,000 (12 GB of 3x32x32 float32 images)",
    )
    recall: StrictInt = Field(
        default=32,
        ge=1,
        le=100_000,
        description="trap-memory images added to every student batch, in its forget set; at most 100,000",
    )


class FileConfig(BaseModel):
    """A pydantic model that also loads from ``.toml`` / ``.json`` files, raising :class:`ConfigError`."""

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Read a config from a ``.json`` or ``.toml`` file.

        :raises ConfigError: naming the file and the field, for unreadable or
            non-UTF-8 files (with the line), unknown suffixes, syntax errors
            (with the parser's line and column) and invalid values.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        parsers = {".toml": tomllib.loads, ".json": json.loads}
        if suffix not in parsers:
            raise ConfigError(
                "<file>", f"unknown config suffix {path.suffix!r}; use .toml or .json", str(path)
            )
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError("<file>", f"cannot read config: {exc}", source=str(path)) from exc
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ConfigError(
                "<file>",
                f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} (offset {exc.start}); "
                "save the file as UTF-8",
                source=str(path),
            ) from exc
        try:
            data = parsers[suffix](text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:  # their messages give line and column
            raise ConfigError("<file>", f"not valid {suffix[1:].upper()}: {exc}", source=str(path)) from exc
        except RecursionError as exc:
            raise ConfigError(
                "<file>", f"not valid {suffix[1:].upper()}: nested too deeply", source=str(path)
            ) from exc
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str | None = None) -> Self:
        """Validate a plain mapping (parsed JSON/TOML), raising :class:`ConfigError` naming the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise config_error(exc, prefix="", source=source) from exc


class GuardConfig(FileConfig):
    """Everything that decides what a guard does. Immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    enabled: StrictBool = Field(
        default=True, description="False: score nothing, weight 1 everywhere, no penalty"
    )
    scorer: ComponentChoice = Field(default=ComponentChoice(name="atesc"), description="OOD scorer")
    weighting: ComponentChoice = Field(
        default=ComponentChoice(name="none"),
        description="sample weighting; default 'none': with BN-prior de-mixing, the student-side split lowered IAcc (docs/bn_prior.md)",
    )
    penalties: tuple[PenaltyChoice, ...] = Field(default=(), description="generator penalties, summed")
    forget: ForgetConfig = Field(
        default_factory=lambda: ForgetConfig(kind="none"),
        description="forgetting term (default none, see weighting)",
    )
    kd_temperature: StrictFloat = Field(
        default=1.0,
        gt=0.0,
        le=100.0,
        description="tau of KL(T/tau || S/tau) * tau^2, in (0, 100]: above 100 every softmax is uniform",
    )
    bn_prior: BNPriorConfig = Field(
        default_factory=BNPriorConfig,
        description="BN-prior de-mixing and calibration (adapters that match BN statistics)",
    )
    normalization: Normalization = Field(
        default_factory=Normalization, description="how [0,1] pixels are normalised for the teacher"
    )
    trigger_window: TriggerWindowConfig = Field(
        default_factory=TriggerWindowConfig,
        description="search synthetic images for a patch trigger and label the student without it",
    )

    def resolve(
        self, components: dict[tuple[str, str], Component], source: str | None = None
    ) -> ResolvedConfig:
        """Check names and parameters against the registered components.

        :param components: registered components by ``(kind, name)``.
        :param source: the file the config was read from, named in errors.
        :raises ConfigError: unknown name or invalid parameters, naming the field.
        """
        scorer = _resolve(self.scorer, "scorer", "scorer", components, source)
        weighting = _resolve(self.weighting, "weighting", "weighting", components, source)
        penalties = tuple(
            _resolve(choice, "penalty", f"penalties[{i}]", components, source, weight=choice.weight)
            for i, choice in enumerate(self.penalties)
        )
        signed_margin = scorer.name == "atesc" and getattr(scorer.params, "measure", None) == "margin"
        flip_rule = getattr(weighting.params, "rule", None) == "flip"
        if flip_rule and scorer.name in _BUILTIN_SCORERS and not signed_margin:
            raise ConfigError(
                "weighting.params.rule",
                "rule 'flip' needs a signed-margin score (positive = prediction survives the attack); "
                "use scorer 'atesc' with params.measure = 'margin'",
                source,
            )
        if self.forget.memory and self.forget.kind == "none":
            raise ConfigError(
                "forget.memory", "a trap memory needs a forgetting term; set forget.kind = 'uniform'", source
            )
        if self.forget.memory and not self.bn_prior.demix:
            raise ConfigError(
                "forget.memory",
                "the trap memory is filled during the BN-prior warm-up; set bn_prior.demix = true",
                source,
            )
        return ResolvedConfig(scorer=scorer, weighting=weighting, penalties=penalties)


# Built-in scorers: of these only atesc with measure="margin" gives signed margins (see resolve()).
# A third-party scorer may follow the signed-margin convention; its docs say so.
_BUILTIN_SCORERS = frozenset({"atesc", "msp", "energy", "entropy", "odin", "bn_deviation"})


@dataclass(frozen=True)
class ResolvedChoice:
    """A component choice whose name exists and whose params are validated."""

    name: str
    params: BaseModel
    weight: float = 1.0


@dataclass(frozen=True)
class ResolvedConfig:
    """The three component kinds of a config, resolved."""

    scorer: ResolvedChoice
    weighting: ResolvedChoice
    penalties: tuple[ResolvedChoice, ...]


def _resolve(
    choice: ComponentChoice,
    kind: ComponentKind,
    field: str,
    components: dict[tuple[str, str], Component],
    source: str | None,
    weight: float = 1.0,
) -> ResolvedChoice:
    component = components.get((kind, choice.name))
    if component is None:
        known = sorted(name for k, name in components if k == kind)
        raise ConfigError(
            f"{field}.name",
            f"unknown {kind} {choice.name!r}; registered: {', '.join(known) or 'none'}",
            source,
        )
    try:
        params = component.params.model_validate(choice.params)
    except ValidationError as exc:
        raise config_error(exc, prefix=f"{field}.params", source=source) from exc
    # A third-party params model may allow NaN and Inf; no component is given one.
    found = _non_finite(params.model_dump(), f"{field}.params")
    if found is not None:
        raise ConfigError(found[0], f"must be a finite number, got {found[1]}", source)
    return ResolvedChoice(name=choice.name, params=params, weight=weight)


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """The dotted path and value of the first NaN or infinite float in a dumped model, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}")
        if found is not None:
            return found
    return None


def config_error(exc: ValidationError, prefix: str, source: str | None = None) -> ConfigError:
    """A :class:`ConfigError` naming the first invalid field of a pydantic error.

    All of pydantic's messages are kept, each with its dotted field path.
    """
    messages = []
    first_field = prefix or "<config>"
    for i, err in enumerate(exc.errors()):
        loc = ".".join(str(part) for part in err["loc"])
        field = ".".join(part for part in (prefix, loc) if part) or "<config>"
        if i == 0:
            first_field = field
        messages.append(err["msg"] if field == first_field and i == 0 else f"{field}: {err['msg']}")
    return ConfigError(first_field, "; ".join(messages), source=source)
