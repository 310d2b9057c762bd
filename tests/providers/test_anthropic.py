"""The Anthropic provider through the real SDK, on recorded Messages API exchanges; no network.

Each exchange under `anthropic_exchanges/` holds what the SDK must send (method, path, exact
JSON body) and what the API answers (status, headers, and a JSON body or an SSE file, or a
transport error to raise). `Replay` serves them, in order, as the transport of the SDK's own
`httpx2.AsyncClient`, and keeps every request it received.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from cadenza.errors import ConfigError, ProviderError
from cadenza.messages import Message, ToolCall, ToolResult
from cadenza.models import (
    ModelRequest,
    ModelResponse,
    ModelSettings,
    StreamDone,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    ToolSpec,
    resolve_model,
)
from cadenza.providers.anthropic import AnthropicModel
from cadenza.providers.resilience import Resilient

EXCHANGES = Path(__file__).parent / "anthropic_exchanges"
MODEL = "claude-sonnet-4-0"
KEY = "sk-ant-test-0000"
SYSTEM = "You are a concise travel assistant."
ASK = "What's the weather and the local time in Paris?"
WEATHER = ToolSpec(
    "get_weather",
    "Current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec(
    "get_time",
    "Local time in an IANA timezone.",
    {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
)


class Replay:
    """Serves recorded exchanges in order; a request beyond them gets a 500 saying so."""

    def __init__(self, *names: str) -> None:
        self.exchanges = [json.loads((EXCHANGES / f"{n}.json").read_text()) for n in names]
        self.sent: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(request)
        if len(self.sent) > len(self.exchanges):
            body = {
                "type": "error",
                "error": {"type": "api_error", "message": "unexpected request"},
            }
            return httpx2.Response(500, json=body)
        answer = self.exchanges[len(self.sent) - 1]["response"]
        if "raise" in answer:
            failure = answer["raise"]
            raise getattr(httpx2, failure["error"])(failure["message"], request=request)
        headers = answer["headers"]
        if "sse" in answer:
            data = (EXCHANGES / answer["sse"]).read_bytes()
            return httpx2.Response(
                answer["status"], headers=headers, content=_chunks(data, answer.get("then_raise"))
            )
        content = json.dumps(answer["body"]).encode()
        return httpx2.Response(answer["status"], headers=headers, content=content)

    def check_requests(self) -> None:
        """Every exchange was requested, each with exactly the recorded method, path and body."""
        assert len(self.sent) == len(self.exchanges)
        for sent, exchange in zip(self.sent, self.exchanges, strict=True):
            expected = exchange["request"]
            assert sent.method == expected["method"]
            assert sent.url.path == expected["path"]
            assert json.loads(sent.content) == expected["body"]


async def _chunks(data: bytes, then_raise: dict[str, str] | None) -> AsyncIterator[bytes]:
    # Small pieces, split mid-line, as a network delivers them.
    for i in range(0, len(data), 97):
        yield data[i : i + 97]
    if then_raise is not None:
        raise getattr(httpx2, then_raise["error"])(then_raise["message"])


@pytest.fixture
def sdk_kwargs() -> dict[str, Any]:
    return {}


@pytest.fixture
def connect(
    monkeypatch: pytest.MonkeyPatch, sdk_kwargs: dict[str, Any]
) -> Callable[..., tuple[AnthropicModel, Replay]]:
    """An AnthropicModel built as in production, its SDK client talking to a new Replay."""
    real = anthropic.AsyncAnthropic
    current: list[Replay] = []

    def client(**kwargs: Any) -> anthropic.AsyncAnthropic:
        sdk_kwargs.update(kwargs)
        transport = httpx2.MockTransport(current[-1])
        return real(**kwargs, http_client=httpx2.AsyncClient(transport=transport))

    monkeypatch.setattr(anthropic, "AsyncAnthropic", client)

    def make(*names: str) -> tuple[AnthropicModel, Replay]:
        current.append(Replay(*names))
        return AnthropicModel(MODEL, api_key=KEY), current[-1]

    return make


def _ask(text: str, *, tools: list[ToolSpec] | None = None, **kw: Any) -> ModelRequest:
    return ModelRequest([Message.system(SYSTEM), Message.user(text)], tools or [], **kw)


HELLO = "Say hello to Ada in five words."
TOOLS_REQUEST = _ask(ASK, tools=[WEATHER, TIME])


async def _collect(
    stream: AsyncIterator[StreamEvent],
) -> tuple[list[StreamEvent], Exception | None]:
    events: list[StreamEvent] = []
    try:
        async for event in stream:
            events.append(event)
    except Exception as exc:
        return events, exc
    return events, None


# --- Requests and responses ------------------------------------------------------------------


async def test_plain_text(connect: Any, sdk_kwargs: dict[str, Any]) -> None:
    model, replay = connect("text")
    response = await model.request(_ask(HELLO))
    replay.check_requests()
    assert response.text == "Hello Ada, lovely to meet!"
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert response.model_name == f"anthropic:{MODEL}" == model.name
    # The SDK's own retries are off, and the key goes out as the 2.x SDK sends it.
    assert sdk_kwargs["max_retries"] == 0
    assert sdk_kwargs["timeout"] == 60.0
    sent = replay.sent[0]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["anthropic-version"] == "2026-10-21"


async def test_usage_and_cost_at_the_list_price(connect: Any) -> None:
    model, _ = connect("text")
    response = await model.request(_ask(HELLO))
    assert model.price == pytest.approx((3.0e-6, 15.0e-6))
    assert (response.usage.input_tokens, response.usage.output_tokens) == (21, 9)
    assert response.usage.requests == 1
    assert response.usage.cost == pytest.approx(21 * 3.0e-6 + 9 * 15.0e-6)


async def test_unknown_price_costs_nothing() -> None:
    replay = Replay("text")
    client = anthropic.AsyncAnthropic(
        api_key=KEY,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(replay)),
    )
    model = AnthropicModel("claude-unpriced-9", client=client)
    replay.exchanges[0]["request"]["body"]["model"] = "claude-unpriced-9"
    response = await model.request(_ask(HELLO))
    replay.check_requests()
    assert model.price is None
    assert response.usage.cost == 0.0
    assert response.usage.total_tokens == 30


async def test_parallel_tool_calls_then_the_results(connect: Any) -> None:
    model, replay = connect("tool_use_parallel", "tool_results")
    first = await model.request(TOOLS_REQUEST)
    assert first.finish_reason == "tool_calls"
    assert first.text == "I'll check both at once."
    assert first.tool_calls == [
        ToolCall("toolu_01A", "get_weather", {"city": "Paris"}),
        ToolCall("toolu_01B", "get_time", {"timezone": "Europe/Pariss"}),
    ]
    results = [
        ToolResult("toolu_01A", "get_weather", {"city": "Paris", "temp_c": 18, "sky": "clear"}),
        ToolResult("toolu_01B", "get_time", "unknown timezone: Europe/Pariss", is_error=True),
    ]
    follow_up = ModelRequest(
        [
            Message.system(SYSTEM),
            Message.system("Answer in English."),
            Message.user(ASK),
            first.message(),
            Message.tool(results),
            Message.user("Keep it short."),
        ],
        [WEATHER, TIME],
    )
    second = await model.request(follow_up)
    # The exact body: systems joined, tool results first in a user turn merged with the next
    # user text, the failed tool's result flagged is_error, outputs marked as data.
    replay.check_requests()
    body = json.loads(replay.sent[1].content)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    results_turn = body["messages"][2]["content"]
    assert [b["type"] for b in results_turn] == ["tool_result", "tool_result", "text"]
    assert "is_error" not in results_turn[0]
    assert results_turn[1]["is_error"] is True
    assert results_turn[0]["content"].startswith("The following is data returned by get_weather")
    assert second.text == "Paris: clear, 18 °C. I could not get the local time."
    assert second.finish_reason == "stop"


async def test_structured_output_through_the_forced_tool(connect: Any) -> None:
    schema = {
        "properties": {
            "city": {"title": "City", "type": "string"},
            "temp_c": {"title": "Temp C", "type": "integer"},
        },
        "required": ["city", "temp_c"],
        "title": "Weather",
        "type": "object",
    }
    model, replay = connect("structured")
    response = await model.request(_ask("Weather in Paris as JSON.", output_schema=schema))
    replay.check_requests()
    assert json.loads(response.text) == {"city": "Paris", "temp_c": 18}
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    # Cache writes and reads count as prompt tokens, priced at 1.25x and 0.1x.
    assert response.usage.input_tokens == 12 + 300 + 1000
    assert response.usage.cost == pytest.approx((12 + 1.25 * 300 + 0.1 * 1000) * 3e-6 + 40 * 15e-6)


async def test_a_non_object_answer_is_wrapped_and_tools_stay_callable(connect: Any) -> None:
    schema = {
        "type": "array",
        "items": {"$ref": "#/$defs/Stop"},
        "$defs": {
            "Stop": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            }
        },
    }
    model, replay = connect("structured_wrapped")
    request = _ask("Two museums to visit in Paris.", tools=[WEATHER], output_schema=schema)
    response = await model.request(request)
    replay.check_requests()  # tool_choice "any"; the schema under "value", $defs at the root
    assert json.loads(response.text) == [{"name": "Louvre"}, {"name": "Orsay"}]
    assert response.tool_calls == []


async def test_settings_max_tokens_and_extra_pass_through_without_temperature(
    connect: Any,
) -> None:
    model, replay = connect("settings")
    settings = ModelSettings(
        temperature=0.2,
        max_tokens=5,
        seed=7,
        extra={"stop_sequences": ["END"], "metadata": {"user_id": "u-1"}},
    )
    response = await model.request(_ask(HELLO, settings=settings))
    replay.check_requests()  # API version 2026-10-21 rejects temperature at any value
    assert "temperature" not in json.loads(replay.sent[0].content)
    assert response.finish_reason == "length"
    assert response.text == "Hello Ada, lovely"


# --- Streaming -------------------------------------------------------------------------------


async def _non_streamed(connect: Any, name: str, request: ModelRequest) -> ModelResponse:
    model, _ = connect(name)
    return await model.request(request)


async def test_streamed_text_equals_the_response(connect: Any) -> None:
    expected = await _non_streamed(connect, "text", _ask(HELLO))
    model, replay = connect("stream_text")
    events, error = await _collect(model.stream(_ask(HELLO)))
    replay.check_requests()
    assert error is None
    assert events[:-1] == [TextDelta("Hello Ada,"), TextDelta(" lovely to"), TextDelta(" meet!")]
    assert events[-1] == StreamDone(expected)


async def test_streamed_tool_use_equals_the_response(connect: Any) -> None:
    expected = await _non_streamed(connect, "tool_use_parallel", TOOLS_REQUEST)
    model, replay = connect("stream_tool_use")
    events, error = await _collect(model.stream(TOOLS_REQUEST))
    replay.check_requests()
    assert error is None
    assert events == [
        TextDelta("I'll check"),
        TextDelta(" both at once."),
        ToolCallEvent(ToolCall("toolu_01A", "get_weather", {"city": "Paris"})),
        ToolCallEvent(ToolCall("toolu_01B", "get_time", {"timezone": "Europe/Pariss"})),
        StreamDone(expected),
    ]
    assert expected.usage.input_tokens == 412 and expected.usage.output_tokens == 96


async def test_malformed_streamed_tool_input_becomes_a_malformed_call(connect: Any) -> None:
    model, _ = connect("stream_malformed")
    events, error = await _collect(model.stream(TOOLS_REQUEST))
    assert error is None
    bad = ToolCall("toolu_01M", "(malformed tool call)", {"raw": '{"city": Paris}'})
    assert events[0] == ToolCallEvent(bad)
    done = events[-1]
    assert isinstance(done, StreamDone)
    assert done.response.tool_calls == [bad]
    assert done.response.finish_reason == "tool_calls"


@pytest.mark.parametrize("name", ["stream_cut", "stream_reset"])
async def test_a_cut_stream_raises_retryable_without_partial_results(
    connect: Any, name: str
) -> None:
    model, _ = connect(name)
    events, error = await _collect(model.stream(TOOLS_REQUEST))
    assert isinstance(error, ProviderError)
    assert error.retryable is True
    assert error.status is None
    assert error.provider == "anthropic"
    # The first call was complete before the cut; the second, half-streamed, never surfaces.
    assert events == [
        TextDelta("I'll check"),
        TextDelta(" both at once."),
        ToolCallEvent(ToolCall("toolu_01A", "get_weather", {"city": "Paris"})),
    ]
    if name == "stream_reset":
        assert "RemoteProtocolError" in str(error)


async def test_an_error_event_mid_stream_raises_retryable(connect: Any) -> None:
    model, _ = connect("stream_error")
    events, error = await _collect(model.stream(_ask(HELLO)))
    assert isinstance(error, ProviderError)
    assert (error.status, error.retryable) == (529, True)
    assert "overloaded_error" in str(error)
    assert events == [TextDelta("Hello")]


async def test_an_http_error_before_the_stream_is_mapped(connect: Any) -> None:
    model, replay = connect("error_529")
    events, error = await _collect(model.stream(_ask(HELLO)))
    assert events == []
    assert isinstance(error, ProviderError)
    assert (error.status, error.retryable) == (529, True)
    assert len(replay.sent) == 1


# --- Errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "retryable", "retry_after", "words"),
    [
        ("error_400", 400, False, None, "invalid_request_error"),
        ("error_401", 401, False, None, "check the API key"),
        ("error_429", 429, True, 7.0, "retry after 7s"),
        ("error_429_spend", 429, False, None, "enforced_spend_limit_reached"),
        ("error_429_contract", 429, False, None, "contract_spend_limit_reached"),
        ("error_500", 500, True, None, "api_error"),
        ("error_529", 529, True, None, "overloaded_error"),
        ("timeout", None, True, None, "timed out"),
        ("connection_error", None, True, None, "Connection refused"),
    ],
)
async def test_errors_are_mapped(
    connect: Any,
    name: str,
    status: int | None,
    retryable: bool,
    retry_after: float | None,
    words: str,
) -> None:
    model, replay = connect(name)
    with pytest.raises(ProviderError) as caught:
        await model.request(_ask(HELLO))
    error = caught.value
    assert (error.provider, error.status, error.retryable) == ("anthropic", status, retryable)
    assert error.retry_after == retry_after
    assert words in str(error)
    replay.check_requests()  # exactly one request: the SDK did not retry


async def test_retry_after_as_an_http_date(connect: Any) -> None:
    model, _ = connect("error_503_date")
    with pytest.raises(ProviderError) as caught:
        await model.request(_ask(HELLO))
    when = parsedate_to_datetime("Wed, 21 Oct 2099 07:28:00 GMT").timestamp()
    assert (caught.value.status, caught.value.retryable) == (503, True)
    assert caught.value.retry_after == pytest.approx(when - time.time(), abs=60)


# --- Construction ----------------------------------------------------------------------------


def test_a_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicModel(MODEL)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        resolve_model(f"anthropic:{MODEL}")
    with pytest.raises(ConfigError, match="MY_CLAUDE_KEY"):
        AnthropicModel(MODEL, api_key_env="MY_CLAUDE_KEY")


def test_the_model_string_resolves_with_key_and_base_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://claude-proxy.internal/anthropic")
    wrapped = resolve_model(f"anthropic:{MODEL}")
    assert isinstance(wrapped, Resilient)  # hosted models resolve with retries and timeouts
    model = wrapped.model
    assert isinstance(model, AnthropicModel)
    assert model.name == f"anthropic:{MODEL}"
    assert str(model.client.base_url) == "https://claude-proxy.internal/anthropic/"
    assert model.client.api_key == KEY
    assert model.client.max_retries == 0
