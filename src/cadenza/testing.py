"""Test doubles shipped with Cadenza: a scripted model and tool mocks.

```python
model = ScriptedModel([call("add", a=2, b=3), "5"])
agent = Agent(model, tools=[add])
```
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from ._gate import active_mocks
from .budgets import estimate_tokens
from .errors import ConfigError, ScriptExhausted
from .messages import ToolCall, Usage
from .models import (
    ModelRequest,
    ModelResponse,
    StreamDone,
    StreamEvent,
    TextDelta,
    ToolCallEvent,
    register_provider,
)

__all__ = ["Delay", "ScriptedModel", "ToolMock", "call", "mock_tool"]

_ids = itertools.count(1)


def call(name: str, /, **arguments: Any) -> ToolCall:
    """A tool call for a script: `call("add", a=1, b=2)`."""
    return ToolCall(f"call_{next(_ids)}", name, arguments)


@dataclass(slots=True, frozen=True)
class Delay:
    """Wait `seconds` before giving `then` (simulates a slow model)."""

    seconds: float
    """How long to wait."""
    then: Any
    """The script item to give afterwards."""


ScriptItem = Any
"""str (text) | ToolCall | list[ToolCall] | dict / BaseModel (structured output) |
ModelResponse | Exception (raised) | Delay | callable(request) -> any of these."""

_named: dict[str, ScriptedModel] = {}


class ScriptedModel:
    """A deterministic model that answers from a script and records every request.

    Args:
        script: The responses, in order; or one function of the request used for every turn.
        name: Registers the model as `scripted:NAME`, so workflows can name it by string.
        repeat: Start the script again when it runs out instead of failing.
        delay: Seconds to wait before every response.
        price: (input, output) US dollars per token, for cost budgets.

    """

    def __init__(
        self,
        script: Sequence[ScriptItem] | Callable[[ModelRequest], Any] = (),
        *,
        name: str | None = None,
        repeat: bool = False,
        delay: float = 0.0,
        price: tuple[float, float] | None = None,
    ) -> None:
        self._fn = script if callable(script) else None
        self._script: list[Any] = [] if callable(script) else list(script)
        self._name = f"scripted:{name}" if name else "scripted"
        self.repeat = repeat
        self.delay = delay
        self.price = price
        self.requests: list[ModelRequest] = []
        """Every request received, in order."""
        self._pos = 0
        self._lock = threading.Lock()
        if name:
            _named[name] = self

    @property
    def name(self) -> str:
        """`scripted` or `scripted:NAME`."""
        return self._name

    def _next(self, request: ModelRequest) -> Any:
        with self._lock:
            self.requests.append(request)
            if self._fn is not None:
                return self._fn
            if self._pos >= len(self._script):
                if not self.repeat or not self._script:
                    raise ScriptExhausted(
                        f"{self._name} received request #{len(self.requests)} but its script has "
                        f"only {len(self._script)} response(s); add responses or use repeat=True"
                    )
                self._pos = 0
            item = self._script[self._pos]
            self._pos += 1
            return item

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer with the next script item."""
        item = self._next(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self._resolve(item, request)

    async def _resolve(self, item: Any, request: ModelRequest) -> ModelResponse:
        while True:
            if isinstance(item, Delay):
                await asyncio.sleep(item.seconds)
                item = item.then
            elif isinstance(item, BaseException):
                raise item
            elif callable(item) and not isinstance(item, type):
                item = item(request)
                if inspect.isawaitable(item):
                    item = await item
            else:
                break
        return self._response(item, request)

    def _response(self, item: Any, request: ModelRequest) -> ModelResponse:
        if isinstance(item, ModelResponse):
            return item
        calls: list[ToolCall] = []
        text = ""
        if isinstance(item, ToolCall):
            calls = [item]
        elif isinstance(item, list) and all(isinstance(c, ToolCall) for c in item):  # pyright: ignore[reportUnknownVariableType]
            calls = list(item)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(item, str):
            text = item
        elif isinstance(item, BaseModel):
            text = item.model_dump_json()
        elif isinstance(item, dict | list | int | float | bool):
            text = json.dumps(item)
        else:
            raise ConfigError(f"{self._name}: cannot turn script item {item!r} into a response")
        finish: Literal["stop", "tool_calls", "length"] = "tool_calls" if calls else "stop"
        limit = request.settings.max_tokens
        if limit is not None and len(text) // 4 + 1 > limit:
            text, finish = text[: max(limit - 1, 0) * 4], "length"  # as a real model would
        out = len(text) // 4 + sum(len(str(c.arguments)) // 4 + 2 for c in calls) + 1
        usage = Usage(estimate_tokens(request), out, 0.0, 1)
        if self.price:
            usage.cost = usage.input_tokens * self.price[0] + out * self.price[1]
        return ModelResponse(text, calls, usage, self._name, finish)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """The same answer as `request`, as text deltas and tool-call events."""
        response = await self.request(request)
        words = response.text.split(" ")
        for i, w in enumerate(words):
            if w or i:
                yield TextDelta(w if i == 0 else " " + w)
        for c in response.tool_calls:
            yield ToolCallEvent(c)
        yield StreamDone(response)

    @property
    def remaining(self) -> int:
        """Script items not yet used."""
        return len(self._script) - self._pos


def _echo(request: ModelRequest) -> str:
    for m in reversed(request.messages):
        if m.role == "user":
            return m.text
    return ""


def scripted_provider(name: str) -> ScriptedModel:
    """Resolve `scripted:NAME`: a model created with that name, or the built-in `echo`."""
    if name in _named:
        return _named[name]
    if name == "echo":
        return ScriptedModel(_echo)
    raise ConfigError(
        f"no ScriptedModel named {name!r}; create one with ScriptedModel(..., name={name!r}) "
        "or use 'scripted:echo'"
    )


register_provider("scripted", scripted_provider)


@dataclass
class ToolMock:
    """Replaces a tool by name while active; records the validated arguments of every call."""

    name: str
    """The tool replaced."""
    returns: Any = None
    """Fixed result, when no `side_effect` is given."""
    side_effect: Callable[..., Any] | None = None
    """Called with the validated arguments as keywords; its return (or await) is the result;
    an exception it raises becomes the tool's error result."""
    calls: list[dict[str, Any]] = field(default_factory=lambda: [])
    """Arguments of each call, in order."""

    async def __call__(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Record the call and produce the mocked result."""
        self.calls.append(dict(kwargs))
        if self.side_effect is None:
            return self.returns
        result = self.side_effect(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


@contextmanager
def mock_tool(
    name: str, *, returns: Any = None, side_effect: Callable[..., Any] | None = None
) -> Generator[ToolMock]:
    """Replace the tool called `name` in every run started inside the `with` block.

    Arguments are still validated against the real tool's schema before the mock sees them.
    """
    mock = ToolMock(name, returns, side_effect)
    current = dict(active_mocks.get() or {})
    current[name] = mock
    token = active_mocks.set(current)
    try:
        yield mock
    finally:
        active_mocks.reset(token)
