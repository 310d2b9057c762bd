"""Resilient and Fallback: retries, timeouts, caches, concurrency, fallback and cut streams.

Two groups: unit tests with fake models raising `ProviderError`s (no waiting: the retry policy's
sleep is recorded, not slept), and a fault-injection suite running the OpenAI provider against
`fake_openai_server`, a scriptable local server that fails in each way a hosted API does.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai_server import (
    Cut,
    Fail,
    FakeOpenAI,
    Reply,
    Reset,
    Slow,
    insufficient_quota,
    rate_limited,
)

from cadenza.errors import ConfigError, ModelError, ProviderError
from cadenza.messages import Message, ToolCall, Usage
from cadenza.models import (
    Model,
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
from cadenza.providers.resilience import (
    Fallback,
    MemoryCache,
    Resilient,
    ResponseCache,
    RetryPolicy,
    SQLiteCache,
    cache_key,
)
from cadenza.testing import Delay, ScriptedModel

# --- helpers ----------------------------------------------------------------------------------


class Sleeps(list[float]):
    """A fake `sleep` that records the delays asked for and returns at once."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def policy(**kw: Any) -> tuple[RetryPolicy, Sleeps]:
    """A retry policy with recorded sleeps and a fixed jitter draw of 0.5."""
    sleeps = Sleeps()
    kw.setdefault("random", lambda: 0.5)
    return RetryPolicy(sleep=sleeps, **kw), sleeps


def perr(
    status: int | None = 503,
    *,
    retryable: bool = True,
    retry_after: float | None = None,
    provider: str = "fake",
    message: str = "failed",
) -> ProviderError:
    return ProviderError(
        message, provider=provider, status=status, retryable=retryable, retry_after=retry_after
    )


def ask(text: str = "hi", **extra: Any) -> ModelRequest:
    return ModelRequest([Message.user(text)], [], settings=ModelSettings(extra=extra))


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]


async def collect_until_error(
    events: AsyncIterator[StreamEvent],
) -> tuple[list[StreamEvent], BaseException | None]:
    got: list[StreamEvent] = []
    try:
        async for e in events:
            got.append(e)
    except Exception as exc:
        return got, exc
    return got, None


class StreamModel:
    """Streams scripted events; an exception item is raised there, a float is slept."""

    def __init__(self, *scripts: list[Any], name: str = "fake:stream") -> None:
        self.name = name
        self.scripts = list(scripts)
        self.calls = 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise NotImplementedError

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        for item in script:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            yield item


class Gauge:
    """Counts calls in flight (each takes `seconds`) and remembers the most at once."""

    def __init__(self, name: str, seconds: float = 0.02) -> None:
        self.name = name
        self.seconds = seconds
        self.now = 0
        self.most = 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.now -= 1
        return ModelResponse("ok", model_name=self.name)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        yield StreamDone(await self.request(request))


def done(text: str = "ok", *calls: ToolCall) -> StreamDone:
    return StreamDone(ModelResponse(text, list(calls), Usage(3, 2, 0.0, 1), "fake:stream"))


# --- RetryPolicy --------------------------------------------------------------------------------


def test_backoff_is_exponential_and_capped() -> None:
    p = RetryPolicy(base_delay=0.5, max_delay=3.0, jitter=False)
    assert [p.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    half = RetryPolicy(base_delay=0.5, max_delay=3.0, random=lambda: 0.5)
    assert [half.delay(n) for n in range(1, 5)] == [0.25, 0.5, 1.0, 1.5]


def test_full_jitter_stays_within_bounds_and_spreads() -> None:
    p = RetryPolicy(base_delay=1.0, max_delay=4.0, random=random.Random(7).random)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        draws = [p.delay(attempt) for _ in range(300)]
        assert all(0.0 <= d <= cap for d in draws)
        assert min(draws) < 0.1 * cap and max(draws) > 0.9 * cap  # uniform over [0, cap]


def test_retry_after_is_a_floor_capped_by_max_delay() -> None:
    p = RetryPolicy(base_delay=0.5, max_delay=20.0, random=lambda: 0.5)
    assert p.delay(1, retry_after=2.0) == 2.0
    assert p.delay(1, retry_after=0.1) == 0.25  # the backoff is longer: it wins
    assert p.delay(1, retry_after=45.0) == 20.0


@pytest.mark.parametrize(
    "kw", [{"max_attempts": 0}, {"base_delay": -1.0}, {"max_delay": -1.0}, {"max_retry_after": -1}]
)
def test_policy_rejects_nonsense(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kw)


# --- Resilient.request: retries and timeouts ------------------------------------------------------


async def test_retryable_errors_are_retried_with_the_policys_delays() -> None:
    inner = ScriptedModel([perr(500), perr(529), perr(429), "ok"])
    retry, sleeps = policy()
    response = await Resilient(inner, retry=retry).request(ask())
    assert response.text == "ok"
    assert len(inner.requests) == 4
    assert sleeps == [0.25, 0.5, 1.0]


async def test_retry_after_is_honoured() -> None:
    inner = ScriptedModel([perr(429, retry_after=3.0), "ok"])
    retry, sleeps = policy()
    assert (await Resilient(inner, retry=retry).request(ask())).text == "ok"
    assert sleeps == [3.0]


async def test_retry_after_beyond_the_limit_gives_up_at_once() -> None:
    error = perr(429, retry_after=120.0)
    inner = ScriptedModel([error, "ok"])
    retry, sleeps = policy(max_retry_after=60.0)
    with pytest.raises(ProviderError) as info:
        await Resilient(inner, retry=retry).request(ask())
    assert info.value is error
    assert any("max_retry_after" in n for n in info.value.__notes__)
    assert len(inner.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    "error",
    [perr(400, retryable=False), perr(401, retryable=False), ModelError("bad"), ValueError("bug")],
    ids=["400", "401", "model-error", "bug"],
)
async def test_other_errors_are_raised_at_once(error: Exception) -> None:
    inner = ScriptedModel([error, "ok"])
    retry, sleeps = policy()
    with pytest.raises(type(error)) as info:
        await Resilient(inner, retry=retry).request(ask())
    assert info.value is error
    assert len(inner.requests) == 1 and sleeps == []


async def test_attempts_are_bounded() -> None:
    inner = ScriptedModel([perr(503)], repeat=True)
    retry, sleeps = policy(max_attempts=3)
    with pytest.raises(ProviderError) as info:
        await Resilient(inner, retry=retry).request(ask())
    assert info.value.status == 503
    assert "gave up after 3 attempt(s)" in info.value.__notes__[0]
    assert len(inner.requests) == 3 and len(sleeps) == 2


async def test_timeout_applies_to_each_attempt() -> None:
    inner = ScriptedModel([Delay(5, "late"), "ok"])
    retry, sleeps = policy()
    start = time.perf_counter()
    response = await Resilient(inner, retry=retry, timeout=0.05).request(ask())
    assert response.text == "ok" and len(inner.requests) == 2 and len(sleeps) == 1
    assert time.perf_counter() - start < 1.0


async def test_timeouts_exhausted_raise_a_retryable_provider_error() -> None:
    inner = ScriptedModel([Delay(5, "late")], repeat=True)
    retry, _ = policy(max_attempts=2)
    with pytest.raises(ProviderError) as info:
        await Resilient(inner, retry=retry, timeout=0.05).request(ask())
    assert info.value.retryable and info.value.status is None
    assert isinstance(info.value.__cause__, TimeoutError)
    assert "timeout" in str(info.value) and len(inner.requests) == 2


async def test_a_timeout_error_from_the_model_itself_is_retried() -> None:
    inner = ScriptedModel([TimeoutError(), TimeoutError()])
    retry, sleeps = policy(max_attempts=2)
    with pytest.raises(ProviderError) as info:
        await Resilient(inner, retry=retry, timeout=None).request(ask())
    assert info.value.retryable and len(inner.requests) == 2 and len(sleeps) == 1


async def test_name_and_price_are_the_inner_models() -> None:
    inner = ScriptedModel(["ok"], price=(1e-6, 2e-6))
    wrapped = Resilient(inner)
    assert wrapped.name == "scripted" and wrapped.price == (1e-6, 2e-6)
    assert isinstance(wrapped, Model)
    assert (await wrapped.request(ask())).model_name == "scripted"


# --- cache ------------------------------------------------------------------------------------


async def test_only_marked_calls_are_cached() -> None:
    inner = ScriptedModel(["one", "two", "three", "four"])
    model = Resilient(inner, cache=MemoryCache())
    assert (await model.request(ask())).text == "one"
    assert (await model.request(ask())).text == "two"  # not marked: not cached
    first = await model.request(ask(cache=True))
    hit = await model.request(ask(cache=True))
    assert first.text == hit.text == "three" and len(inner.requests) == 3
    assert hit.model_name == first.model_name == "scripted"
    assert hit.usage == Usage()  # nothing was spent on a hit
    assert first.usage.requests == 1


async def test_cache_marker_is_not_sent_on_and_the_callers_settings_are_untouched() -> None:
    inner = ScriptedModel(["ok"], repeat=True)
    model = Resilient(inner, cache=MemoryCache())
    request = ask(cache=True, reasoning="low")
    await model.request(request)
    await Resilient(inner).request(ask(cache=True))  # no cache configured: still removed
    assert [r.settings.extra for r in inner.requests] == [{"reasoning": "low"}, {}]
    assert request.settings.extra == {"cache": True, "reasoning": "low"}


async def test_cache_all_caches_unmarked_calls() -> None:
    inner = ScriptedModel(["one", "two"])
    model = Resilient(inner, cache=MemoryCache(), cache_all=True)
    assert [(await model.request(ask())).text for _ in range(3)] == ["one"] * 3


async def test_error_and_length_answers_are_never_cached() -> None:
    inner = ScriptedModel(
        [
            ModelResponse("cut", finish_reason="length"),
            ModelResponse("refused", finish_reason="error"),
            "fine",
            "unused",
        ]
    )
    model = Resilient(inner, cache=MemoryCache(), cache_all=True)
    texts = [(await model.request(ask())).text for _ in range(4)]
    assert texts == ["cut", "refused", "fine", "fine"] and len(inner.requests) == 3


def test_cache_key_covers_everything_that_shapes_the_answer() -> None:
    base = ModelRequest([Message.user("hi")], [], None, ModelSettings(temperature=0.0))
    tool = ToolSpec("add", "Add.", {"type": "object"})
    variants = [
        ModelRequest([Message.user("hey")], [], None, ModelSettings(temperature=0.0)),
        ModelRequest([Message.user("hi")], [tool], None, ModelSettings(temperature=0.0)),
        ModelRequest([Message.user("hi")], [], {"type": "object"}, ModelSettings(temperature=0.0)),
        ModelRequest([Message.user("hi")], [], None, ModelSettings(temperature=0.5)),
        ModelRequest([Message.user("hi")], [], None, ModelSettings(0.0, extra={"top_p": 1})),
    ]
    keys = {cache_key("m:a", base), cache_key("m:b", base)}
    keys |= {cache_key("m:a", v) for v in variants}
    assert len(keys) == 7
    same = ModelRequest([Message.user("hi")], [], None, ModelSettings(temperature=0.0))
    assert cache_key("m:a", same) == cache_key("m:a", base)
    assert len(cache_key("m:a", base)) == 64  # SHA-256, hex


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def make_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Builds a cache of each backend (`make_cache(ttl, clock)`); SQLite ones are closed after."""
    opened: list[SQLiteCache] = []

    def make(ttl: float | None = None, clock: Clock | None = None) -> ResponseCache:
        kw: dict[str, Any] = {} if clock is None else {"clock": clock}
        if request.param == "memory":
            return MemoryCache(ttl, **kw)
        cache = SQLiteCache(tmp_path / "cache.db", ttl, **kw)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


async def test_cache_roundtrip(make_cache: Any) -> None:
    cache = make_cache()
    response = ModelResponse(
        "text", [ToolCall("c1", "add", {"a": [1, 2]})], Usage(5, 3, 0.25, 1), "m:x", "tool_calls"
    )
    assert await cache.get("k") is None
    await cache.set("k", response)
    assert await cache.get("k") == response
    copy = await cache.get("k")
    copy.tool_calls[0].arguments["a"].append(3)  # callers may mutate what they get
    assert await cache.get("k") == response
    await cache.set("k", ModelResponse("newer"))
    assert (await cache.get("k")).text == "newer"


async def test_cache_ttl_expiry(make_cache: Any) -> None:
    clock = Clock()
    cache = make_cache(ttl=10.0, clock=clock)
    await cache.set("k", ModelResponse("x"))
    clock.now += 9.0
    assert (await cache.get("k")).text == "x"
    clock.now += 2.0
    assert await cache.get("k") is None
    assert await cache.get("k") is None  # and it stays gone


async def test_memory_cache_drops_the_least_recently_used_beyond_its_size() -> None:
    cache = MemoryCache(max_entries=2)
    for key in ("a", "b"):
        await cache.set(key, ModelResponse(key))
    await cache.get("a")
    await cache.set("c", ModelResponse("c"))
    assert [await cache.get(k) is not None for k in "abc"] == [True, False, True]


async def test_sqlite_cache_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "responses.db"
    inner = ScriptedModel(["first", "second"])
    cache = SQLiteCache(path)
    assert (await Resilient(inner, cache=cache).request(ask(cache=True))).text == "first"
    cache.close()
    again = SQLiteCache(path)
    try:
        assert (await Resilient(inner, cache=again).request(ask(cache=True))).text == "first"
    finally:
        again.close()
    assert len(inner.requests) == 1


# --- concurrency --------------------------------------------------------------------------------


async def test_concurrency_is_limited_per_provider_prefix() -> None:
    gauge = Gauge("limited:a")
    model = Resilient(gauge, max_concurrency=3)
    responses = await asyncio.gather(*(model.request(ask()) for _ in range(9)))
    assert len(responses) == 9 and gauge.most == 3


async def test_wrappers_of_one_prefix_share_the_first_wrappers_limit() -> None:
    a, b, other = Gauge("shared:a"), Gauge("shared:b"), Gauge("elsewhere:c")
    first, second = Resilient(a, max_concurrency=2), Resilient(b, max_concurrency=50)
    third = Resilient(other, max_concurrency=3)
    calls = [m.request(ask()) for m in (first, second, third) for _ in range(6)]
    counts: list[int] = []

    async def sample() -> None:
        for _ in range(20):
            counts.append(a.now + b.now)
            await asyncio.sleep(0.002)

    await asyncio.gather(sample(), *calls)
    assert max(counts) == 2 and a.most + b.most >= 2
    assert other.most == 3  # another prefix has its own semaphore


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        Resilient(ScriptedModel(), max_concurrency=0)


# --- streams ------------------------------------------------------------------------------------


async def test_stream_is_retried_before_its_first_event() -> None:
    inner = ScriptedModel([perr(503), "hello world"])
    retry, sleeps = policy()
    events = await collect(Resilient(inner, retry=retry).stream(ask()))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["hello", " world"]
    assert isinstance(events[-1], StreamDone) and len(inner.requests) == 2 and sleeps == [0.25]


async def test_stream_cut_before_any_event_is_retried() -> None:
    inner = StreamModel([], [TextDelta("ok"), done()])
    retry, _ = policy()
    events = await collect(Resilient(inner, retry=retry).stream(ask()))
    assert isinstance(events[-1], StreamDone) and inner.calls == 2


@pytest.mark.parametrize(
    "failure",
    [perr(503), ModelError("backend crashed"), None],
    ids=["provider-error", "model-error", "cut"],
)
async def test_stream_failing_after_its_first_event_is_not_retried(failure: Any) -> None:
    script = [TextDelta("par"), TextDelta("tial")] + ([failure] if failure else [])
    inner = StreamModel(script, [TextDelta("ok"), done()])
    retry, sleeps = policy()
    cache = MemoryCache()
    model = Resilient(inner, retry=retry, cache=cache, cache_all=True)
    events, error = await collect_until_error(model.stream(ask()))
    assert isinstance(error, ProviderError) and error.retryable
    assert events == [TextDelta("par"), TextDelta("tial")]  # and no StreamDone
    assert inner.calls == 1 and sleeps == []
    assert await cache.get(cache_key(model.name, ask())) is None  # a cut never counts


async def test_stream_waits_for_each_event_under_the_timeout() -> None:
    steady = [TextDelta("a"), 0.04, TextDelta("b"), 0.04, TextDelta("c"), 0.04, done("abc")]
    events = await collect(Resilient(StreamModel(steady), timeout=0.1).stream(ask()))
    assert len(events) == 4  # longer than the timeout in all, but no gap is

    stalled = StreamModel([TextDelta("a"), 5.0, done("a")])
    events, error = await collect_until_error(Resilient(stalled, timeout=0.05).stream(ask()))
    assert events == [TextDelta("a")]
    assert isinstance(error, ProviderError) and error.retryable
    assert isinstance(error.__cause__, TimeoutError)


async def test_streamed_answers_are_cached_and_replayed() -> None:
    call = ToolCall("c1", "add", {"a": 1})
    inner = ScriptedModel([ModelResponse("hello there", [call], finish_reason="tool_calls")])
    model = Resilient(inner, cache=MemoryCache())
    live = await collect(model.stream(ask(cache=True)))
    assert [type(e) for e in live] == [TextDelta, TextDelta, ToolCallEvent, StreamDone]
    replay = await collect(model.stream(ask(cache=True)))
    assert replay[:2] == [TextDelta("hello there"), ToolCallEvent(call)]
    assert isinstance(replay[2], StreamDone) and replay[2].response.text == "hello there"
    assert (await model.request(ask(cache=True))).tool_calls == [call]
    assert len(inner.requests) == 1


async def test_abandoning_a_stream_closes_the_inner_one() -> None:
    closed: list[bool] = []

    class Endless:
        name = "fake:endless"

        async def request(self, request: ModelRequest) -> ModelResponse:
            raise NotImplementedError

        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            try:
                while True:
                    yield TextDelta("x")
            finally:
                closed.append(True)

    events = Resilient(Endless(), max_concurrency=1).stream(ask())
    async for _ in events:
        break
    assert isinstance(events, AsyncGenerator)
    await events.aclose()
    assert closed == [True]
    again = Resilient(Gauge("fake:x"), max_concurrency=1)  # the slot was given back
    assert isinstance((await asyncio.wait_for(collect(again.stream(ask())), 1))[-1], StreamDone)


# --- Fallback -----------------------------------------------------------------------------------


async def test_fallback_tries_models_in_order_and_names_the_one_that_answered() -> None:
    retry, _ = policy(max_attempts=2)
    a = ScriptedModel([perr(503)], repeat=True, name="fb-a")
    b = ScriptedModel(["from b"], name="fb-b")
    c = ScriptedModel(["from c"], name="fb-c")
    chain = Fallback([Resilient(a, retry=retry), Resilient(b, retry=retry), c])
    response = await chain.request(ask())
    assert response.text == "from b" and response.model_name == "scripted:fb-b"
    assert chain.answered_by == "scripted:fb-b"
    assert (len(a.requests), len(b.requests), len(c.requests)) == (2, 1, 0)


async def test_fallback_when_all_fail_summarises_each_failure() -> None:
    chain = Fallback(
        [
            ScriptedModel([perr(429, provider="openai", message="rate limited")], name="fb-x"),
            ScriptedModel([perr(529, provider="anthropic", message="overloaded")], name="fb-y"),
            ScriptedModel([ModelError("no model file")], name="fb-z"),
        ]
    )
    with pytest.raises(ProviderError) as info:
        await chain.request(ask())
    text = str(info.value)
    assert "all 3 model(s)" in text
    assert "openai: 429: rate limited" in text and "anthropic: 529: overloaded" in text
    assert "scripted: -: no model file" in text
    assert info.value.retryable and info.value.provider == "fallback"
    assert isinstance(info.value.__cause__, ModelError)


async def test_fallback_does_not_swallow_errors_outside_on() -> None:
    backup = ScriptedModel(["b"])
    with pytest.raises(ValueError):
        await Fallback([ScriptedModel([ValueError("bug")]), backup]).request(ask())
    narrow = Fallback([ScriptedModel([perr(500)]), backup], on=(TimeoutError,))
    with pytest.raises(ProviderError):
        await narrow.request(ask())
    assert backup.requests == []


async def test_fallback_streams_fall_back_only_before_the_first_event() -> None:
    backup = ScriptedModel(["from backup"], repeat=True, name="fb-stream")
    before = StreamModel([perr(500)])
    events = await collect(Fallback([before, backup]).stream(ask()))
    assert isinstance(events[-1], StreamDone)
    assert events[-1].response.model_name == "scripted:fb-stream"

    cut_early = StreamModel([])  # ends at once, without StreamDone
    assert isinstance((await collect(Fallback([cut_early, backup]).stream(ask())))[-1], StreamDone)

    after = StreamModel([TextDelta("half"), perr(500)])
    events, error = await collect_until_error(Fallback([after, backup]).stream(ask()))
    assert events == [TextDelta("half")] and isinstance(error, ProviderError)
    assert len(backup.requests) == 2


def test_fallback_price_is_the_highest_in_the_chain() -> None:
    chain = Fallback([ScriptedModel(price=(1.0, 4.0)), ScriptedModel(price=(2.0, 3.0))])
    assert chain.price == (2.0, 4.0)
    assert Fallback([ScriptedModel()]).price is None
    with pytest.raises(ConfigError):
        Fallback([])


# --- model strings ------------------------------------------------------------------------------


def test_model_strings_build_chains() -> None:
    named = ScriptedModel(["ok"], name="str-a")
    wrapped = resolve_model("resilient:scripted:str-a")
    assert isinstance(wrapped, Resilient) and wrapped.model is named
    assert wrapped.name == "scripted:str-a"

    chain = resolve_model("fallback:scripted:str-a | resilient:scripted:echo|scripted:echo")
    assert isinstance(chain, Fallback)
    assert all(isinstance(m, Resilient) for m in chain.models)
    assert isinstance(chain.models[1], Resilient) and not isinstance(
        chain.models[1].model, Resilient
    )  # not wrapped twice
    assert chain.name == "fallback:scripted:str-a|scripted|scripted"
    with pytest.raises(ConfigError):
        resolve_model("fallback:scripted:echo||scripted:echo")


# --- fault injection against a fake OpenAI-compatible server --------------------------------------


class Faults:
    """The fake server and OpenAI-provider models pointed at it (closed after the test)."""

    def __init__(self, server: FakeOpenAI, provider: Any) -> None:
        self.server = server
        self.provider = provider
        self.opened: list[Any] = []

    def compat(self, timeout: float = 5.0) -> Any:
        model = self.provider.OpenAIModel(
            "gpt-fake", prefix="compat", base_url=self.server.base_url, api_key="x", timeout=timeout
        )
        self.opened.append(model)
        return model

    def resilient(self, *, provider_timeout: float = 5.0, **kw: Any) -> tuple[Resilient, Sleeps]:
        retry, sleeps = policy()
        return Resilient(self.compat(provider_timeout), retry=retry, **kw), sleeps


@pytest.fixture
async def faults() -> AsyncIterator[Faults]:
    # The OpenAI provider is written alongside this suite: skip the group until it imports.
    provider = pytest.importorskip("cadenza.providers.openai")
    with FakeOpenAI() as server:
        f = Faults(server, provider)
        yield f
        for model in f.opened:
            await model.aclose()


@pytest.mark.parametrize(
    ("fault", "status", "retryable", "retry_after"),
    [
        (rate_limited(retry_after=2), 429, True, 2.0),
        (insufficient_quota(), 429, False, None),
        (Fail(500), 500, True, None),
        (Fail(529, "Overloaded", "overloaded_error"), 529, True, None),
        (Fail(400, "bad request", "invalid_request_error"), 400, False, None),
        (
            Fail(401, "Incorrect API key", "invalid_request_error", "invalid_api_key"),
            401,
            False,
            None,
        ),
        (Reset(), None, True, None),
    ],
    ids=["429-retry-after", "insufficient-quota", "500", "529", "400", "401", "reset"],
)
async def test_the_provider_maps_each_fault_to_a_provider_error(
    faults: Faults, fault: Any, status: int | None, retryable: bool, retry_after: float | None
) -> None:
    faults.server.script(fault)
    with pytest.raises(ProviderError) as info:
        await faults.compat().request(ask())
    error = info.value
    assert (error.provider, error.status, error.retryable) == ("compat", status, retryable)
    assert error.retry_after == retry_after


async def test_429_with_retry_after_waits_then_succeeds(faults: Faults) -> None:
    faults.server.script(rate_limited(retry_after=1), Reply("after the wait"))
    model, sleeps = faults.resilient()
    assert (await model.request(ask())).text == "after the wait"
    assert sleeps == [1.0] and len(faults.server.requests) == 2


async def test_insufficient_quota_is_not_retried(faults: Faults) -> None:
    faults.server.script(insufficient_quota())
    model, sleeps = faults.resilient()
    with pytest.raises(ProviderError) as info:
        await model.request(ask())
    assert not info.value.retryable and info.value.status == 429
    assert "quota" in str(info.value)
    assert sleeps == [] and len(faults.server.requests) == 1


@pytest.mark.parametrize("status", [500, 529])
async def test_server_errors_are_retried_then_succeed(faults: Faults, status: int) -> None:
    faults.server.script(Fail(status), Fail(status), Reply("recovered"))
    model, sleeps = faults.resilient()
    assert (await model.request(ask())).text == "recovered"
    assert len(sleeps) == 2 and len(faults.server.requests) == 3


@pytest.mark.parametrize("status", [400, 401])
async def test_client_errors_fail_at_once(faults: Faults, status: int) -> None:
    faults.server.script(Fail(status, "no", "invalid_request_error"))
    model, sleeps = faults.resilient()
    with pytest.raises(ProviderError) as info:
        await model.request(ask())
    assert info.value.status == status and not info.value.retryable
    assert sleeps == [] and len(faults.server.requests) == 1


async def test_a_slow_response_times_out_then_the_retry_succeeds(faults: Faults) -> None:
    faults.server.script(Slow(3.0), Reply("on time"))
    model, sleeps = faults.resilient(timeout=0.3)
    start = time.perf_counter()
    assert (await model.request(ask())).text == "on time"
    assert time.perf_counter() - start < 2.0
    assert len(sleeps) == 1 and len(faults.server.requests) == 2


async def test_the_providers_own_timeout_is_retried_too(faults: Faults) -> None:
    faults.server.script(Slow(3.0), Reply("on time"))
    model, _ = faults.resilient(timeout=None, provider_timeout=0.3)
    assert (await model.request(ask())).text == "on time"
    assert len(faults.server.requests) == 2


async def test_a_connection_reset_is_retried(faults: Faults) -> None:
    faults.server.script(Reset(), Reply("reconnected"))
    model, sleeps = faults.resilient()
    assert (await model.request(ask())).text == "reconnected"
    assert len(sleeps) == 1 and len(faults.server.requests) == 2


@pytest.mark.parametrize("streamed", [False, True], ids=["request", "stream"])
async def test_malformed_tool_call_json_becomes_a_malformed_call(
    faults: Faults, streamed: bool
) -> None:
    broken = Reply("", [("get_weather", '{"city": "Par')])
    faults.server.script(broken)
    model, _ = faults.resilient()
    if streamed:
        events = await collect(model.stream(ask()))
        assert isinstance(events[-1], StreamDone)
        response = events[-1].response
    else:
        response = await model.request(ask())
    assert len(response.tool_calls) == 1
    assert "(malformed tool call)" in repr(response.tool_calls[0])
    assert len(faults.server.requests) == 1


@pytest.mark.parametrize("clean", [False, True], ids=["incomplete-body", "early-eof"])
async def test_a_cut_stream_raises_a_retryable_error_and_never_completes(
    faults: Faults, clean: bool
) -> None:
    faults.server.default = Cut(clean=clean)
    model, _ = faults.resilient(cache=MemoryCache(), cache_all=True)
    events, error = await collect_until_error(model.stream(ask()))
    assert isinstance(error, ProviderError) and error.retryable
    assert not any(isinstance(e, StreamDone) for e in events)
    assert events, "the cut came after some text was streamed"
    assert len(faults.server.requests) == 1  # text was forwarded: no retry


async def test_answers_text_and_tool_calls_and_streams(faults: Faults) -> None:
    faults.server.script(
        Reply("plain answer"),
        Reply("", [("get_weather", '{"city": "Paris"}')]),
        Reply("streamed answer"),
    )
    model, _ = faults.resilient()
    assert (await model.request(ask())).text == "plain answer"
    calls = (await model.request(ask())).tool_calls
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    events = await collect(model.stream(ask()))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "streamed answer"
    assert isinstance(events[-1], StreamDone)
    assert events[-1].response.text == "streamed answer"


async def test_cached_calls_reach_the_server_once_without_the_marker(faults: Faults) -> None:
    model, _ = faults.resilient(cache=MemoryCache())
    for _ in range(2):
        assert (await model.request(ask(cache=True))).text == "ok"
    assert len(faults.server.requests) == 1
    assert "cache" not in str(faults.server.requests[0].body)


async def test_fallback_from_the_faulty_server_to_a_scripted_model(faults: Faults) -> None:
    faults.server.default = Fail(500)
    model, _ = faults.resilient()
    backup = ScriptedModel(["from the backup"], repeat=True, name="fault-backup")
    chain = Fallback([model, backup])
    response = await chain.request(ask())
    assert response.text == "from the backup"
    assert response.model_name == "scripted:fault-backup"
    assert len(faults.server.requests) == model.retry.max_attempts

    faults.server.default = Reset()
    events = await collect(chain.stream(ask()))
    assert isinstance(events[-1], StreamDone)
    assert events[-1].response.model_name == "scripted:fault-backup"


def test_hosted_model_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cadenza.errors import ConfigError as _ConfigError
    from cadenza.providers import timeout_from_env

    monkeypatch.delenv("CADENZA_MODEL_TIMEOUT", raising=False)
    assert timeout_from_env() == 60.0
    monkeypatch.setenv("CADENZA_MODEL_TIMEOUT", "300")
    assert timeout_from_env() == 300.0
    monkeypatch.setenv("CADENZA_MODEL_TIMEOUT", "soon")
    with pytest.raises(_ConfigError, match="CADENZA_MODEL_TIMEOUT"):
        timeout_from_env()


def test_hosted_model_strings_are_resilient_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    plain = resolve_model("openai:gpt-4o-mini")
    assert isinstance(plain, Resilient) and plain.name == "openai:gpt-4o-mini"
    again = resolve_model("resilient:openai:gpt-4o-mini")
    assert isinstance(again, Resilient) and not isinstance(again.model, Resilient)
