"""`MemoryStore`: the state store in a dict, for tests and benchmarks (lost with the process)."""

from __future__ import annotations

import copy

from ..messages import Message
from ._base import Batch, Checkpoint, Event, RunRecord, ToolRecord

__all__ = ["MemoryStore"]


class MemoryStore:
    """In-process `StateStore`.

    Graph state is kept by reference: nodes return updates, they never mutate their input.
    """

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[Event]] = {}
        self._checkpoints: dict[str, Checkpoint] = {}
        self._messages: dict[str, list[Message]] = {}
        self._tools: dict[str, ToolRecord] = {}

    async def commit(self, run_id: str, batch: Batch) -> None:
        """See `StateStore.commit`."""
        self.commit_now(run_id, batch)

    def commit_now(self, run_id: str, batch: Batch) -> None:
        """`commit`, synchronously (this store never waits on I/O from another task)."""
        if batch.run is not None:
            self._runs[run_id] = _clone(batch.run)
        if batch.events:
            events = self._events.get(run_id)
            if events is None:
                self._events[run_id] = list(batch.events)
            else:
                events.extend(batch.events)
        if batch.messages:
            log = self._messages.setdefault(run_id, [])
            del log[batch.msg_start :]
            log.extend(batch.messages)
        cp = batch.checkpoint
        if cp is not None:
            if not batch.state_changed:
                prev = self._checkpoints.get(run_id)
                cp = Checkpoint(cp.seq, cp.data, prev.state if prev else None, cp.messages)
            self._checkpoints[run_id] = cp
        for rec in batch.tool_records:
            self._tools[rec.key] = rec

    async def get_run(self, run_id: str) -> RunRecord | None:
        """See `StateStore.get_run`."""
        run = self._runs.get(run_id)
        return _clone(run) if run is not None else None

    async def list_runs(
        self, *, thread: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """See `StateStore.list_runs`."""
        runs = [
            _clone(r)
            for r in self._runs.values()
            if (thread is None or r.thread == thread) and (status is None or r.status == status)
        ]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    async def events(self, run_id: str, *, after: int = 0) -> list[Event]:
        """See `StateStore.events`."""
        return [e for e in self._events.get(run_id, ()) if e.seq > after]

    async def checkpoint(self, run_id: str) -> Checkpoint | None:
        """See `StateStore.checkpoint`."""
        cp = self._checkpoints.get(run_id)
        if cp is None:
            return None
        n = int(cp.data.get("messages", 0))
        msgs = [copy.copy(m) for m in self._messages.get(run_id, [])[:n]]
        return Checkpoint(cp.seq, copy.deepcopy(cp.data), cp.state, msgs)

    async def messages(self, run_id: str) -> list[Message]:
        """See `StateStore.messages`."""
        return list(self._messages.get(run_id, ()))

    async def tool_record(self, key: str) -> ToolRecord | None:
        """See `StateStore.tool_record`."""
        return self._tools.get(key)

    async def close(self) -> None:
        """Nothing to release."""


def _clone(r: RunRecord) -> RunRecord:
    return RunRecord(
        r.id, r.workflow, r.kind, r.status, r.thread, r.ref, r.input, r.output, r.error,
        r.principal, r.created_at, r.updated_at,
    )  # fmt: skip
