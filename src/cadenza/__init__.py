"""Cadenza: agentic workflow orchestration — tools, agents and graph workflows that run durably.

Names are loaded on first use, so `import cadenza` stays fast (the CLI and short scripts pay
only for what they touch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    # workflows
    "Agent": "agent",
    "END": "graph",
    "START": "graph",
    "CompiledGraph": "graph",
    "Graph": "graph",
    "Reducer": "graph",
    "interrupt": "graph",
    # tools
    "RunContext": "context",
    "Principal": "context",
    "Tool": "tools",
    "ToolRegistry": "tools",
    "tool": "tools",
    # models and messages
    "Message": "messages",
    "Model": "models",
    "ModelRequest": "models",
    "ModelResponse": "models",
    "ModelSettings": "models",
    "ToolCall": "messages",
    "ToolResult": "messages",
    "ToolSpec": "models",
    "Usage": "messages",
    "register_provider": "models",
    "resolve_model": "models",
    # runs
    "Budget": "budgets",
    "RunResult": "runtime",
    "Template": "prompts",
    # safety
    "Guards": "safety",
    "Policy": "safety",
    "Rule": "safety",
    # stores
    "MemoryStore": "stores",
    "SQLiteStore": "stores",
    "StateStore": "stores",
    "open_store": "stores",
    # errors
    "ApprovalRequired": "errors",
    "BudgetExceeded": "errors",
    "CadenzaError": "errors",
    "GraphValidationError": "errors",
    "PolicyError": "errors",
    "ReplayDivergence": "errors",
    "RunError": "errors",
    "ToolVersionError": "errors",
    "UserError": "errors",
}

__all__ = [
    # workflows
    "END",
    "START",
    "Agent",
    "CompiledGraph",
    "Graph",
    "Reducer",
    "interrupt",
    # tools
    "Principal",
    "RunContext",
    "Tool",
    "ToolRegistry",
    "tool",
    # models and messages
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "register_provider",
    "resolve_model",
    # runs
    "Budget",
    "RunResult",
    "Template",
    # safety
    "Guards",
    "Policy",
    "Rule",
    # stores
    "MemoryStore",
    "SQLiteStore",
    "StateStore",
    "open_store",
    # errors
    "ApprovalRequired",
    "BudgetExceeded",
    "CadenzaError",
    "GraphValidationError",
    "PolicyError",
    "ReplayDivergence",
    "RunError",
    "ToolVersionError",
    "UserError",
]

if TYPE_CHECKING:
    from .agent import Agent
    from .budgets import Budget
    from .context import Principal, RunContext
    from .errors import (
        ApprovalRequired,
        BudgetExceeded,
        CadenzaError,
        GraphValidationError,
        PolicyError,
        ReplayDivergence,
        RunError,
        ToolVersionError,
        UserError,
    )
    from .graph import END, START, CompiledGraph, Graph, Reducer, interrupt
    from .messages import Message, ToolCall, ToolResult, Usage
    from .models import (
        Model,
        ModelRequest,
        ModelResponse,
        ModelSettings,
        ToolSpec,
        register_provider,
        resolve_model,
    )
    from .prompts import Template
    from .runtime import RunResult
    from .safety import Guards, Policy, Rule
    from .stores import MemoryStore, SQLiteStore, StateStore, open_store
    from .tools import Tool, ToolRegistry, tool


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cadenza' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
