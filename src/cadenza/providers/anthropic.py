"""`anthropic:MODEL`: Claude through the Messages API (`pip install 'cadenza[anthropic]'`).

The official SDK's `AsyncAnthropic` does the HTTP with its own retries off (`max_retries=0`):
retrying is a separate Cadenza layer reading `ProviderError.retryable` and `retry_after`.

- System messages become the `system` parameter (joined by blank lines); tool results, a user
  message of `tool_result` blocks rendered by `tool_output_text` (marked as data), `is_error`
  on failures. Consecutive messages of one role are merged, tool results first, as the API
  requires.
- An output schema is answered through a `final_answer` tool whose input schema is the schema
  (any non-object schema wrapped as `{"value": ...}`): forced (`tool_choice` `{"type": "tool"}`)
  or, when the request also offers tools, required among them (`{"type": "any"}`), so an agent
  can still call tools first. The answer comes back as JSON text, never as a tool call.
- Stop reasons: `tool_use` → "tool_calls", `max_tokens` and `model_context_window_exceeded`
  → "length", others → "stop".
- `settings.extra` is merged into the request body. `settings.temperature` and `seed` are not
  sent: API version 2026-10-21, which the 2.x SDK pins, rejects `temperature`, `top_p` and
  `top_k` at any value (HTTP 400), and the API has no seed.
- Usage counts every prompt token (`input_tokens` plus cache writes and reads); cost uses
  `price_of(name)`, cache writes at 1.25x and cache reads at 0.1x the input price.

Errors become `ProviderError(provider="anthropic")`, retryable on 408, 409, 429, 5xx but 501
(529 is "overloaded"), timeouts, connection errors, and a stream ending before `message_stop`
or with a transient `error` event. A 429 for a spend limit is not retryable: the API marks it
with `error.details.error_code` `enforced_spend_limit_reached` (the usage tier's monthly cap)
or `contract_spend_limit_reached` (or `error.type` `billing_error`) and sends no `retry-after`.
`Retry-After` (seconds or an HTTP date) sets `retry_after`.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal, cast

from ..errors import ConfigError, ProviderError
from ..messages import Message, ToolCall, Usage
from ..models import ModelRequest, ModelResponse, StreamDone, StreamEvent, TextDelta, ToolCallEvent
from ..safety.guards import tool_output_text
from . import timeout_from_env
from .prices import price_of

try:
    import anthropic
    import httpx2
    from anthropic.types import Message as APIMessage
    from anthropic.types import MessageDeltaUsage, RawMessageStreamEvent
    from anthropic.types import Usage as APIUsage
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "anthropic: models need the Anthropic SDK: pip install 'cadenza[anthropic]'"
    ) from exc

__all__ = ["FINAL_ANSWER", "AnthropicModel", "anthropic_provider"]

FINAL_ANSWER = "final_answer"
"""Name of the tool through which a structured (output-schema) answer is given."""

_FINAL_DESCRIPTION = "Give your final answer: the input is the answer, matching the schema."
_MALFORMED = "(malformed tool call)"
_LENGTH = frozenset({"max_tokens", "model_context_window_exceeded"})
_SPEND_LIMITS = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached"})
# What an `error` event inside a 200 stream would have been as an HTTP status.
_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}  # fmt: skip
# Failures while reading a stream: SDK errors (an `error` event), transport errors (a reset),
# undecodable bytes.
_STREAM_FAILURES = (anthropic.AnthropicError, httpx2.HTTPError, ValueError)


class AnthropicModel:
    """A Claude model behind the Messages API (the `Model` protocol).

    Args:
        model: The API's model id, e.g. `claude-sonnet-4-0`.
        api_key: The API key; default: the environment variable `api_key_env`.
        api_key_env: Where to find the key when `api_key` is not given.
        base_url: The API's base URL; default: `$ANTHROPIC_BASE_URL`, else the public API.
        timeout: Seconds to wait for a response (or for each streamed chunk).
        max_tokens: Output-token limit when the request's settings give none.
        client: A ready `AsyncAnthropic` (or compatible) client; the key is then not needed.

    Raises:
        ConfigError: No client was given and no API key was found.

    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        base_url: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = 1024,
        client: Any = None,
    ) -> None:
        if not model:
            raise ConfigError("AnthropicModel needs a model id, e.g. 'claude-sonnet-4-0'")
        self.model = model
        """The API's model id."""
        self.max_tokens = max_tokens
        """Output-token limit when the request's settings give none."""
        self.price = price_of(self.name)
        """(input, output) US dollars per token, or None when the price is unknown."""
        if client is None:
            key = api_key or os.environ.get(api_key_env)
            if not key:
                raise ConfigError(
                    f"model {self.name!r} needs an Anthropic API key: set {api_key_env} "
                    "(or pass api_key=...)"
                )
            client = anthropic.AsyncAnthropic(
                api_key=key, base_url=base_url, timeout=timeout, max_retries=0
            )
        self.client: Any = client
        """The SDK client that sends the requests."""

    @property
    def name(self) -> str:
        """`anthropic:MODEL`."""
        return f"anthropic:{self.model}"

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer one request; a refusal, failure or unreachable API raises `ProviderError`."""
        params, wrapped = self._params(request)
        try:
            message: APIMessage = await self.client.messages.create(**params)
        except anthropic.AnthropicError as exc:
            raise _provider_error(exc) from exc
        turn = _Turn(wrapped)
        for block in message.content:
            if block.type == "text":
                turn.text.append(block.text)
            elif block.type == "tool_use":
                turn.add_tool(block.id, block.name, dict(block.input), "")
        turn.stop_reason = message.stop_reason
        turn.add_usage(message.usage)
        return self._response(turn)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Text deltas and tool calls (each once complete), then `StreamDone`.

        A stream that breaks or ends before `message_stop` raises a retryable `ProviderError`,
        and nothing built from the partial answer is yielded.
        """
        params, wrapped = self._params(request)
        state = _StreamState(_Turn(wrapped))
        try:
            events = await self.client.messages.create(**params, stream=True)
        except anthropic.AnthropicError as exc:
            raise _provider_error(exc) from exc
        async with events:
            while not state.stopped:
                try:
                    event: RawMessageStreamEvent = await events.__anext__()
                except StopAsyncIteration:
                    break
                except _STREAM_FAILURES as exc:
                    raise _provider_error(exc, streaming=True) from exc
                for out in state.feed(event):
                    yield out
        if not state.stopped:
            msg = f"{self.name}: the stream was cut before message_stop; retrying may help"
            raise ProviderError(msg, provider="anthropic", retryable=True)
        yield StreamDone(self._response(state.turn))

    def _params(self, request: ModelRequest) -> tuple[dict[str, Any], bool]:
        """The `messages.create` keyword arguments, and whether the answer schema is wrapped."""
        s = request.settings
        system, messages = _to_api(request.messages)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens if s.max_tokens is None else s.max_tokens,
            "messages": messages,
        }
        if system:
            params["system"] = system
        tools = [_tool(t.name, t.description, t.parameters) for t in request.tools]
        wrapped = False
        if request.output_schema is not None:
            schema, wrapped = _object_schema(request.output_schema)
            tools.append(_tool(FINAL_ANSWER, _FINAL_DESCRIPTION, schema))
            params["tool_choice"] = (
                {"type": "any"} if request.tools else {"type": "tool", "name": FINAL_ANSWER}
            )
        if tools:
            params["tools"] = tools
        if s.extra:
            params["extra_body"] = dict(s.extra)
        return params, wrapped

    def _response(self, turn: _Turn) -> ModelResponse:
        prompt = turn.input_tokens + turn.cache_write + turn.cache_read
        cost = 0.0
        if self.price is not None:
            weighted = turn.input_tokens + 1.25 * turn.cache_write + 0.1 * turn.cache_read
            cost = weighted * self.price[0] + turn.output_tokens * self.price[1]
        finish: Literal["stop", "tool_calls", "length"] = "stop"
        if turn.stop_reason in _LENGTH:
            finish = "length"
        elif turn.calls:
            finish = "tool_calls"
        text = turn.answer if turn.answer is not None else "".join(turn.text)
        usage = Usage(prompt, turn.output_tokens, cost, 1)
        return ModelResponse(text, turn.calls, usage, self.name, finish)


def anthropic_provider(name: str) -> AnthropicModel:
    """Resolve `anthropic:NAME` (key from `$ANTHROPIC_API_KEY`, URL from `$ANTHROPIC_BASE_URL`)."""
    return AnthropicModel(
        name, base_url=os.environ.get("ANTHROPIC_BASE_URL") or None, timeout=timeout_from_env()
    )


# --- Responses ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Turn:
    """What one response holds, whether it arrived whole or streamed."""

    wrapped: bool
    text: list[str] = field(default_factory=lambda: [])
    calls: list[ToolCall] = field(default_factory=lambda: [])
    answer: str | None = None
    stop_reason: str | None = None
    input_tokens: int = 0
    cache_write: int = 0
    cache_read: int = 0
    output_tokens: int = 0

    def add_tool(self, call_id: str, name: str, args: dict[str, Any] | None, raw: str) -> None:
        """Record a complete tool_use block; `args` is None when its JSON did not parse."""
        if name == FINAL_ANSWER:
            if args is None:
                self.answer = raw  # let output validation tell the model what is wrong
            else:
                self.answer = json.dumps(args.get("value") if self.wrapped else args)
        elif args is None:
            self.calls.append(ToolCall(call_id, _MALFORMED, {"raw": raw[:200]}))
        else:
            self.calls.append(ToolCall(call_id, name, args))

    def add_usage(self, usage: APIUsage | MessageDeltaUsage) -> None:
        """Take the (cumulative) counts a usage object gives."""
        if usage.input_tokens is not None:
            self.input_tokens = usage.input_tokens
        if usage.cache_creation_input_tokens is not None:
            self.cache_write = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens is not None:
            self.cache_read = usage.cache_read_input_tokens
        self.output_tokens = usage.output_tokens


@dataclass(slots=True)
class _Block:
    kind: Literal["text", "tool"]
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=lambda: [])


@dataclass(slots=True)
class _StreamState:
    """Assembles a `_Turn` from raw stream events, saying what to yield as it goes."""

    turn: _Turn
    blocks: dict[int, _Block] = field(default_factory=lambda: {})
    stopped: bool = False

    def feed(self, event: RawMessageStreamEvent) -> list[StreamEvent]:
        if event.type == "message_start":
            self.turn.add_usage(event.message.usage)
        elif event.type == "content_block_start":
            block = event.content_block
            if block.type == "text":
                self.blocks[event.index] = _Block("text", parts=[block.text] if block.text else [])
                return [TextDelta(block.text)] if block.text else []
            if block.type == "tool_use":
                self.blocks[event.index] = _Block("tool", block.id, block.name)
        elif event.type == "content_block_delta":
            current, delta = self.blocks.get(event.index), event.delta
            if current is not None and delta.type == "text_delta":
                current.parts.append(delta.text)
                return [TextDelta(delta.text)]
            if current is not None and delta.type == "input_json_delta":
                current.parts.append(delta.partial_json)
        elif event.type == "content_block_stop":
            done = self.blocks.pop(event.index, None)
            if done is not None:
                return self._close(done)
        elif event.type == "message_delta":
            self.turn.stop_reason = event.delta.stop_reason or self.turn.stop_reason
            self.turn.add_usage(event.usage)
        elif event.type == "message_stop":
            self.stopped = True
        return []

    def _close(self, block: _Block) -> list[StreamEvent]:
        raw = "".join(block.parts)
        if block.kind == "text":
            self.turn.text.append(raw)
            return []
        calls = len(self.turn.calls)
        self.turn.add_tool(block.id, block.name, _parse_args(raw), raw)
        if len(self.turn.calls) > calls:
            return [ToolCallEvent(self.turn.calls[-1])]
        # The structured answer arrives whole: one delta, so the deltas add up to the text.
        return [TextDelta(self.turn.answer)] if self.turn.answer else []


def _parse_args(raw: str) -> dict[str, Any] | None:
    if not raw.strip():
        return {}  # a tool without parameters streams no JSON at all
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return cast(dict[str, Any], value) if isinstance(value, dict) else None


# --- Requests -------------------------------------------------------------------------------


def _to_api(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """The `system` text and the API's `messages`: roles merged, tool results first."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            if m.text:
                system.append(m.text)
            continue
        blocks = _blocks(m)
        if not blocks:
            continue  # the API refuses empty messages and empty text blocks
        role = "assistant" if m.role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for message in out:
        # A message answering tool calls must begin with their results (the sort is stable).
        message["content"].sort(key=_not_a_result)
    return "\n\n".join(system), out


def _not_a_result(block: dict[str, Any]) -> bool:
    return block["type"] != "tool_result"


def _blocks(m: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for r in m.tool_results:
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": r.call_id,
            "content": tool_output_text(r),
        }
        if r.is_error:
            block["is_error"] = True
        blocks.append(block)
    if m.text:
        blocks.append({"type": "text", "text": m.text})
    for c in m.tool_calls:
        blocks.append({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments})
    return blocks


def _tool(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name, "input_schema": schema}
    if description:
        tool["description"] = description
    return tool


def _object_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A tool's input must be an object: wrap any other schema as `{"value": ...}`."""
    if schema.get("type") == "object":
        return schema, False
    defs = {k: v for k, v in schema.items() if k in ("$defs", "definitions")}
    inner = {k: v for k, v in schema.items() if k not in defs}  # refs still resolve at the root
    wrapper = {"type": "object", "properties": {"value": inner}, "required": ["value"]}
    return {**wrapper, **defs}, True


# --- Errors ---------------------------------------------------------------------------------


def _provider_error(exc: Exception, *, streaming: bool = False) -> ProviderError:
    if isinstance(exc, anthropic.APIStatusError):
        return _status_error(exc, streaming=streaming)
    where = "the stream broke" if streaming else "no response"
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        msg = f"anthropic: {where}: timed out; retrying may help, or raise the timeout"
    elif isinstance(exc, anthropic.APIConnectionError | httpx2.HTTPError | ValueError):
        cause = exc.__cause__ or exc
        msg = (
            f"anthropic: {where}: connection failed ({type(cause).__name__}: {cause}); "
            "check the network and the base URL; retrying may help"
        )
    else:
        return ProviderError(f"anthropic: {type(exc).__name__}: {exc}", provider="anthropic")
    return ProviderError(msg, provider="anthropic", retryable=True)


def _status_error(exc: anthropic.APIStatusError, *, streaming: bool) -> ProviderError:
    kind = exc.type or "unknown_error"
    status: int | None = exc.status_code
    retry_after = _retry_after(exc.response.headers)
    if exc.status_code < 400:  # an `error` event inside a 200 stream
        status, retry_after = _TYPE_STATUS.get(kind), None
    spend = status == 429 and (exc.error_code in _SPEND_LIMITS or kind == "billing_error")
    retryable = not spend and (
        status is None or status in (408, 409, 429) or (status >= 500 and status != 501)
    )
    if spend:
        advice = "a spend limit is reached: raise it in the Claude Console or wait for its reset"
    elif status == 401:
        advice = "check the API key"
    elif status == 404:
        advice = "check the model name and the base URL"
    elif retryable:
        wait = f"after {retry_after:g}s" if retry_after is not None else "later"
        advice = f"transient; retry {wait}"
    else:
        advice = "the request was refused; fix it, retrying will not help"
    detail = exc.api_message or str(exc.body)
    code = f", {exc.error_code}" if exc.error_code else ""
    where = "the stream failed mid-way: " if streaming else ""
    return ProviderError(
        f"anthropic: {where}{status} {kind}{code}: {detail}; {advice}",
        provider="anthropic",
        status=status,
        retryable=retryable,
        retry_after=retry_after,
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `Retry-After`, in seconds or as an HTTP date."""
    value = headers.get("retry-after")
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())
