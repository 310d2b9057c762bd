"""Runs: start, resume, replay. The only module that opens and closes a run's journal.

`Agent` and `CompiledGraph` are workflows: they know how to drive one run from a checkpoint.
This module wraps that drive with what every run needs — a run record, a budget, the
terminal events, and the translation of failures and interrupts into run status.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from pydantic import BaseModel
from pydantic_core import to_json

from ._gate import DEFAULT_GUARDS, SafetyState
from ._run import NO_ANSWER, Listener, Recording, RunHandle, descendants
from .budgets import Budget, BudgetTracker
from .context import Principal, RunContext
from .errors import (
    CadenzaError,
    GraphInterrupt,
    ReplayDivergence,
    ResumeError,
    RunError,
    RunNotFound,
)
from .messages import Message, Usage
from .quotas import QuotaMeter
from .safety.guards import Guards, check_input, holds_pii, redact, redact_value
from .safety.policy import Policy
from .safety.taint import TaintTracker
from .stores import MemoryStore, StateStore, default_store
from .stores._base import Checkpoint, RunRecord

__all__ = ["RunResult", "Workflow"]


@dataclass(slots=True)
class RunResult:
    """What a run produced."""

    run_id: str
    """The run's id (look it up with `cadenza runs show`)."""
    status: Literal["finished", "interrupted"]
    """'finished', or 'interrupted' when a node waits for human input."""
    output: Any = None
    """The final answer (agents) or final state (graphs)."""
    usage: Usage = field(default_factory=Usage)
    """Tokens and cost of the whole run, child runs included."""
    messages: list[Message] = field(default_factory=lambda: [])
    """The agent's conversation (empty for graphs)."""
    interrupt: Any = None
    """What the paused node asks, when interrupted; resume with the answer."""
    thread: str | None = None
    """The conversation thread."""


class Workflow(Protocol):
    """Something the runtime can drive: an `Agent` or a `CompiledGraph`."""

    @property
    def name(self) -> str:
        """Name recorded with every run."""
        ...

    @property
    def kind(self) -> str:
        """'agent' or 'graph'."""
        ...

    def _input_json(self, input: Any) -> Any:
        """The run input as JSON, for the run record."""
        ...

    async def _drive(
        self, run: RunHandle, cp: Checkpoint | None, input: Any, answer: Any
    ) -> tuple[Any, Any]:
        """Run to the end from `cp` (None: from the start); return (output, output JSON)."""
        ...


@dataclass(slots=True)
class RunOptions:
    """Everything a run may be given beside its input."""

    store: StateStore | None = None
    thread: str | None = None
    principal: Principal | None = None
    deps: Any = None
    budget: Budget | None = None
    run_id: str | None = None
    ref: str | None = None
    listeners: list[Listener] | None = None
    model: Any = None
    policy: Policy | None = None
    guards: Guards | None = None
    stream: bool = False


_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_run_id() -> str:
    """A fresh run id: 48 random bits per process, then a counter (cheaper than uuid4)."""
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


_DEFAULT_BUDGET = Budget()
_ANONYMOUS = Principal()
_ANONYMOUS_JSON: dict[str, Any] = {"user_id": "anonymous", "roles": [], "tenant": None}


_UNSET: Any = object()


async def start(
    wf: Workflow,
    input: Any,
    opts: RunOptions,
    parent: RunHandle | None = None,
    *,
    input_json: Any = _UNSET,
) -> RunResult:
    """Start a new run of `wf` and drive it to the end (or to an interrupt).

    Args:
        wf: The workflow.
        input: What its drive receives.
        opts: Store, thread, budget, ...
        parent: The run this one is a child of (agent node, sub-graph).
        input_json: The input as recorded, when the caller already has it.

    """
    store = opts.store or (parent.store if parent else default_store())
    now = time.time()
    principal = opts.principal or (parent.ctx.principal if parent else _ANONYMOUS)
    record = RunRecord(
        id=opts.run_id or new_run_id(), workflow=wf.name, kind=wf.kind,
        thread=opts.thread, ref=opts.ref,
        input=wf._input_json(input) if input_json is _UNSET else input_json,  # pyright: ignore[reportPrivateUsage]
        principal=_ANONYMOUS_JSON if principal is _ANONYMOUS else {
            "user_id": principal.user_id, "roles": list(principal.roles), "tenant": principal.tenant},
        created_at=now, updated_at=now,
    )  # fmt: skip
    if parent is None:  # before anything is written or spent
        _check_input(record.input, opts.guards or getattr(wf, "guards", None) or DEFAULT_GUARDS)
    budget = parent.budget if parent else BudgetTracker(opts.budget or _DEFAULT_BUDGET)
    if parent is None and budget.budget.quotas:
        await _meter(budget, principal, store)
    ctx = RunContext(
        record.id,
        opts.thread,
        principal,
        opts.deps if opts.deps is not None or parent is None else parent.ctx.deps,
    )
    run = RunHandle(
        store, record, ctx, budget,
        listeners=opts.listeners if opts.listeners is not None else (parent.listeners if parent else None),
        recording=None,
    )  # fmt: skip
    run.safety = _safety(wf, opts, parent, [record.input])
    run.streaming = opts.stream or (parent is not None and parent.streaming)
    data: dict[str, Any] = {"workflow": wf.name, "kind": wf.kind, "input": record.input}
    if opts.policy is not None and parent is None:  # a per-run policy: resume must use it too
        p = opts.policy
        data["policy"] = {"name": p.name, "version": p.version, "path": p.path and str(p.path)}
    if opts.thread:
        data["thread"] = opts.thread
    if parent is not None:
        data["parent"] = parent.run_id
    run.model_override = (
        opts.model if opts.model is not None else (parent.model_override if parent else None)
    )
    run.emit("run.started", data)
    run.stage(run=True)
    run.batch.run_new = True
    if not run.commit_now():  # durable before any work: a run killed from here on can resume
        await run.commit()
    return await _drive(wf, run, None, input, NO_ANSWER, parent is None)


async def resume(
    wf: Workflow,
    run_id: str,
    opts: RunOptions,
    *,
    answer: Any = None,
    has_answer: bool = False,
    parent: RunHandle | None = None,
) -> RunResult:
    """Continue a run from its last checkpoint (in this or any other process)."""
    store = opts.store or (parent.store if parent else default_store())
    record = await store.get_run(run_id)
    if record is None:
        raise RunNotFound(f"no run {run_id!r} in the store; list runs with `cadenza runs list`")
    if record.status == "finished":
        raise ResumeError(f"run {run_id} already finished; there is nothing to resume")
    events = await store.events(run_id)
    if record.status == "interrupted" and not has_answer:
        await _check_approvals(store, run_id, events)
    cp = await store.checkpoint(run_id)
    seq = events[-1].seq if events else 0
    principal = _principal_of(record)
    budget = (
        parent.budget
        if parent
        else BudgetTracker(
            opts.budget or Budget(),
            _usage_so_far(events),
            _steps_so_far(events),
            _tools_so_far(events),
        )
    )
    if parent is None and budget.budget.quotas:
        await _meter(budget, principal, store)
    if parent is None and opts.policy is None:
        opts.policy = _policy_of_run(run_id, events)
    ctx = RunContext(record.id, record.thread, principal, opts.deps)
    run = RunHandle(
        store, record, ctx, budget,
        listeners=opts.listeners if opts.listeners is not None else (parent.listeners if parent else None),
        seq=seq, msg_committed=int(cp.data.get("messages", 0)) if cp else 0,
    )  # fmt: skip
    run.checkpoint_of(cp)
    run.model_override = (
        opts.model if opts.model is not None else (parent.model_override if parent else None)
    )
    run.safety = safety = _safety(wf, opts, parent, [record.input])
    run.streaming = opts.stream or (parent is not None and parent.streaming)
    _load_safety(safety, events)
    await _load_children(store, safety, events)
    record.status = "running"
    record.error = None
    data: dict[str, Any] = {
        "from_step": cp.seq if cp else 0,
        "from_seq": int(cp.data.get("seq", 0)) if cp else 0,
    }
    if has_answer:
        data["answer"] = answer
    run.emit("run.resumed", data)
    run.stage(run=True)
    await run.commit()
    return await _drive(
        wf, run, cp, record.input, answer if has_answer else NO_ANSWER, parent is None
    )


async def replay(
    wf: Workflow, run_id: str, opts: RunOptions, parent: RunHandle | None = None
) -> RunResult:
    """Re-drive a recorded run from its journal with no model or tool call.

    Raises:
        ReplayDivergence: the current code does something the recording does not hold.

    """
    store = opts.store or default_store()
    record = await store.get_run(run_id)
    if record is None:
        raise RunNotFound(f"no run {run_id!r} in the store; list runs with `cadenza runs list`")
    recording = Recording(await store.events(run_id))
    principal = _principal_of(record)
    ctx = RunContext(record.id, record.thread, principal, opts.deps)
    shadow = RunRecord(
        record.id, record.workflow, record.kind, thread=record.thread, input=record.input,
        principal=record.principal, created_at=record.created_at,
    )  # fmt: skip
    budget = BudgetTracker(Budget(max_steps=None))
    run = RunHandle(store, shadow, ctx, budget, listeners=opts.listeners, recording=recording)
    run.model_override = opts.model
    run.safety = _safety(wf, opts, parent, [record.input])  # a child shares its parent's
    try:
        output, _ = await wf._drive(run, None, record.input, NO_ANSWER)  # pyright: ignore[reportPrivateUsage]
    except GraphInterrupt as sig:
        return RunResult(run.run_id, "interrupted", interrupt=sig.prompt, usage=budget.usage)
    # Anything recorded that the replay never produced is a divergence too.
    rest = [e for e in recording.events[recording.pos :] if e.type != "run.finished"]
    if rest:
        e = rest[0]
        raise ReplayDivergence(int(e.data.get("step", run.step)), "event", e.type, "end of run")
    return RunResult(run.run_id, "finished", output, budget.usage, thread=record.thread)


async def _drive(
    wf: Workflow, run: RunHandle, cp: Checkpoint | None, input: Any, answer: Any, top: bool
) -> RunResult:
    meter = run.budget.meter
    if not top or meter is None:
        return await _segment(wf, run, cp, input, answer, top)
    began = time.monotonic()
    try:
        return await _segment(wf, run, cp, input, answer, top)
    finally:
        await meter.spend("seconds", time.monotonic() - began)


async def _segment(
    wf: Workflow, run: RunHandle, cp: Checkpoint | None, input: Any, answer: Any, top: bool
) -> RunResult:
    """Drive one segment of a run (start or resume to finish, interrupt or failure)."""
    rec = run.record
    try:
        output, output_json = await wf._drive(run, cp, input, answer)  # pyright: ignore[reportPrivateUsage]
    except GraphInterrupt as sig:
        rec.status = "interrupted"
        run.emit("run.interrupted", {"step": run.step, "prompt": sig.prompt})
        run.stage(run=True)
        await run.commit()
        if top and run.safety.audited:
            await _sign_audit(run)
        if top:
            return RunResult(
                rec.id,
                "interrupted",
                usage=run.budget.usage,
                interrupt=sig.prompt,
                thread=rec.thread,
            )
        raise
    except BaseException as exc:
        rec.status = "failed"
        rec.error = {"type": type(exc).__name__, "message": str(exc)}
        run.emit("run.failed", {"step": run.step, "error": rec.error})
        try:
            run.stage(run=True)
            await run.commit()
            if top and run.safety is not None and run.safety.audited:
                await _sign_audit(run)
        except Exception:
            pass
        if isinstance(exc, RunError) and (exc.run_id is None or top):
            exc.run_id = rec.id  # the run the caller started (child runs are in its journal)
        raise
    if top:
        output, output_json = _guard_output(run, output, output_json)
    rec.status = "finished"
    rec.output = output_json
    usage = run.budget.usage
    done: dict[str, Any] = {"step": run.step}
    if usage.requests:
        done["usage"] = usage.to_dict()
    run.emit("run.finished", done)
    run.stage(run=True)
    if not run.commit_now():
        await run.commit()
    if top and run.safety.audited:
        await _sign_audit(run)
    return RunResult(
        rec.id, "finished", output, run.budget.usage, run.messages or [], thread=rec.thread
    )


async def _meter(budget: BudgetTracker, principal: Principal, store: StateStore) -> None:
    """Attach the user's and tenant's quotas; refuse to start when their run time is used up."""
    budget.meter = QuotaMeter(budget.budget.quotas, principal, store)
    await budget.meter.headroom("seconds")


def _guard_output(run: RunHandle, output: Any, output_json: Any) -> tuple[Any, Any]:
    """The final output after the output guards: moderation, then PII redaction."""
    guards: Guards = run.safety.guards
    if guards.moderation is not None:
        text = output_json if isinstance(output_json, str) else json.dumps(output_json, default=str)
        try:
            reason = guards.moderation("output", text)
        except Exception as exc:  # fail closed
            reason = f"the moderation hook failed ({type(exc).__name__}: {exc})"
        if reason is not None:
            run.emit("guard.blocked", {"step": run.step, "name": "output", "reason": reason})
            withheld = f"[the answer was withheld by moderation: {reason}]"
            return withheld, withheld
    if guards.redact_output and holds_pii(output_json):
        keep = guards.public
        output_json = redact_value(output_json, keep)
        if isinstance(output, str):
            output = redact(output, keep)
        elif isinstance(output, dict | list):
            output = redact_value(output, keep)
        elif isinstance(output, BaseModel) and output_json is not None:
            try:  # a typed state or answer: the same type, with its strings redacted
                output = type(output).model_validate(output_json)
            except ValueError:
                # A field whose type refuses the placeholder (a pattern, an email type) still
                # gets it: built without validation, personal data never reaches the caller.
                output = type(output).model_construct(**output_json)
    return output, output_json


def _check_input(input: Any, guards: Guards) -> None:
    """The input guards; without moderation, a short input is let through on its JSON size."""
    if guards.moderation is None:
        limit = guards.max_input_chars
        if limit is None:
            return
        size = len(input) if isinstance(input, str) else len(to_json(input, fallback=str))
        if size <= limit:
            return
    check_input(_input_text(input), guards)


def _input_text(input: Any) -> str:
    """The text of a run's input (JSON), as the input guards see it."""
    if isinstance(input, str):
        return input
    if isinstance(input, dict):
        values = cast(dict[str, Any], input).values()
        return "\n".join(
            v if isinstance(v, str) else json.dumps(v) for v in values if v is not None
        )
    return json.dumps(input, default=str)


def _safety(
    wf: Workflow, opts: RunOptions, parent: RunHandle | None, trusted: list[Any]
) -> SafetyState:
    """The run's safety context: the parent's (shared taint, approvals), or a new one."""
    own: Policy | None = opts.policy or getattr(wf, "policy", None)
    if parent is not None:
        shared: SafetyState = parent.safety
        if own is None or own is shared.policy:
            return shared
        return SafetyState(own, shared.guards, shared.taint, shared.approvals)
    guards = opts.guards or getattr(wf, "guards", None)
    return SafetyState(own, guards, TaintTracker(trusted))


def _policy_of_run(run_id: str, events: list[Any]) -> Policy | None:
    """The policy a run was started with (`run(..., policy=)`, `--policy`), reloaded from its file.

    Raises:
        ResumeError: it was built in code, or its file is gone or changed version since.

    """
    started = next((e for e in events if e.type == "run.started"), None)
    p: Any = started.data.get("policy") if started is not None else None
    if not p:
        return None
    label = f"{p['name']}@{p['version']}"
    if not p.get("path"):
        raise ResumeError(
            f"run {run_id} was started with policy {label}, built in code: pass it again to "
            "resume (`resume(..., policy=...)`)"
        )
    try:
        policy = Policy.from_file(p["path"])
    except CadenzaError as exc:
        raise ResumeError(
            f"run {run_id} was started with policy {label} from {p['path']}: {exc}"
        ) from exc
    if policy.version != p["version"]:
        raise ResumeError(
            f"run {run_id} was started with policy {label}; {p['path']} now holds version "
            f"{policy.version}: pass the policy to use explicitly (`--policy` or policy=)"
        )
    return policy


async def _load_children(store: StateStore, safety: SafetyState, events: list[Any]) -> None:
    """What the run's child runs (agent nodes, sub-graphs) read is untrusted here too."""
    for _, child_events in await descendants(store, events):
        _load_safety(safety, child_events)


def _load_safety(safety: SafetyState, events: list[Any]) -> None:
    """Rebuild what a resumed run had read (taint) and the decisions taken while it waited."""
    taint = safety.taint
    asked: dict[str, Any] = {}
    flagged = {(e.data["step"], e.data["index"]) for e in events if e.type == "guard.flagged"}
    for e in events:
        d = e.data
        if e.type == "tool.returned" and not d.get("is_error") and not d.get("refused"):
            taint.add_untrusted(
                d["name"], d["content"], injection=(d["step"], d["index"]) in flagged
            )
        elif e.type == "approval.requested":
            asked[d["id"]] = {"name": d["name"], "arguments": d["arguments"]}
        elif e.type == "approval.decided":
            # A decision holds for the arguments the approver saw, and for no others.
            safety.approvals[d["id"]] = {**d, "requested": asked.get(d["id"])}


async def _check_approvals(store: StateStore, run_id: str, events: list[Any]) -> None:
    """An interrupted run resumed without an answer must be waiting for decided approvals."""
    last = next((e for e in reversed(events) if e.type == "run.interrupted"), None)
    prompt: Any = last.data.get("prompt") if last is not None else None
    if not (isinstance(prompt, dict) and cast(dict[str, Any], prompt).get("kind") == "approval"):
        raise ResumeError(
            f"run {run_id} is waiting for human input; resume it with an answer "
            "(`cadenza runs resume ID --answer TEXT`)"
        )
    from .approvals import decisions

    asks = cast(list[dict[str, Any]], prompt["approvals"])
    known: dict[str, dict[str, Any]] = {}
    for owner in {a["id"].rsplit(":", 2)[0] for a in asks}:
        known.update(await decisions(store, owner))
    waiting = [a for a in asks if a["id"] not in known]
    if waiting:
        ids = ", ".join(f"{a['id']} ({a['name']})" for a in waiting)
        raise ResumeError(
            f"run {run_id} is waiting for a human decision on {ids}; decide with "
            "`cadenza approvals approve ID --by NAME` or `cadenza approvals deny ID --by NAME "
            "--reason TEXT`"
        )


async def _sign_audit(run: RunHandle) -> None:
    """Sign the audit chain's head when due (every N entries or T seconds)."""
    if isinstance(run.store, MemoryStore):
        return  # nothing outlives the process: no checkpoints to keep
    from .audit import checkpointer_for

    cp = checkpointer_for(run.store)
    if cp is not None:
        await cp.maybe()


def _principal_of(record: RunRecord) -> Principal:
    p = record.principal
    return Principal(p.get("user_id", "anonymous"), tuple(p.get("roles", ())), p.get("tenant"))


def _usage_so_far(events: list[Any]) -> Any:
    u = Usage()
    for e in events:
        if e.type == "model.responded":
            u.add(Usage.from_dict(e.data.get("usage", {})))
    return u


def _steps_so_far(events: list[Any]) -> int:
    return sum(1 for e in events if e.type == "model.responded")


def _tools_so_far(events: list[Any]) -> int:
    return sum(
        1
        for e in events
        if e.type == "tool.returned" and not e.data.get("refused") and not e.data.get("reused")
    )
