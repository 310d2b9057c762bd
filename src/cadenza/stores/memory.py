"""`MemoryStore`: the state store in a dict, for tests and benchmarks (lost with the process)."""

from __future__ import annotations

import bisect
import copy

from ..audit._chain import GENESIS, seal
from ..errors import StoreError
from ..messages import Message
from ._base import AuditRow, Batch, Checkpoint, Event, RunRecord, ToolRecord

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
        self._audit: list[AuditRow] = []
        self._counters: dict[str, float] = {}

    async def commit(self, run_id: str, batch: Batch) -> None:
        """See `StateStore.commit`."""
        self.commit_now(run_id, batch)

    def commit_now(self, run_id: str, batch: Batch) -> None:
        """`commit`, synchronously (this store never waits on I/O from another task)."""
        audit = self._seal(run_id, batch) if batch.audit else None  # first: it may fail
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
        if audit is not None:
            self._audit.extend(audit)

    def _seal(self, run_id: str, batch: Batch) -> list[AuditRow]:
        log = self._audit
        head = (log[-1].seq, log[-1].hash) if log else (0, GENESIS)
        try:
            return [AuditRow(*row) for row in seal(batch.audit, head)]
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"cannot store step of run {run_id}: an audit entry is not JSON-serialisable "
                f"({exc})"
            ) from exc

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

    async def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditRow]:
        """See `StateStore.audit_entries`."""
        start = bisect.bisect_right(self._audit, after, key=_seq_of)
        return self._audit[start:] if limit is None else self._audit[start : start + max(limit, 0)]

    async def charge(
        self, key: str, amount: float, limit: float | None = None
    ) -> tuple[bool, float]:
        """See `StateStore.charge`."""
        used = self._counters.get(key, 0.0)
        if limit is not None and amount > 0 and used + amount > limit:
            return False, used
        self._counters[key] = used + amount
        return True, used + amount

    async def audit_head(self) -> tuple[int, str]:
        """See `StateStore.audit_head`."""
        return (self._audit[-1].seq, self._audit[-1].hash) if self._audit else (0, GENESIS)

    async def close(self) -> None:
        """Nothing to release."""


def _clone(r: RunRecord) -> RunRecord:
    return RunRecord(
        r.id, r.workflow, r.kind, r.status, r.thread, r.ref, r.input, r.output, r.error,
        r.principal, r.created_at, r.updated_at,
    )  # fmt: skip


def _seq_of(row: AuditRow) -> int:
    return row.seq
