"""The Gate: the one path from a model's (or a node's) tool calls to tool execution.

For each call, in order: allow-list (the caller's tools; anything else is refused), argument
size and schema, the policy (allow / deny / needs approval, with the taint of each argument),
human approval (a call awaiting one pauses the run durably before anything runs), budgets,
idempotency records, execution with a timeout, output guards (moderation, injection markers,
size), then the journal and one audit entry per call. Refused, denied and failed calls become
error results the model can correct itself from; only budgets and approvals stop the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from ._run import RunHandle
from .audit._chain import canonical_json, utc_timestamp
from .errors import ApprovalRequired
from .messages import ToolCall, ToolResult
from .safety.guards import Guards, check_arguments, redact, redact_value, screen_output
from .safety.policy import CallFacts, Decision, Policy
from .safety.taint import TaintTracker
from .stores._base import ToolRecord
from .tools import Tool, format_validation_error, to_json_result

MockFn = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""A mock receives the tool name and validated arguments and returns the result."""

active_mocks: ContextVar[dict[str, MockFn] | None] = ContextVar("cadenza_mocks", default=None)

DEFAULT_GUARDS = Guards()


class SafetyState:
    """The safety context of one run, shared with its child runs (like the budget)."""

    __slots__ = ("approvals", "audited", "guards", "policy", "taint")

    def __init__(
        self,
        policy: Policy | None = None,
        guards: Guards | None = None,
        taint: TaintTracker | None = None,
        approvals: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.policy = policy
        """Decides every call; None: the allow-list alone decides."""
        self.guards = guards or DEFAULT_GUARDS
        self.taint = taint or TaintTracker()
        self.approvals: dict[str, dict[str, Any]] = approvals if approvals is not None else {}
        """Human decisions available to this run segment, by approval id (`run:step:index`)."""
        self.audited = 0
        """Audit entries written by this run segment."""


class _Prepared:
    __slots__ = (
        "approval_id", "approver", "args", "call", "decision", "index", "kwargs", "looked",
        "outcome", "pending", "prior", "result", "reused", "tool",
    )  # fmt: skip

    def __init__(self, index: int, call: ToolCall) -> None:
        self.index = index
        self.call = call
        self.tool: Tool | None = None
        self.kwargs: dict[str, Any] = {}
        """The validated arguments the tool receives (may hold models, dates...)."""
        self.args: dict[str, Any] = call.arguments
        """The same as JSON: as the model sent them, or as the approver edited them."""
        self.result: ToolResult | None = None
        self.decision: Decision | None = None
        self.approver: str | None = None
        self.approval_id = ""
        self.prior: ToolRecord | None = None
        """A side-effecting call's idempotency record, when it ran before a crash or pause."""
        self.looked = False
        self.reused = False
        """The result is the recorded one of an earlier execution (not run, not charged)."""
        self.pending = False
        self.outcome = "refused"


def call_key(call: ToolCall) -> str:
    """A call's name and arguments as one comparable string."""
    return f"{call.name}:{canonical_json(call.arguments)}"


def _refuse(p: _Prepared, message: str, outcome: str = "refused") -> None:
    p.result = ToolResult(p.call.id, p.call.name, message, True)
    p.outcome = outcome


async def run_tool_calls(
    run: RunHandle,
    tools: dict[str, Tool],
    calls: list[ToolCall],
    *,
    first_index: int = 0,
    agent: str | None = None,
    model: str | None = None,
    repeated: frozenset[str] = frozenset(),
) -> list[ToolResult]:
    """Pass every call through the Gate; return one result per call, in call order.

    Args:
        run: The run making the calls.
        tools: The tools this caller may use (the allow-list).
        calls: The calls, as the model (or a node) asked for them.
        first_index: Index of the first call within the step (idempotency keys use it).
        agent: The agent making the calls (None for a graph node).
        model: The model that asked for them, for the audit log.
        repeated: `call_key`s of the calls the model made in its previous turn: asking for
            one of them again is a loop, refused with a nudge to use the result it has.

    Raises:
        ApprovalRequired: a call needs a human decision not yet given (nothing was executed).
        BudgetExceeded: the calls would overspend the run's budget (nothing was executed).
    """
    step = run.step
    safety: SafetyState = run.safety
    policy, guards = safety.policy, safety.guards
    prepared: list[_Prepared] = []
    for i, call in enumerate(calls, first_index):
        p = _Prepared(i, call)
        prepared.append(p)
        run.emit(
            "tool.called",
            {"step": step, "index": i, "call_id": call.id, "name": call.name,
             "arguments": call.arguments},
        )  # fmt: skip
        t = tools.get(call.name)
        if t is None:
            valid = ", ".join(sorted(tools)) or "(none)"
            _refuse(p, f"unknown tool {call.name!r}; the tools you can call are: {valid}")
            continue
        if repeated and call_key(call) in repeated:
            _refuse(
                p,
                f"you already called {call.name} with exactly these arguments in your previous "
                "turn, and its result is above: use it to answer, or call something different",
            )
            continue
        too_big = check_arguments(call.arguments, guards)
        if too_big is not None:
            _refuse(p, too_big)
            continue
        try:
            p.kwargs = t.validate(call.arguments)
        except ValidationError as exc:
            _refuse(
                p,
                f"invalid arguments for {call.name!r}: {format_validation_error(exc)}; "
                "call it again with arguments matching its schema",
            )
            continue
        p.tool = t
        if policy is not None and not _decide(run, policy, p, t, step, agent):
            continue
    pending = [p for p in prepared if p.pending]
    if pending:
        _request_approvals(run, pending, step, agent, model)
    runnable = [p for p in prepared if p.result is None]
    if runnable and not run.replaying:
        fresh = len(runnable)
        for p in runnable:
            assert p.tool is not None
            if p.tool.side_effects:  # done before a crash or a pause: not run, not charged again
                p.prior = await run.store.tool_record(f"{run.run_id}:{step}:{p.index}")
                p.looked = True
                fresh -= p.prior is not None and p.prior.status == "done"
        if fresh:
            run.budget.before_tools(fresh)
            if run.budget.meter is not None:
                await run.budget.meter.reserve("tool_calls", fresh)
    if len(runnable) == 1:
        await _execute(run, runnable[0], step)
    elif runnable:
        await asyncio.gather(*(_execute(run, p, step) for p in runnable))
    out: list[ToolResult] = []
    for p in prepared:
        if p.outcome == "executed":
            _screen(run, p, step)
        r = p.result
        assert r is not None
        data = {
            "step": step, "index": p.index, "call_id": r.call_id, "name": r.name,
            "content": r.content, "is_error": r.is_error,
        }  # fmt: skip
        if p.tool is None or p.outcome in ("denied", "denied-by-approver"):
            data["refused"] = True  # never executed
        elif p.reused:
            data["reused"] = True  # executed once, earlier: budgets count it once
        run.emit("tool.returned", data)
        out.append(r)
        _audit(run, p, step, agent, model)
    return out


def _decide(
    run: RunHandle, policy: Policy, p: _Prepared, t: Tool, step: int, agent: str | None
) -> bool:
    """Ask the policy; False when the call must not run now (denied, or awaiting approval)."""
    facts = _facts(run, t, p, agent)
    d = policy.decide(facts)
    p.decision = d
    run.emit(
        "policy.decided",
        {"step": step, "index": p.index, "name": t.name, "effect": d.effect, "rule": d.rule,
         "reason": d.reason, "policy": f"{policy.name}@{d.policy_version}",
         "tainted": sorted(facts.tainted)},
    )  # fmt: skip
    if d.effect == "allow":
        return True
    if d.effect == "deny":
        _refuse(p, f"denied by policy rule {d.rule!r}: {d.reason}", "denied")
        return False
    key = f"{run.run_id}:{step}:{p.index}"
    if run.recording is not None:
        rec = run.recording.find(
            "approval.applied",
            lambda e: e.data.get("step") == step and e.data.get("index") == p.index,
        )
        decided = None if rec is None else rec.data
    else:
        # A decision holds for the arguments the approver saw: a call that changed since (a
        # node computing something else on resume) is a new request, `KEY~2`, `KEY~3`...
        decided, asked = None, 0
        while (
            d := run.safety.approvals.get(key if not asked else f"{key}~{asked + 1}")
        ) is not None:
            asked += 1
            req = d.get("requested")
            if req is None or (req["name"] == p.call.name and req["arguments"] == p.args):
                decided = d
        if decided is not None:
            key = decided["id"]
        elif asked:
            key = f"{key}~{asked + 1}"
    if decided is None:
        p.pending = True
        p.approval_id = key
        return False
    approved = bool(decided.get("approved"))
    edited = decided.get("arguments")
    run.emit(
        "approval.applied",
        {"step": step, "index": p.index, "id": key, "approved": approved,
         "by": decided.get("by"), "reason": decided.get("reason", ""),
         "arguments": edited},
    )  # fmt: skip
    p.approver = decided.get("by")
    if not approved:
        why = decided.get("reason") or "no reason given"
        _refuse(p, f"denied by approver {p.approver}: {why}", "denied-by-approver")
        return False
    if edited is not None:
        try:
            p.kwargs = t.validate(edited)
            p.args = edited
        except ValidationError as exc:
            _refuse(
                p, f"the approver's edited arguments are invalid: {format_validation_error(exc)}"
            )
            return False
        # An edit is a new call: the policy decides it again (deny still beats approve).
        again = policy.decide(_facts(run, t, p, agent))
        if again.effect == "deny":
            _refuse(
                p, f"the approver's edited arguments are denied by policy rule {again.rule!r}: "
                f"{again.reason}", "denied",
            )  # fmt: skip
            return False
    return True


def _facts(run: RunHandle, t: Tool, p: _Prepared, agent: str | None) -> CallFacts:
    taint = run.safety.taint
    return CallFacts(
        tool=t.name, version=str(t.version), side_effects=t.side_effects, args=p.kwargs,
        principal=run.ctx.principal, workflow=run.record.workflow, agent=agent,
        untrusted=taint.untrusted, tainted=taint.tainted(p.args), injection=taint.injection,
    )  # fmt: skip


def _request_approvals(
    run: RunHandle, pending: list[_Prepared], step: int, agent: str | None, model: str | None
) -> None:
    asks: list[dict[str, Any]] = []
    for p in pending:
        d = p.decision
        assert d is not None and p.tool is not None
        ask = {
            "id": p.approval_id, "step": step, "index": p.index,
            "name": p.tool.name, "version": str(p.tool.version), "arguments": p.args,
            "rule": d.rule, "reason": d.reason, "agent": agent,
        }  # fmt: skip
        run.emit("approval.requested", ask)
        asks.append(ask)
        p.outcome = "approval-requested"
        _audit(run, p, step, agent, model)
    names = ", ".join(a["name"] for a in asks)
    raise ApprovalRequired(
        {
            "kind": "approval",
            "approvals": asks,
            "message": f"waiting for a human decision on {names} "
            f"(`cadenza approvals list`, then approve or deny)",
        }
    )


def _screen(run: RunHandle, p: _Prepared, step: int) -> None:
    """Output guards on an executed call: moderation, injection markers, size; taint."""
    r = p.result
    assert r is not None
    if r.is_error:
        return
    try:
        content, markers, blocked = screen_output(r.name, r.content, run.safety.guards)
    except Exception as exc:  # a broken moderation hook withholds the output (fail closed)
        content, markers = r.content, []
        blocked = f"the moderation hook failed ({type(exc).__name__}: {exc})"
    if blocked is not None:
        p.result = ToolResult(r.call_id, r.name, f"output withheld by moderation: {blocked}", True)
        run.emit("guard.blocked", {"step": step, "index": p.index, "name": r.name,
                                   "reason": blocked})  # fmt: skip
        return
    if markers:
        run.emit("guard.flagged", {"step": step, "index": p.index, "name": r.name,
                                   "markers": markers})  # fmt: skip
    run.safety.taint.add_untrusted(r.name, content, injection=bool(markers))
    if content is not r.content:
        p.result = ToolResult(r.call_id, r.name, content)


def _audit(run: RunHandle, p: _Prepared, step: int, agent: str | None, model: str | None) -> None:
    if run.replaying:
        return
    principal = run.ctx.principal
    args = p.args
    try:
        args_text = canonical_json(args)
    except (TypeError, ValueError):  # Python objects in a scripted or hand-made call
        args = to_jsonable_python(args, fallback=str)
        args_text = canonical_json(args)
    d = p.decision
    outcome = p.outcome
    if outcome == "executed" and p.result is not None and p.result.is_error:
        outcome = "failed"
    entry: dict[str, Any] = {
        "ts": utc_timestamp(),
        "run": run.run_id, "workflow": run.record.workflow, "step": step, "index": p.index,
        "actor": principal.user_id, "tenant": principal.tenant, "agent": agent, "model": model,
        "tool": p.call.name, "version": str(p.tool.version) if p.tool is not None else None,
        "args_hash": hashlib.sha256(args_text.encode()).hexdigest(),
        "args": redact_value(args),
        "decision": None if d is None else {
            "effect": d.effect, "rule": d.rule, "policy_version": d.policy_version},
        "approver": p.approver, "outcome": outcome,
    }  # fmt: skip
    if p.result is not None and p.result.is_error:
        entry["detail"] = redact(str(p.result.content))[:300]  # redacted whole, then cut
    run.batch.audit = [*run.batch.audit, entry]
    run.safety.audited += 1


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
            p.outcome = "executed"
        return
    key = f"{run.run_id}:{step}:{p.index}"
    if t.side_effects:
        prior = p.prior if p.looked else await run.store.tool_record(key)
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
            p.outcome = "executed"  # before the crash; not again
            p.reused = True
            return
        if prior is not None:
            p.result = ToolResult(
                call.id, call.name,
                "this call was interrupted by a crash while running; its outcome is unknown and "
                "it was not retried (side-effecting calls run at most once)", True,
            )  # fmt: skip
            p.outcome = "unknown"
            return
        await run.record_tool(ToolRecord(key, run.run_id, "started", {"name": call.name}))
    p.result = await _invoke(run, t, call, p.kwargs, key, step)
    p.outcome = "executed"
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
