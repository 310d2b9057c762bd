"""The Gate: the one path from a model's tool calls to tool execution.

In order, for each call: known tool? valid arguments? budget left? already done (idempotency
record)? then execution with a timeout, and a journal entry. Refused and failed calls become
error results the model can correct itself from; nothing here raises except a budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from pydantic import ValidationError

from ._run import RunHandle
from .messages import ToolCall, ToolResult
from .stores._base import ToolRecord
from .tools import Tool, format_validation_error, to_json_result

MockFn = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""A mock receives the tool name and validated arguments and returns the result."""

active_mocks: ContextVar[dict[str, MockFn] | None] = ContextVar("cadenza_mocks", default=None)


class _Prepared:
    __slots__ = ("call", "index", "kwargs", "result", "tool")

    def __init__(self, index: int, call: ToolCall) -> None:
        self.index = index
        self.call = call
        self.tool: Tool | None = None
        self.kwargs: dict[str, Any] = {}
        self.result: ToolResult | None = None


async def run_tool_calls(
    run: RunHandle, tools: dict[str, Tool], calls: list[ToolCall], *, first_index: int = 0
) -> list[ToolResult]:
    """Pass every call through the Gate; return one result per call, in call order.

    Args:
        run: The run making the calls.
        tools: The tools this caller may use (the allow-list).
        calls: The calls, as the model (or a node) asked for them.
        first_index: Index of the first call within the step (idempotency keys use it).
    """
    step = run.step
    prepared: list[_Prepared] = []
    for i, call in enumerate(calls, first_index):
        p = _Prepared(i, call)
        prepared.append(p)
        run.emit(
            "tool.called",
            {
                "step": step,
                "index": i,
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
            },
        )
        t = tools.get(call.name)
        if t is None:
            valid = ", ".join(sorted(tools)) or "(none)"
            p.result = ToolResult(
                call.id, call.name,
                f"unknown tool {call.name!r}; the tools you can call are: {valid}", True,
            )  # fmt: skip
            continue
        try:
            p.kwargs = t.validate(call.arguments)
        except ValidationError as exc:
            p.result = ToolResult(
                call.id, call.name,
                f"invalid arguments for {call.name!r}: {format_validation_error(exc)}; "
                "call it again with arguments matching its schema", True,
            )  # fmt: skip
            continue
        p.tool = t
    runnable = [p for p in prepared if p.result is None]
    if runnable and not run.replaying:
        run.budget.before_tools(len(runnable))
    if len(runnable) == 1:
        await _execute(run, runnable[0], step)
    elif runnable:
        await asyncio.gather(*(_execute(run, p, step) for p in runnable))
    out: list[ToolResult] = []
    for p in prepared:
        r = p.result
        assert r is not None
        out.append(r)
        data = {
            "step": step, "index": p.index, "call_id": r.call_id, "name": r.name,
            "content": r.content, "is_error": r.is_error,
        }  # fmt: skip
        if p.tool is None:
            data["refused"] = True  # never executed: unknown tool or invalid arguments
        run.emit("tool.returned", data)
    return out


async def _execute(run: RunHandle, p: _Prepared, step: int) -> None:
    t, call = p.tool, p.call
    assert t is not None
    if run.recording is not None:
        rec = run.recording.find(
            "tool.returned", lambda e: e.data.get("step") == step and e.data.get("index") == p.index
        )
        if rec is None:
            p.result = ToolResult(call.id, call.name, "no recorded result", True)
        else:
            p.result = ToolResult(
                call.id, call.name, rec.data["content"], bool(rec.data["is_error"])
            )
        return
    key = f"{run.run_id}:{step}:{p.index}"
    if t.side_effects:
        prior = await run.store.tool_record(key)
        saved: dict[str, Any] = (prior.result or {}) if prior is not None else {}
        recorded = saved.get("name", call.name)
        if recorded != call.name:
            # The workflow did something else at this position than before the crash: never
            # hand one tool's recorded outcome to another, never run it blind either.
            p.result = ToolResult(
                call.id, call.name,
                f"the journal holds a call to {recorded!r} at this position ({key}), not to "
                f"{call.name!r}: the workflow is not deterministic here; not executed", True,
            )  # fmt: skip
            return
        if prior is not None and prior.status == "done":
            r = prior.result
            p.result = ToolResult(call.id, call.name, r["content"], bool(r["is_error"]))
            return
        if prior is not None:
            p.result = ToolResult(
                call.id, call.name,
                "this call was interrupted by a crash while running; its outcome is unknown and "
                "it was not retried (side-effecting calls run at most once)", True,
            )  # fmt: skip
            return
        await run.record_tool(ToolRecord(key, run.run_id, "started", {"name": call.name}))
    p.result = await _invoke(run, t, call, p.kwargs, key, step)
    if t.side_effects:
        r = p.result
        await run.record_tool(
            ToolRecord(
                key,
                run.run_id,
                "done",
                {"name": call.name, "content": r.content, "is_error": r.is_error},
            )
        )


class _Expired(Exception):
    """A tool call ran past its timeout."""


def _expire(task: asyncio.Task[Any], fired: list[bool]) -> None:
    fired.append(True)
    task.cancel()


async def _within(coro: Awaitable[Any], seconds: float) -> Any:
    """Await `coro`, cancelling it after `seconds`.

    One timer handle per call: `asyncio.timeout()` does the same with a context manager object
    and state machine that cost several times more on the hot path of every tool call.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    fired: list[bool] = []
    handle = loop.call_at(loop.time() + seconds, _expire, task, fired)
    try:
        return await coro
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise _Expired from None
        raise
    finally:
        handle.cancel()


async def _invoke(
    run: RunHandle, t: Tool, call: ToolCall, kwargs: dict[str, Any], key: str, step: int
) -> ToolResult:
    mocks = active_mocks.get()
    mock = mocks.get(t.name) if mocks else None
    timeout = t.timeout
    left = run.budget.remaining_time()
    if left is not None:
        timeout = left if timeout is None else min(timeout, left)
    start = time.perf_counter()
    try:
        if mock is not None:
            coro = mock(t.name, kwargs)
        else:
            ctx = (
                dataclasses.replace(run.ctx, step=step, idempotency_key=key)
                if t._ctx_param is not None  # pyright: ignore[reportPrivateUsage]
                else None
            )
            coro = t.invoke(kwargs, ctx)
        value = await coro if timeout is None else await _within(coro, timeout)
        return ToolResult(call.id, call.name, to_json_result(value))
    except _Expired:
        took = time.perf_counter() - start
        return ToolResult(call.id, call.name, f"tool {t.name!r} timed out after {took:.1f}s", True)
    except Exception as exc:
        return ToolResult(
            call.id, call.name, f"tool {t.name!r} failed: {type(exc).__name__}: {exc}", True
        )
