"""Verify a store's audit log: the hash chain, page by page, against the signed checkpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..stores._base import StateStore
from ._chain import ChainWalk, Problem, SignedHead
from .signing import AuditSettings, check_checkpoint, key_id, load_public_key, read_checkpoints

__all__ = ["AuditReport", "verify"]

PAGE = 1000
"""Rows read per query: memory stays flat however long the log."""


@dataclass(slots=True)
class AuditReport:
    """What `verify` found."""

    ok: bool
    """True when nothing was found wrong."""
    entries: int
    """Entries in the log."""
    checkpoints: int
    """Signed checkpoints that verified and match the log."""
    problems: list[Problem] = field(default_factory=lambda: [])
    """Problems, first (lowest entry) first; the chain is walked up to its first break."""

    def describe(self) -> str:
        """Plain lines for a terminal or a ticket."""
        counts = f"{_n(self.entries, 'entry', 'entries')}, " + _n(
            self.checkpoints, "signed checkpoint", "signed checkpoints"
        )
        if self.ok:
            return f"audit log OK: {counts} verified"
        found = _n(len(self.problems), "problem", "problems")
        head = f"audit log TAMPERED: {found} ({counts} verified)"
        return "\n".join([head, *(f"  - {p.message}" for p in self.problems)])

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "problems": [
                {"seq": p.seq, "kind": p.kind, "message": p.message} for p in self.problems
            ],
        }


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def load_checkpoints(
    path: Path, public_key: Path | None = None
) -> tuple[list[SignedHead], list[Problem]]:
    """The checkpoints of a file whose signatures verify, and a problem for each that does not."""
    if not path.exists():
        raise ConfigError(f"no checkpoints file at {path}; check the path")
    if public_key is None:
        public_key = AuditSettings.for_store(None).public_key
    if not public_key.exists():
        raise ConfigError(
            f"no public key at {public_key} to verify the checkpoints with; pass it "
            "(--public-key) or set CADENZA_AUDIT_KEY to the private key beside it"
        )
    public = load_public_key(public_key)
    pid = key_id(public)
    heads: list[SignedHead] = []
    problems: list[Problem] = []
    for number, line in enumerate(read_checkpoints(path), 1):
        got = check_checkpoint(line, number, public, pid)
        if isinstance(got, SignedHead):
            heads.append(got)
        else:
            problems.append(got)
    return heads, problems


async def verify(
    store: StateStore, *, checkpoints: Path | None = None, public_key: Path | None = None
) -> AuditReport:
    """Check that a store's audit log is intact.

    Args:
        store: The store to check.
        checkpoints: The checkpoints file; None checks the hash chain alone (an attacker who
            recomputes every hash after an edit then goes unnoticed).
        public_key: The PEM public key the checkpoints are signed with (default: `<key>.pub`
            of `$CADENZA_AUDIT_KEY` or `~/.config/cadenza/audit-ed25519.pem`).

    Returns:
        The report: `ok`, counts and the problems found, each with the entry it concerns.

    """
    heads: list[SignedHead] = []
    problems: list[Problem] = []
    if checkpoints is not None:
        heads, problems = load_checkpoints(checkpoints, public_key)
    walk = ChainWalk(heads)
    after = 0
    while True:
        rows = await store.audit_entries(after=after, limit=PAGE)
        for row in rows:
            walk.feed(row)
        if len(rows) < PAGE:
            break
        after = rows[-1].seq
    problems += walk.finish()
    problems.sort(key=lambda p: p.seq)
    return AuditReport(not problems, walk.entries, walk.matched, problems)


async def entries(store: StateStore, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """The audit entries (parsed bodies, in order), optionally only those of one run."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        rows = await store.audit_entries(after=after, limit=PAGE)
        for row in rows:
            body: dict[str, Any] = json.loads(row.body)
            if run_id is None or body.get("run") == run_id:
                out.append(body)
        if len(rows) < PAGE:
            return out
        after = rows[-1].seq
