"""Instruction templates: text with `{variables}` filled per run."""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._semver import Constraint, Version
from .context import RunContext
from .errors import ConfigError

__all__ = ["Instructions", "PromptLibrary", "Template", "render_instructions"]


class Template:
    """Instructions with `{name}` placeholders, filled from the run's `vars`.

    Args:
        text: The template; `{{` and `}}` stand for literal braces.

    """

    __slots__ = ("name", "text", "variables", "version")

    def __init__(self, text: str, *, name: str = "", version: str = "") -> None:
        self.text = text
        self.name = name
        """The prompt's name, when loaded from a `PromptLibrary`."""
        self.version = version
        """Its semantic version, when loaded from a `PromptLibrary`."""
        try:
            self.variables = frozenset(
                name for _, name, _, _ in string.Formatter().parse(text) if name
            )
        except ValueError as exc:
            raise ConfigError(f"bad instruction template {text[:40]!r}...: {exc}") from None

    def render(self, values: Mapping[str, Any]) -> str:
        """The text with every variable filled in.

        Raises:
            ConfigError: a variable has no value.

        """
        missing = sorted(self.variables - set(values))
        if missing:
            raise ConfigError(
                f"instruction template needs {', '.join(missing)}; pass "
                f"vars={{{', '.join(repr(m) + ': ...' for m in missing)}}} to run()"
            )
        return self.text.format_map(values)


Instructions = str | Template | Callable[[RunContext], str]
"""Plain text, a `Template`, or a function of the run context."""


def render_instructions(
    instructions: Instructions, ctx: RunContext, values: Mapping[str, Any] | None
) -> str:
    """Turn any form of instructions into the system prompt text."""
    if isinstance(instructions, str):
        return instructions
    if isinstance(instructions, Template):
        return instructions.render(values or {})
    return instructions(ctx)


class PromptLibrary:
    """Versioned prompt templates: files named `NAME@VERSION.md` in a folder.

    `library.get("classify", "^1.0")` returns the newest version of `classify` that satisfies
    the constraint, so a workflow pins what it was tested with and rolls back by pinning lower.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._files: dict[str, dict[Version, Path]] = {}
        for path in sorted(self.folder.glob("*@*.md")):
            name, _, version = path.stem.partition("@")
            self._files.setdefault(name, {})[Version(version)] = path
        if not self._files:
            raise ConfigError(f"no prompt files (NAME@VERSION.md) in {self.folder}")

    def versions(self, name: str) -> list[str]:
        """The versions of `name`, oldest first."""
        return [str(v) for v in sorted(self._files.get(name, {}))]

    def get(self, name: str, constraint: str = "") -> Template:
        """The newest template `name` allowed by `constraint` (e.g. `^1.2`)."""
        found = self._files.get(name, {})
        allowed = [v for v in found if Constraint(constraint).allows(v)]
        if not allowed:
            raise ConfigError(
                f"no prompt {name}{constraint} in {self.folder} (versions: "
                f"{', '.join(self.versions(name)) or 'none'})"
            )
        best = max(allowed)
        return Template(found[best].read_text(encoding="utf-8"), name=name, version=str(best))
