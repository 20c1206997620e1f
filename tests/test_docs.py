"""Every hook, component kind and built-in component (with each parameter) is documented."""

from __future__ import annotations

import re
from pathlib import Path

from dfkd_guard import hookspecs
from dfkd_guard.components import COMPONENT_ARGUMENTS
from dfkd_guard.plugins import PluginRegistry

DOCS = Path(__file__).resolve().parent.parent / "docs"


def sections(text: str, level: str) -> dict[str, str]:
    parts = re.split(rf"^{level} (\S+)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_hook_has_a_section_in_the_hook_reference() -> None:
    documented = sections((DOCS / "hooks.md").read_text(), "##")
    specs = [name for name in dir(hookspecs) if name.startswith("dfkd_guard_")]
    assert specs, "no hook specs found"
    missing = [name for name in specs if name not in documented]
    assert not missing, f"hooks missing from docs/hooks.md: {missing}"
    stale = [name for name in documented if name not in specs]
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {stale}"


def test_every_component_kind_and_argument_is_documented() -> None:
    documented = sections((DOCS / "hooks.md").read_text(), "###")
    problems = []
    for kind, arguments in COMPONENT_ARGUMENTS.items():
        section = documented.get(kind.capitalize())
        if section is None:
            problems.append(
                f"component kind {kind!r} has no '### {kind.capitalize()}' section in docs/hooks.md"
            )
            continue
        problems += [
            f"{kind} argument {arg!r} is not described" for arg in arguments if f"`{arg}`" not in section
        ]
    assert not problems, "\n".join(problems)


def test_every_builtin_component_and_parameter_is_documented() -> None:
    documented = sections((DOCS / "components.md").read_text(), "###")
    registry = PluginRegistry(load_entrypoints=False)
    problems = []
    for rc in registry.components():
        if rc.source != "built-in":
            continue
        name = rc.component.name
        if name not in documented:
            problems.append(f"component {name!r} has no '### {name}' section")
            continue
        for param in rc.component.params.model_fields:
            if f"| `{param}` |" not in documented[name]:
                problems.append(f"parameter {name}.{param} is not in its section's table")
    assert not problems, "\n".join(problems)
