"""The audit log's hash chain: canonical JSON, links, and the verifier's walk over the rows.

Every entry is stored as `(seq, prev, hash, body)`: `body` is the canonical JSON of the entry
(with its `seq`), `prev` the hash of the entry before it (`GENESIS` for the first) and `hash`
the sha256 (hex) of `prev`, `seq` and `body` joined by newlines. Changing any entry breaks the
link to the next one; rewriting every hash after the change is caught by a signed checkpoint
(see `signing.py`), which pins the hash of one entry.

This module is imported by the stores: it must stay light (stdlib only).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

GENESIS = "0" * 64
"""The `prev` of the first entry."""

ProblemKind = Literal[
    "edited",
    "re-hashed",
    "deleted",
    "reordered",
    "truncated",
    "inserted",
    "bad-signature",
    "checkpoint-mismatch",
]


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The json module's C encoder, made once: `JSONEncoder.encode` builds a new one per call, a
# quarter of the cost of encoding an audit entry. Same output (no circular-reference check:
# entries are built from JSON data).
_make: Any = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE: Callable[[Any, int], Any] | None = (
    _make(None, _not_json, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    if _make is not None
    else None
)


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def utc_timestamp(t: float | None = None) -> str:
    """An entry's time, ISO 8601 UTC with microseconds: 2026-11-25T18:44:04.123456Z.

    Each second is formatted once (entries come in bursts).
    """
    global _second
    if t is None:
        t = time.time()
    s = int(t)
    sec, text = _second  # one tuple, replaced whole: safe from several threads
    if s != sec:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        _second = (s, text)
    return f"{text}.{int((t - s) * 1e6):06d}Z"


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 (not ASCII-escaped)."""
    if _C_ENCODE is not None and type(value) is dict:
        return "".join(_C_ENCODE(value, 0))
    return _CANONICAL.encode(value)


def link(prev: str, seq: int, body: str) -> str:
    """The hash of entry `seq` with canonical JSON `body`, chained to `prev`."""
    return hashlib.sha256(f"{prev}\n{seq}\n{body}".encode()).hexdigest()


def seal(
    entries: Iterable[Mapping[str, Any]], head: tuple[int, str]
) -> list[tuple[int, str, str, str]]:
    """Number and chain new entry bodies after `head` (last seq, last hash).

    Returns:
        Rows `(seq, prev, hash, body)` ready to append, in order.

    """
    seq, prev = head
    rows: list[tuple[int, str, str, str]] = []
    for entry in entries:
        seq += 1
        body = canonical_json({**entry, "seq": seq})
        digest = link(prev, seq, body)
        rows.append((seq, prev, digest, body))
        prev = digest
    return rows


@dataclass(frozen=True, slots=True)
class Problem:
    """One sign of tampering, located at an entry (or at a checkpoint's entry)."""

    seq: int
    """The entry concerned (for checkpoint problems, the entry the checkpoint covers)."""
    kind: ProblemKind
    """What happened, in one word."""
    message: str
    """The same in a sentence a stranger understands."""


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A checkpoint whose signature verified: the hash entry `seq` must have."""

    number: int
    """Position of the checkpoint in its file, from 1 (`#3` in messages)."""
    seq: int
    """The last entry it covers."""
    hash: str
    """That entry's hash when it was signed."""
    ts: str
    """When it was signed (UTC ISO-8601)."""

    @property
    def label(self) -> str:
        """`checkpoint #3 (signed 2026-11-25T10:00:00Z)`."""
        return f"checkpoint #{self.number} (signed {self.ts})"


class Row(Protocol):
    """What the walk reads of a stored entry (`stores.AuditRow`)."""

    @property
    def seq(self) -> int: ...
    @property
    def prev(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def body(self) -> str: ...


def _body_seq(body: str) -> int | None:
    """The `seq` written inside a body, or None when the body is not an entry's JSON."""
    try:
        value: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    seq: Any = cast("dict[str, Any]", value).get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _entries(lo: int, hi: int, one: str, many: str) -> str:
    """`entry 17 is` / `entries 17 to 19 are` (with the verb given)."""
    return f"entry {lo} {one}" if lo == hi else f"entries {lo} to {hi} {many}"


# Called with each following row (None at the end of the log); True once it has decided.
_Lookahead = Callable[[Row | None], bool]


class ChainWalk:
    """Checks rows one at a time, in seq order, in constant memory.

    Feed every row with `feed`, then call `finish`; `problems` holds the first break of the
    chain (classified precisely, which may need to read ahead) and any truncation that a
    checkpoint proves. Rows after the first break are only counted.
    """

    def __init__(self, checkpoints: Iterable[SignedHead] = ()) -> None:
        self._pins: dict[int, list[SignedHead]] = {}
        for cp in checkpoints:
            if cp.seq > 0:
                self._pins.setdefault(cp.seq, []).append(cp)
        self.problems: list[Problem] = []
        """What was found, first problem first."""
        self.entries = 0
        """Rows read."""
        self.matched = 0
        """Checkpoints whose hash the log matches."""
        self._expect = 1
        self._prev = GENESIS
        self._pinned = 0  # the last entry a checkpoint confirmed
        self._end = 0
        self._broken = False
        self._ahead: _Lookahead | None = None

    def feed(self, row: Row) -> None:
        """Check the next row."""
        self.entries += 1
        self._end = row.seq
        if self._ahead is not None:
            if self._ahead(row):
                self._ahead = None
        elif not self._broken:
            self._check(row)

    def finish(self) -> list[Problem]:
        """Close the walk (the log has no more rows) and return the problems."""
        if self._ahead is not None:
            self._ahead(None)
            self._ahead = None
        if self._pins:
            top = max(self._pins)
            if top > self._end:
                cp = self._pins[top][0]
                where = f"ends at entry {self._end}" if self._end else "is empty"
                self.problems.append(
                    Problem(
                        self._end + 1,
                        "truncated",
                        f"the log {where} but {cp.label} covers up to entry {top}: truncated",
                    )
                )
        return self.problems

    def _fail(self, seq: int, kind: ProblemKind, message: str) -> None:
        self._broken = True
        self.problems.append(Problem(seq, kind, message))

    def _check(self, row: Row) -> None:
        s = row.seq
        if s < self._expect:
            self._fail(
                s,
                "inserted",
                f"entry {s} appears twice (again after entry {self._expect - 1}): inserted",
            )
            return
        if s > self._expect:
            e = self._expect
            before = f"{e - 1} is followed by {s}" if e > 1 else f"the log starts at entry {s}"
            self._fail(
                e, "deleted", f"{_entries(e, s - 1, 'is', 'are')} missing ({before}): deleted"
            )
            return
        if link(row.prev, s, row.body) != row.hash:
            self._misplaced(row)
            return
        if row.prev != self._prev:
            if s == 1:
                self._fail(
                    1, "re-hashed", "entry 1 was edited and re-hashed: it does not start the chain"
                )
            elif self._pinned == s - 1:
                self._fail(
                    s,
                    "re-hashed",
                    f"entry {s} was edited and re-hashed: it no longer links to entry {s - 1}, "
                    "whose hash a signed checkpoint confirms",
                )
            else:
                self._fail(
                    s - 1,
                    "re-hashed",
                    f"entry {s - 1} was edited and re-hashed: entry {s} links to a different hash",
                )
            return
        self._prev = row.hash
        self._expect = s + 1
        pins = self._pins.get(s)
        if pins is not None:
            self._pin(row, pins)

    def _pin(self, row: Row, pins: list[SignedHead]) -> None:
        """Compare a sound, linked row with the checkpoints that cover it."""
        wrong = [cp for cp in pins if cp.hash != row.hash]
        if not wrong:
            self.matched += len(pins)
            self._pinned = row.seq
            return
        s, cp, since = row.seq, wrong[0], self._pinned + 1
        where = f"an entry from {since} to {s}" if since < s else f"entry {s}"
        self._broken = True

        def decide(nxt: Row | None) -> bool:
            if nxt is not None and nxt.prev == cp.hash:
                # The next entry still links to the signed hash: only this one was rewritten.
                why = f"entry {nxt.seq} and {cp.label} link to a different hash"
                self.problems.append(
                    Problem(s, "re-hashed", f"entry {s} was edited and re-hashed: {why}")
                )
            elif nxt is None:
                # The last entry: a rewrite of it alone and of a few entries before it (all
                # re-hashed) look the same.
                also = f" (maybe with entries from {since} on)" if since < s else ""
                self.problems.append(
                    Problem(
                        s,
                        "re-hashed",
                        f"entry {s} was edited and re-hashed{also}: its hash differs from the "
                        f"one {cp.label} vouches for",
                    )
                )
            else:
                self.problems.append(
                    Problem(
                        s,
                        "checkpoint-mismatch",
                        f"{cp.label} does not match entry {s}: {where} was edited and the "
                        "chain re-hashed after it was signed",
                    )
                )
            return True

        self._ahead = decide

    def _misplaced(self, row: Row) -> None:
        """A row whose content does not match its hash: edited, or moved from elsewhere."""
        s = row.seq
        edited = f"entry {s} was edited: its content no longer matches its hash"
        bs = _body_seq(row.body)
        if bs is None or bs == s:
            self._fail(s, "edited", edited)
            return
        whole = link(row.prev, bs, row.body) == row.hash  # a sound entry, from position bs
        if bs < s:
            if whole:
                self._fail(
                    bs,
                    "inserted",
                    f"{_entries(bs, s - 1, 'was', 'were')} inserted: the original entry {bs} "
                    f"now sits at position {s}",
                )
            else:
                self._fail(s, "edited", edited)
            return
        self._broken = True

        def decide(other: Row | None) -> bool:
            if other is not None and other.seq < bs:
                return False  # not there yet
            swapped = False
            if other is not None and other.seq == bs and _body_seq(other.body) == s:
                rows = whole and link(other.prev, s, other.body) == other.hash
                bodies = (
                    link(row.prev, s, other.body) == row.hash
                    and link(other.prev, bs, row.body) == other.hash
                )
                swapped = rows or bodies
            if swapped:
                self.problems.append(
                    Problem(s, "reordered", f"entries {s} and {bs} are out of order (swapped)")
                )
            elif whole:
                self.problems.append(
                    Problem(
                        s,
                        "deleted",
                        f"{_entries(s, bs - 1, 'is', 'are')} missing (entry {bs} was renumbered "
                        f"to take position {s}): deleted",
                    )
                )
            else:
                self.problems.append(Problem(s, "edited", edited))
            return True

        self._ahead = decide


def verify_rows(rows: Iterable[Row], checkpoints: Iterable[SignedHead] = ()) -> list[Problem]:
    """Walk a whole log (rows in seq order) against verified checkpoints.

    Args:
        rows: Every stored entry, in seq order (any iterable: it is read once).
        checkpoints: Checkpoints whose signatures were verified.

    Returns:
        The first break of the chain, classified, then a truncation if a checkpoint proves one;
        empty for an untouched log.

    """
    walk = ChainWalk(checkpoints)
    for row in rows:
        walk.feed(row)
    return walk.finish()
