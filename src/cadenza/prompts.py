"""Instruction templates: text with `{variables}` filled per run."""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

from .context import RunContext
from .errors import ConfigError

__all__ = ["Instructions", "Template", "render_instructions"]


class Template:
    """Instructions with `{name}` placeholders, filled from the run's `vars`.

    Args:
        text: The template; `{{` and `}}` stand for literal braces.

    """

    __slots__ = ("text", "variables")

    def __init__(self, text: str) -> None:
        self.text = text
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
