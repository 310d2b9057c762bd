"""`RunContext`: what a tool or a graph node may know about the run it serves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

ToolCaller = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Runs a named tool with arguments through the Gate and returns its result."""

__all__ = ["Principal", "RunContext"]


@dataclass(slots=True, frozen=True)
class Principal:
    """Who a run acts for."""

    user_id: str = "anonymous"
    """Stable user identifier."""
    roles: tuple[str, ...] = ()
    """Roles granted to the user."""
    tenant: str | None = None
    """Tenant (organisation) the user belongs to, if any."""


@dataclass(slots=True)
class RunContext:
    """Injected into a tool (or node) that declares a parameter annotated `RunContext`."""

    run_id: str
    """The run's id."""
    thread: str | None
    """The conversation thread the run belongs to, if any."""
    principal: Principal
    """Who the run acts for."""
    deps: Any = None
    """User-supplied dependencies (clients, settings) passed to `run(..., deps=...)`."""
    state: Any = None
    """The graph state when the call happens inside a graph, else None."""
    step: int = 0
    """The current step number."""
    idempotency_key: str | None = None
    """For a tool call: `run:step:call`, stable across resumes; pass it to external APIs."""
    extra: dict[str, Any] = field(default_factory=lambda: {})
    """Free-form values for extensions."""
    tool_caller: ToolCaller | None = field(default=None, repr=False, compare=False)
    """Set for graph nodes: how `call_tool` reaches the Gate."""

    async def call_tool(self, name: str, /, **arguments: Any) -> Any:
        """Call one of the graph's tools from a node, through the Gate (journaled, idempotent).

        Returns:
            The tool's result.

        Raises:
            ToolError: the call was refused (unknown tool, invalid arguments) or the tool failed.

        """
        if self.tool_caller is None:
            raise ConfigError(
                "call_tool is for graph nodes; declare the tools with Graph(..., tools=[...])"
            )
        return await self.tool_caller(name, arguments)
