"""`RunHandle`: one live run's journal writer — events, step batches, checkpoints — and, when
replaying, the recording it is checked against. Agents and graphs touch the store only here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic_core import to_jsonable_python

from .budgets import BudgetTracker
from .context import RunContext
from .errors import ReplayDivergence
from .messages import Message
from .stores._base import Batch, Checkpoint, Event, RunRecord, StateStore, ToolRecord

Listener = Callable[[Event], None]

_now = time.time
_NO_LISTENERS: list[Listener] = []  # shared, never appended to
_NONE: list[Any] = []  # a checkpoint's messages, when it carries none (shared, never mutated)

NO_ANSWER: Any = object()
"""Marks 'no human answer given' (None is a valid answer)."""

# Event fields that legitimately differ between a recording and its replay.
_VOLATILE = frozenset({"duration_ms", "child", "run_id", "replayed", "ts", "started", "reused"})


class Recording:
    """A finished run's canonical events, consumed in order by a replay."""

    __slots__ = ("answers", "events", "pos")

    def __init__(self, events: list[Event]) -> None:
        canon: list[Event] = []
        self.answers: list[Any] = []
        for e in events:
            if e.type == "run.resumed":
                # What followed the checkpoint was redone after the resume: keep the redo only.
                k = int(e.data.get("from_seq", 0))
                canon = [x for x in canon if x.seq <= k]
                if "answer" in e.data:
                    self.answers.append(e.data["answer"])
                continue
            if e.type in ("run.started", "run.interrupted", "run.failed"):
                continue
            canon.append(e)
        self.events = canon
        self.pos = 0

    def next(self, type_: str, step: int) -> Event:
        """The next recorded event, which must have type `type_`."""
        if self.pos >= len(self.events):
            raise ReplayDivergence(step, "event", "end of recording", type_)
        e = self.events[self.pos]
        self.pos += 1
        if e.type != type_:
            raise ReplayDivergence(step, "event", e.type, type_)
        return e

    def find(self, type_: str, pred: Callable[[Event], bool]) -> Event | None:
        """A recorded event of that type satisfying `pred`, searching from the current position."""
        for e in self.events[self.pos :]:
            if e.type == type_ and pred(e):
                return e
        return None


def _norm(data: dict[str, Any]) -> dict[str, Any]:
    return to_jsonable_python({k: v for k, v in data.items() if k not in _VOLATILE}, fallback=str)


class RunHandle:
    """The journal writer of one run. Every state change of a run goes through here."""

    __slots__ = (
        "_commit_now",
        "batch",
        "budget",
        "ctx",
        "listeners",
        "messages",
        "model_override",
        "msg_committed",
        "record",
        "recording",
        "replaying",
        "safety",
        "seq",
        "step",
        "store",
        "streaming",
    )

    def __init__(
        self,
        store: StateStore,
        record: RunRecord,
        ctx: RunContext,
        budget: BudgetTracker,
        *,
        listeners: list[Listener] | None = None,
        recording: Recording | None = None,
        seq: int = 0,
        step: int = 0,
        msg_committed: int = 0,
    ) -> None:
        self.store = store
        self._commit_now: Callable[[str, Batch], None] | None = getattr(store, "commit_now", None)
        self.record = record
        self.ctx = ctx
        self.budget = budget
        self.listeners: list[Listener] = listeners or _NO_LISTENERS
        self.recording = recording
        self.replaying = recording is not None
        self.seq = seq
        self.step = step
        self.msg_committed = msg_committed
        self.messages: list[Message] | None = None
        """An agent's conversation, for the run's result."""
        self.model_override: Any = None
        """A model (or model string) replacing the workflow's own, e.g. from `--model`."""
        self.batch = Batch()
        self.streaming = False
        """Ask models for streams and tell listeners each piece (`model.delta` events)."""
        self.safety: Any = None
        """The run's `SafetyState` (policy, guards, taint, approvals), set by the runtime."""

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.record.id

    def emit(self, type_: str, data: dict[str, Any]) -> Event:
        """Append a typed event to the current step's batch (and tell the listeners)."""
        self.seq += 1
        ev = Event(self.record.id, self.seq, type_, _now(), data)
        if self.replaying and type_ not in ("run.started", "run.resumed"):
            self._compare(ev)
        self.batch.events.append(ev)
        if self.listeners:
            for listener in self.listeners:
                listener(ev)
        return ev

    def notify(self, type_: str, data: dict[str, Any]) -> None:
        """Tell the listeners something that is not journaled (seq 0): streamed pieces."""
        if self.listeners:
            ev = Event(self.record.id, 0, type_, _now(), data)
            for listener in self.listeners:
                listener(ev)

    def _compare(self, ev: Event) -> None:
        assert self.recording is not None
        rec = self.recording.next(ev.type, int(ev.data.get("step", self.step)))
        want, got = _norm(rec.data), _norm(ev.data)
        if want != got:
            for k in sorted(set(want) | set(got)):
                if want.get(k) != got.get(k):
                    raise ReplayDivergence(
                        int(ev.data.get("step", self.step)),
                        f"{ev.type} {k}",
                        want.get(k),
                        got.get(k),
                    )

    def stage(
        self,
        data: dict[str, Any] | None = None,
        *,
        state: Any = None,
        state_changed: bool = False,
        messages: list[Message] | None = None,
        run: bool = False,
        journal_seq: int | None = None,
    ) -> None:
        """Add a checkpoint (and new messages, the run record) to the pending batch.

        Args:
            data: The workflow's position; becomes the checkpoint for `self.step`.
            state: Graph state at this point (stored only when `state_changed`).
            state_changed: The state differs from the previous checkpoint's.
            messages: The run's conversation; only messages not yet committed are written.
            run: Also write the run record (status changes).
            journal_seq: The journal position the checkpoint closes (default: the last event);
                earlier when what followed will be redone on resume.
        """
        b = self.batch
        if run:
            self.record.updated_at = time.time()
            b.run = self.record
        if messages is not None and len(messages) > self.msg_committed:
            if b.messages:
                b.messages.extend(messages[self.msg_committed :])
            else:
                b.messages = messages[self.msg_committed :]
                b.msg_start = self.msg_committed
            self.msg_committed = len(messages)
        if data is not None:
            if messages is not None:
                data["messages"] = len(messages)
            data["seq"] = self.seq if journal_seq is None else journal_seq
            b.checkpoint = Checkpoint(self.step, data, state, _NONE)
            b.state_changed = b.state_changed or state_changed

    def stage_checkpoint(self, data: dict[str, Any], state: Any, state_changed: bool) -> None:
        """`stage` for the common case: a checkpoint with state and no messages."""
        b = self.batch
        data["seq"] = self.seq
        b.checkpoint = Checkpoint(self.step, data, state, _NONE)
        if state_changed:
            b.state_changed = True

    def commit_now(self) -> bool:
        """Commit at once when the store writes synchronously; False when `commit` is needed.

        Saves a coroutine per step on the embedded stores (memory, SQLite).
        """
        if self._commit_now is None:
            return False
        b = self.batch
        if not self.replaying and (b.events or b.checkpoint or b.run or b.tool_records):
            self._commit_now(self.record.id, b)
        b.reset()
        return True

    async def commit(self) -> None:
        """Write the pending batch in one transaction (a no-op while replaying)."""
        b = self.batch
        if not self.replaying and (b.events or b.checkpoint or b.run or b.tool_records):
            if self._commit_now is not None:
                self._commit_now(self.record.id, b)
            else:
                await self.store.commit(self.record.id, b)
        b.reset()

    async def record_tool(self, rec: ToolRecord) -> None:
        """Durably write an idempotency record now, with the events pending before it."""
        if self.replaying:
            return
        self.batch.tool_records = [*self.batch.tool_records, rec]
        await self.commit()

    def checkpoint_of(self, cp: Checkpoint | None) -> None:
        """Position the step counter after a resumed checkpoint."""
        if cp is not None:
            self.step = cp.seq


async def descendants(store: StateStore, events: list[Event]) -> list[tuple[str, list[Event]]]:
    """The child runs (agent nodes, sub-graphs) under a run's `events`, at any depth, with their
    journals: those its nodes finished or failed in, and the one a pending approval waits in."""
    out: list[tuple[str, list[Event]]] = []
    todo = _children(events)
    seen: set[str] = set()
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        child_events = await store.events(child)
        out.append((child, child_events))
        todo.extend(_children(child_events))
    return out


def _children(events: list[Event]) -> list[str]:
    found: list[str] = []
    for e in events:
        if e.type in ("node.finished", "node.failed") and e.data.get("child"):
            found.append(e.data["child"])
        elif e.type == "run.interrupted" and isinstance(e.data.get("prompt"), dict):
            for ask in e.data["prompt"].get("approvals", ()):
                owner = ask["id"].split(":", 1)[0]
                if owner != e.run_id:
                    found.append(owner)
    return found
