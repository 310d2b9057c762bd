"""The `StateStore` conformance suite: every backend in `conftest.BACKENDS` must pass all of it."""

from __future__ import annotations

import contextlib
import copy
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from cadenza.messages import Message, ToolCall, ToolResult
from cadenza.stores import (
    Batch,
    Checkpoint,
    Event,
    RunRecord,
    SQLiteStore,
    StateStore,
    ToolRecord,
)
from service_checks import backend_unavailable, require_service


class State(BaseModel):
    n: int = 0
    tags: list[str] = []


def state_json(state: Any) -> Any:
    """Graph state as JSON: memory stores keep the model, durable stores give back JSON."""
    return state.model_dump(mode="json") if isinstance(state, BaseModel) else state


def run_record(run_id: str, **kw: Any) -> RunRecord:
    fields: dict[str, Any] = {
        "workflow": "wf",
        "kind": "graph",
        "created_at": 1000.0,
        "updated_at": 1000.0,
    }
    fields.update(kw)
    return RunRecord(id=run_id, **fields)


def event(run_id: str, seq: int, type_: str = "node.finished", **data: Any) -> Event:
    return Event(run_id, seq, type_, 1000.0 + seq, {"step": seq, **data})


def batch(
    *,
    run: RunRecord | None = None,
    events: list[Event] | None = None,
    messages: list[Message] | None = None,
    msg_start: int = 0,
    checkpoint: Checkpoint | None = None,
    state_changed: bool = False,
    tool_records: list[ToolRecord] | None = None,
    run_new: bool | None = None,
) -> Batch:
    b = Batch()
    b.run = run
    if run_new is not None and hasattr(b, "run_new"):
        # Set by the runtime on a run's first write; later writes only change its status.
        b.run_new = run_new
    b.events = events or []
    b.messages = messages or []
    b.msg_start = msg_start
    b.checkpoint = checkpoint
    b.state_changed = state_changed
    b.tool_records = tool_records or []
    return b


def conversation() -> list[Message]:
    call = ToolCall("c1", "add", {"a": 2, "b": 3})
    return [
        Message.system("Be brief."),
        Message.user("2+3?"),
        Message.assistant("", [call]),
        Message.tool([ToolResult("c1", "add", 5)]),
        Message.assistant("5"),
    ]


def test_backends_implement_the_protocol(store: StateStore) -> None:
    assert isinstance(store, StateStore)


async def test_commit_writes_a_whole_step(store: StateStore) -> None:
    rec = run_record(
        "r1",
        status="running",
        thread="t1",
        ref="flows.py:wf",
        input={"n": 1, "text": "héllo"},
        principal={"user_id": "ann", "roles": ["admin"], "tenant": "acme"},
        created_at=1234.5,
        updated_at=1235.5,
    )
    msgs = conversation()
    evs = [event("r1", 1, "run.started", workflow="wf"), event("r1", 2, update={"n": 2})]
    cp = Checkpoint(2, {"next": "b", "visits": {"a": 1}, "messages": 3}, State(n=2, tags=["x"]))
    tr = ToolRecord("r1:2:0", "r1", "started")
    await store.commit(
        "r1",
        batch(
            run=rec,
            run_new=True,
            events=evs,
            messages=msgs,
            checkpoint=cp,
            state_changed=True,
            tool_records=[tr],
        ),
    )

    got = await store.get_run("r1")
    assert got == rec
    assert [(e.run_id, e.seq, e.type, e.ts, e.data) for e in await store.events("r1")] == [
        ("r1", 1, "run.started", 1001.0, {"step": 1, "workflow": "wf"}),
        ("r1", 2, "node.finished", 1002.0, {"step": 2, "update": {"n": 2}}),
    ]
    assert await store.messages("r1") == msgs
    got_cp = await store.checkpoint("r1")
    assert got_cp is not None
    assert got_cp.seq == 2
    assert got_cp.data == {"next": "b", "visits": {"a": 1}, "messages": 3}
    assert state_json(got_cp.state) == {"n": 2, "tags": ["x"]}
    assert got_cp.messages == msgs[:3]
    got_tr = await store.tool_record("r1:2:0")
    assert got_tr is not None
    assert (got_tr.key, got_tr.run_id, got_tr.status, got_tr.result) == (
        "r1:2:0",
        "r1",
        "started",
        None,
    )


@pytest.mark.parametrize("flag_first_write", [True, False])
async def test_run_status_changes_in_later_commits(
    store: StateStore, flag_first_write: bool
) -> None:
    first = run_record(
        "r1",
        thread="t",
        ref="f.py:wf",
        input={"q": 1},
        principal={"user_id": "ann", "roles": [], "tenant": None},
    )
    await store.commit(
        "r1",
        batch(run=copy.deepcopy(first), events=[event("r1", 1)], run_new=flag_first_write or None),
    )
    assert await store.get_run("r1") == first

    def changed(**kw: Any) -> RunRecord:
        rec = copy.deepcopy(first)
        for k, v in kw.items():
            setattr(rec, k, v)
        return rec

    failed = changed(status="failed", error={"type": "RunError", "message": "boom"}, updated_at=2.0)
    await store.commit("r1", batch(run=failed, run_new=False))
    assert await store.get_run("r1") == failed
    assert [r.id for r in await store.list_runs()] == ["r1"]

    finished = changed(status="finished", output={"n": 3}, error=None, updated_at=3.0)
    await store.commit("r1", batch(run=finished, events=[event("r1", 2)], run_new=False))
    assert await store.get_run("r1") == finished
    assert [r.id for r in await store.list_runs(thread="t", status="finished")] == ["r1"]
    assert await store.list_runs(status="failed") == []
    assert [e.seq for e in await store.events("r1")] == [1, 2]


async def test_returned_records_are_snapshots(store: StateStore) -> None:
    rec = run_record("r1", input={"n": 1})
    await store.commit("r1", batch(run=rec))
    # The runtime keeps mutating its RunRecord after a commit; the store must not follow.
    rec.status = "finished"
    rec.output = {"n": 99}
    got = await store.get_run("r1")
    assert got is not None
    assert (got.status, got.output) == ("running", None)
    got.status = "failed"
    again = await store.get_run("r1")
    assert again is not None
    assert again.status == "running"


async def test_get_and_checkpoint_of_unknown_ids(store: StateStore) -> None:
    await store.commit("r1", batch(run=run_record("r1"), events=[event("r1", 1)]))
    assert await store.get_run("nope") is None
    assert await store.checkpoint("nope") is None
    assert await store.checkpoint("r1") is None  # a run with no checkpoint yet
    assert await store.tool_record("nope:1:0") is None
    assert await store.events("nope") == []
    assert await store.messages("nope") == []


async def test_list_runs_filters_newest_first_and_limits(store: StateStore) -> None:
    specs = [
        ("r1", "t1", "finished", 1.0),
        ("r2", "t2", "finished", 2.0),
        ("r3", "t1", "failed", 3.0),
        ("r4", "t1", "finished", 4.0),
        ("r5", None, "running", 5.0),
    ]
    # Committed out of creation order: ordering must follow created_at, not insertion.
    for run_id, thread, status, created in [specs[2], specs[0], specs[4], specs[1], specs[3]]:
        rec = run_record(
            run_id, thread=thread, status=status, created_at=created, updated_at=created
        )
        await store.commit(run_id, batch(run=rec))

    async def ids(**kw: Any) -> list[str]:
        return [r.id for r in await store.list_runs(**kw)]

    assert await ids() == ["r5", "r4", "r3", "r2", "r1"]
    assert await ids(thread="t1") == ["r4", "r3", "r1"]
    assert await ids(status="finished") == ["r4", "r2", "r1"]
    assert await ids(thread="t1", status="finished") == ["r4", "r1"]
    assert await ids(thread="t1", status="running") == []
    assert await ids(thread="nope") == []
    assert await ids(limit=2) == ["r5", "r4"]
    assert await ids(thread="t1", limit=1) == ["r4"]
    runs = await store.list_runs(thread="t2")
    assert [(r.id, r.thread, r.status, r.created_at) for r in runs] == [
        ("r2", "t2", "finished", 2.0)
    ]


async def test_events_after(store: StateStore) -> None:
    await store.commit("r1", batch(run=run_record("r1"), events=[event("r1", i) for i in (1, 2)]))
    await store.commit("r1", batch(events=[event("r1", i) for i in (3, 4, 5)]))
    await store.commit("r2", batch(run=run_record("r2"), events=[event("r2", 1, "other")]))

    async def seqs(after: int = 0) -> list[int]:
        return [e.seq for e in await store.events("r1", after=after)]

    assert await seqs() == [1, 2, 3, 4, 5]
    assert await seqs(0) == [1, 2, 3, 4, 5]
    assert await seqs(3) == [4, 5]
    assert await seqs(4) == [5]
    assert await seqs(5) == []
    assert await seqs(99) == []
    assert all(e.run_id == "r1" for e in await store.events("r1"))
    assert [(e.seq, e.type) for e in await store.events("r2")] == [(1, "other")]


async def test_checkpoint_is_the_latest_with_the_latest_state(store: StateStore) -> None:
    msgs = conversation()
    await store.commit(
        "r1",
        batch(
            run=run_record("r1"),
            messages=msgs[:2],
            checkpoint=Checkpoint(0, {"next": "a", "messages": 2}, State(n=0)),
            state_changed=True,
        ),
    )
    await store.commit(
        "r1",
        batch(
            messages=msgs[2:4],
            msg_start=2,
            checkpoint=Checkpoint(1, {"next": "b", "messages": 4}, State(n=1, tags=["a"])),
            state_changed=True,
        ),
    )
    # Later steps that did not change the state: their checkpoint's state is not stored, and
    # the state of step 1 stands.
    await store.commit(
        "r1",
        batch(
            messages=msgs[4:],
            msg_start=4,
            checkpoint=Checkpoint(2, {"next": "c", "messages": 3}, State(n=-1)),
            state_changed=False,
        ),
    )
    await store.commit(
        "r1",
        batch(checkpoint=Checkpoint(3, {"next": "d", "messages": 5}, None), state_changed=False),
    )
    cp = await store.checkpoint("r1")
    assert cp is not None
    assert cp.seq == 3
    assert cp.data == {"next": "d", "messages": 5}
    assert state_json(cp.state) == {"n": 1, "tags": ["a"]}
    assert cp.messages == msgs

    # Messages are rebuilt only up to the checkpoint's own count, even when more are logged.
    await store.commit(
        "r1",
        batch(checkpoint=Checkpoint(4, {"next": "e", "messages": 3}, None), state_changed=False),
    )
    cp = await store.checkpoint("r1")
    assert cp is not None
    assert (cp.seq, cp.data["next"]) == (4, "e")
    assert cp.messages == msgs[:3]
    assert state_json(cp.state) == {"n": 1, "tags": ["a"]}
    assert await store.messages("r1") == msgs

    # A checkpoint without a message count has no messages; a changed state replaces the old.
    await store.commit(
        "r1", batch(checkpoint=Checkpoint(5, {"next": "f"}, State(n=5)), state_changed=True)
    )
    cp = await store.checkpoint("r1")
    assert cp is not None
    assert (cp.seq, cp.data, cp.messages) == (5, {"next": "f"}, [])
    assert state_json(cp.state) == {"n": 5, "tags": []}


async def test_checkpoint_without_any_state(store: StateStore) -> None:
    msgs = conversation()
    await store.commit(
        "r1",
        batch(
            run=run_record("r1", kind="agent"),
            messages=msgs[:2],
            checkpoint=Checkpoint(0, {"retries": 0, "messages": 2}),
        ),
    )
    cp = await store.checkpoint("r1")
    assert cp is not None
    assert (cp.seq, cp.data, cp.state) == (0, {"retries": 0, "messages": 2}, None)
    assert cp.messages == msgs[:2]


async def test_recommitting_a_step_without_state_change_keeps_its_state(
    store: StateStore,
) -> None:
    # The agent loop re-stages the same step (model turn, then its tool results); a graph may
    # too. "Stored only when state_changed (otherwise the previous state stands)."
    await store.commit(
        "r1",
        batch(
            run=run_record("r1"),
            checkpoint=Checkpoint(1, {"next": "b"}, State(n=1)),
            state_changed=True,
        ),
    )
    await store.commit(
        "r1", batch(checkpoint=Checkpoint(2, {"next": "c"}, State(n=2)), state_changed=True)
    )
    await store.commit(
        "r1", batch(checkpoint=Checkpoint(2, {"next": "d"}, None), state_changed=False)
    )
    cp = await store.checkpoint("r1")
    assert cp is not None
    assert (cp.seq, cp.data) == (2, {"next": "d"})
    assert state_json(cp.state) == {"n": 2, "tags": []}


async def test_message_log_is_overwritten_from_msg_start(store: StateStore) -> None:
    m = [Message.user(f"m{i}") for i in range(4)]
    await store.commit("r1", batch(run=run_record("r1", kind="agent"), messages=m, msg_start=0))
    assert await store.messages("r1") == m

    # Appending exactly at the end.
    x4 = Message.assistant("x4")
    await store.commit("r1", batch(messages=[x4], msg_start=4))
    assert await store.messages("r1") == [*m, x4]

    # Overwriting from the middle drops everything after the start.
    y2, y3 = Message.assistant("y2"), Message.assistant("y3", [ToolCall("c9", "t", {"k": [1]})])
    await store.commit("r1", batch(messages=[y2, y3], msg_start=2))
    assert await store.messages("r1") == [m[0], m[1], y2, y3]

    z1 = Message.tool([ToolResult("c9", "t", {"ok": True}, is_error=True)])
    await store.commit(
        "r1",
        batch(messages=[z1], msg_start=1, checkpoint=Checkpoint(3, {"messages": 2})),
    )
    assert await store.messages("r1") == [m[0], z1]
    cp = await store.checkpoint("r1")
    assert cp is not None
    assert cp.messages == [m[0], z1]

    # Other runs' logs are untouched.
    await store.commit("r2", batch(run=run_record("r2"), messages=[Message.user("other")]))
    assert await store.messages("r1") == [m[0], z1]
    assert await store.messages("r2") == [Message.user("other")]


async def test_tool_record_started_then_done(store: StateStore) -> None:
    key = "r1:3:1"
    await store.commit(
        "r1",
        batch(run=run_record("r1", kind="agent"), tool_records=[ToolRecord(key, "r1", "started")]),
    )
    rec = await store.tool_record(key)
    assert rec is not None
    assert (rec.key, rec.run_id, rec.status, rec.result) == (key, "r1", "started", None)

    result = {"content": {"ticket": "T-1", "tags": ["a", "é"]}, "is_error": False}
    await store.commit(
        "r1",
        batch(
            events=[event("r1", 1, "tool.called")],
            tool_records=[ToolRecord(key, "r1", "done", copy.deepcopy(result))],
        ),
    )
    rec = await store.tool_record(key)
    assert rec is not None
    assert (rec.key, rec.run_id, rec.status, rec.result) == (key, "r1", "done", result)
    assert [e.type for e in await store.events("r1")] == ["tool.called"]
    assert await store.tool_record("r1:3:0") is None
    assert await store.tool_record("r1:3:2") is None


class _Opaque:
    """A value no durable store can serialize."""


class _OpaqueState(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    n: int = 0
    blob: _Opaque | None = None


@pytest.mark.parametrize("poison", ["duplicate event seq", "unserializable state"])
async def test_a_failed_commit_leaves_nothing_behind(store: StateStore, poison: str) -> None:
    m0 = Message.user("hi")
    await store.commit(
        "r1",
        batch(
            run=run_record("r1"),
            events=[event("r1", 1)],
            messages=[m0],
            checkpoint=Checkpoint(1, {"next": "a", "messages": 1}, State(n=1)),
            state_changed=True,
        ),
    )
    bad_events = [event("r1", 2), event("r1", 3)]
    bad_state: Any = State(n=2)
    if poison == "duplicate event seq":
        bad_events.append(event("r1", 1, "dup"))
    else:
        bad_state = _OpaqueState(n=2, blob=_Opaque())
    bad = batch(
        run=run_record("r1", status="finished", output={"n": 2}, updated_at=2000.0),
        events=bad_events,
        messages=[Message.assistant("ok")],
        msg_start=1,
        checkpoint=Checkpoint(2, {"next": "b", "messages": 2}, bad_state),
        state_changed=True,
        tool_records=[ToolRecord("r1:2:0", "r1", "done", {"content": 1, "is_error": False})],
    )
    try:
        await store.commit("r1", bad)
    except Exception:
        failed = True
    else:
        failed = False

    if failed:
        # All or nothing: none of the failed step is visible.
        run = await store.get_run("r1")
        assert run is not None
        assert run.status == "running"
        assert [e.seq for e in await store.events("r1")] == [1]
        assert await store.messages("r1") == [m0]
        cp = await store.checkpoint("r1")
        assert cp is not None
        assert (cp.seq, state_json(cp.state)) == (1, {"n": 1, "tags": []})
        assert await store.tool_record("r1:2:0") is None
    else:
        # The backend accepted the step: then all of it is visible.
        run = await store.get_run("r1")
        assert run is not None
        assert run.status == "finished"
        assert {2, 3} <= {e.seq for e in await store.events("r1")}
        assert await store.messages("r1") == [m0, Message.assistant("ok")]
        cp = await store.checkpoint("r1")
        assert cp is not None
        assert cp.seq == 2
        assert await store.tool_record("r1:2:0") is not None

    # Either way the store stays usable for the next step (and for other runs).
    await store.commit(
        "r2", batch(run=run_record("r2", created_at=3000.0), events=[event("r2", 1)])
    )
    assert await store.get_run("r2") is not None
    assert [e.seq for e in await store.events("r2")] == [1]


async def test_empty_batch_changes_nothing(store: StateStore) -> None:
    await store.commit("r1", batch(run=run_record("r1"), events=[event("r1", 1)]))
    await store.commit("r1", Batch())
    assert [e.seq for e in await store.events("r1")] == [1]
    assert await store.get_run("r1") == run_record("r1")


# --- the harness itself ----------------------------------------------------------------------


@pytest.mark.parametrize("ci", ["true", ""])
def test_unavailable_backend_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match="postgres store backend unavailable: no server"):
        backend_unavailable("postgres", "no server")


@pytest.mark.parametrize("ci", ["true", "false"])
def test_require_service_with_nothing_listening(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    import socket

    with socket.socket() as s:  # find a free port, then close it: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("CADENZA_TEST_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    expected = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(expected, match=rf"redis store backend unavailable: .*127\.0\.0\.1:{port}"):
        require_service("redis", "CADENZA_TEST_REDIS_URL", "redis://localhost:6379/0")


def test_require_service_returns_the_url_when_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        url = f"postgresql://127.0.0.1:{srv.getsockname()[1]}/db"
        monkeypatch.setenv("CADENZA_TEST_PG_URL", url)
        assert require_service("postgres", "CADENZA_TEST_PG_URL", "postgresql://x:1/db") == url


# --- SQLite only -----------------------------------------------------------------------------


async def test_sqlite_is_shared_between_store_objects_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    a, b = SQLiteStore(path), SQLiteStore(path)
    try:
        await a.commit(
            "r1",
            batch(
                run=run_record("r1", thread="t"),
                events=[event("r1", 1)],
                messages=[Message.user("hi")],
                checkpoint=Checkpoint(1, {"messages": 1}, State(n=1)),
                state_changed=True,
                tool_records=[ToolRecord("r1:1:0", "r1", "done", {"content": "x"})],
            ),
        )
        # b sees a's commit at once (no caching, no stale snapshot).
        assert await b.get_run("r1") == run_record("r1", thread="t")
        assert [e.seq for e in await b.events("r1")] == [1]
        assert await b.messages("r1") == [Message.user("hi")]
        cp = await b.checkpoint("r1")
        assert cp is not None
        assert state_json(cp.state) == {"n": 1, "tags": []}
        rec = await b.tool_record("r1:1:0")
        assert rec is not None
        assert rec.status == "done"

        await b.commit(
            "r1",
            batch(run=run_record("r1", thread="t", status="finished"), events=[event("r1", 2)]),
        )
        run = await a.get_run("r1")
        assert run is not None
        assert run.status == "finished"
        assert [e.seq for e in await a.events("r1", after=1)] == [2]

        # Two other processes write concurrently; both stores see every commit.
        script = tmp_path / "writer.py"
        script.write_text(
            textwrap.dedent(
                """
                import asyncio, sys
                from cadenza.stores import Batch, Event, RunRecord, SQLiteStore

                async def main(path, run_id):
                    store = SQLiteStore(path)
                    for i in range(1, 51):
                        b = Batch()
                        if i == 1:
                            b.run = RunRecord(run_id, "wf", "graph", created_at=5.0, updated_at=5.0)
                        b.events = [Event(run_id, i, "tick", 0.0, {"i": i})]
                        await store.commit(run_id, b)
                    await store.close()

                asyncio.run(main(sys.argv[1], sys.argv[2]))
                """
            )
        )
        procs = [
            subprocess.Popen([sys.executable, str(script), str(path), rid]) for rid in ("p1", "p2")
        ]
        assert [p.wait(timeout=30) for p in procs] == [0, 0]
        for s in (a, b):
            for rid in ("p1", "p2"):
                assert [e.seq for e in await s.events(rid)] == list(range(1, 51))
            assert {r.id for r in await s.list_runs()} == {"r1", "p1", "p2"}
    finally:
        await a.close()
        await b.close()


async def test_sqlite_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = SQLiteStore(path)
    try:
        await store.commit("r1", batch(run=run_record("r1")))
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert os.path.exists(str(path) + "-wal")
    finally:
        await store.close()


async def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "reopen.db"
    first = SQLiteStore(path)
    await first.commit(
        "r1",
        batch(
            run=run_record("r1"),
            checkpoint=Checkpoint(3, {"next": "x"}, State(n=3)),
            state_changed=True,
        ),
    )
    await first.close()
    second = SQLiteStore(path)
    try:
        cp = await second.checkpoint("r1")
        assert cp is not None
        assert (cp.seq, cp.data, state_json(cp.state)) == (3, {"next": "x"}, {"n": 3, "tags": []})
    finally:
        await second.close()


async def test_batch_is_reused_after_commit(store: StateStore) -> None:
    # The runtime empties and refills the same Batch for the next step: a store must copy what
    # it keeps instead of holding the batch's lists.
    b = batch(
        run=run_record("r1", kind="agent"),
        events=[event("r1", 1), event("r1", 2)],
        messages=[Message.user("a"), Message.assistant("b")],
        checkpoint=Checkpoint(1, {"messages": 2}),
        tool_records=[ToolRecord("r1:1:0", "r1", "started")],
    )
    await store.commit("r1", b)
    b.reset()
    b.events.append(event("r1", 3))
    b.checkpoint = Checkpoint(2, {"messages": 2, "retries": 1})
    await store.commit("r1", b)
    b.reset()
    b.events.append(event("r1", 99, "garbage"))  # staged, never committed
    assert [e.seq for e in await store.events("r1")] == [1, 2, 3]
    assert await store.messages("r1") == [Message.user("a"), Message.assistant("b")]
    cp = await store.checkpoint("r1")
    assert cp is not None
    assert (cp.seq, cp.data) == (2, {"messages": 2, "retries": 1})
    assert cp.messages == [Message.user("a"), Message.assistant("b")]
    rec = await store.tool_record("r1:1:0")
    assert rec is not None
    assert rec.status == "started"


# --- the audit log ---------------------------------------------------------------------------


def audit_body(i: int, run_id: str) -> dict[str, Any]:
    return {
        "ts": f"2026-11-25T10:00:{i:02d}.000000Z",
        "run": run_id,
        "actor": "ann",
        "tool": "refund",
        "args": {"amount": i, "note": "é"},
        "decision": {"effect": "allow", "rule": "r", "policy_version": "1"},
        "outcome": "executed",
    }


def audited(run_id: str, first_event: int, bodies: list[dict[str, Any]]) -> Batch:
    """A step's batch: one event and one audit entry per call (as the Gate writes them)."""
    b = batch(events=[event(run_id, first_event + i) for i in range(len(bodies))])
    b.audit = bodies
    return b


async def test_audit_entries_from_several_runs_form_one_chain(store: StateStore) -> None:
    from cadenza.audit._chain import GENESIS, canonical_json, link, verify_rows

    plan = [("r1", 1, 2), ("r2", 1, 1), ("r1", 3, 3), ("r3", 1, 1)]
    sent: list[dict[str, Any]] = []
    for run_id, first, n in plan:
        bodies = [audit_body(len(sent) + i + 1, run_id) for i in range(n)]
        sent += copy.deepcopy(bodies)
        await store.commit(run_id, audited(run_id, first, bodies))
    rows = await store.audit_entries()
    assert [r.seq for r in rows] == list(range(1, 8))
    prev = GENESIS
    for row, sent_body in zip(rows, sent, strict=True):
        assert row.prev == prev
        assert row.body == canonical_json({**sent_body, "seq": row.seq})
        assert row.hash == link(row.prev, row.seq, row.body)
        prev = row.hash
    assert verify_rows(rows) == []
    assert await store.audit_head() == (7, rows[-1].hash)
    # The step's other writes went in with it.
    assert [e.seq for e in await store.events("r1")] == [1, 2, 3, 4, 5]


async def test_audit_log_of_an_empty_store(store: StateStore) -> None:
    assert await store.audit_head() == (0, "0" * 64)
    assert await store.audit_entries() == []
    assert await store.audit_entries(after=5, limit=3) == []


async def test_audit_entries_after_and_limit(store: StateStore) -> None:
    await store.commit("r1", audited("r1", 1, [audit_body(i, "r1") for i in range(1, 11)]))
    all_rows = await store.audit_entries()
    assert [r.seq for r in all_rows] == list(range(1, 11))
    assert [r.seq for r in await store.audit_entries(after=3)] == list(range(4, 11))
    assert [r.seq for r in await store.audit_entries(after=3, limit=2)] == [4, 5]
    assert [r.seq for r in await store.audit_entries(limit=1)] == [1]
    assert await store.audit_entries(limit=0) == []
    assert await store.audit_entries(after=10) == []
    assert await store.audit_entries(after=8, limit=100) == all_rows[8:]


async def test_a_batch_without_audit_entries_writes_none(store: StateStore) -> None:
    await store.commit(
        "r1",
        batch(
            run=run_record("r1"),
            events=[event("r1", 1)],
            checkpoint=Checkpoint(1, {"next": "a"}),
            tool_records=[ToolRecord("r1:1:0", "r1", "started")],
        ),
    )
    assert await store.audit_entries() == []
    assert await store.audit_head() == (0, "0" * 64)
    await store.commit("r1", audited("r1", 2, [audit_body(1, "r1")]))
    await store.commit("r1", batch(events=[event("r1", 3)]))
    assert [r.seq for r in await store.audit_entries()] == [1]


async def test_audit_list_is_reset_with_the_batch(store: StateStore) -> None:
    b = Batch()
    assert b.audit == []
    entry = audit_body(1, "r1")
    b.events = [event("r1", 1)]
    b.audit = [entry]
    await store.commit("r1", b)
    entry["outcome"] = "changed after the commit"  # the store keeps no reference to it
    b.reset()
    assert b.audit == []
    assert Batch().audit is b.audit  # the shared empty list: resetting allocates nothing
    b.events.append(event("r1", 2))
    await store.commit("r1", b)
    rows = await store.audit_entries()
    assert len(rows) == 1
    assert '"outcome":"executed"' in rows[0].body


# --- quota counters ----------------------------------------------------------------------


async def test_charge_adds_reads_and_refuses_past_a_limit(store: StateStore) -> None:
    assert await store.charge("user:ann:tokens:day:1", 0) == (True, 0.0)
    assert await store.charge("user:ann:tokens:day:1", 40) == (True, 40.0)
    assert await store.charge("user:ann:tokens:day:1", 50, 100) == (True, 90.0)
    assert await store.charge("user:ann:tokens:day:1", 11, 100) == (False, 90.0)
    assert await store.charge("user:ann:tokens:day:1", 10, 100) == (True, 100.0)
    assert await store.charge("user:ann:tokens:day:1", -25) == (True, 75.0)
    assert await store.charge("user:bob:tokens:day:1", 0) == (True, 0.0)  # counters are separate
