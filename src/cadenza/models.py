"""The `Model` protocol (one request, one response, or a stream) and the model-string registry.

A workflow names its model with a string such as `"scripted:demo"` (and, with the matching
extras, `"local:…"`, `"openai:…"`); `resolve_model` turns the string into a `Model` through the
provider factory registered for its prefix, so the CLI can override any workflow's model with
`--model`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .errors import ConfigError
from .messages import Message, ToolCall, Usage

__all__ = [
    "Model",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "StreamDone",
    "StreamEvent",
    "TextDelta",
    "ToolCallEvent",
    "ToolSpec",
    "register_provider",
    "resolve_model",
]


@dataclass(slots=True, frozen=True)
class ToolSpec:
    """What the model is told about a tool: name, description, JSON Schema of arguments."""

    name: str
    """The tool's name."""
    description: str
    """What the tool does, for the model."""
    parameters: dict[str, Any]
    """JSON Schema (an object schema) of the arguments."""
    size: int = field(default=0, compare=False, repr=False)
    """Characters of the spec when serialised (computed; used for token estimates)."""

    def __post_init__(self) -> None:
        if not self.size:
            object.__setattr__(
                self, "size", len(self.name) + len(self.description) + len(str(self.parameters))
            )


@dataclass(slots=True)
class ModelSettings:
    """Sampling and limit settings for one request."""

    temperature: float | None = None
    """Sampling temperature; None leaves the provider default."""
    max_tokens: int | None = None
    """Upper bound on output tokens (budgets may lower it)."""
    seed: int | None = None
    """Sampling seed, where the provider supports one."""
    extra: dict[str, Any] = field(default_factory=lambda: {})
    """Provider-specific options passed through unchanged."""


@dataclass(slots=True)
class ModelRequest:
    """Everything a model needs for one turn."""

    messages: list[Message]
    """The conversation so far, system instructions first."""
    tools: list[ToolSpec]
    """Tools the model may call (empty for none)."""
    output_schema: dict[str, Any] | None = None
    """JSON Schema the final answer must satisfy, or None for free text."""
    settings: ModelSettings = field(default_factory=ModelSettings)
    """Sampling and limit settings."""


@dataclass(slots=True)
class ModelResponse:
    """One model turn: text and/or tool calls, with usage."""

    text: str = ""
    """Text of the answer (JSON text when an output schema was requested)."""
    tool_calls: list[ToolCall] = field(default_factory=lambda: [])
    """Tool calls the model requests."""
    usage: Usage = field(default_factory=Usage)
    """Tokens and cost of this turn."""
    model_name: str = ""
    """The model that produced it."""
    finish_reason: Literal["stop", "tool_calls", "length", "error"] = "stop"
    """Why generation stopped."""

    def message(self) -> Message:
        """The assistant message to append to the conversation."""
        return Message("assistant", self.text, self.tool_calls)


@dataclass(slots=True, frozen=True)
class TextDelta:
    """A piece of streamed answer text."""

    text: str
    """The new text."""


@dataclass(slots=True, frozen=True)
class ToolCallEvent:
    """A complete tool call, emitted as soon as the stream has all of it."""

    call: ToolCall
    """The call."""


@dataclass(slots=True, frozen=True)
class StreamDone:
    """End of a stream, with the assembled response."""

    response: ModelResponse
    """The full response, equal to what `request` would have returned."""


StreamEvent = TextDelta | ToolCallEvent | StreamDone
"""What `Model.stream` yields; the last event is always a `StreamDone`."""


@runtime_checkable
class Model(Protocol):
    """A language model: one request in, one response (or a stream of events) out."""

    @property
    def name(self) -> str:
        """The model's string name, e.g. `scripted:demo`."""
        ...

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer one request."""
        ...

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Answer one request as a stream ending with `StreamDone`."""
        ...


ProviderFactory = Callable[[str], Model]
"""Builds a model from the part of the model string after the prefix."""

_providers: dict[str, ProviderFactory] = {}


def register_provider(prefix: str, factory: ProviderFactory) -> None:
    """Make `prefix:NAME` model strings resolve through `factory(NAME)`."""
    if not prefix or ":" in prefix:
        raise ConfigError(f"provider prefix must be a non-empty word without ':', got {prefix!r}")
    _providers[prefix] = factory


def resolve_model(model: str | Model) -> Model:
    """Return `model` itself, or the model a string such as `scripted:demo` names."""
    if not isinstance(model, str):
        return model
    prefix, sep, rest = model.partition(":")
    if not sep or not rest:
        raise ConfigError(
            f"model string {model!r} must look like 'provider:name' "
            f"(known providers: {', '.join(sorted(_known_prefixes()))})"
        )
    factory = _providers.get(prefix)
    if factory is None and prefix in _BUILTIN:
        module, attr = _BUILTIN[prefix].split(":")
        factory = getattr(importlib.import_module(module), attr)
        _providers.setdefault(prefix, factory)
    if factory is None:
        raise ConfigError(
            f"unknown model provider {prefix!r} in {model!r}; known providers: "
            f"{', '.join(sorted(_known_prefixes()))}"
        )
    resolved = factory(rest)
    if prefix in _HOSTED:  # networks fail: hosted models get retries, timeouts, backoff
        from .providers.resilience import Resilient

        return Resilient(resolved)
    return resolved


# Providers shipped with Cadenza, imported on first use (their dependencies are extras).
_BUILTIN = {
    "scripted": "cadenza.testing:scripted_provider",
    "local": "cadenza.providers.local:local_provider",
    "openai": "cadenza.providers.openai:openai_provider",
    "ollama": "cadenza.providers.openai:ollama_provider",
    "vllm": "cadenza.providers.openai:vllm_provider",
    "compat": "cadenza.providers.openai:compat_provider",
    "anthropic": "cadenza.providers.anthropic:anthropic_provider",
    "resilient": "cadenza.providers.resilience:resilient_provider",
    "fallback": "cadenza.providers.resilience:fallback_provider",
}


_HOSTED = frozenset({"openai", "ollama", "vllm", "compat", "anthropic"})
"""Prefixes whose models `resolve_model` wraps in a default `Resilient`."""


def _known_prefixes() -> set[str]:
    return set(_providers) | set(_BUILTIN)
