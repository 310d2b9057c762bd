"""The tamper-evident audit log, attacked the way someone with write access to the files would.

Logs are built by committing Batches with audit entries to a real SQLite store in tmp_path and
signing checkpoints with a real Ed25519 key. The attacker uses a raw `sqlite3` connection: it
drops the append-only triggers, then edits, deletes, swaps, truncates and re-hashes rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import re
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cadenza._cli_audit import audit_app
from cadenza.audit import (
    AuditReport,
    AuditSettings,
    Checkpointer,
    Problem,
    checkpointer_for,
    entries,
    verify,
    verify_rows,
)
from cadenza.audit._chain import GENESIS, link
from cadenza.audit.signing import key_id, load_or_create_key, make_checkpoint
from cadenza.errors import ConfigError, StoreError
from cadenza.stores import Batch, Event, MemoryStore, SQLiteStore, StateStore

N = 12
"""Entries in the attacked log."""
SIGNED = (4, 8, 12)
"""The entries checkpoints are signed at (the run signs at its end: 12)."""


def body(i: int, run: str) -> dict[str, Any]:
    return {
        "ts": f"2026-11-25T10:00:{i % 60:02d}.000000Z",
        "run": run,
        "actor": "ann",
        "agent": "support",
        "model": "scripted:echo",
        "tool": "refund",
        "version": "1.0.0",
        "args_hash": f"{i:064x}",
        "args": {"order": f"A-{i}", "amount": i * 10, "note": "café"},
        "decision": {"effect": "allow", "rule": "small-refunds", "policy_version": "3"},
        "approver": None,
        "outcome": "executed",
    }


class Writer:
    """Commits steps with audit entries, the way a run's journal writer does."""

    def __init__(self, store: StateStore, runs: tuple[str, ...] = ("r1", "r2", "r3")) -> None:
        self.store = store
        self.runs = runs
        self.events: dict[str, int] = {}
        self.n = 0

    async def add(self, count: int = 1, *, events: bool = True) -> None:
        """One commit of `count` entries, for the next run in turn (with an event each)."""
        run = self.runs[self.n % len(self.runs)]
        b = Batch()
        evs: list[Event] = []
        audit: list[dict[str, Any]] = []
        for _ in range(count):
            self.n += 1
            seq = self.events[run] = self.events.get(run, 0) + 1
            evs.append(Event(run, seq, "tool.returned", 1000.0 + seq, {"n": self.n}))
            audit.append(body(self.n, run))
        b.events = evs if events else []
        b.audit = audit
        await self.store.commit(run, b)


@dataclass
class Log:
    """A SQLite audit log on disk with its signed checkpoints."""

    db: Path
    checkpoints: Path
    key: Path

    @property
    def public_key(self) -> Path:
        return Path(f"{self.key}.pub")

    async def verify(self, *, checkpoints: bool = True) -> AuditReport:
        store = SQLiteStore(self.db)
        try:
            return await verify(
                store,
                checkpoints=self.checkpoints if checkpoints else None,
                public_key=self.public_key,
            )
        finally:
            await store.close()

    @contextlib.contextmanager
    def attacker(self) -> Iterator[sqlite3.Connection]:
        """A raw connection with the append-only triggers dropped, committed on exit."""
        db = sqlite3.connect(self.db)
        try:
            db.execute("DROP TRIGGER audit_no_update")
            db.execute("DROP TRIGGER audit_no_delete")
            yield db
            db.commit()
        finally:
            db.close()

    def rows(self) -> dict[int, tuple[str, str, str]]:
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            return {s: (p, h, b) for s, p, h, b in db.execute("SELECT * FROM audit")}


async def make_log(
    tmp_path: Path, n: int = N, signed: tuple[int, ...] = SIGNED, name: str = "audit"
) -> Log:
    log = Log(tmp_path / f"{name}.db", tmp_path / f"{name}.cps.jsonl", tmp_path / "keys" / "k.pem")
    store = SQLiteStore(log.db)
    signer = Checkpointer(store, key=log.key, path=log.checkpoints)
    w = Writer(store)
    try:
        for i in range(1, n + 1):
            await w.add()
            if i in signed:
                assert await signer.sign() is not None
    finally:
        await store.close()
    return log


def edited(text: str) -> str:
    return text.replace('"outcome":"executed"', '"outcome":"denied"')


def rehash(db: sqlite3.Connection, seq: int, new_body: str) -> str:
    """Replace entry `seq`'s body and recompute its own hash (its prev stays)."""
    (prev,) = db.execute("SELECT prev FROM audit WHERE seq=?", (seq,)).fetchone()
    digest = link(prev, seq, new_body)
    db.execute("UPDATE audit SET body=?, hash=? WHERE seq=?", (new_body, digest, seq))
    return digest


def only(report: AuditReport) -> Problem:
    assert not report.ok
    assert len(report.problems) == 1, report.describe()
    return report.problems[0]


# --- an untouched log ------------------------------------------------------------------------


async def test_an_untouched_log_verifies(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    report = await log.verify()
    assert (report.ok, report.entries, report.checkpoints, report.problems) == (True, N, 3, [])
    assert report.describe() == "audit log OK: 12 entries, 3 signed checkpoints verified"
    rows = log.rows()
    assert sorted(rows) == list(range(1, N + 1))
    assert rows[1][0] == GENESIS
    for s in range(2, N + 1):
        assert rows[s][0] == rows[s - 1][1]
    assert json.loads(rows[5][2])["seq"] == 5


@pytest.mark.parametrize("seed", range(12))
async def test_untouched_logs_of_random_sizes_never_fail(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = SQLiteStore(tmp_path / "r.db")
    cps = tmp_path / "r.cps.jsonl"
    signer = Checkpointer(store, key=tmp_path / "k.pem", path=cps)
    w = Writer(store, runs=tuple(f"run{i}" for i in range(rng.randint(1, 5))))
    try:
        for _ in range(rng.randint(0, 40)):
            await w.add(rng.randint(1, 4))
            if rng.random() < 0.3:
                await signer.sign()
        with_cps = await verify(store, checkpoints=cps, public_key=tmp_path / "k.pem.pub")
        chain_only = await verify(store)
    finally:
        await store.close()
    for report in (chain_only, *([with_cps] if cps.exists() else [])):
        assert report.ok, report.describe()
        assert report.entries == w.n
        assert report.problems == []


async def test_memory_store_log_is_a_valid_chain() -> None:
    store = MemoryStore()
    w = Writer(store)
    for k in (1, 3, 2, 5):
        await w.add(k)
    rows = await store.audit_entries()
    assert [r.seq for r in rows] == list(range(1, 12))
    assert verify_rows(rows) == []
    report = await verify(store)
    assert (report.ok, report.entries, report.checkpoints) == (True, 11, 0)


# --- the database refuses changes ------------------------------------------------------------


async def test_triggers_block_update_and_delete(tmp_path: Path) -> None:
    log = await make_log(tmp_path, n=3, signed=())
    with contextlib.closing(sqlite3.connect(log.db)) as db:
        with pytest.raises(sqlite3.IntegrityError, match=r"^audit log is append-only$"):
            db.execute("UPDATE audit SET body='{}' WHERE seq=2")
        with pytest.raises(sqlite3.IntegrityError, match=r"^audit log is append-only$"):
            db.execute("DELETE FROM audit WHERE seq=3")
        with pytest.raises(sqlite3.IntegrityError, match=r"^audit log is append-only$"):
            db.execute("DELETE FROM audit")
        db.rollback()
    assert sorted(log.rows()) == [1, 2, 3]
    assert (await log.verify(checkpoints=False)).ok


# --- single-entry attacks, at every position -------------------------------------------------


@pytest.mark.parametrize("k", range(1, N + 1))
async def test_an_edit_is_found_at_its_entry(tmp_path: Path, k: int) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        db.execute("UPDATE audit SET body=? WHERE seq=?", (edited(log.rows()[k][2]), k))
    p = only(await log.verify())
    assert (p.seq, p.kind) == (k, "edited")
    assert p.message == f"entry {k} was edited: its content no longer matches its hash"


@pytest.mark.parametrize("k", range(1, N + 1))
async def test_an_edit_of_prev_alone_is_an_edit(tmp_path: Path, k: int) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        db.execute("UPDATE audit SET prev=? WHERE seq=?", ("f" * 64, k))
    p = only(await log.verify())
    assert (p.seq, p.kind) == (k, "edited")


@pytest.mark.parametrize("k", range(1, N + 1))
async def test_an_edit_with_its_own_hash_recomputed_is_re_hashed(tmp_path: Path, k: int) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        rehash(db, k, edited(log.rows()[k][2]))
    p = only(await log.verify())
    assert (p.seq, p.kind) == (k, "re-hashed"), p.message
    assert p.message.startswith(f"entry {k} was edited and re-hashed")


async def test_re_hash_messages(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        rehash(db, 6, edited(log.rows()[6][2]))
    p = only(await log.verify())
    assert p.message == "entry 6 was edited and re-hashed: entry 7 links to a different hash"


async def test_a_re_hash_of_the_last_entry_is_invisible_without_a_checkpoint(
    tmp_path: Path,
) -> None:
    # The documented limit: past the last checkpoint, the chain alone protects the tail.
    log = await make_log(tmp_path, signed=(4, 8))
    with log.attacker() as db:
        rehash(db, N, edited(log.rows()[N][2]))
    assert (await log.verify()).ok


@pytest.mark.parametrize("k", range(1, N + 1))
async def test_a_deleted_entry_is_named(tmp_path: Path, k: int) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        db.execute("DELETE FROM audit WHERE seq=?", (k,))
    p = only(await log.verify())
    if k == N:  # the last entry: the log was cut, as far as anyone can tell
        assert (p.seq, p.kind) == (N, "truncated")
    else:
        assert (p.seq, p.kind) == (k, "deleted")
    if k == 1:
        assert p.message == "entry 1 is missing (the log starts at entry 2): deleted"
    elif k < N:
        assert p.message == f"entry {k} is missing ({k - 1} is followed by {k + 1}): deleted"


async def test_several_deleted_entries(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        db.execute("DELETE FROM audit WHERE seq BETWEEN 5 AND 7")
    p = only(await log.verify())
    assert (p.seq, p.kind) == (5, "deleted")
    assert p.message == "entries 5 to 7 are missing (4 is followed by 8): deleted"


async def test_a_deletion_hidden_by_renumbering_is_still_a_deletion(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        db.execute("DELETE FROM audit WHERE seq=5")
        for s in range(6, N + 1):
            db.execute("UPDATE audit SET seq=? WHERE seq=?", (s - 1, s))
    report = await log.verify()
    assert (report.problems[0].seq, report.problems[0].kind) == (5, "deleted")
    assert "entry 6 was renumbered" in report.problems[0].message
    # ...and the tail the checkpoint signed is one entry short.
    assert [(p.seq, p.kind) for p in report.problems[1:]] == [(12, "truncated")]


PAIRS = [(i, j) for i in range(1, N + 1) for j in range(i + 1, N + 1)]


@pytest.mark.parametrize(("i", "j"), PAIRS)
async def test_swapped_rows_are_reordered(tmp_path: Path, i: int, j: int) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:  # whole rows change places: their seq values are exchanged
        db.execute("UPDATE audit SET seq=-1 WHERE seq=?", (i,))
        db.execute("UPDATE audit SET seq=? WHERE seq=?", (i, j))
        db.execute("UPDATE audit SET seq=? WHERE seq=-1", (j,))
    p = only(await log.verify())
    assert (p.seq, p.kind) == (i, "reordered")
    assert p.message == f"entries {i} and {j} are out of order (swapped)"


@pytest.mark.parametrize(("i", "j"), PAIRS)
async def test_swapped_bodies_are_reordered(tmp_path: Path, i: int, j: int) -> None:
    log = await make_log(tmp_path)
    rows = log.rows()
    with log.attacker() as db:
        db.execute("UPDATE audit SET body=? WHERE seq=?", (rows[j][2], i))
        db.execute("UPDATE audit SET body=? WHERE seq=?", (rows[i][2], j))
    p = only(await log.verify())
    assert (p.seq, p.kind) == (i, "reordered")


async def test_an_inserted_entry_is_named(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    rows = log.rows()
    with log.attacker() as db:
        for s in range(N, 4, -1):  # make room at 5
            db.execute("UPDATE audit SET seq=? WHERE seq=?", (s + 1, s))
        forged = json.dumps({**json.loads(rows[5][2]), "tool": "wire_money"}, sort_keys=True)
        db.execute(
            "INSERT INTO audit VALUES (5,?,?,?)", (rows[4][1], link(rows[4][1], 5, forged), forged)
        )
    report = await log.verify()
    assert (report.problems[0].seq, report.problems[0].kind) == (5, "inserted")
    assert report.problems[0].message == (
        "entry 5 was inserted: the original entry 5 now sits at position 6"
    )


@pytest.mark.parametrize("k", range(1, N + 1))
async def test_a_truncated_tail_is_found(tmp_path: Path, k: int) -> None:
    log = await make_log(tmp_path)
    with log.attacker() as db:
        db.execute("DELETE FROM audit WHERE seq>=?", (k,))
    p = only(await log.verify())
    assert (p.seq, p.kind) == (k, "truncated")
    where = f"ends at entry {k - 1}" if k > 1 else "is empty"
    assert re.fullmatch(
        rf"the log {where} but checkpoint #3 \(signed \S+Z\) covers up to entry 12: truncated",
        p.message,
    )


# --- rewriting the whole suffix --------------------------------------------------------------


def rewrite_suffix(log: Log, k: int) -> None:
    """Edit entry k and recompute every hash from k on: the chain is whole again."""
    rows = log.rows()
    with log.attacker() as db:
        prev = rows[k][0]
        for s in range(k, N + 1):
            text = edited(rows[s][2]) if s == k else rows[s][2]
            prev_new = link(prev, s, text)
            db.execute(
                "UPDATE audit SET prev=?, body=?, hash=? WHERE seq=?", (prev, text, prev_new, s)
            )
            prev = prev_new


@pytest.mark.parametrize("k", range(1, 9))
async def test_a_re_hashed_suffix_is_caught_by_the_checkpoint_covering_it(
    tmp_path: Path, k: int
) -> None:
    log = await make_log(tmp_path)
    rewrite_suffix(log, k)
    assert (await log.verify(checkpoints=False)).ok  # the chain alone cannot tell
    report = await log.verify()
    cp = 4 if k <= 4 else 8
    p = only(report)
    assert (p.seq, p.kind) == (cp, "checkpoint-mismatch")
    assert re.fullmatch(
        rf"checkpoint #{cp // 4} \(signed \S+Z\) does not match entry {cp}: "
        rf"(an entry from {cp - 3} to {cp}|entry {cp}) was edited and the chain re-hashed after "
        "it was signed",
        p.message,
    )
    assert report.checkpoints == (cp // 4) - 1


@pytest.mark.parametrize("k", range(9, N + 1))
async def test_a_re_hashed_suffix_ending_at_the_last_checkpoint(tmp_path: Path, k: int) -> None:
    # With nothing after the last checkpoint, rewriting entries k..12 and rewriting entry 12
    # alone look the same: reported at 12, naming where the rewrite may start.
    log = await make_log(tmp_path)
    rewrite_suffix(log, k)
    p = only(await log.verify())
    assert (p.seq, p.kind) == (N, "re-hashed")
    assert "(maybe with entries from 9 on)" in p.message


# --- forged checkpoints ----------------------------------------------------------------------


async def test_a_checkpoint_with_a_changed_hash_is_a_bad_signature(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    lines = log.checkpoints.read_text().splitlines()
    cp = json.loads(lines[1])
    cp["hash"] = "a" * 64
    lines[1] = json.dumps(cp)
    log.checkpoints.write_text("\n".join(lines) + "\n")
    report = await log.verify()
    p = only(report)
    assert (p.seq, p.kind) == (8, "bad-signature")
    assert "checkpoint #2 (entry 8" in p.message
    assert "invalid signature" in p.message
    assert report.checkpoints == 2


async def test_a_checkpoint_signed_with_another_key_is_a_bad_signature(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    rewrite_suffix(log, 10)
    head = log.rows()[N]
    mallory = load_or_create_key(tmp_path / "mallory.pem")
    forged = make_checkpoint(mallory, N, head[1])
    lines = log.checkpoints.read_text().splitlines()
    lines[2] = json.dumps(forged)
    log.checkpoints.write_text("\n".join(lines) + "\n")
    report = await log.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(N, "bad-signature")]
    assert f"signed by key {key_id(mallory.public_key())}" in report.problems[0].message

    # Claiming the real key's id does not help: the signature does not verify.
    real = key_id(load_or_create_key(log.key).public_key())
    lines[2] = json.dumps({**forged, "key_id": real})
    log.checkpoints.write_text("\n".join(lines) + "\n")
    report = await log.verify()
    assert [(p.seq, p.kind) for p in report.problems] == [(N, "bad-signature")]


async def test_a_garbled_checkpoint_line(tmp_path: Path) -> None:
    log = await make_log(tmp_path)
    with log.checkpoints.open("a") as f:
        f.write("{not json\n")
    p = only(await log.verify())
    assert p.kind == "bad-signature"
    assert p.message.startswith("checkpoint #4 is not a valid checkpoint line")


# --- two writers -----------------------------------------------------------------------------


def _append_entries(path: str, run_id: str, n: int, start: Any) -> None:
    async def main() -> None:
        store = SQLiteStore(path)
        w = Writer(store, runs=(run_id,))
        start.wait(timeout=60)  # both processes write at the same time
        try:
            for i in range(n):
                # Without events, reading the log's head is the transaction's first statement.
                await w.add(events=i % 2 == 0)
        finally:
            await store.close()

    asyncio.run(main())


async def test_two_processes_append_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    await SQLiteStore(path).close()  # create the schema before the race
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_append_entries, args=(str(path), r, 200, start)) for r in ("p1", "p2")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    assert [p.exitcode for p in procs] == [0, 0]
    store = SQLiteStore(path)
    try:
        report = await verify(store)
        assert (report.ok, report.entries) == (True, 400), report.describe()
        bodies = await entries(store)
        assert [b["seq"] for b in bodies] == list(range(1, 401))
        assert sum(b["run"] == "p1" for b in bodies) == 200
        assert any(a["run"] != b["run"] for a, b in itertools.pairwise(bodies))
        assert len(await entries(store, run_id="p2")) == 200
        assert await store.audit_head() == (400, (await store.audit_entries(after=399))[0].hash)
    finally:
        await store.close()


async def test_nobody_appends_between_reading_the_head_and_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another writer tries to append while a commit holds the head it just read: it must wait
    # (here it gives up after 0.1 s) instead of slipping in and forking the chain.
    import cadenza.stores.sqlite as sqlite_mod

    a, b = SQLiteStore(tmp_path / "x.db"), SQLiteStore(tmp_path / "x.db")
    b._db.execute("PRAGMA busy_timeout=100")
    real_seal = sqlite_mod.seal
    intruder: list[BaseException] = []

    def seal(entries: Any, head: tuple[int, str]) -> Any:
        if not intruder:
            other = Batch()
            other.audit = [body(99, "other")]
            try:
                b.commit_now("other", other)
            except BaseException as exc:
                intruder.append(exc)
            else:
                intruder.append(AssertionError("the other writer appended"))
        return real_seal(entries, head)

    monkeypatch.setattr(sqlite_mod, "seal", seal)
    try:
        await Writer(a).add(events=False)
        assert isinstance(intruder[0], StoreError), intruder
        assert "locked" in str(intruder[0])
        monkeypatch.setattr(sqlite_mod, "seal", real_seal)
        await Writer(b, runs=("other",)).add(events=False)
        assert [r.seq for r in await a.audit_entries()] == [1, 2]
        assert (await verify(a)).ok
    finally:
        await a.close()
        await b.close()


# --- signing ---------------------------------------------------------------------------------


async def test_checkpointer_signs_every_n_entries(tmp_path: Path) -> None:
    store = MemoryStore()
    cps = tmp_path / "cps.jsonl"
    signer = Checkpointer(store, key=tmp_path / "k" / "key.pem", path=cps, every=3, interval=3600)
    assert await signer.maybe() is False  # empty log: nothing to sign
    assert await signer.sign() is None
    w = Writer(store)
    await w.add()
    assert await signer.maybe() is True  # never signed before: due at once
    await w.add(2)
    assert await signer.maybe() is False  # 2 < every, and the interval has not passed
    await w.add()
    assert await signer.maybe() is True  # 3 new entries
    assert await signer.maybe() is False  # nothing new
    lines = [json.loads(x) for x in cps.read_text().splitlines()]
    assert [x["seq"] for x in lines] == [1, 4]
    assert set(lines[0]) == {"seq", "hash", "ts", "key_id", "sig"}
    assert lines[1]["hash"] == (await store.audit_head())[1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", lines[0]["ts"])
    key = tmp_path / "k" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "k" / "key.pem.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert lines[0]["key_id"] == key_id(load_or_create_key(key).public_key())
    assert re.fullmatch(r"[0-9a-f]{16}", lines[0]["key_id"])
    assert await signer.sign() is None  # the head is signed already

    # A new Checkpointer picks up where the file ends.
    again = Checkpointer(store, key=key, path=cps, every=3, interval=3600)
    assert await again.maybe() is False
    await w.add()
    assert (await again.sign() or {})["seq"] == 5


async def test_checkpointer_signs_after_the_interval(tmp_path: Path) -> None:
    store = MemoryStore()
    signer = Checkpointer(
        store, key=tmp_path / "key.pem", path=tmp_path / "c.jsonl", every=1000, interval=0.2
    )
    w = Writer(store)
    await w.add()
    assert await signer.maybe() is True
    await w.add()
    assert await signer.maybe() is False
    await asyncio.sleep(0.25)
    assert await signer.maybe() is True
    await asyncio.sleep(0.25)
    assert await signer.maybe() is False  # time passed, but nothing new


def test_a_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="is not a PEM private key"):
        load_or_create_key(bad)


def test_settings_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CADENZA_AUDIT_KEY", raising=False)
    monkeypatch.delenv("CADENZA_AUDIT_CHECKPOINTS", raising=False)
    s = AuditSettings.for_store(tmp_path / "x.db")
    assert s.key == Path("~/.config/cadenza/audit-ed25519.pem").expanduser()
    assert s.checkpoints == tmp_path / "x.db.audit-checkpoints.jsonl"
    assert (s.every, s.interval) == (100, 60.0)
    assert s.public_key == Path(f"{s.key}.pub")
    assert AuditSettings.for_store(None).checkpoints is None
    monkeypatch.setenv("CADENZA_AUDIT_KEY", str(tmp_path / "k.pem"))
    monkeypatch.setenv("CADENZA_AUDIT_CHECKPOINTS", str(tmp_path / "elsewhere.jsonl"))
    s = AuditSettings.for_store(tmp_path / "x.db")
    assert (s.key, s.checkpoints) == (tmp_path / "k.pem", tmp_path / "elsewhere.jsonl")
    assert AuditSettings.for_store(None).checkpoints is None


async def test_checkpointer_for_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENZA_AUDIT_KEY", str(tmp_path / "k.pem"))
    monkeypatch.delenv("CADENZA_AUDIT_CHECKPOINTS", raising=False)
    assert checkpointer_for(MemoryStore()) is None
    store = SQLiteStore(tmp_path / "s.db")
    try:
        cp = checkpointer_for(store)
        assert cp is not None
        assert checkpointer_for(store) is cp
        assert cp.path == tmp_path / "s.db.audit-checkpoints.jsonl"
        await Writer(store).add()
        assert await cp.maybe() is True
        report = await verify(store, checkpoints=cp.path, public_key=tmp_path / "k.pem.pub")
        assert (report.ok, report.checkpoints) == (True, 1)
    finally:
        await store.close()


async def test_verify_needs_the_public_key_for_checkpoints(tmp_path: Path) -> None:
    log = await make_log(tmp_path, n=2, signed=(2,))
    store = SQLiteStore(log.db)
    try:
        with pytest.raises(ConfigError, match=r"no public key at .*missing\.pub"):
            await verify(store, checkpoints=log.checkpoints, public_key=tmp_path / "missing.pub")
        with pytest.raises(ConfigError, match="no checkpoints file"):
            await verify(store, checkpoints=tmp_path / "nope.jsonl", public_key=log.public_key)
    finally:
        await store.close()


# --- reading entries -------------------------------------------------------------------------


async def test_entries_by_run(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "e.db")
    try:
        w = Writer(store)
        for _ in range(6):
            await w.add()
        got = await entries(store, run_id="r2")
        assert [e["seq"] for e in got] == [2, 5]
        assert got[0] == {**body(2, "r2"), "seq": 2}
        assert len(await entries(store)) == 6
        assert await entries(store, run_id="nobody") == []
    finally:
        await store.close()


@pytest.mark.parametrize("make", [MemoryStore, lambda: SQLiteStore(":memory:")])
async def test_an_unserialisable_entry_fails_the_commit_and_writes_nothing(make: Any) -> None:
    store: StateStore = make()
    await Writer(store).add()
    b = Batch()
    b.events = [Event("r9", 1, "tool.returned", 1.0, {})]
    b.audit = [{"ts": "x", "args": {1, 2}}]
    with pytest.raises(StoreError, match="audit entry is not JSON-serialisable"):
        await store.commit("r9", b)
    assert len(await store.audit_entries()) == 1
    assert await store.events("r9") == []
    await store.close()


# --- the command -----------------------------------------------------------------------------


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Out:
    exit_code: int
    stdout: str
    stderr: str


def cli(*args: str) -> Out:
    app = typer.Typer()
    app.add_typer(audit_app, name="audit")
    r = CliRunner().invoke(app, ["audit", *args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Out(r.exit_code, ANSI.sub("", r.stdout), ANSI.sub("", r.stderr))


def test_cli_verify_ok_and_tampered(tmp_path: Path) -> None:
    log = asyncio.run(make_log(tmp_path))
    base = ["--store", str(log.db), "--checkpoints", str(log.checkpoints)]
    r = cli("verify", *base, "--public-key", str(log.public_key))
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "audit log OK: 12 entries, 3 signed checkpoints verified"

    with log.attacker() as db:
        db.execute("UPDATE audit SET body=? WHERE seq=7", (edited(log.rows()[7][2]),))
    r = cli("verify", *base, "--public-key", str(log.public_key))
    assert r.exit_code == 1
    assert "entry 7 was edited: its content no longer matches its hash" in r.stdout

    r = cli("verify", *base, "--public-key", str(log.public_key), "--json")
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert (data["ok"], data["entries"], data["checkpoints"]) == (False, 12, 1)
    assert data["problems"][0]["kind"] == "edited"


def test_cli_verify_uses_the_default_checkpoints_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CADENZA_AUDIT_KEY", str(tmp_path / "keys" / "k.pem"))
    monkeypatch.delenv("CADENZA_AUDIT_CHECKPOINTS", raising=False)
    log = asyncio.run(make_log(tmp_path, n=3, signed=()))
    r = cli("checkpoint", "--store", str(log.db))
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("signed entry 3 (hash ")
    assert os.path.exists(f"{log.db}.audit-checkpoints.jsonl")
    r = cli("checkpoint", "--store", str(log.db))
    assert "nothing new to sign" in r.stdout
    r = cli("verify", "--store", str(log.db))
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == "audit log OK: 3 entries, 1 signed checkpoint verified"


def test_cli_user_errors(tmp_path: Path) -> None:
    r = cli("verify", "--store", str(tmp_path / "missing.db"))
    assert r.exit_code == 2
    assert r.stderr.startswith("error: no store at ")
    assert not (tmp_path / "missing.db").exists()
    SQLiteStore(tmp_path / "there.db")
    r = cli("verify", "--store", str(tmp_path / "there.db"), "--checkpoints", str(tmp_path / "x"))
    assert r.exit_code == 2
    assert "error: no checkpoints file at" in r.stderr
    r = cli("checkpoint", "--store", "memory:")
    assert r.exit_code == 2
    assert "in-memory store keeps no checkpoints" in r.stderr
