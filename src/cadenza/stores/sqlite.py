"""`SQLiteStore`: the embedded default state store, one file in WAL mode.

Statements run synchronously on the event loop's thread: each step's commit is a few small
inserts (tens of microseconds), far cheaper than a hop to a worker thread and back.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import from_json, to_json

from ..audit._chain import GENESIS, seal
from ..errors import StoreError
from ..messages import Message, message_from_dict, message_to_dict
from ._base import AuditRow, Batch, Checkpoint, Event, RunRecord, ToolRecord

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    thread TEXT, ref TEXT, input TEXT, output TEXT, error TEXT, principal TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_thread ON runs(thread, created_at);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);
-- A run's events (kind 0, seq = event number) and checkpoints (kind 1, seq = step) share one
-- table: a step's commit then touches one B-tree page, not two (a third off each commit).
CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL, kind INTEGER NOT NULL, seq INTEGER NOT NULL, type TEXT,
    ts REAL, data TEXT NOT NULL, state TEXT, PRIMARY KEY (run_id, kind, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tool_records (
    key TEXT PRIMARY KEY, run_id TEXT NOT NULL, status TEXT NOT NULL, result TEXT
);
-- The audit log is append-only in the database itself; the hash chain and signed checkpoints
-- catch whoever drops these triggers.
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, prev TEXT NOT NULL, hash TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
-- Quota counters (scope:who:metric:window:index -> amount used), see cadenza.quotas.
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, used REAL NOT NULL) WITHOUT ROWID;
"""


def _dumps(value: Any) -> str:
    # pydantic-core's serializer is ~5x faster than the json module's on this hot path.
    return to_json(value, fallback=str).decode()


_loads = from_json


def _state_json(state: Any) -> str:
    if isinstance(state, BaseModel):
        return state.model_dump_json()
    return _dumps(state)


class SQLiteStore:
    """`StateStore` in one SQLite file (WAL), safe to share between processes.

    Args:
        path: The database file; parent folders are created.
        durability: "crash" (default) survives a killed process; "power" also fsyncs every
            commit to survive power loss, at a cost of a few milliseconds per step.

    """

    def __init__(
        self,
        path: str | Path = ".cadenza/cadenza.db",
        *,
        durability: Literal["crash", "power"] = "crash",
    ) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "PRAGMA synchronous=" + ("FULL" if durability == "power" else "NORMAL")
            )
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            self._lock = threading.RLock()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the SQLite store at {self.path}: {exc}; check the path is "
                "writable (or pass --store / CADENZA_STORE)"
            ) from exc

    async def commit(self, run_id: str, batch: Batch) -> None:
        """See `StateStore.commit`."""
        self.commit_now(run_id, batch)

    def commit_now(self, run_id: str, batch: Batch) -> None:
        """`commit`, synchronously (this store never waits on I/O from another task)."""
        try:  # encode everything first: nothing is locked while serialising, nothing half-done
            run = batch.run
            run_row = None
            if run is not None:
                run_row = (
                    run.status, _dumps(run.output),
                    None if run.error is None else _dumps(run.error),
                    run.updated_at or time.time(), run.id,
                )  # fmt: skip
            events = [(run_id, e.seq, e.type, e.ts, _dumps(e.data)) for e in batch.events]
            start = batch.msg_start
            messages = [
                (run_id, start + i, _dumps(message_to_dict(m)))
                for i, m in enumerate(batch.messages)
            ]
            cp = batch.checkpoint
            cp_row = None
            if cp is not None:
                state = _state_json(cp.state) if batch.state_changed else None
                cp_row = (run_id, cp.seq, _dumps(cp.data), state)
            tools = [(r.key, r.run_id, r.status, _dumps(r.result)) for r in batch.tool_records]
        except Exception as exc:
            raise StoreError(
                f"cannot store step of run {run_id}: a value is not JSON-serialisable ({exc})"
            ) from exc
        with self._lock:
            self._write(run_id, batch, run_row, events, messages, cp_row, tools)

    def _write(
        self,
        run_id: str,
        batch: Batch,
        run_row: tuple[Any, ...] | None,
        events: list[tuple[Any, ...]],
        messages: list[tuple[Any, ...]],
        cp_row: tuple[Any, ...] | None,
        tools: list[tuple[Any, ...]],
    ) -> None:
        db = self._db
        run = batch.run
        start = batch.msg_start
        audit = batch.audit
        try:
            # With audit entries the head is read, then written: take the write lock first so
            # no other process can append between the two.
            db.execute("BEGIN IMMEDIATE" if audit else "BEGIN")
            if run is not None:
                assert run_row is not None
                # Status changes rewrite only what changes (fewer bytes to encode and log).
                updated = (
                    not batch.run_new
                    and db.execute(
                        "UPDATE runs SET status=?, output=?, error=?, updated_at=? WHERE id=?",
                        run_row,
                    ).rowcount
                    > 0
                )
                if not updated:
                    db.execute(
                        "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            run.id, run.workflow, run.kind, run.status, run.thread, run.ref,
                            _dumps(run.input), run_row[1], run_row[2], _dumps(run.principal),
                            run.created_at, run_row[3],
                        ),
                    )  # fmt: skip
            if events:
                db.executemany(
                    "INSERT INTO journal (run_id, kind, seq, type, ts, data) VALUES (?,0,?,?,?,?)",
                    events,
                )
            if messages:
                db.execute("DELETE FROM messages WHERE run_id=? AND idx>=?", (run_id, start))
                db.executemany("INSERT INTO messages VALUES (?,?,?)", messages)
            if cp_row is not None:
                db.execute(
                    "INSERT INTO journal (run_id, kind, seq, data, state) VALUES (?,1,?,?,?) "
                    "ON CONFLICT (run_id, kind, seq) DO UPDATE "
                    "SET data=excluded.data, state=COALESCE(excluded.state, journal.state)",
                    cp_row,
                )
            if tools:
                db.executemany("INSERT OR REPLACE INTO tool_records VALUES (?,?,?,?)", tools)
            if audit:
                _append_audit(db, run_id, audit)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection is unusable; the original error says why
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"SQLite commit for run {run_id} failed: {exc}") from exc
            raise

    async def get_run(self, run_id: str) -> RunRecord | None:
        """See `StateStore.get_run`."""
        rows = self._rows("SELECT * FROM runs WHERE id=?", (run_id,))
        return _run(rows[0]) if rows else None

    async def list_runs(
        self, *, thread: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """See `StateStore.list_runs`."""
        sql, args = "SELECT * FROM runs WHERE 1=1", list[Any]()
        if thread is not None:
            sql += " AND thread=?"
            args.append(thread)
        if status is not None:
            sql += " AND status=?"
            args.append(status)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        args.append(limit)
        return [_run(r) for r in self._rows(sql, args)]

    async def events(self, run_id: str, *, after: int = 0) -> list[Event]:
        """See `StateStore.events`."""
        rows = self._rows(
            "SELECT seq, type, ts, data FROM journal WHERE run_id=? AND kind=0 AND seq>? "
            "ORDER BY seq",
            (run_id, after),
        )
        return [Event(run_id, s, t, ts, _loads(d)) for s, t, ts, d in rows]

    async def checkpoint(self, run_id: str) -> Checkpoint | None:
        """See `StateStore.checkpoint`."""
        rows = self._rows(
            "SELECT seq, data FROM journal WHERE run_id=? AND kind=1 ORDER BY seq DESC LIMIT 1",
            (run_id,),
        )
        if not rows:
            return None
        row = rows[0]
        srows = self._rows(
            "SELECT state FROM journal WHERE run_id=? AND kind=1 AND state IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1",
            (run_id,),
        )
        srow = srows[0] if srows else None
        data = _loads(row[1])
        n = int(data.get("messages", 0))
        msgs = [
            message_from_dict(_loads(d))
            for (d,) in self._rows(
                "SELECT data FROM messages WHERE run_id=? AND idx<? ORDER BY idx", (run_id, n)
            )
        ]
        return Checkpoint(row[0], data, _loads(srow[0]) if srow else None, msgs)

    async def messages(self, run_id: str) -> list[Message]:
        """See `StateStore.messages`."""
        return [
            message_from_dict(_loads(d))
            for (d,) in self._rows(
                "SELECT data FROM messages WHERE run_id=? ORDER BY idx", (run_id,)
            )
        ]

    async def tool_record(self, key: str) -> ToolRecord | None:
        """See `StateStore.tool_record`."""
        rows = self._rows(
            "SELECT key, run_id, status, result FROM tool_records WHERE key=?", (key,)
        )
        return ToolRecord(rows[0][0], rows[0][1], rows[0][2], _loads(rows[0][3])) if rows else None

    async def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditRow]:
        """See `StateStore.audit_entries`."""
        rows = self._rows(
            "SELECT seq, prev, hash, body FROM audit WHERE seq>? ORDER BY seq LIMIT ?",
            (after, -1 if limit is None else max(limit, 0)),
        )
        return [AuditRow(*r) for r in rows]

    async def charge(
        self, key: str, amount: float, limit: float | None = None
    ) -> tuple[bool, float]:
        """See `StateStore.charge` (one IMMEDIATE transaction: exact with several processes)."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT used FROM counters WHERE key=?", (key,)).fetchone()
                used = float(row[0]) if row else 0.0
                if amount == 0 or (limit is not None and amount > 0 and used + amount > limit):
                    db.execute("COMMIT")
                    return amount == 0, used
                db.execute(
                    "INSERT INTO counters VALUES (?,?) ON CONFLICT(key) DO UPDATE SET used=?",
                    (key, used + amount, used + amount),
                )
                db.execute("COMMIT")
                return True, used + amount
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"cannot update quota counter {key!r}: {exc}") from exc

    async def audit_head(self) -> tuple[int, str]:
        """See `StateStore.audit_head`."""
        rows = self._rows("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", ())
        return (rows[0][0], rows[0][1]) if rows else (0, GENESIS)

    def _rows(self, sql: str, args: Any) -> list[Any]:
        # One connection serves every thread: statements and their results go under the lock.
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    async def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def _append_audit(db: sqlite3.Connection, run_id: str, entries: list[dict[str, Any]]) -> None:
    """Number and chain `entries` after the log's head (inside the write transaction)."""
    head = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    try:
        rows = seal(entries, (head[0], head[1]) if head else (0, GENESIS))
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"cannot store step of run {run_id}: an audit entry is not JSON-serialisable ({exc})"
        ) from exc
    db.executemany("INSERT INTO audit VALUES (?,?,?,?)", rows)


def _run(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        id=row[0], workflow=row[1], kind=row[2], status=row[3], thread=row[4], ref=row[5],
        input=_loads(row[6]) if row[6] else None,
        output=_loads(row[7]) if row[7] else None,
        error=_loads(row[8]) if row[8] else None,
        principal=_loads(row[9]) if row[9] else {},
        created_at=row[10], updated_at=row[11],
    )  # fmt: skip
