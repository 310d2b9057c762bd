"""Resilience for model calls, in one layer: retries, timeouts, a cache, a concurrency limit.

`Resilient(model)` wraps any `Model`; `Fallback([...])` tries several in order. By string:
`resilient:openai:gpt-4o-mini`, `fallback:openai:gpt-4o-mini|anthropic:claude-3-5-haiku-latest`
(each element of a fallback chain is wrapped in a default `Resilient`).

| Situation | What happens |
|---|---|
| `ProviderError(retryable=True)`: 408/409/429/5xx/529, reset, provider timeout | retried: up to `max_attempts` in all, full-jitter exponential backoff (`base_delay * 2**n`, capped at `max_delay`) |
| Retry-After (`retry_after`) | waits at least that long (capped at `max_delay`); above `max_retry_after` the error is raised at once |
| `ProviderError(retryable=False)` (400, 401, `insufficient_quota`), any other error | raised at once, never retried |
| Timeout (`timeout` per attempt, per event for streams; or a `TimeoutError` from the model) | retried like a retryable error; the last one raises `ProviderError(status=None, retryable=True)` |
| Retries exhausted | the last `ProviderError` is raised, with a note saying so |
| Cache | only calls marked `extra={"cache": True}` (or every call with `cache_all=True`); key = SHA-256 of the canonical JSON of model name, messages, tools, output schema and settings; `finish_reason` "error"/"length" never stored; a hit has zero usage; the "cache" key is never sent on |
| Concurrency (`max_concurrency`) | one semaphore per (provider prefix, event loop), shared by every wrapper of that prefix and sized by the first one to call; held per attempt, not while backing off |
| Streams | retried only before the first event; after it a failure raises `ProviderError(retryable=True)` (a non-retryable one stays as it is) and no `StreamDone` follows |
| Cut stream (ends without `StreamDone`) | `ProviderError(retryable=True)`; never an answer, never cached |
| `Fallback` | next model on an error in `on` (default `ModelError`, `TimeoutError`) that survived its retries; streams only before the first event; all failing raises one `ProviderError` listing each failure |
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random as _random
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, ModelError, ProviderError, StoreError
from ..messages import ToolCall, Usage, message_to_dict
from ..models import (
    Model,
    ModelRequest,
    ModelResponse,
    StreamDone,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    register_provider,
    resolve_model,
)

__all__ = [
    "Fallback",
    "MemoryCache",
    "Resilient",
    "ResponseCache",
    "RetryPolicy",
    "SQLiteCache",
    "cache_key",
    "fallback_provider",
    "resilient_provider",
]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before retrying a failed model call."""

    max_attempts: int = 4
    """Attempts in all, the first included (1 disables retries)."""
    base_delay: float = 0.5
    """Backoff before the second attempt; it doubles with each further attempt."""
    max_delay: float = 20.0
    """Upper bound on any single wait, Retry-After included."""
    jitter: bool = True
    """Full jitter: wait uniformly between 0 and the backoff (spreads out synchronized clients)."""
    max_retry_after: float = 60.0
    """A Retry-After longer than this gives up at once instead of sleeping."""
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    """How to wait (inject a fake in tests)."""
    random: Callable[[], float] = _random.random
    """Uniform [0, 1) source for the jitter (inject a constant in tests)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or min(self.base_delay, self.max_delay, self.max_retry_after) < 0:
            raise ConfigError(f"{self!r}: max_attempts must be >= 1 and delays >= 0")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        if self.jitter:
            backoff *= self.random()
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.max_delay))
        return backoff


Clock = Callable[[], float]


class ResponseCache(Protocol):
    """Where `Resilient` keeps answers to cacheable requests, by `cache_key`."""

    async def get(self, key: str) -> ModelResponse | None:
        """The stored response, or None when absent or expired."""
        ...

    async def set(self, key: str, response: ModelResponse) -> None:
        """Store `response` under `key` (replacing any older one)."""
        ...


def cache_key(model_name: str, request: ModelRequest) -> str:
    """SHA-256 of the canonical JSON of everything that determines the answer."""
    s = request.settings
    doc = {
        "model": model_name,
        "messages": [message_to_dict(m) for m in request.messages],
        "tools": [[t.name, t.description, t.parameters] for t in request.tools],
        "output_schema": request.output_schema,
        "settings": [s.temperature, s.max_tokens, s.seed, s.extra],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _dump(r: ModelResponse) -> str:
    calls = [[c.id, c.name, c.arguments] for c in r.tool_calls]
    return json.dumps([r.text, calls, r.usage.to_dict(), r.model_name, r.finish_reason])


def _load(data: str) -> ModelResponse:
    text, calls, usage, name, finish = json.loads(data)
    return ModelResponse(text, [ToolCall(*c) for c in calls], Usage.from_dict(usage), name, finish)


class MemoryCache:
    """`ResponseCache` in a dict, for one process.

    Args:
        ttl: Seconds an entry stays valid (None: until evicted).
        max_entries: The least recently used entries are evicted beyond this many.
        clock: Wall-clock source (inject a fake in tests).

    """

    def __init__(
        self, ttl: float | None = None, *, max_entries: int = 10_000, clock: Clock = time.time
    ) -> None:
        self.ttl, self.max_entries, self._clock = ttl, max_entries, clock
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def get(self, key: str) -> ModelResponse | None:
        """See `ResponseCache.get`."""
        entry = self._entries.get(key)
        if entry is None or _expired(self.ttl, self._clock, entry[0]):
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return _load(entry[1])  # a fresh copy: callers may mutate what they get

    async def set(self, key: str, response: ModelResponse) -> None:
        """See `ResponseCache.set`."""
        self._entries[key] = (self._clock(), _dump(response))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class SQLiteCache:
    """`ResponseCache` in one SQLite file (WAL): survives restarts, shared between processes.

    Args:
        path: The database file; parent folders are created.
        ttl: Seconds an entry stays valid (None: forever); expired entries are dropped when read.
        clock: Wall-clock source (inject a fake in tests).

    """

    def __init__(
        self, path: str | Path = ".cadenza/responses.db", ttl: float | None = None, *,
        clock: Clock = time.time,
    ) -> None:  # fmt: skip
        self.path, self.ttl, self._clock = Path(path), ttl, clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, "
                "stored_at REAL NOT NULL, data TEXT NOT NULL) WITHOUT ROWID"
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the response cache at {self.path}: {exc}; check the path is writable"
            ) from exc

    async def get(self, key: str) -> ModelResponse | None:
        """See `ResponseCache.get`."""
        row = self._run("SELECT stored_at, data FROM responses WHERE key=?", key)
        if row is not None and _expired(self.ttl, self._clock, row[0]):
            self._run("DELETE FROM responses WHERE key=? AND stored_at=?", key, row[0])
            return None
        return None if row is None else _load(row[1])

    async def set(self, key: str, response: ModelResponse) -> None:
        """See `ResponseCache.set`."""
        sql = "INSERT OR REPLACE INTO responses VALUES (?,?,?)"
        self._run(sql, key, self._clock(), _dump(response))

    def _run(self, sql: str, *args: Any) -> Any:
        # Statements take microseconds: they run on the loop's thread, as in SQLiteStore.
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"response cache {self.path} failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def _expired(ttl: float | None, clock: Clock, stored_at: float) -> bool:
    return ttl is not None and clock() - stored_at > ttl


# One semaphore per (event loop, provider prefix): every Resilient of a provider shares it, so
# max_concurrency bounds the calls to that provider across agents and runs. asyncio primitives
# belong to one loop, hence the per-loop map (weak: a closed loop's entries go with it).
_limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)
_limits_lock = threading.Lock()


def _semaphore(prefix: str, size: int) -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    with _limits_lock:
        per_loop = _limits.setdefault(loop, {})
        if prefix not in per_loop:
            per_loop[prefix] = asyncio.Semaphore(size)  # the first wrapper to ask sizes it
        return per_loop[prefix]


@contextlib.asynccontextmanager
async def _closing(
    events: AsyncIterator[StreamEvent],
) -> AsyncGenerator[AsyncIterator[StreamEvent]]:
    # `async for` does not close an abandoned generator: do it now, not at garbage collection.
    try:
        yield events
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()


def _prefix(name: str) -> str:
    return name.partition(":")[0] or name


def _cut(name: str) -> ProviderError:
    return ProviderError(
        f"the stream from {name} ended without its final event (connection cut?); "
        "the partial answer was discarded, retry the request",
        provider=_prefix(name),
        retryable=True,
    )


class Resilient:
    """A `Model` that retries, times out, caches and rate-limits calls to another model.

    Args:
        model: The model to wrap, or its model string.
        retry: When to retry (default `RetryPolicy()`).
        timeout: Seconds per attempt (for streams: per event); None for no limit.
        cache: Where to keep answers to cacheable calls; None disables caching.
        cache_all: Cache every call, not only those marked `extra={"cache": True}`.
        max_concurrency: Calls in flight to this provider prefix (shared, see module docs).

    """

    def __init__(
        self,
        model: Model | str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = 60.0,
        cache: ResponseCache | None = None,
        cache_all: bool = False,
        max_concurrency: int | None = None,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
        self.model = resolve_model(model)
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.cache = cache
        self.cache_all = cache_all
        self.max_concurrency = max_concurrency

    @property
    def name(self) -> str:
        """The wrapped model's name."""
        return self.model.name

    @property
    def price(self) -> tuple[float, float] | None:
        """The wrapped model's price, for cost budgets."""
        return getattr(self.model, "price", None)

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer from the cache, or from the model with timeouts and retries."""
        request, key = self._prepare(request)
        if key is not None and (hit := await self._cached(key)) is not None:
            return hit
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._slot(), asyncio.timeout(self.timeout):
                    response = await self.model.request(request)
            except Exception as exc:
                wait = self._delay(exc, attempt)
            else:
                await self._store(key, response)
                return response
            await self.retry.sleep(wait)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream the answer; retried only until the first event has been forwarded."""
        request, key = self._prepare(request)
        if key is not None and (hit := await self._cached(key)) is not None:
            if hit.text:
                yield TextDelta(hit.text)
            for call in hit.tool_calls:
                yield ToolCallEvent(call)
            yield StreamDone(hit)
            return
        attempt = 0
        while True:
            attempt += 1
            forwarded = 0
            try:
                async with self._slot(), _closing(self._attempt(request)) as events:
                    async for event in events:
                        if isinstance(event, StreamDone):
                            await self._store(key, event.response)
                        forwarded += 1
                        yield event
                return
            except Exception as exc:
                if not forwarded:
                    wait = self._delay(exc, attempt)
                elif isinstance(exc, ModelError | TimeoutError) and not isinstance(
                    exc, ProviderError
                ):  # a ProviderError keeps its flags; anything else is a bug, raised as it is
                    raise ProviderError(
                        f"the stream from {self.name} failed after {forwarded} event(s) (a stream "
                        f"is retried only before its first): {type(exc).__name__}: {exc}",
                        provider=_prefix(self.name),
                        retryable=True,
                    ) from exc
                else:
                    raise
            await self.retry.sleep(wait)

    async def _attempt(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        # Each wait for the next event is timed on its own: a timeout never spans a `yield`
        # (it would otherwise cancel whatever the consumer is doing).
        async with _closing(self.model.stream(request)) as events:
            while True:
                try:
                    async with asyncio.timeout(self.timeout):
                        event = await anext(events)
                except StopAsyncIteration:
                    break
                yield event
                if isinstance(event, StreamDone):
                    return
        raise _cut(self.name)

    def _prepare(self, request: ModelRequest) -> tuple[ModelRequest, str | None]:
        """The request to send on (without the "cache" marker) and its cache key, if cached."""
        extra = request.settings.extra
        marked = extra.get("cache") is True
        if "cache" in extra:  # a copy: the caller's settings may be reused for other calls
            rest = {k: v for k, v in extra.items() if k != "cache"}
            request = replace(request, settings=replace(request.settings, extra=rest))
        if self.cache is None or not (marked or self.cache_all):
            return request, None
        return request, cache_key(self.name, request)

    async def _cached(self, key: str) -> ModelResponse | None:
        assert self.cache is not None
        hit = await self.cache.get(key)
        if hit is not None:
            hit.usage = Usage()  # nothing was spent on this answer
        return hit

    async def _store(self, key: str | None, response: ModelResponse) -> None:
        if key is not None and self.cache is not None:
            if response.finish_reason not in ("error", "length"):
                await self.cache.set(key, response)

    def _slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.max_concurrency is None:
            return contextlib.nullcontext()
        return _semaphore(_prefix(self.name), self.max_concurrency)

    def _delay(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before retrying after `exc`; raises when giving up."""
        policy = self.retry
        if isinstance(exc, TimeoutError):
            if attempt < policy.max_attempts:
                return policy.delay(attempt)
            raise ProviderError(
                f"{self.name} timed out on each of {attempt} attempt(s) (timeout: "
                f"{self.timeout} s per attempt); raise Resilient(timeout=...) or try later",
                provider=_prefix(self.name),
                retryable=True,
            ) from exc
        if not isinstance(exc, ProviderError) or not exc.retryable:
            raise exc
        wait = exc.retry_after
        if wait is not None and wait > policy.max_retry_after:
            exc.add_note(f"not retried: Retry-After {wait:g} s > max_retry_after")
        elif attempt >= policy.max_attempts:
            exc.add_note(f"gave up after {attempt} attempt(s) (RetryPolicy.max_attempts)")
        else:
            return policy.delay(attempt, wait)
        raise exc


class Fallback:
    """A `Model` that asks each model in turn until one answers.

    Args:
        models: The models (typically `Resilient`s), most preferred first, or model strings.
        on: Errors that move on to the next model; any other error is raised at once.

    """

    def __init__(
        self,
        models: list[Model | str],
        *,
        on: tuple[type[Exception], ...] = (ModelError, TimeoutError),
    ) -> None:
        if not models:
            raise ConfigError("Fallback needs at least one model")
        self.models = [resolve_model(m) for m in models]
        self.on = on
        self.answered_by: str | None = None
        """The name of the model that gave the last answer."""

    @property
    def name(self) -> str:
        """`fallback:` and the models' names joined by `|`."""
        return "fallback:" + "|".join(m.name for m in self.models)

    @property
    def price(self) -> tuple[float, float] | None:
        """The highest known input and output prices in the chain (budgets stay safe)."""
        known = [p for m in self.models if (p := getattr(m, "price", None)) is not None]
        prices: list[tuple[float, float]] = known
        return (max(p[0] for p in prices), max(p[1] for p in prices)) if prices else None

    async def request(self, request: ModelRequest) -> ModelResponse:
        """The first answer any model gives, in order."""
        failures: list[tuple[Model, Exception]] = []
        for model in self.models:
            try:
                response = await model.request(request)
            except self.on as exc:
                failures.append((model, exc))
                continue
            return self._answered(model, response)
        raise self._all_failed(failures)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream from the first model that starts answering; no fallback after its first event."""
        failures: list[tuple[Model, Exception]] = []
        for model in self.models:
            forwarded = 0
            try:
                async with _closing(model.stream(request)) as events:
                    async for event in events:
                        if isinstance(event, StreamDone):
                            yield StreamDone(self._answered(model, event.response))
                            return
                        forwarded += 1
                        yield event
                raise _cut(model.name)
            except self.on as exc:
                if forwarded:
                    raise
                failures.append((model, exc))
        raise self._all_failed(failures)

    def _answered(self, model: Model, response: ModelResponse) -> ModelResponse:
        self.answered_by = model.name
        if not response.model_name:
            response.model_name = model.name
        return response

    def _all_failed(self, failures: list[tuple[Model, Exception]]) -> ProviderError:
        lines: list[str] = []
        retryable = False
        for model, exc in failures:
            provider, status = _prefix(model.name), None
            if isinstance(exc, ProviderError):
                provider, status = exc.provider, exc.status
            retryable |= getattr(exc, "retryable", isinstance(exc, TimeoutError))
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            lines.append(f"  - {model.name} ({provider}: {status or '-'}: {detail})")
        error = ProviderError(
            f"all {len(failures)} model(s) of the fallback chain failed:\n"
            + "\n".join(lines)
            + "\ncheck the providers' status and credentials, or add a model to the chain",
            provider="fallback",
            retryable=retryable,
        )
        error.__cause__ = failures[-1][1]
        return error


def resilient_provider(spec: str) -> Resilient:
    """Resolve `resilient:MODEL` (e.g. `resilient:openai:gpt-4o-mini`) with default settings."""
    inner = resolve_model(spec)
    return inner if isinstance(inner, Resilient) else Resilient(inner)


def fallback_provider(spec: str) -> Fallback:
    """Resolve `fallback:A|B|C`: each model string wrapped in a default `Resilient`."""
    parts = [p.strip() for p in spec.split("|")]
    if not all(parts):
        raise ConfigError(f"fallback chain {spec!r} has an empty element; write 'fallback:A|B|C'")
    models = [resolve_model(p) for p in parts]
    return Fallback([m if isinstance(m, Resilient | Fallback) else Resilient(m) for m in models])


register_provider("resilient", resilient_provider)
register_provider("fallback", fallback_provider)
