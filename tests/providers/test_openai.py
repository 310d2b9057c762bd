"""The OpenAI provider: wire conversions, error mapping, streaming, and a real compatible server.

Unit tests capture what the official SDK sends through an httpx2 `MockTransport` and script what
it receives. Tests that need sockets use servers on 127.0.0.1 only: a tiny stub HTTP server (for
the clients the model builds itself) and, in `TestRealServer`, llama-cpp-python's
OpenAI-compatible server serving the bundled model (see conftest.py).
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import http.server
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel

from cadenza.errors import ConfigError, ProviderError
from cadenza.messages import Message, ToolCall, ToolResult
from cadenza.models import (
    Model,
    ModelRequest,
    ModelSettings,
    StreamDone,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    ToolSpec,
    resolve_model,
)
from cadenza.providers.openai import MALFORMED, OpenAIModel
from cadenza.providers.resilience import Resilient
from cadenza.safety.guards import tool_output_text

WEATHER = ToolSpec(
    "get_weather",
    "Current weather of a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
SERVED_MODEL = "qwen2.5-coder-0.5b"  # the alias conftest.py gives the real server's model


# --- scripted HTTP through MockTransport ----------------------------------------------------


class Script:
    """A MockTransport handler: answers in order, records every request."""

    def __init__(self, *answers: httpx2.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def scripted(
    script: Script, model: str = "gpt-4o-mini", *, prefix: str = "openai", **kw: Any
) -> OpenAIModel:
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://mock.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(script)),
    )
    return OpenAIModel(model, prefix=prefix, client=client, **kw)


def completion(
    content: str | None = "",
    tool_calls: Sequence[tuple[str, str, str]] = (),
    *,
    finish: str | None = "stop",
    usage: tuple[int, int] | None = (10, 5),
) -> httpx2.Response:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in tool_calls
        ]
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return httpx2.Response(200, json=body)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> Any:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": choices, **extra}  # fmt: skip


def sse(*events: Any, done: bool = True) -> httpx2.Response:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode()
    )


def error(status: int, headers: dict[str, str] | None = None, **err: Any) -> httpx2.Response:
    body = {"error": {"message": f"failure {status}", "type": None, "code": None, **err}}
    return httpx2.Response(status, headers=headers or {}, json=body)


def ask(text: str = "hi", **kw: Any) -> ModelRequest:
    return ModelRequest([Message.user(text)], kw.pop("tools", []), **kw)


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in stream]


# --- request conversions ----------------------------------------------------------------------


async def test_request_body_for_a_whole_conversation() -> None:
    script = Script(completion("done"))
    ok = ToolResult("call_1", "get_weather", {"sky": "sunny"})
    failed = ToolResult("call_2", "get_weather", "unknown city 'Atlantis'", is_error=True)
    request = ModelRequest(
        [
            Message.system("Be brief."),
            Message.user("Weather in Paris and Atlantis?"),
            Message.assistant(
                "Checking.",
                [
                    ToolCall("call_1", "get_weather", {"city": "Paris"}),
                    ToolCall("call_2", "get_weather", {"city": "Atlantis"}),
                ],
            ),
            Message.tool([ok, failed]),
            Message.user("Thanks"),
        ],
        [WEATHER],
        settings=ModelSettings(temperature=0.2, max_tokens=100, seed=7, extra={"top_p": 0.5}),
    )
    await scripted(script).request(request)

    (body,) = script.bodies
    assert script.requests[0].url.path == "/v1/chat/completions"
    assert script.requests[0].headers["authorization"] == "Bearer sk-test"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Atlantis?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Atlantis"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": tool_output_text(ok)},
        {"role": "tool", "tool_call_id": "call_2", "content": "error: unknown city 'Atlantis'"},
        {"role": "user", "content": "Thanks"},
    ]
    assert "sunny" in body["messages"][3]["content"]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather of a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]
    assert body["tool_choice"] == "auto"
    assert body["model"] == "gpt-4o-mini"
    assert (body["temperature"], body["max_completion_tokens"], body["seed"]) == (0.2, 100, 7)
    assert body["top_p"] == 0.5
    assert "max_tokens" not in body and "stream" not in body and "response_format" not in body


async def test_assistant_tool_call_turn_sends_string_content() -> None:
    script = Script(completion("ok"))
    call = ToolCall("c1", "get_weather", {"city": "Oslo"})
    await scripted(script).request(
        ModelRequest([Message.user("x"), Message.assistant("", [call])], [])
    )
    assert script.bodies[0]["messages"][1]["content"] == ""
    assert "tools" not in script.bodies[0] and "tool_choice" not in script.bodies[0]


async def test_output_schema_asks_for_a_json_schema_response() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    script = Script(completion('{"n": 3}'))
    response = await scripted(script).request(ask("three", output_schema=schema))
    assert script.bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": False},
    }
    assert json.loads(response.text) == {"n": 3}


async def test_compatible_servers_get_max_tokens_and_extra_overrides() -> None:
    script = Script(completion("ok"))
    model = scripted(script, "llama3", prefix="vllm", base_url="http://127.0.0.1:8000/v1")
    extra = {"tool_choice": "required", "top_k": 20}
    await model.request(ask(tools=[WEATHER], settings=ModelSettings(max_tokens=9, extra=extra)))
    body = script.bodies[0]
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body
    assert body["tool_choice"] == "required" and body["top_k"] == 20
    assert body["model"] == "llama3"


# --- response parsing -------------------------------------------------------------------------


async def test_text_answer_with_usage_and_cost() -> None:
    model = scripted(Script(completion("Hello!", usage=(1000, 500))))
    assert model.name == "openai:gpt-4o-mini"
    assert model.price == pytest.approx((0.15e-6, 0.60e-6))
    response = await model.request(ask())
    assert (response.text, response.tool_calls, response.finish_reason) == ("Hello!", [], "stop")
    assert response.model_name == "openai:gpt-4o-mini"
    u = response.usage
    assert (u.input_tokens, u.output_tokens, u.requests) == (1000, 500, 1)
    assert u.cost == pytest.approx(1000 * 0.15e-6 + 500 * 0.60e-6)


async def test_unknown_price_and_missing_usage_cost_nothing() -> None:
    model = scripted(Script(completion("x", usage=None)), "my-fine-tune")
    assert model.price is None
    u = (await model.request(ask())).usage
    assert (u.input_tokens, u.output_tokens, u.cost, u.requests) == (0, 0, 0.0, 1)


async def test_parallel_tool_calls() -> None:
    calls = [("a1", "get_weather", '{"city": "Paris"}'), ("a2", "get_time", '{"tz": "CET"}')]
    response = await scripted(Script(completion(None, calls, finish="tool_calls"))).request(
        ask(tools=[WEATHER])
    )
    assert response.tool_calls == [
        ToolCall("a1", "get_weather", {"city": "Paris"}),
        ToolCall("a2", "get_time", {"tz": "CET"}),
    ]
    assert (response.text, response.finish_reason) == ("", "tool_calls")
    assert response.message() == Message("assistant", "", response.tool_calls)


async def test_malformed_tool_calls_become_calls_the_gate_refuses() -> None:
    calls = [
        ("b1", "get_weather", '{"city": "Par'),
        ("b2", "get_weather", "[1, 2]"),
        ("b3", "get_weather", ""),
        ("b4", "", '{"city": "Rome"}'),
    ]
    response = await scripted(Script(completion(None, calls, finish="tool_calls"))).request(
        ask(tools=[WEATHER])
    )
    a, b, c, d = response.tool_calls
    assert (a.id, a.name) == ("b1", MALFORMED) and '{"city": "Par' in a.arguments["raw"]
    assert (b.name, c.name, d.name) == (MALFORMED, "get_weather", MALFORMED)
    assert "[1, 2]" in b.arguments["raw"] and c.arguments == {}
    assert MALFORMED == "(malformed tool call)"


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("tool_calls", True, "tool_calls"),
        ("function_call", True, "tool_calls"),
        ("stop", True, "tool_calls"),  # some servers say "stop" after calling tools
        ("content_filter", False, "error"),
        (None, False, "stop"),
    ],
)
async def test_finish_reasons(reason: str | None, calls: bool, expected: str) -> None:
    tc = [("c", "get_weather", '{"city": "x"}')] if calls else []
    response = await scripted(Script(completion("t", tc, finish=reason))).request(ask())
    assert response.finish_reason == expected


async def test_an_answer_without_choices_is_a_provider_error() -> None:
    empty = httpx2.Response(200, json={"id": "x", "object": "chat.completion", "created": 0,
                                       "model": "m", "choices": []})  # fmt: skip
    with pytest.raises(ProviderError, match="without any choice") as info:
        await scripted(Script(empty)).request(ask())
    assert info.value.retryable is False


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (403, False), (404, False), (422, False), (408, True),
     (409, True), (429, True), (500, True), (502, True), (503, True), (529, True)],
)  # fmt: skip
async def test_http_errors_map_to_provider_errors(status: int, retryable: bool) -> None:
    with pytest.raises(ProviderError) as info:
        await scripted(Script(error(status))).request(ask())
    e = info.value
    assert (e.status, e.retryable, e.provider, e.retry_after) == (status, retryable, "openai", None)
    assert f"HTTP {status}" in str(e) and "openai:gpt-4o-mini" in str(e)
    assert f"failure {status}" in str(e)


@pytest.mark.parametrize("field", ["code", "type"])
async def test_a_spent_quota_is_not_retryable(field: str) -> None:
    answer = error(429, {"retry-after": "20"}, **{field: "insufficient_quota"})
    with pytest.raises(ProviderError, match="quota") as info:
        await scripted(Script(answer)).request(ask())
    assert (info.value.status, info.value.retryable) == (429, False)


def _http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"retry-after": "7"}, 7, 7),
        ({"retry-after": "1.5"}, 1.5, 1.5),
        ({"retry-after-ms": "250"}, 0.25, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25, 0.25),
        ({"retry-after": "in 30 s"}, 25, 31),  # an HTTP date, made when the test runs
        ({"retry-after": "60 s ago"}, 0, 0),
    ],
)
async def test_retry_after_forms(headers: dict[str, str], low: float, high: float) -> None:
    dates = {"in 30 s": 30, "60 s ago": -60}
    headers = {k: _http_date(dates[v]) if v in dates else v for k, v in headers.items()}
    with pytest.raises(ProviderError) as info:
        await scripted(Script(error(429, headers))).request(ask())
    assert info.value.retry_after is not None
    assert low <= info.value.retry_after <= high


async def test_an_unreadable_retry_after_is_ignored() -> None:
    with pytest.raises(ProviderError) as info:
        await scripted(Script(error(503, {"retry-after": "soon"}))).request(ask())
    assert (info.value.retryable, info.value.retry_after) == (True, None)


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (httpx2.ConnectError("connection refused"), "connection failed"),
        (httpx2.ReadTimeout("read timed out"), "timed out"),
        (httpx2.RemoteProtocolError("peer closed connection"), "connection failed"),
    ],
)
async def test_connection_failures_are_retryable_without_status(
    failure: Exception, words: str
) -> None:
    with pytest.raises(ProviderError, match=words) as info:
        await scripted(Script(failure)).request(ask())
    assert (info.value.status, info.value.retryable) == (None, True)


# --- streaming --------------------------------------------------------------------------------


def _tool_delta(index: int, id: str | None, name: str | None, args: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "id": id, "type": "function",
                            "function": {"name": name, "arguments": args}}]}  # fmt: skip


STREAMED = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me "}),
    chunk({"content": "check."}),
    chunk(_tool_delta(0, "s1", "get_weather", '{"ci')),
    chunk(_tool_delta(1, "s2", "get_time", "{}")),
    chunk(_tool_delta(0, None, None, 'ty": "Paris"}')),
    chunk({}, "tool_calls"),
    chunk(None, usage={"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}),
]


async def test_stream_yields_text_then_tool_calls_then_the_response() -> None:
    script = Script(sse(*STREAMED))
    events = await collect(scripted(script).stream(ask(tools=[WEATHER])))
    paris = ToolCall("s1", "get_weather", {"city": "Paris"})
    time_call = ToolCall("s2", "get_time", {})
    assert events[:4] == [
        TextDelta("Let me "), TextDelta("check."), ToolCallEvent(paris), ToolCallEvent(time_call),
    ]  # fmt: skip
    assert len(events) == 5 and isinstance(events[4], StreamDone)
    body = script.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}

    # The same answer, unstreamed, gives an equal response.
    whole = completion(
        "Let me check.",
        [("s1", "get_weather", '{"city": "Paris"}'), ("s2", "get_time", "{}")],
        finish="tool_calls",
        usage=(1000, 500),
    )
    assert events[4].response == await scripted(Script(whole)).request(ask(tools=[WEATHER]))


async def test_stream_tolerates_repeated_names_missing_usage_and_bad_arguments() -> None:
    # llama-cpp-python repeats the name in every delta and sends no usage.
    answer = sse(
        chunk(_tool_delta(0, "r1", "get_weather", '{"city"')),
        chunk(_tool_delta(0, "r1", "get_weather", ': "Rome"}')),
        chunk(_tool_delta(1, "r2", "get_weather", '{"city": ')),
        chunk({}, "tool_calls"),
    )
    events = await collect(scripted(Script(answer)).stream(ask(tools=[WEATHER])))
    *calls, done = events
    assert isinstance(done, StreamDone)
    assert [c.call for c in calls if isinstance(c, ToolCallEvent)] == done.response.tool_calls
    rome, bad = done.response.tool_calls
    assert rome == ToolCall("r1", "get_weather", {"city": "Rome"})
    assert bad.name == MALFORMED and bad.id == "r2"
    u = done.response.usage
    assert (u.input_tokens, u.output_tokens, u.requests) == (0, 0, 1)


@pytest.mark.parametrize("done", [False, True])
async def test_a_cut_stream_raises_and_builds_nothing_from_partial_data(done: bool) -> None:
    answer = sse(
        chunk({"content": "Partial "}),
        chunk(_tool_delta(0, "x1", "get_weather", '{"city": "Pa')),
        done=done,
    )
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError, match="stream ended") as info:
        async for event in scripted(Script(answer)).stream(ask(tools=[WEATHER])):
            events.append(event)
    assert events == [TextDelta("Partial ")]
    assert (info.value.status, info.value.retryable) == (None, True)


async def test_an_error_event_mid_stream_is_retryable() -> None:
    answer = sse(chunk({"content": "Hi"}), {"error": {"message": "overloaded", "type": "server"}})
    with pytest.raises(ProviderError, match="overloaded") as info:
        await collect(scripted(Script(answer)).stream(ask()))
    assert (info.value.status, info.value.retryable) == (None, True)


async def test_stream_http_errors_map_like_requests() -> None:
    with pytest.raises(ProviderError) as info:
        await collect(scripted(Script(error(429, {"retry-after": "3"}))).stream(ask()))
    assert (info.value.status, info.value.retryable, info.value.retry_after) == (429, True, 3.0)


# --- optional features a compatible server refuses ------------------------------------------

# What llama-cpp-python's server answers to a json_schema response format (status 500).
REFUSED_SCHEMA = httpx2.Response(
    500,
    json={"error": {"message": "1 validation error: ('body', 'response_format', 'type') Input "
                    "should be 'text' or 'json_object', input: 'json_schema'",
                    "type": "internal_server_error", "param": None, "code": None}},
)  # fmt: skip


async def test_a_server_refusing_json_schema_gets_json_object_with_the_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    script = Script(REFUSED_SCHEMA, completion('{"n": 1}'), completion('{"n": 2}'))
    model = scripted(script, "m", prefix="compat", base_url="http://127.0.0.1:9/v1")
    assert (await model.request(ask("one", output_schema=schema))).text == '{"n": 1}'
    assert (await model.request(ask("two", output_schema=schema))).text == '{"n": 2}'
    first, second, third = script.bodies
    assert first["response_format"]["type"] == "json_schema"
    for body in (second, third):  # remembered: not asked twice
        assert body["response_format"] == {"type": "json_object", "schema": schema}
        assert body["messages"][0]["role"] == "system"
        assert json.dumps(schema) in body["messages"][0]["content"]


async def test_openai_itself_gets_no_fallback() -> None:
    script = Script(error(400, message="Invalid schema for response_format 'output'"))
    with pytest.raises(ProviderError, match="Invalid schema") as info:
        await scripted(script).request(ask(output_schema={"type": "object"}))
    assert (info.value.status, len(script.requests)) == (400, 1)


async def test_a_server_refusing_stream_options_is_streamed_without() -> None:
    refused = error(400, message="Unrecognized request argument supplied: stream_options")
    script = Script(refused, sse(chunk({"content": "ok"}, "stop")))
    model = scripted(script, "m", prefix="compat", base_url="http://127.0.0.1:9/v1")
    events = await collect(model.stream(ask()))
    assert isinstance(events[-1], StreamDone) and events[-1].response.text == "ok"
    assert "stream_options" in script.bodies[0] and "stream_options" not in script.bodies[1]


# --- clients the model builds itself (a stub server on 127.0.0.1) ---------------------------


class StubServer:
    """An HTTP server on 127.0.0.1 answering every request with `status`/`body` after `delay`."""

    def __init__(self) -> None:
        self.status, self.body, self.delay = 200, b"", 0.0
        self.headers: dict[str, str] = {}
        self.seen: list[dict[str, str]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                stub.seen.append({k.lower(): v for k, v in self.headers.items()})
                time.sleep(stub.delay)
                try:
                    self.send_response(stub.status)
                    for k, v in {"content-type": "application/json", **stub.headers}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(stub.body)))
                    self.end_headers()
                    self.wfile.write(stub.body)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def answer(self, response: httpx2.Response, delay: float = 0.0) -> None:
        self.status, self.body, self.delay = response.status_code, response.content, delay
        self.headers = {k: v for k, v in response.headers.items() if k.startswith("retry-after")}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


def _unwrapped(model: Any) -> Any:
    """The provider's own model under the default resilience wrapper of hosted model strings."""
    return model.model if isinstance(model, Resilient) else model


@pytest.fixture
async def owned() -> AsyncIterator[Callable[..., OpenAIModel]]:
    """Builds models from a factory (or resolves strings), and closes them after the test."""
    made: list[OpenAIModel] = []

    def make(spec: str | None = None, **kw: Any) -> OpenAIModel:
        model = _unwrapped(resolve_model(spec)) if spec else OpenAIModel(**kw)
        assert isinstance(model, OpenAIModel)
        made.append(model)
        return model

    yield make
    for model in made:
        await model.aclose()


async def test_sdk_retries_are_off(stub: StubServer, owned: Callable[..., OpenAIModel]) -> None:
    stub.answer(error(503, {"retry-after": "2"}))
    model = owned(model="gpt-4o-mini", base_url=stub.url, api_key="sk-stub")
    with pytest.raises(ProviderError) as info:
        await model.request(ask())
    assert (info.value.status, info.value.retryable, info.value.retry_after) == (503, True, 2.0)
    assert len(stub.seen) == 1  # the SDK would have retried after the Retry-After


async def test_a_timeout_is_retryable(stub: StubServer, owned: Callable[..., OpenAIModel]) -> None:
    stub.answer(completion("late"), delay=1.0)
    model = owned(model="m", base_url=stub.url, api_key="k", timeout=0.2)
    with pytest.raises(ProviderError, match=r"timed out after 0\.2 s") as info:
        await model.request(ask())
    assert (info.value.status, info.value.retryable) == (None, True)


async def test_nobody_listening_is_retryable(owned: Callable[..., OpenAIModel]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the test connects
    model = owned(model="m", prefix="compat", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    with pytest.raises(ProviderError, match="connection failed") as info:
        await model.request(ask())
    assert (info.value.status, info.value.retryable, info.value.provider) == (None, True, "compat")


async def test_model_strings_send_the_right_key(
    stub: StubServer, owned: Callable[..., OpenAIModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub.answer(completion("ok"))
    for var in ("VLLM_API_KEY", "CADENZA_COMPAT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", stub.url)
    monkeypatch.setenv("OLLAMA_BASE_URL", stub.url)
    monkeypatch.setenv("VLLM_BASE_URL", stub.url)
    monkeypatch.setenv("CADENZA_COMPAT_BASE_URL", stub.url)
    for spec in ("openai:gpt-4o-mini", "ollama:llama3.2", "vllm:qwen", "compat:any"):
        response = await owned(spec).request(ask())
        assert response.text == "ok" and response.model_name == spec
    monkeypatch.setenv("VLLM_API_KEY", "vllm-key")
    monkeypatch.setenv("CADENZA_COMPAT_API_KEY", "compat-key")
    for spec in ("vllm:qwen", "compat:any"):
        await owned(spec).request(ask())
    keys = [h["authorization"] for h in stub.seen]
    # The OpenAI key goes to OpenAI's endpoint only, never to another provider's server.
    assert keys == [
        "Bearer sk-openai-secret", "Bearer ollama", "Bearer EMPTY", "Bearer EMPTY",
        "Bearer vllm-key", "Bearer compat-key",
    ]  # fmt: skip


def test_a_model_works_across_event_loops(stub: StubServer) -> None:
    stub.answer(completion("again"))
    model = OpenAIModel("m", base_url=stub.url, api_key="k")

    async def once() -> str:
        return (await model.request(ask())).text

    # Each asyncio.run has its own loop: a connection pooled by a finished loop cannot be
    # reused, and must be closed with its loop (warnings are errors: a leaked socket fails).
    assert [asyncio.run(once()) for _ in range(3)] == ["again"] * 3
    gc.collect()
    assert len(stub.seen) == 3


# --- configuration ----------------------------------------------------------------------------


def test_openai_without_a_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        resolve_model("openai:gpt-4o-mini")
    with pytest.raises(ConfigError, match="MY_KEY"):
        OpenAIModel("m", api_key_env="MY_KEY")


def test_compat_without_a_base_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CADENZA_COMPAT_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="CADENZA_COMPAT_BASE_URL"):
        resolve_model("compat:anything")


def test_providers_default_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OLLAMA_BASE_URL", "VLLM_BASE_URL", "VLLM_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    resolved = {p: resolve_model(f"{p}:m") for p in ("openai", "ollama", "vllm")}
    assert all(isinstance(m, Resilient) for m in resolved.values())  # hosted: resilient
    models = {p: _unwrapped(m) for p, m in resolved.items()}
    assert all(isinstance(m, Model) and isinstance(m, OpenAIModel) for m in models.values())
    assert [getattr(m, "base_url", "?") for m in models.values()] == [
        None, "http://127.0.0.1:11434/v1", "http://127.0.0.1:8000/v1",
    ]  # fmt: skip
    assert [m.name for m in models.values()] == ["openai:m", "ollama:m", "vllm:m"]


# --- a real OpenAI-compatible server: llama-cpp-python's, on 127.0.0.1 ----------------------


class Answer(BaseModel):
    answer: int


@pytest.fixture
async def served(llama_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OpenAIModel]:
    """`compat:qwen2.5-coder-0.5b`, resolved through the environment like a user would."""
    monkeypatch.setenv("CADENZA_COMPAT_BASE_URL", llama_server)
    monkeypatch.delenv("CADENZA_COMPAT_API_KEY", raising=False)
    model = _unwrapped(resolve_model(f"compat:{SERVED_MODEL}"))
    assert isinstance(model, OpenAIModel)
    yield model
    await model.aclose()


def greedy(max_tokens: int, **extra: Any) -> ModelSettings:
    return ModelSettings(temperature=0.0, max_tokens=max_tokens, seed=0, extra=extra)


FORCE_WEATHER = {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
ASK_WEATHER = "What is the weather in Paris? Use get_weather."


@pytest.mark.timeout(300)  # includes starting the server, once per session
class TestRealServer:
    """Needs a real model: llama-cpp-python's server with the bundled qwen2.5-coder-0.5b.

    Kept short (few, small generations): grammar-constrained tokens cost ~0.1-1 s each on 2 cores.
    """

    async def test_plain_chat(self, served: OpenAIModel) -> None:
        response = await served.request(
            ask("Reply with exactly one word: hello", settings=greedy(4))
        )
        assert "hello" in response.text.lower()
        assert response.finish_reason in ("stop", "length") and response.tool_calls == []
        u = response.usage
        assert u.input_tokens > 0 and u.output_tokens > 0 and (u.requests, u.cost) == (1, 0.0)

    async def test_tool_call_and_its_result(self, served: OpenAIModel) -> None:
        request = ask(ASK_WEATHER, tools=[WEATHER], settings=greedy(32))
        response = await served.request(request)
        assert response.finish_reason == "tool_calls"
        (call,) = response.tool_calls
        assert call.name == "get_weather" and call.id
        assert "paris" in str(call.arguments.get("city", "")).lower()

        # The results go back (one failed): the server accepts the whole conversation.
        extra = ToolCall("t2", "get_weather", {"city": "Atlantis"})
        results = [ToolResult(call.id, "get_weather", {"sky": "sunny"}),
                   ToolResult("t2", "get_weather", "no such city", is_error=True)]  # fmt: skip
        follow_up = ModelRequest(
            [*request.messages, Message.assistant("", [call, extra]), Message.tool(results)],
            [], settings=greedy(2),
        )  # fmt: skip
        answer = await served.request(follow_up)
        assert answer.usage.input_tokens > response.usage.input_tokens
        assert answer.finish_reason in ("stop", "length")

    async def test_structured_output(self, served: OpenAIModel) -> None:
        # The server refuses json_schema (HTTP 500); the model falls back to json_object with
        # the schema, which llama-cpp-python enforces with a grammar.
        request = ask("What is 2 + 3?", output_schema=Answer.model_json_schema(),
                      settings=greedy(24))  # fmt: skip
        response = await served.request(request)
        assert Answer.model_validate_json(response.text).answer == 5

    async def test_streamed_text(self, served: OpenAIModel) -> None:
        events = await collect(served.stream(ask("Count from 1 to 5.", settings=greedy(10))))
        *deltas, done = events
        assert isinstance(done, StreamDone) and all(isinstance(d, TextDelta) for d in deltas)
        assert len(deltas) > 1
        assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == done.response.text
        assert "1" in done.response.text and done.response.finish_reason in ("stop", "length")
        assert done.response.usage.requests == 1

    async def test_streamed_forced_tool_call(self, served: OpenAIModel) -> None:
        settings = greedy(32, **FORCE_WEATHER)
        events = await collect(served.stream(ask("Oslo?", tools=[WEATHER], settings=settings)))
        *calls, done = events
        assert isinstance(done, StreamDone)
        assert [e.call for e in calls if isinstance(e, ToolCallEvent)] == done.response.tool_calls
        (call,) = done.response.tool_calls
        assert call.name == "get_weather" and isinstance(call.arguments.get("city"), str)

    async def test_streamed_automatic_tool_choice_is_a_cut_stream(
        self, served: OpenAIModel
    ) -> None:
        # llama-cpp-python cannot stream a tool call the model chose itself: it answers 200 and
        # an empty event stream. That must be a retryable error, never an empty StreamDone.
        events: list[StreamEvent] = []
        with pytest.raises(ProviderError, match="stream ended") as info:
            async for event in served.stream(
                ask(ASK_WEATHER, tools=[WEATHER], settings=greedy(32))
            ):
                events.append(event)
        assert events == [] and info.value.retryable
