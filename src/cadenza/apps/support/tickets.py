"""A small ticket service: support tickets in their own SQLite file."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import StoreError

__all__ = ["Ticket", "TicketDesk", "default_desk"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL, intent TEXT NOT NULL, subject TEXT NOT NULL,
    description TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open',
    run_id TEXT, idempotency_key TEXT UNIQUE, created_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One support ticket."""

    id: str
    """Human-facing id, e.g. NMB-1001."""
    user_id: str
    """The customer it belongs to."""
    intent: str
    """FAQ, Billing, Technical or Other."""
    subject: str
    """One-line summary."""
    description: str
    """The customer's message (possibly shortened)."""
    status: str
    """open or closed."""
    run_id: str | None
    """The run that created it."""
    created_at: float
    """Unix time."""


class TicketDesk:
    """Tickets in a SQLite file (`:memory:` for tests).

    Creation is idempotent per key: the bot passes the Gate's idempotency key, so a retried or
    resumed call returns the ticket already made instead of opening a second one.
    """

    def __init__(self, path: str | Path = ".cadenza/tickets.db") -> None:
        self.path = str(path)
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the ticket desk at {self.path}: {exc}; set CADENZA_TICKETS to a "
                "writable file"
            ) from exc
        self._lock = threading.Lock()

    def create(
        self,
        *,
        user_id: str,
        intent: str,
        subject: str,
        description: str,
        run_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Ticket:
        """Open a ticket (or return the one already opened under `idempotency_key`)."""
        with self._lock, self._db:
            if idempotency_key is not None:
                row = self._db.execute(
                    "SELECT * FROM tickets WHERE idempotency_key=?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _ticket(row)
            cur = self._db.execute(
                "INSERT INTO tickets (user_id, intent, subject, description, run_id, "
                "idempotency_key, created_at) VALUES (?,?,?,?,?,?,?)",
                (user_id, intent, subject, description, run_id, idempotency_key, time.time()),
            )
            row = self._db.execute("SELECT * FROM tickets WHERE seq=?", (cur.lastrowid,)).fetchone()
        return _ticket(row)

    def list(self, *, user_id: str | None = None, limit: int = 50) -> list[Ticket]:
        """Tickets, newest first."""
        sql, args = "SELECT * FROM tickets", list[object]()
        if user_id is not None:
            sql += " WHERE user_id=?"
            args.append(user_id)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [_ticket(r) for r in self._db.execute(sql, args)]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def get(self, ticket_id: str) -> Ticket | None:
        """The ticket with that id."""
        try:
            seq = int(ticket_id.removeprefix("NMB-")) - 1000
        except ValueError:
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM tickets WHERE seq=?", (seq,)).fetchone()
        return _ticket(row) if row else None


def _ticket(row: tuple[object, ...]) -> Ticket:
    seq, user_id, intent, subject, description, status, run_id, _key, created = row
    return Ticket(
        f"NMB-{1000 + int(str(seq))}", str(user_id), str(intent), str(subject),
        str(description), str(status), None if run_id is None else str(run_id),
        float(str(created)),
    )  # fmt: skip


_desks: dict[str, TicketDesk] = {}


def default_desk() -> TicketDesk:
    """The desk at `$CADENZA_TICKETS`, else `.cadenza/tickets.db` (one per process)."""
    path = os.path.abspath(os.environ.get("CADENZA_TICKETS") or ".cadenza/tickets.db")
    desk = _desks.get(path)
    if desk is None:
        desk = _desks[path] = TicketDesk(path)
    return desk
