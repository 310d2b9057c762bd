"""Provider-neutral messages: one canonical shape for text, tool calls and tool results.

Every provider converts to and from these types; the journal stores them as plain JSON
(`to_dict` / `from_dict`). They are slotted dataclasses rather than pydantic models because the
agent loop builds several per step and must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Message",
    "Role",
    "ToolCall",
    "ToolResult",
    "Usage",
    "message_from_dict",
    "message_to_dict",
]

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(slots=True)
class ToolCall:
    """A model's request to run one tool."""

    id: str
    """Identifier the model gave the call; results refer to it."""
    name: str
    """The tool's name as offered to the model."""
    arguments: dict[str, Any]
    """Parsed JSON arguments (not yet validated)."""


@dataclass(slots=True)
class ToolResult:
    """The outcome of one tool call, as shown to the model."""

    call_id: str
    """The `ToolCall.id` this answers."""
    name: str
    """The tool's name."""
    content: Any
    """JSON-compatible result, or an error description when `is_error`."""
    is_error: bool = False
    """True when the call was refused or failed; the model may correct itself."""


@dataclass(slots=True)
class Message:
    """One conversation message. Only the fields that fit its role are set."""

    role: Role
    """Who speaks: system, user, assistant or tool."""
    text: str = ""
    """Text content (empty for a pure tool-call turn)."""
    tool_calls: list[ToolCall] = field(default_factory=lambda: [])
    """Tool calls requested by an assistant message."""
    tool_results: list[ToolResult] = field(default_factory=lambda: [])
    """Results carried by a tool message (one message may answer several calls)."""

    @classmethod
    def system(cls, text: str) -> Message:
        """A system (instructions) message."""
        return cls("system", text)

    @classmethod
    def user(cls, text: str) -> Message:
        """A user message."""
        return cls("user", text)

    @classmethod
    def assistant(cls, text: str = "", tool_calls: list[ToolCall] | None = None) -> Message:
        """An assistant message, with optional tool calls."""
        return cls("assistant", text, tool_calls or [])

    @classmethod
    def tool(cls, results: list[ToolResult]) -> Message:
        """A tool message answering one or more calls."""
        return cls("tool", "", [], results)


@dataclass(slots=True)
class Usage:
    """Tokens and cost consumed by model calls."""

    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Completion tokens."""
    cost: float = 0.0
    """Cost in US dollars (0 when the provider's price is unknown)."""
    requests: int = 0
    """Number of model requests."""

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def add(self, other: Usage) -> None:
        """Accumulate `other` into this usage, in place."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost
        self.requests += other.requests

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "requests": self.requests,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        """Inverse of `to_dict`."""
        return cls(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            float(data.get("cost", 0.0)),
            int(data.get("requests", 0)),
        )


def message_to_dict(m: Message) -> dict[str, Any]:
    """Plain JSON form of a message, omitting empty fields."""
    d: dict[str, Any] = {"role": m.role}
    if m.text:
        d["text"] = m.text
    if m.tool_calls:
        d["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls
        ]
    if m.tool_results:
        d["tool_results"] = [
            {"call_id": r.call_id, "name": r.name, "content": r.content, "is_error": r.is_error}
            for r in m.tool_results
        ]
    return d


def message_from_dict(d: dict[str, Any]) -> Message:
    """Inverse of `message_to_dict`."""
    return Message(
        d["role"],
        d.get("text", ""),
        [ToolCall(c["id"], c["name"], c["arguments"]) for c in d.get("tool_calls", ())],
        [
            ToolResult(r["call_id"], r["name"], r["content"], r.get("is_error", False))
            for r in d.get("tool_results", ())
        ],
    )
