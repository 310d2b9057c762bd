"""Crash tests: processes are SIGKILLed mid-run and other processes resume the run from the
SQLite store; recorded runs are replayed without calling models or tools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from cadenza import (
    END,
    START,
    Agent,
    Graph,
    ReplayDivergence,
    SQLiteStore,
    interrupt,
    tool,
)
from cadenza.errors import ScriptExhausted
from cadenza.messages import Message
from cadenza.models import ModelRequest
from cadenza.testing import ScriptedModel, call

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

# --- subprocess plumbing ---------------------------------------------------------------------

# The workflows live in modules written next to the database, so that every process (the one
# that is killed, the one that resumes, the one that replays) builds exactly the same workflow.
# BLOCK=1 only in the process that is going to be killed: it makes the run hang at one point.

AGENT_FLOW = """
import asyncio, os, pathlib, time
from cadenza import Agent, tool
from cadenza.testing import Delay, ScriptedModel, call

HERE = pathlib.Path(__file__).parent
DB = HERE / "runs.db"
SIDE = HERE / "side_effect.txt"      # what the side-effecting tool does to the world
CALLS = HERE / "tool_calls.txt"      # one line per tool execution, any process
BLOCKED = HERE / "blocked.txt"       # written when the doomed process starts hanging
SCENARIO = os.environ["SCENARIO"]    # where the doomed process hangs: model | tool | start
BLOCK = os.environ.get("BLOCK") == "1"


def _count(name):
    with open(CALLS, "a") as f:
        f.write(name + "\\n")


@tool(side_effects=True)
def write_line(text: str) -> str:
    \"\"\"Append a line to the side-effect file.\"\"\"
    _count("write_line")
    with open(SIDE, "a") as f:
        f.write(text + "\\n")
    return f"wrote {text}"


@tool(timeout=None)
async def slow(seconds: float) -> str:
    \"\"\"Take a while.\"\"\"
    _count("slow")
    if BLOCK:
        BLOCKED.write_text("slow")
        await asyncio.sleep(seconds)
    return "slow done"


def script(request):
    results = [r for m in request.messages if m.role == "tool" for r in m.tool_results]
    if not results:
        if SCENARIO == "tool":
            return [call("write_line", text="hello"), call("slow", seconds=60)]
        return call("write_line", text="hello")
    answer = "done: " + ", ".join(str(r.content) for r in results)
    if SCENARIO == "model" and BLOCK:
        BLOCKED.write_text("model")
        return Delay(60, answer)
    return answer


def instructions(ctx):
    if SCENARIO == "start" and BLOCK:
        BLOCKED.write_text("start")
        time.sleep(60)
    return "You write lines."


def make_agent(model=None):
    return Agent(
        model if model is not None else ScriptedModel(script),
        name="writer",
        instructions=instructions,
        tools=[write_line, slow],
    )
"""

AGENT_START = """
import asyncio, json, sys
from cadenza import SQLiteStore
from agent_flow import DB, make_agent

async def main():
    store = SQLiteStore(DB)
    r = await make_agent().run("write hello", store=store, run_id=sys.argv[1])
    print(json.dumps({"status": r.status, "output": r.output}))

asyncio.run(main())
"""

AGENT_RESUME = """
import asyncio, json, sys
from cadenza import SQLiteStore
from agent_flow import DB, make_agent

async def main():
    store = SQLiteStore(DB)
    r = await make_agent().resume(sys.argv[1], store=store)
    await store.close()
    print(json.dumps({"status": r.status, "output": r.output}))

asyncio.run(main())
"""

AGENT_REPLAY = """
import asyncio, json, sys
from cadenza import ReplayDivergence, SQLiteStore
from cadenza.testing import ScriptedModel
from agent_flow import DB, make_agent

async def main():
    store = SQLiteStore(DB)
    model = ScriptedModel([])  # raises ScriptExhausted if the replay ever calls it
    try:
        r = await make_agent(model).replay(sys.argv[1], store=store)
        out = {"status": r.status, "output": r.output, "model_requests": len(model.requests)}
    except ReplayDivergence as e:
        out = {"divergence": [e.step, e.what, e.expected, e.got]}
    await store.close()
    print(json.dumps(out))

asyncio.run(main())
"""

GRAPH_FLOW = """
import asyncio, os, pathlib
from pydantic import BaseModel
from cadenza import END, START, Graph

HERE = pathlib.Path(__file__).parent
DB = HERE / "runs.db"
CALLS = HERE / "node_calls.txt"
BLOCKED = HERE / "blocked.txt"
BLOCK = os.environ.get("BLOCK") == "1"


class S(BaseModel):
    n: int = 0
    trail: list[str] = []


def _count(name):
    with open(CALLS, "a") as f:
        f.write(name + "\\n")


def one(s):
    _count("one")
    return {"n": s.n + 1, "trail": [*s.trail, "one"]}


async def two(s):
    _count("two")
    if BLOCK:
        BLOCKED.write_text("two")
        await asyncio.sleep(60)
    return {"n": s.n * 10, "trail": [*s.trail, "two"]}


def three(s):
    _count("three")
    return {"n": s.n + 5, "trail": [*s.trail, "three"]}


g = Graph(S, name="three_steps")
g.add_node("one", one).add_node("two", two).add_node("three", three)
g.add_sequence(START, "one", "two", "three", END)
app = g.compile()
"""

GRAPH_START = """
import asyncio, json, sys
from cadenza import SQLiteStore
from graph_flow import DB, app

async def main():
    store = SQLiteStore(DB)
    r = await app.run({"n": 0}, store=store, run_id=sys.argv[1])
    print(json.dumps({"status": r.status, "output": r.output.model_dump()}))

asyncio.run(main())
"""

GRAPH_RESUME = """
import asyncio, json, sys
from cadenza import SQLiteStore
from graph_flow import DB, app

async def main():
    store = SQLiteStore(DB)
    r = await app.resume(sys.argv[1], store=store)
    await store.close()
    print(json.dumps({"status": r.status, "output": r.output.model_dump()}))

asyncio.run(main())
"""

GRAPH_REPLAY = """
import asyncio, json, sys
from cadenza import ReplayDivergence, SQLiteStore
from graph_flow import DB, app

async def main():
    store = SQLiteStore(DB)
    try:
        r = await app.replay(sys.argv[1], store=store)
        out = {"status": r.status, "output": r.output.model_dump()}
    except ReplayDivergence as e:
        out = {"divergence": [e.step, e.what, e.expected, e.got]}
    await store.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _write_scripts(directory: Path, scripts: dict[str, str]) -> None:
    for name, code in scripts.items():
        (directory / name).write_text(textwrap.dedent(code))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BLOCK", "SCENARIO")}
    env.update(extra)
    return env


def _run(directory: Path, script: str, *args: str, **env: str) -> dict[str, Any]:
    """Run a script to completion; return the JSON it printed last."""
    proc = subprocess.run(
        [sys.executable, str(directory / script), *args],
        cwd=directory,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _start_and_kill(
    directory: Path,
    script: str,
    run_id: str,
    ready: Callable[[], bool],
    *,
    timeout: float = 10.0,
    **env: str,
) -> None:
    """Start `script` with BLOCK=1, wait until `ready()`, then SIGKILL it."""
    err = directory / f"{script}.stderr"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(directory / script), run_id],
            cwd=directory,
            env=_env(BLOCK="1", **env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"{script} exited ({proc.returncode}) before the kill:\n{err.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{script} never reached the kill point:\n{err.read_text()}")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _tool_done(db: Path, key: str) -> bool:
    store = SQLiteStore(db)
    try:
        rec = await store.tool_record(key)
        return rec is not None and rec.status == "done"
    finally:
        await store.close()


def _tool_done_sync(db: Path, key: str) -> bool:
    import asyncio

    return asyncio.run(_tool_done(db, key)) if db.exists() else False


# --- (a) an agent killed mid-run ---------------------------------------------------------------


@dataclass
class Crashed:
    scenario: str
    directory: Path
    run_id: str
    resumed: dict[str, Any]


AGENT_SCRIPTS = {
    "agent_flow.py": AGENT_FLOW,
    "start.py": AGENT_START,
    "resume.py": AGENT_RESUME,
    "replay.py": AGENT_REPLAY,
}


@pytest.fixture(scope="module", params=["model", "tool"])
def crashed_agent(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Crashed:
    """An agent run killed after its side-effecting tool completed, then resumed elsewhere.

    model: killed while the model (slow) prepares the answer after the tool's result.
    tool:  killed while a second, slow tool called in the same turn is still running.
    """
    scenario = request.param
    d = tmp_path_factory.mktemp(f"agent-crash-{scenario}")
    _write_scripts(d, AGENT_SCRIPTS)
    run_id = f"agent-crash-{scenario}"
    db = d / "runs.db"

    def ready() -> bool:
        if not (d / "blocked.txt").exists() or _lines(d / "side_effect.txt") != ["hello"]:
            return False
        # The tool's completion is journaled right after it returns; kill only once it is.
        return _tool_done_sync(db, f"{run_id}:1:0")

    _start_and_kill(d, "start.py", run_id, ready, SCENARIO=scenario)
    resumed = _run(d, "resume.py", run_id, SCENARIO=scenario)
    return Crashed(scenario, d, run_id, resumed)


async def test_agent_killed_mid_run_resumes_without_repeating_side_effects(
    crashed_agent: Crashed,
) -> None:
    d = crashed_agent.directory
    assert crashed_agent.resumed["status"] == "finished"
    if crashed_agent.scenario == "tool":
        assert crashed_agent.resumed["output"] == "done: wrote hello, slow done"
    else:
        assert crashed_agent.resumed["output"] == "done: wrote hello"
    # The side effect happened exactly once, across both processes.
    assert _lines(d / "side_effect.txt") == ["hello"]
    assert _lines(d / "tool_calls.txt").count("write_line") == 1
    store = SQLiteStore(d / "runs.db")
    try:
        rec = await store.get_run(crashed_agent.run_id)
        assert rec is not None
        assert rec.status == "finished"
        assert rec.output == crashed_agent.resumed["output"]
        types = [e.type for e in await store.events(crashed_agent.run_id)]
        assert types.count("run.resumed") == 1
        assert types[-1] == "run.finished"
    finally:
        await store.close()


async def test_replay_of_a_crash_resumed_agent_run(crashed_agent: Crashed) -> None:
    d = crashed_agent.directory
    calls_before = _lines(d / "tool_calls.txt")
    replayed = _run(d, "replay.py", crashed_agent.run_id, SCENARIO=crashed_agent.scenario)
    assert replayed == {
        "status": "finished",
        "output": crashed_agent.resumed["output"],
        "model_requests": 0,
    }
    assert _lines(d / "tool_calls.txt") == calls_before  # no tool ran during the replay
    assert _lines(d / "side_effect.txt") == ["hello"]


# --- (b) a graph killed during node 2 of 3 ---------------------------------------------------


GRAPH_SCRIPTS = {
    "graph_flow.py": GRAPH_FLOW,
    "start.py": GRAPH_START,
    "resume.py": GRAPH_RESUME,
    "replay.py": GRAPH_REPLAY,
}


async def test_graph_killed_during_node_two_resumes_without_rerunning_node_one(
    tmp_path: Path,
) -> None:
    _write_scripts(tmp_path, GRAPH_SCRIPTS)
    run_id = "graph-crash"
    _start_and_kill(tmp_path, "start.py", run_id, lambda: (tmp_path / "blocked.txt").exists())
    assert _lines(tmp_path / "node_calls.txt") == ["one", "two"]

    store = SQLiteStore(tmp_path / "runs.db")
    try:
        rec = await store.get_run(run_id)
        assert rec is not None
        assert rec.status == "running"  # the kill left it mid-run

        resumed = _run(tmp_path, "resume.py", run_id)
        assert resumed == {
            "status": "finished",
            "output": {"n": 15, "trail": ["one", "two", "three"]},
        }
        calls = _lines(tmp_path / "node_calls.txt")
        assert calls.count("one") == 1  # node 1's completed step was not redone
        assert calls.count("two") == 2  # node 2 was interrupted by the kill, so it ran again
        assert calls.count("three") == 1

        rec = await store.get_run(run_id)
        assert rec is not None
        assert rec.status == "finished"
        assert rec.output == resumed["output"]
        finished = [e.data["node"] for e in await store.events(run_id) if e.type == "node.finished"]
        assert finished == ["one", "two", "three"]
    finally:
        await store.close()

    # The crash-resumed run replays to the same output.
    calls = _lines(tmp_path / "node_calls.txt")
    assert _run(tmp_path, "replay.py", run_id) == {
        "status": "finished",
        "output": resumed["output"],
    }
    assert len(_lines(tmp_path / "node_calls.txt")) == len(calls) + 3  # replay re-runs node code


# --- (c) replay ------------------------------------------------------------------------------


async def test_empty_scripted_model_raises_when_called() -> None:
    # The replay tests rely on this: a model with an empty script cannot answer.
    with pytest.raises(ScriptExhausted):
        await ScriptedModel([]).request(ModelRequest([Message.user("hi")], []))


def _calc_tools(counter: list[str]) -> tuple[Any, Any]:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        counter.append(f"add {a} {b}")
        return a + b

    @tool
    def mul(a: int, b: int) -> int:
        """Multiply two integers."""
        counter.append(f"mul {a} {b}")
        return a * b

    return add, mul


async def test_replay_agent_run_calls_no_model_and_no_tool(tmp_path: Path) -> None:
    counter: list[str] = []
    add, mul = _calc_tools(counter)
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        model = ScriptedModel([call("add", a=2, b=3), "The sum is 5"])
        recorded = await Agent(model, name="calc", instructions="Add.", tools=[add]).run(
            "2+3?", store=store
        )
        assert recorded.output == "The sum is 5"
        assert counter == ["add 2 3"]

        empty = ScriptedModel([])
        replayed = await Agent(empty, name="calc", instructions="Add.", tools=[add]).replay(
            recorded.run_id, store=store
        )
        assert replayed.status == "finished"
        assert replayed.output == recorded.output
        assert empty.requests == []
        assert counter == ["add 2 3"]
        # Replay writes nothing to the journal.
        rec = await store.get_run(recorded.run_id)
        assert rec is not None
        assert rec.status == "finished"

        changed = Agent(ScriptedModel([]), name="calc", instructions="Add.", tools=[add, mul])
        with pytest.raises(ReplayDivergence) as info:
            await changed.replay(recorded.run_id, store=store)
        err = info.value
        assert err.step == 1
        assert "tools" in err.what
        assert (err.expected, err.got) == (["add"], ["add", "mul"])
        assert counter == ["add 2 3"]
    finally:
        await store.close()


async def test_replay_agent_run_detects_changed_instructions(tmp_path: Path) -> None:
    counter: list[str] = []
    add, _ = _calc_tools(counter)
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        model = ScriptedModel([call("add", a=1, b=1), "2"])
        recorded = await Agent(model, name="calc", tools=[add]).run("1+1?", store=store)
        # One more message at the start shifts every request: the first one diverges.
        with pytest.raises(ReplayDivergence) as info:
            await Agent(ScriptedModel([]), name="calc", instructions="New!", tools=[add]).replay(
                recorded.run_id, store=store
            )
        assert info.value.step == 1
        assert "messages" in info.value.what
        assert (info.value.expected, info.value.got) == (1, 2)
    finally:
        await store.close()


class Calc(BaseModel):
    n: int = 0
    answer: str = ""


def _calc_graph(by: int, model: ScriptedModel, add: Any) -> Any:
    agent = Agent(model, name="explainer", tools=[add])
    g = Graph(Calc, name="calc_graph")
    g.add_node("double", lambda s: {"n": s.n * 2})
    g.add_node("inc", lambda s: {"n": s.n + by})
    g.add_node("explain", agent, input=lambda s: f"explain {s.n}", output="answer")
    g.add_sequence(START, "double", "inc", "explain", END)
    return g.compile()


async def test_replay_graph_run_calls_no_model_and_no_tool(tmp_path: Path) -> None:
    counter: list[str] = []
    add, _ = _calc_tools(counter)
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        model = ScriptedModel([call("add", a=4, b=1), "it is five"])
        recorded = await _calc_graph(1, model, add).run({"n": 2}, store=store)
        assert recorded.output == Calc(n=5, answer="it is five")
        assert counter == ["add 4 1"]
        assert len(model.requests) == 2

        empty = ScriptedModel([])
        replayed = await _calc_graph(1, empty, add).replay(recorded.run_id, store=store)
        assert replayed.status == "finished"
        assert replayed.output == recorded.output
        assert empty.requests == []
        assert counter == ["add 4 1"]

        with pytest.raises(ReplayDivergence) as info:
            await _calc_graph(2, ScriptedModel([]), add).replay(recorded.run_id, store=store)
        err = info.value
        assert err.step == 2
        assert "update" in err.what
        assert (err.expected, err.got) == ({"n": 5}, {"n": 6})
        assert counter == ["add 4 1"]
    finally:
        await store.close()


async def test_replay_graph_run_that_was_interrupted_and_resumed(tmp_path: Path) -> None:
    asked: list[str] = []

    class Doc(BaseModel):
        text: str = ""
        verdict: str = ""

    def review(s: Doc) -> dict[str, Any]:
        asked.append(s.text)
        return {"verdict": f"{interrupt('approve?')} for {s.text}"}

    g = Graph(Doc, name="review")
    g.add_node("review", review).add_sequence(START, "review", END)
    app = g.compile()
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        first = await app.run({"text": "doc"}, store=store)
        assert first.status == "interrupted"
        done = await app.resume(first.run_id, answer="approved", store=store)
        assert done.output == Doc(text="doc", verdict="approved for doc")
        replayed = await app.replay(first.run_id, store=store)
        assert replayed.status == "finished"
        assert replayed.output == done.output
    finally:
        await store.close()


# --- (d) killed before the first checkpoint --------------------------------------------------


async def test_run_killed_before_its_first_checkpoint_restarts_from_its_input(
    tmp_path: Path,
) -> None:
    _write_scripts(tmp_path, AGENT_SCRIPTS)
    run_id = "early-crash"
    # The doomed process hangs while rendering its instructions, before anything is committed.
    _start_and_kill(
        tmp_path, "start.py", run_id, lambda: (tmp_path / "blocked.txt").exists(), SCENARIO="start"
    )
    assert not (tmp_path / "side_effect.txt").exists()

    resumed = _run(tmp_path, "resume.py", run_id, SCENARIO="start")
    assert resumed == {"status": "finished", "output": "done: wrote hello"}
    assert _lines(tmp_path / "side_effect.txt") == ["hello"]
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        rec = await store.get_run(run_id)
        assert rec is not None
        assert (rec.status, rec.input, rec.output) == (
            "finished",
            "write hello",
            "done: wrote hello",
        )
    finally:
        await store.close()
