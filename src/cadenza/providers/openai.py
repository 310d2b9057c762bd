"""OpenAI and OpenAI-compatible servers, through the official `openai` SDK (`cadenza[openai]`).

Model strings and where each one connects:

- `openai:NAME`: the OpenAI API. Key from `OPENAI_API_KEY` (required), base URL from
  `OPENAI_BASE_URL` when set.
- `ollama:NAME`: an Ollama server at `$OLLAMA_BASE_URL` (default `http://127.0.0.1:11434/v1`);
  no key.
- `vllm:NAME`: a vLLM server at `$VLLM_BASE_URL` (default `http://127.0.0.1:8000/v1`); key from
  `VLLM_API_KEY` when the server was started with one.
- `compat:NAME`: any other OpenAI-compatible server (llama.cpp, LM Studio, a gateway...) at
  `$CADENZA_COMPAT_BASE_URL` (required); key from `CADENZA_COMPAT_API_KEY` when it needs one.

The SDK's own retries are off: every failure becomes a `ProviderError` carrying the HTTP status,
whether retrying may help and the server's `Retry-After`, and Cadenza's resilience layer decides.
Requests use the chat-completions API; structured output asks for a `json_schema` response
format. A compatible server that refuses it, or refuses `stream_options`, is asked again without
(json_schema falls back to `json_object` with the schema, the llama.cpp convention), and the
model remembers.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from ..errors import ConfigError, ProviderError
from ..messages import Message, ToolCall, Usage
from ..models import ModelRequest, ModelResponse, StreamDone, StreamEvent, TextDelta, ToolCallEvent
from ..safety.guards import tool_output_text
from . import timeout_from_env, with_schema_hint
from .prices import price_of

try:
    import openai
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(
        "OpenAI and OpenAI-compatible models need the openai SDK: pip install 'cadenza[openai]'"
    ) from exc

__all__ = ["OpenAIModel", "compat_provider", "ollama_provider", "openai_provider", "vllm_provider"]

MALFORMED = "(malformed tool call)"
"""Name given to a tool call whose arguments are not a JSON object; the Gate refuses it."""

_RETRYABLE = frozenset({408, 409, 429})
_Finish = Literal["stop", "tool_calls", "length", "error"]
_FINISH: dict[str, _Finish] = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                               "function_call": "tool_calls", "content_filter": "error"}  # fmt: skip
_HINTS = {401: "check the API key", 403: "the key may lack access to this model or endpoint",
          404: "check the model name and the base URL", 429: "rate limited; retry later",
          500: "server error; retry later"}  # fmt: skip
_QUOTA = "the account's quota or spend limit is exhausted: add credit or raise it"
_ids = itertools.count(1)


class OpenAIModel:
    """A model behind the OpenAI chat-completions API (OpenAI itself or a compatible server).

    Args:
        model: The model name the server knows, e.g. `gpt-4o-mini`.
        prefix: The provider prefix of the model string (`openai`, `ollama`, `vllm`, `compat`);
            it names the model (`prefix:model`), its price and its errors.
        base_url: The API base URL (ending in `/v1`); None for OpenAI's.
        api_key: The API key. When None, it is read from `api_key_env`.
        api_key_env: The environment variable holding the key, which is then required (a
            missing key raises `ConfigError` here). None: the server needs no key.
        timeout: Seconds allowed for connecting and for each read.
        client: A ready `openai.AsyncOpenAI` to use instead (tests, custom transports);
            `base_url`, `api_key` and `timeout` are then ignored.

    Raises:
        ConfigError: `api_key_env` is set but neither it nor `api_key` holds a key.

    """

    def __init__(
        self,
        model: str,
        *,
        prefix: str = "openai",
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        client: Any = None,
    ) -> None:
        self.model = model
        """The model name sent to the server."""
        self.prefix = prefix
        """The provider prefix."""
        self.base_url = base_url
        """The API base URL, or None for OpenAI's."""
        self.timeout = timeout
        """Seconds allowed for connecting and for each read."""
        self.price: tuple[float, float] | None = price_of(self.name)
        """(input, output) dollars per token, or None when unknown (cost budgets then skip it)."""
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        if not key and client is None:
            if api_key_env:
                raise ConfigError(
                    f"model {self.name!r} needs an API key: set the environment variable "
                    f"{api_key_env} (or pass api_key=...)"
                )
            key = "EMPTY"  # the SDK insists on a key; servers without auth ignore it
        self._key = key or ""
        self._given: openai.AsyncOpenAI | None = client
        self._client: openai.AsyncOpenAI | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None] | None = None
        # Optional features a compatible server may refuse; turned off once it does.
        self._json_schema = True
        self._stream_usage = True

    @property
    def name(self) -> str:
        """`prefix:model`."""
        return f"{self.prefix}:{self.model}"

    async def _sdk(self) -> openai.AsyncOpenAI:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        # A connection pool belongs to the event loop that opened it: one client per loop,
        # closed when that loop shuts down (asyncio.run finalises async generators then).
        if self._client is None or self._loop is not loop:
            client = openai.AsyncOpenAI(
                api_key=self._key, base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
            self._closer = _close_at_loop_end(client)
            await anext(self._closer)
            self._client, self._loop = client, loop
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections this model opened (not those of a `client` passed in)."""
        if self._closer is not None:
            await self._closer.aclose()
        self._client = self._closer = None

    # --- requests ---------------------------------------------------------------------------

    def _params(self, request: ModelRequest, *, stream: bool) -> dict[str, Any]:
        messages = [m for msg in request.messages for m in _to_openai(msg)]
        params: dict[str, Any] = {"model": self.model}
        if request.tools:
            params["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}}
                for t in request.tools
            ]  # fmt: skip
            # OpenAI's default, but some servers (llama-cpp-python) ignore tools without it.
            params["tool_choice"] = "auto"
        schema = request.output_schema
        if schema is not None and self._json_schema:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": False},
            }
        elif schema is not None:
            params["response_format"] = {"type": "json_object", "schema": schema}
            messages = with_schema_hint(messages, schema)
        s = request.settings
        if s.temperature is not None:
            params["temperature"] = s.temperature
        if s.max_tokens is not None:
            # OpenAI's reasoning models accept only the newer name; other servers the older.
            key = "max_completion_tokens" if self._official else "max_tokens"
            params[key] = s.max_tokens
        if s.seed is not None:
            params["seed"] = s.seed
        if stream:
            params["stream"] = True
            if self._stream_usage:
                params["stream_options"] = {"include_usage": True}
        params["messages"] = messages
        if s.extra:
            params["extra_body"] = dict(s.extra)
        return params

    @property
    def _official(self) -> bool:
        return self.prefix == "openai" and self.base_url is None

    async def _create(self, request: ModelRequest, *, stream: bool) -> Any:
        completions: Any = (await self._sdk()).chat.completions
        while True:
            try:
                return await completions.create(**self._params(request, stream=stream))
            except openai.APIError as exc:
                if not self._downgrade(exc, request, stream=stream):
                    raise self._error(exc) from exc

    def _downgrade(self, exc: openai.APIError, request: ModelRequest, *, stream: bool) -> bool:
        """Turn off an optional feature the server just refused; True when one was."""
        # llama-cpp-python answers 500 to a request it cannot validate.
        if self._official or getattr(exc, "status_code", None) not in (400, 422, 500):
            return False
        said = f"{exc.message} {exc.body}".lower()
        if stream and self._stream_usage and "stream_options" in said:
            self._stream_usage = False
            return True
        refused_schema = "json_schema" in said or "response_format" in said
        if request.output_schema is not None and self._json_schema and refused_schema:
            self._json_schema = False
            return True
        return False

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer one request.

        Raises:
            ProviderError: the API failed (status, retryable, retry_after set).

        """
        completion = cast(ChatCompletion, await self._create(request, stream=False))
        if not completion.choices:
            raise ProviderError(
                f"{self.name}: the server answered without any choice; check the model name",
                provider=self.prefix,
            )
        choice = completion.choices[0]
        msg = choice.message
        fns: list[Any] = [(tc.id, getattr(tc, "function", None)) for tc in msg.tool_calls or ()]
        calls = [_tool_call(i, getattr(f, "name", ""), getattr(f, "arguments", "")) for i, f in fns]
        text = msg.content or ""
        finish = _finish(choice.finish_reason, calls)
        if msg.refusal and not text:
            text, finish = msg.refusal, "error"  # a refusal to answer in the requested format
        u = completion.usage
        usage = self._usage(u.prompt_tokens if u else 0, u.completion_tokens if u else 0)
        return ModelResponse(text, calls, usage, self.name, finish)

    def _usage(self, input_tokens: int, output_tokens: int) -> Usage:
        cost = 0.0
        if self.price is not None:
            cost = input_tokens * self.price[0] + output_tokens * self.price[1]
        return Usage(input_tokens, output_tokens, cost, 1)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Answer as text deltas, then one `ToolCallEvent` per call, then `StreamDone`.

        Raises:
            ProviderError: the API failed, or the stream ended before the server said why it
                stopped (cut: retryable; no tool call or `StreamDone` is built from it).

        """
        chunks = await self._create(request, stream=True)
        parts: list[str] = []
        partial: dict[int, _PartialCall] = {}
        reason: str | None = None
        usage: Any = None
        try:
            async for raw in chunks:
                chunk = cast(ChatCompletionChunk, raw)
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta.content:
                        parts.append(delta.content)
                        yield TextDelta(delta.content)
                    for tc in delta.tool_calls or ():
                        # A server that omits the index sends each call whole, in one delta.
                        index = cast("int | None", tc.index)
                        index = len(partial) if index is None else index
                        partial.setdefault(index, _PartialCall()).add(tc)
                    reason = choice.finish_reason or reason
        except openai.APIError as exc:
            raise self._error(exc) from exc
        finally:
            await chunks.close()
        if reason is None:
            raise ProviderError(
                f"{self.name}: the stream ended before the model finished (connection cut or "
                "server failure); retry the request",
                provider=self.prefix,
                retryable=True,
            )
        calls = [partial[i].call() for i in sorted(partial)]
        for call in calls:
            yield ToolCallEvent(call)
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        response = ModelResponse(
            "".join(parts), calls, self._usage(*tokens), self.name, _finish(reason, calls)
        )
        yield StreamDone(response)

    # --- errors -----------------------------------------------------------------------------

    def _error(self, exc: openai.APIError) -> ProviderError:
        where = f"{self.name} ({self.base_url or 'https://api.openai.com/v1'})"
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = _detail(exc)
            quota = "insufficient_quota" in (exc.code, exc.type)
            retryable = not quota and (status in _RETRYABLE or status >= 500)
            hint = _QUOTA if quota else _HINTS.get(min(status, 500), "")
            return ProviderError(
                f"{where}: HTTP {status}: {detail}" + (f" ({hint})" if hint else ""),
                provider=self.prefix,
                status=status,
                retryable=retryable,
                retry_after=_retry_after(exc.response.headers),
            )
        if isinstance(exc, openai.APITimeoutError):
            msg = f"timed out after {self.timeout:g} s; retry, or raise timeout="
        elif isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            msg = f"connection failed ({cause}); is the server running at that address?"
        else:  # an error event inside a stream: the server failed after answering 200
            msg = f"the server reported an error mid-answer: {_detail(exc)}"
        return ProviderError(f"{where}: {msg}", provider=self.prefix, retryable=True)


async def _close_at_loop_end(client: openai.AsyncOpenAI) -> AsyncGenerator[None]:
    try:
        yield
    finally:
        await client.close()


@dataclass(slots=True)
class _PartialCall:
    """A streamed tool call, assembled from its deltas."""

    id: str = ""
    name: str = ""
    arguments: str = ""

    def add(self, delta: Any) -> None:
        self.id = self.id or delta.id or ""
        fn = delta.function
        if fn is None:
            return
        # OpenAI sends the name once; some servers repeat it in every delta.
        if fn.name and fn.name != self.name:
            self.name += fn.name
        self.arguments += fn.arguments or ""

    def call(self) -> ToolCall:
        return _tool_call(self.id, self.name, self.arguments)


def _tool_call(call_id: str | None, name: str | None, arguments: str | None) -> ToolCall:
    """A `ToolCall` from the wire; malformed ones become `MALFORMED` calls, never exceptions."""
    call_id = call_id or f"call_{next(_ids)}"
    raw = arguments or ""
    try:
        args: Any = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        args = None
    if not name or not isinstance(args, dict):
        return ToolCall(call_id, MALFORMED, {"raw": f"{name}({raw[:200]})" if name else raw[:200]})
    return ToolCall(call_id, name, cast(dict[str, Any], args))


def _finish(reason: str | None, calls: list[ToolCall]) -> _Finish:
    mapped = _FINISH.get(reason or "", "stop")
    # Some servers say "stop" after tool calls; the calls are what the agent must act on.
    return "tool_calls" if calls and mapped == "stop" else mapped


def _to_openai(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        # Tool outputs are rendered as data, so instructions inside them are not obeyed.
        return [
            {"role": "tool", "tool_call_id": r.call_id, "content": tool_output_text(r)}
            for r in m.tool_results
        ]
    # Content is always a string: some servers (llama-cpp-python) refuse null.
    d: dict[str, Any] = {"role": m.role, "content": m.text}
    if m.tool_calls:
        d["tool_calls"] = [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in m.tool_calls
        ]  # fmt: skip
    return [d]


def _detail(exc: openai.APIError) -> str:
    body: Any = exc.body
    message = cast(dict[str, Any], body).get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message else exc.message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(when.timestamp() - time.time(), 0.0)
    return None


# --- providers ----------------------------------------------------------------------------


def openai_provider(name: str) -> OpenAIModel:
    """`openai:NAME`: key from `OPENAI_API_KEY` (required), base URL from `OPENAI_BASE_URL`."""
    return OpenAIModel(
        name, base_url=os.environ.get("OPENAI_BASE_URL") or None, timeout=timeout_from_env()
    )


def ollama_provider(name: str) -> OpenAIModel:
    """`ollama:NAME`: an Ollama server at `$OLLAMA_BASE_URL` (default 127.0.0.1:11434)."""
    base = os.environ.get("OLLAMA_BASE_URL") or "http://127.0.0.1:11434/v1"
    return OpenAIModel(
        name, prefix="ollama", base_url=base, api_key="ollama", api_key_env=None,
        timeout=timeout_from_env(),
    )  # fmt: skip


def vllm_provider(name: str) -> OpenAIModel:
    """`vllm:NAME`: a vLLM server at `$VLLM_BASE_URL` (default 127.0.0.1:8000), `VLLM_API_KEY`."""
    base = os.environ.get("VLLM_BASE_URL") or "http://127.0.0.1:8000/v1"
    return _served(name, "vllm", base, "VLLM_API_KEY")


def compat_provider(name: str) -> OpenAIModel:
    """`compat:NAME`: the OpenAI-compatible server at `$CADENZA_COMPAT_BASE_URL` (required).

    Raises:
        ConfigError: `CADENZA_COMPAT_BASE_URL` is not set.

    """
    base = os.environ.get("CADENZA_COMPAT_BASE_URL")
    if not base:
        raise ConfigError(
            f"model 'compat:{name}' needs the server's address: set the environment variable "
            "CADENZA_COMPAT_BASE_URL (e.g. http://127.0.0.1:8080/v1)"
        )
    return _served(name, "compat", base, "CADENZA_COMPAT_API_KEY")


def _served(name: str, prefix: str, base_url: str, key_env: str) -> OpenAIModel:
    # The key is optional: a server started without one accepts any (never OpenAI's key).
    key = os.environ.get(key_env) or None
    return OpenAIModel(
        name, prefix=prefix, base_url=base_url, api_key=key, api_key_env=None,
        timeout=timeout_from_env(),
    )  # fmt: skip
