"""Graph workflows through the public API: edges, routes, loops, fan-out, sub-graphs, agent
nodes, interrupts (in-process and across processes), update validation, compile() and threads."""

from __future__ import annotations

import asyncio
import json
import operator
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from cadenza import (
    END,
    START,
    Agent,
    Graph,
    GraphValidationError,
    MemoryStore,
    Reducer,
    RunError,
    SQLiteStore,
    interrupt,
    tool,
)
from cadenza.errors import LoopLimitExceeded, ResumeError
from cadenza.testing import ScriptedModel, call


class Counter(BaseModel):
    n: int = 0
    log: Annotated[list[str], Reducer(operator.add)] = []


def step(name: str, by: int = 1) -> Any:
    def node(s: Counter) -> dict[str, Any]:
        return {"n": s.n + by, "log": [name]}

    node.__name__ = name
    return node


@pytest.fixture
async def store() -> Any:
    s = MemoryStore()
    yield s
    await s.close()


# --- edges and routes ------------------------------------------------------------------------


async def test_linear_chain(store: MemoryStore) -> None:
    g = Graph(Counter, name="chain")
    g.add_node("a", step("a")).add_node("b", step("b", 10)).add_node("c", step("c", 100))
    g.add_edge(START, "a").add_sequence("a", "b", "c").add_edge("c", END)
    result = await g.compile().run({"n": 1}, store=store)
    assert result.status == "finished"
    assert isinstance(result.output, Counter)
    assert result.output == Counter(n=112, log=["a", "b", "c"])
    rec = await store.get_run(result.run_id)
    assert rec is not None
    assert (rec.status, rec.workflow, rec.kind) == ("finished", "chain", "graph")
    assert rec.output == {"n": 112, "log": ["a", "b", "c"]}
    nodes = [e.data["node"] for e in await store.events(result.run_id) if e.type == "node.finished"]
    assert nodes == ["a", "b", "c"]


async def test_async_node_and_node_taking_context(store: MemoryStore) -> None:
    seen: list[Any] = []

    async def first(s: Counter) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"n": s.n + 1}

    def second(s: Counter, ctx: Any) -> dict[str, Any]:
        seen.append((ctx.run_id, ctx.step, ctx.state.n, ctx.deps))
        return {"log": ["second"]}

    g = Graph(Counter)
    g.add_node("first", first).add_node("second", second)
    g.add_sequence(START, "first", "second", END)
    result = await g.compile().run({}, store=store, deps="my-deps")
    assert result.output == Counter(n=1, log=["second"])
    assert seen == [(result.run_id, 2, 1, "my-deps")]


@pytest.mark.parametrize(("n", "expected"), [(5, ["classify", "big"]), (1, ["classify", "small"])])
async def test_route_with_dict_targets(store: MemoryStore, n: int, expected: list[str]) -> None:
    g = Graph(Counter)
    g.add_node("classify", lambda s: {"log": ["classify"]})
    g.add_node("big", lambda s: {"log": ["big"]}).add_node("small", lambda s: {"log": ["small"]})
    g.add_edge(START, "classify")
    g.add_route(
        "classify", lambda s: "large" if s.n > 3 else "tiny", {"large": "big", "tiny": "small"}
    )
    g.add_edge("big", END).add_edge("small", END)
    result = await g.compile().run({"n": n}, store=store)
    assert result.output.log == expected


async def test_route_with_list_targets_and_end(store: MemoryStore) -> None:
    g = Graph(Counter)
    g.add_node("inc", step("inc"))
    g.add_node("double", lambda s: {"n": s.n * 2, "log": ["double"]})
    g.add_edge(START, "inc")
    g.add_route("inc", lambda s: "double" if s.n < 10 else END, ["double", END])
    g.add_edge("double", "inc")
    result = await g.compile().run({"n": 0}, store=store)
    # 0 -> 1 -> 2 -> 3 -> 6 -> 7 -> 14 -> 15
    assert result.output.n == 15
    assert result.output.log == ["inc", "double"] * 3 + ["inc"]


async def test_route_returning_an_unknown_key_names_the_route(store: MemoryStore) -> None:
    g = Graph(Counter)
    g.add_node("decide", step("decide")).add_node("yes", step("yes"))
    g.add_edge(START, "decide")
    g.add_route("decide", lambda s: "maybe", {"ok": "yes", "stop": END})
    g.add_edge("yes", END)
    with pytest.raises(RunError, match=r"route from 'decide' returned 'maybe'") as info:
        await g.compile().run({}, store=store, run_id="bad-route")
    assert "'ok'" in str(info.value)
    assert "'stop'" in str(info.value)
    assert info.value.run_id == "bad-route"
    rec = await store.get_run("bad-route")
    assert rec is not None
    assert rec.status == "failed"
    assert rec.error is not None
    assert rec.error["type"] == "RunError"


# --- bounded loops ---------------------------------------------------------------------------


async def test_loop_bounded_by_max_visits(store: MemoryStore) -> None:
    runs: list[int] = []

    def tick(s: Counter) -> dict[str, Any]:
        runs.append(s.n)
        return {"n": s.n + 1}

    g = Graph(Counter)
    g.add_node("tick", tick, max_visits=3)
    g.add_edge(START, "tick")
    g.add_route("tick", lambda s: "tick", ["tick", END])  # never leaves
    with pytest.raises(LoopLimitExceeded, match=r"node 'tick' already ran 3 times"):
        await g.compile().run({}, store=store)
    assert runs == [0, 1, 2]


async def test_loop_within_max_visits_finishes(store: MemoryStore) -> None:
    g = Graph(Counter)
    g.add_node("tick", step("tick"), max_visits=3)
    g.add_edge(START, "tick")
    g.add_route("tick", lambda s: "tick" if s.n < 3 else END, ["tick", END])
    result = await g.compile().run({}, store=store)
    assert result.output.n == 3


async def test_loop_bounded_by_max_steps(store: MemoryStore) -> None:
    runs: list[str] = []

    def ping(s: Counter) -> dict[str, Any]:
        runs.append("ping")
        return {"n": s.n + 1}

    def pong(s: Counter) -> dict[str, Any]:
        runs.append("pong")
        return {"n": s.n + 1}

    g = Graph(Counter, name="pingpong", max_steps=5)
    g.add_node("ping", ping).add_node("pong", pong)
    g.add_edge(START, "ping").add_edge("ping", "pong")
    g.add_route("pong", lambda s: "again", {"again": "ping", "done": END})
    with pytest.raises(LoopLimitExceeded, match=r"graph 'pingpong' ran 5 steps") as info:
        await g.compile().run({}, store=store)
    assert isinstance(info.value, RunError)
    assert runs == ["ping", "pong", "ping", "pong", "ping"]


# --- fan-out ---------------------------------------------------------------------------------


class Fan(BaseModel):
    items: list[int] = []
    results: Annotated[list[int], Reducer(operator.add)] = []
    total: int = 0


async def test_fan_out_runs_branches_concurrently_and_merges_in_item_order(
    store: MemoryStore,
) -> None:
    in_flight = 0
    peak = 0
    finished: list[int] = []

    async def square(s: Fan, item: int) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        # Later items finish first, so completion order is the reverse of item order.
        await asyncio.sleep(0.05 * (len(s.items) - s.items.index(item)))
        in_flight -= 1
        finished.append(item)
        return {"results": [item * item]}

    g = Graph(Fan)
    g.add_node("square", square, fan_out=lambda s: s.items)
    g.add_node("sum", lambda s: {"total": sum(s.results)})
    g.add_sequence(START, "square", "sum", END)
    items = [1, 2, 3, 4, 5]
    t0 = time.perf_counter()
    result = await g.compile().run({"items": items, "results": [100]}, store=store)
    elapsed = time.perf_counter() - t0
    assert finished == [5, 4, 3, 2, 1]
    assert peak == len(items)
    assert elapsed < 0.6  # sequential would take 0.75 s
    assert result.output.results == [100, 1, 4, 9, 16, 25]
    assert result.output.total == 155


async def test_fan_out_with_context_and_empty_list(store: MemoryStore) -> None:
    seen: list[tuple[int, int]] = []

    def branch(s: Fan, item: int, ctx: Any) -> dict[str, Any]:
        seen.append((item, ctx.step))
        return {"results": [item]}

    g = Graph(Fan)
    g.add_node("branch", branch, fan_out=lambda s: s.items)
    g.add_sequence(START, "branch", END)
    app = g.compile()
    result = await app.run({"items": [7, 8]}, store=store)
    assert result.output.results == [7, 8]
    assert sorted(seen) == [(7, 1), (8, 1)]
    result = await app.run({"items": []}, store=store)
    assert result.output == Fan()


async def test_fan_out_conflict_on_a_field_without_reducer(store: MemoryStore) -> None:
    g = Graph(Fan)
    g.add_node("branch", lambda s, item: {"total": item}, fan_out=lambda s: s.items)
    g.add_sequence(START, "branch", END)
    with pytest.raises(RunError, match=r"fan-out node 'branch'.*'total'"):
        await g.compile().run({"items": [1, 2]}, store=store)
    # One branch writing a plain field is fine.
    result = await g.compile().run({"items": [9]}, store=store)
    assert result.output.total == 9


# --- sub-graphs and agent nodes --------------------------------------------------------------


async def test_sub_graph_over_the_same_state(store: MemoryStore) -> None:
    inner = Graph(Counter, name="inner")
    inner.add_node("x", step("x", 10)).add_node("y", step("y", 100))
    inner.add_sequence(START, "x", "y", END)
    outer = Graph(Counter, name="outer")
    outer.add_node("pre", step("pre")).add_node("sub", inner).add_node("post", step("post"))
    outer.add_sequence(START, "pre", "sub", "post", END)
    result = await outer.compile().run({}, store=store)
    assert result.output == Counter(n=112, log=["pre", "x", "y", "post"])
    inner_runs = [r for r in await store.list_runs() if r.workflow == "inner"]
    assert len(inner_runs) == 1
    assert inner_runs[0].status == "finished"


class Inner(BaseModel):
    text: str
    upper: str = ""


class Outer(BaseModel):
    name: str = ""
    shout: str = ""
    inner: Inner | None = None


def _inner_graph() -> Graph[Inner]:
    g = Graph(Inner, name="upper")
    g.add_node("up", lambda s: {"upper": s.text.upper()})
    g.add_sequence(START, "up", END)
    return g


async def test_sub_graph_with_a_different_state(store: MemoryStore) -> None:
    g = Graph(Outer)
    g.add_node(
        "sub",
        _inner_graph().compile(),
        input=lambda s: {"text": s.name},
        output=lambda r, s: {"shout": r.upper + "!"},
    )
    g.add_node("keep", _inner_graph(), input=lambda s: Inner(text=s.shout), output="inner")
    g.add_sequence(START, "sub", "keep", END)
    result = await g.compile().run({"name": "ada"}, store=store)
    assert result.output.shout == "ADA!"
    assert result.output.inner == Inner(text="ADA!", upper="ADA!")


async def test_agent_node(store: MemoryStore) -> None:
    calls: list[tuple[int, int]] = []

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append((a, b))
        return a + b

    model = ScriptedModel([call("add", a=2, b=3), "The sum is 5"])
    agent = Agent(model, name="adder", tools=[add])

    class Q(BaseModel):
        question: str = ""
        answer: str = ""

    g = Graph(Q)
    g.add_node("ask", agent, input=lambda s: f"Please: {s.question}", output="answer")
    g.add_sequence(START, "ask", END)
    result = await g.compile().run({"question": "2+3"}, store=store)
    assert result.output.answer == "The sum is 5"
    assert calls == [(2, 3)]
    assert len(model.requests) == 2
    assert model.requests[0].messages[-1].text == "Please: 2+3"
    assert [t.name for t in model.requests[0].tools] == ["add"]
    agent_runs = [r for r in await store.list_runs() if r.kind == "agent"]
    assert [(r.workflow, r.status, r.output) for r in agent_runs] == [
        ("adder", "finished", "The sum is 5")
    ]


# --- interrupts ------------------------------------------------------------------------------


class Approval(BaseModel):
    amount: int = 0
    approved: bool | None = None
    note: str = ""


async def test_interrupt_then_resume_with_answer(store: MemoryStore) -> None:
    before: list[int] = []
    entered: list[int] = []

    def prepare(s: Approval) -> dict[str, Any]:
        before.append(s.amount)
        return {"amount": s.amount * 2}

    def approve(s: Approval) -> dict[str, Any]:
        entered.append(s.amount)
        answer = interrupt({"question": f"Approve {s.amount}?"})
        return {"approved": answer == "yes"}

    g = Graph(Approval)
    g.add_node("prepare", prepare).add_node("approve", approve)
    g.add_node("after", lambda s: {"note": f"approved={s.approved}"})
    g.add_sequence(START, "prepare", "approve", "after", END)
    app = g.compile()

    first = await app.run({"amount": 50}, store=store)
    assert first.status == "interrupted"
    assert first.interrupt == {"question": "Approve 100?"}
    assert first.output is None
    rec = await store.get_run(first.run_id)
    assert rec is not None
    assert rec.status == "interrupted"

    with pytest.raises(ResumeError):
        await app.resume(first.run_id, store=store)  # an interrupted run needs an answer

    done = await app.resume(first.run_id, answer="yes", store=store)
    assert done.status == "finished"
    assert done.run_id == first.run_id
    assert done.output == Approval(amount=100, approved=True, note="approved=True")
    assert before == [50]  # the node before the interrupt did not run again
    assert entered == [100, 100]  # the interrupted node reran from its start
    rec = await store.get_run(first.run_id)
    assert rec is not None
    assert rec.status == "finished"


async def test_two_interrupts_in_one_node(store: MemoryStore) -> None:
    def ask(s: Approval) -> dict[str, Any]:
        who = interrupt("who?")
        why = interrupt(f"why, {who}?")
        return {"note": f"{who}:{why}"}

    g = Graph(Approval)
    g.add_node("ask", ask).add_sequence(START, "ask", END)
    app = g.compile()
    r = await app.run({}, store=store)
    assert (r.status, r.interrupt) == ("interrupted", "who?")
    r = await app.resume(r.run_id, answer="ann", store=store)
    assert (r.status, r.interrupt) == ("interrupted", "why, ann?")
    r = await app.resume(r.run_id, answer="audit", store=store)
    assert r.status == "finished"
    assert r.output.note == "ann:audit"


async def test_interrupt_inside_a_sub_graph(store: MemoryStore) -> None:
    inner = Graph(Approval, name="inner")
    inner.add_node("ask", lambda s: {"note": str(interrupt("ok?"))})
    inner.add_sequence(START, "ask", END)
    outer = Graph(Approval, name="outer")
    outer.add_node("pre", lambda s: {"amount": 1}).add_node("sub", inner)
    outer.add_node("post", lambda s: {"approved": s.note == "fine"})
    outer.add_sequence(START, "pre", "sub", "post", END)
    app = outer.compile()
    r = await app.run({}, store=store)
    assert (r.status, r.interrupt) == ("interrupted", "ok?")
    r = await app.resume(r.run_id, answer="fine", store=store)
    assert r.status == "finished"
    assert r.output == Approval(amount=1, approved=True, note="fine")


_INTERRUPT_FLOW = """
import pathlib
from pydantic import BaseModel
from cadenza import END, START, Graph, interrupt

HERE = pathlib.Path(__file__).parent


class Approval(BaseModel):
    amount: int = 0
    approved: bool | None = None
    note: str = ""


def prepare(s):
    with open(HERE / "prepare.log", "a") as f:
        f.write("prepare\\n")
    return {"amount": s.amount * 2}


def approve(s):
    answer = interrupt({"question": f"Approve {s.amount}?", "pid": __import__("os").getpid()})
    return {"approved": answer["ok"], "note": answer["by"]}


g = Graph(Approval, name="approval")
g.add_node("prepare", prepare).add_node("approve", approve)
g.add_node("after", lambda s: {"note": s.note + " (checked)"})
g.add_sequence(START, "prepare", "approve", "after", END)
app = g.compile()
"""

_INTERRUPT_START = """
import asyncio, json, sys
from cadenza import SQLiteStore
from flow import app

async def main():
    store = SQLiteStore(sys.argv[1])
    r = await app.run({"amount": 21}, store=store, run_id=sys.argv[2])
    await store.close()
    print(json.dumps({"status": r.status, "interrupt": r.interrupt}))

asyncio.run(main())
"""

_INTERRUPT_RESUME = """
import asyncio, json, os, sys
from cadenza import SQLiteStore
from flow import app

async def main():
    store = SQLiteStore(sys.argv[1])
    r = await app.resume(sys.argv[2], answer={"ok": True, "by": "boss"}, store=store)
    await store.close()
    print(json.dumps({"status": r.status, "output": r.output.model_dump(), "pid": os.getpid()}))

asyncio.run(main())
"""


def _run_script(path: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=path.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def test_interrupt_and_resume_in_separate_processes(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(textwrap.dedent(_INTERRUPT_FLOW))
    (tmp_path / "start.py").write_text(textwrap.dedent(_INTERRUPT_START))
    (tmp_path / "resume.py").write_text(textwrap.dedent(_INTERRUPT_RESUME))
    db = str(tmp_path / "runs.db")

    first = _run_script(tmp_path / "start.py", db, "approval-1")
    assert first["status"] == "interrupted"
    assert first["interrupt"]["question"] == "Approve 42?"

    store = SQLiteStore(db)
    try:
        rec = await store.get_run("approval-1")
        assert rec is not None
        assert rec.status == "interrupted"

        second = _run_script(tmp_path / "resume.py", db, "approval-1")
        assert second["pid"] != first["interrupt"]["pid"]
        assert second["status"] == "finished"
        assert second["output"] == {"amount": 42, "approved": True, "note": "boss (checked)"}

        rec = await store.get_run("approval-1")
        assert rec is not None
        assert rec.status == "finished"
        assert rec.output == second["output"]
    finally:
        await store.close()
    assert (tmp_path / "prepare.log").read_text() == "prepare\n"


# --- update validation -----------------------------------------------------------------------


def _one_node(node: Any) -> Any:
    g = Graph(Counter)
    g.add_node("bad", node).add_sequence(START, "bad", END)
    return g.compile()


async def test_update_with_a_wrong_type_fails(store: MemoryStore) -> None:
    app = _one_node(lambda s: {"n": "not a number"})
    with pytest.raises(RunError, match=r"node 'bad' wrote an invalid value to n") as info:
        await app.run({}, store=store, run_id="wrong-type")
    assert info.value.run_id == "wrong-type"
    rec = await store.get_run("wrong-type")
    assert rec is not None
    assert rec.status == "failed"


async def test_update_of_an_unknown_field_fails(store: MemoryStore) -> None:
    app = _one_node(lambda s: {"n": 1, "nope": 2})
    with pytest.raises(RunError, match=r"node 'bad' updated unknown field\(s\) nope"):
        await app.run({}, store=store)


async def test_update_that_is_not_a_dict_fails(store: MemoryStore) -> None:
    app = _one_node(lambda s: 42)
    with pytest.raises(RunError, match=r"node 'bad' returned int"):
        await app.run({}, store=store)


async def test_valid_updates_are_validated_and_coerced(store: MemoryStore) -> None:
    app = _one_node(lambda s: {"n": "7", "log": ["x"]})
    result = await app.run({"log": ["start"]}, store=store)
    assert result.output.n == 7
    assert type(result.output.n) is int
    assert result.output.log == ["start", "x"]  # reducer applied to a single node's update
    whole = _one_node(lambda s: Counter(n=3))
    assert (await whole.run({"n": 1, "log": ["a"]}, store=store)).output == Counter(n=3)
    none = _one_node(lambda s: None)
    assert (await none.run({"n": 1}, store=store)).output == Counter(n=1)


# --- compile() -------------------------------------------------------------------------------


def _problems(g: Graph[Any]) -> list[str]:
    with pytest.raises(GraphValidationError) as info:
        g.compile()
    problems = info.value.problems
    for p in problems:
        assert p in str(info.value)
    return problems


def _has(problems: list[str], *words: str) -> bool:
    return any(all(w in p for w in words) for p in problems)


def test_compile_lists_every_problem_at_once() -> None:
    g = Graph(Counter, name="broken")
    for name in ("a", "b", "c", "d", "e"):
        g.add_node(name, step(name))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("a", "b")  # duplicate edge
    g.add_edge("a", "c")  # second static edge from a
    g.add_route("b", lambda s: "x", {"x": "ghost", "y": END})  # route to a missing node
    g.add_edge("c", "d").add_edge("d", "c")  # a cycle with no way to END
    g.add_edge("e", "nowhere")  # unknown node; e itself is unreachable
    problems = _problems(g)
    assert _has(problems, "duplicate edge", "a -> b")
    assert _has(problems, "'a'", "2 static edges")
    assert _has(problems, "route from 'b'", "'ghost'")
    assert _has(problems, "c, d", "never reach END")
    assert _has(problems, "unknown node 'nowhere'")
    assert _has(problems, "'e'", "unreachable")
    assert len(problems) == 6, problems


def test_compile_reports_missing_start_and_dead_ends() -> None:
    g = Graph(Counter)
    g.add_node("a", step("a")).add_node("b", step("b"))
    g.add_edge("a", "b")  # no START edge; b has no outgoing edge
    problems = _problems(g)
    assert _has(problems, "no edge from START")
    assert _has(problems, "'b'", "no outgoing edge")
    assert _has(problems, "'a'", "unreachable")
    assert _has(problems, "'b'", "unreachable")
    assert len(problems) == 4, problems


def test_compile_reports_bad_node_declarations() -> None:
    g = Graph(Outer)
    g.add_node("sub", _inner_graph())  # different state, no input=/output=
    g.add_node("agent", Agent(ScriptedModel(["x"])), input=lambda s: s.name)  # no output=
    g.add_node("sub", lambda s: None)  # added twice
    g.add_node("thing", 42)
    g.add_sequence(START, "sub", "agent", END)
    problems = _problems(g)
    assert _has(problems, "sub-graph node 'sub'", "input=")
    assert _has(problems, "agent node 'agent'", "output=")
    assert _has(problems, "node 'sub' is added twice")
    assert _has(problems, "node 'thing'", "42")


def test_valid_graph_compiles() -> None:
    g = Graph(Counter)
    g.add_node("a", step("a")).add_sequence(START, "a", END)
    assert g.compile().name == "graph"


def test_to_mermaid() -> None:
    g = Graph(Counter, name="m")
    g.add_node("classify", step("classify")).add_node("answer", step("answer"))
    g.add_node("fan", lambda s, i: None, fan_out=lambda s: [])
    g.add_node("sub", _one_node(step("x")))
    g.add_edge(START, "classify")
    g.add_route("classify", lambda s: "faq", {"faq": "answer", "other": "fan", "stop": END})
    g.add_sequence("answer", "sub", END).add_edge("fan", END)
    text = g.compile().to_mermaid()
    assert text == g.to_mermaid()
    assert text.startswith("flowchart TD")
    for name in ("classify", "answer", "fan", "sub", "__start__", "__end__"):
        assert name in text
    assert '"sub (sub-graph)"' in text
    assert "×N" in text
    assert '-. "faq" .-> answer["answer"]' in text
    assert '-. "other" .-> fan' in text
    assert '-. "stop" .-> __end__([END])' in text
    assert '__start__([START]) --> classify["classify"]' in text


# --- threads and inputs ----------------------------------------------------------------------


async def test_thread_continues_from_the_previous_final_state(store: MemoryStore) -> None:
    g = Graph(Counter, name="acc")
    g.add_node("inc", step("inc")).add_sequence(START, "inc", END)
    app = g.compile()
    first = await app.run({"n": 10}, store=store, thread="t1")
    assert first.output == Counter(n=11, log=["inc"])
    assert first.thread == "t1"
    second = await app.run({}, store=store, thread="t1")
    assert second.output == Counter(n=12, log=["inc", "inc"])
    third = await app.run({"log": ["reset"]}, store=store, thread="t1")  # input overrides
    assert third.output == Counter(n=13, log=["reset", "inc"])
    other = await app.run({}, store=store, thread="t2")
    assert other.output == Counter(n=1, log=["inc"])
    unthreaded = await app.run({}, store=store)
    assert unthreaded.output == Counter(n=1, log=["inc"])


class Chat(BaseModel):
    question: str = ""
    turns: int = 0


def _chat() -> Any:
    g = Graph(Chat, name="chat", input_key="question")
    g.add_node("turn", lambda s: {"turns": s.turns + 1}).add_sequence(START, "turn", END)
    return g.compile()


async def test_text_input_fills_the_input_key(store: MemoryStore) -> None:
    result = await _chat().run("hello", store=store)
    assert result.output == Chat(question="hello", turns=1)


async def test_thread_with_text_input(store: MemoryStore) -> None:
    app = _chat()
    await app.run("first", store=store, thread="t")
    second = await app.run("second", store=store, thread="t")
    assert second.output == Chat(question="second", turns=2)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_resume_after_a_failed_route_reruns_the_node(tmp_path: Path, kind: str) -> None:
    store: Any = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "r.db")
    routed: list[int] = []

    def router(s: Counter) -> str:
        routed.append(s.n)
        return "bogus" if len(routed) == 1 else "end"  # a transient failure

    g = Graph(Counter)
    g.add_node("a", step("a")).add_node("b", step("b", 10), max_visits=1)
    g.add_sequence(START, "a", "b")
    g.add_route("b", router, {"end": END})
    app = g.compile()
    try:
        with pytest.raises(RunError, match="route from 'b'"):
            await app.run({}, store=store, run_id="flaky")
        # The failed step was not committed: resuming reruns b once, from the state after a.
        result = await app.resume("flaky", store=store)
        assert result.status == "finished"
        assert result.output == Counter(n=11, log=["a", "b"])
    finally:
        await store.close()


async def test_the_runtime_never_mutates_what_it_has_committed() -> None:
    # Stores may keep the checkpoint data and state they are given (MemoryStore does): the
    # runtime hands them over and never touches them again, even across loops and interrupts.
    import copy

    from cadenza.stores import MemoryStore as _Memory

    seen: list[tuple[dict[str, Any], Any, Any]] = []

    class Watching(_Memory):
        def commit_now(self, run_id: str, batch: Any) -> None:
            cp = batch.checkpoint
            if cp is not None:
                seen.append(
                    (cp.data, copy.deepcopy(cp.data), cp.state.model_dump() if cp.state else None)
                )
            super().commit_now(run_id, batch)

    class Loop(BaseModel):
        n: int = 0
        asked: str = ""

    def ask(s: Loop) -> dict[str, Any]:
        return {"asked": interrupt("go on?")}

    g = Graph(Loop, name="mutation-watch")
    g.add_node("inc", lambda s: {"n": s.n + 1}, max_visits=10)
    g.add_node("ask", ask)
    g.add_edge(START, "inc")
    g.add_route("inc", lambda s: "again" if s.n < 4 else "ask", {"again": "inc", "ask": "ask"})
    g.add_edge("ask", END)
    app = g.compile()
    store = Watching()
    first = await app.run({}, store=store)
    assert first.status == "interrupted"
    done = await app.resume(first.run_id, answer="yes", store=store)
    assert done.output.n == 4 and done.output.asked == "yes"
    assert len(seen) >= 4
    for live, snapshot, _ in seen:
        assert live == snapshot
