"""Cadenza's core benchmarks (W1-W5 and import time), each against a hand-written asyncio baseline.

    python benchmarks/bench.py            # everything
    python benchmarks/bench.py w1 w4      # a selection

Every figure is the median of 5 repetitions; every repetition asserts its result. W3 runs in a
fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

import cadenza
from cadenza import END, START, Agent, Graph, MemoryStore, SQLiteStore, tool
from cadenza.models import ModelRequest
from cadenza.testing import ScriptedModel, call

REPS = 5


def median_of(fn: Callable[[], float]) -> float:
    samples = []
    for _ in range(REPS):
        gc.collect()
        samples.append(fn())
    return statistics.median(samples)


def report(name: str, value: float, unit: str, baseline: float, target: str) -> dict[str, object]:
    ratio = value / baseline if baseline else float("nan")
    digits = 3 if unit.startswith("s") else 1
    print(
        f"{name:4s} {value:10.{digits}f} {unit:8s} baseline {baseline:9.{digits}f} {unit:8s} "
        f"ratio {ratio:6.1f}x   target {target}"
    )
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


# --- W1 / W4: a 3-node linear graph -----------------------------------------------------------


class Counter(BaseModel):
    n: int = 0


def linear_graph() -> cadenza.CompiledGraph[Counter]:
    g = Graph(Counter, name="w1")
    for name in ("a", "b", "c"):
        g.add_node(name, lambda s: {"n": s.n + 1})
    g.add_sequence(START, "a", "b", "c", END)
    return g.compile()


async def baseline_linear(n: int) -> float:
    async def node(s: dict[str, int]) -> dict[str, int]:
        return {"n": s["n"] + 1}

    start = time.perf_counter()
    for _ in range(n):
        s = {"n": 0}
        for fn in (node, node, node):
            s = {**s, **(await fn(s))}
        assert s["n"] == 3
    return (time.perf_counter() - start) / n * 1e6


async def cadenza_linear(n: int, store_factory: Callable[[], object]) -> float:
    app = linear_graph()
    store = store_factory()
    start = time.perf_counter()
    for _ in range(n):
        r = await app.run({"n": 0}, store=store)  # type: ignore[arg-type]
        assert r.output.n == 3
    return (time.perf_counter() - start) / n * 1e6


async def baseline_sqlite_linear(n: int, path: str) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS cp (run TEXT, step INT, state TEXT)")

    async def node(s: dict[str, int]) -> dict[str, int]:
        return {"n": s["n"] + 1}

    start = time.perf_counter()
    for i in range(n):
        s = {"n": 0}
        for step, fn in enumerate((node, node, node)):
            s = {**s, **(await fn(s))}
            db.execute("BEGIN")
            db.execute("INSERT INTO cp VALUES (?,?,?)", (str(i), step, json.dumps(s)))
            db.execute("COMMIT")
        assert s["n"] == 3
    db.close()
    return (time.perf_counter() - start) / n * 1e6


def w1() -> dict[str, object]:
    n = 2000
    base = median_of(lambda: asyncio.run(baseline_linear(n)))
    value = median_of(lambda: asyncio.run(cadenza_linear(n, MemoryStore)))
    return report("W1", value, "µs/run", base, "≤ 25 µs/run")


def w4() -> dict[str, object]:
    n = 500
    tmp = tempfile.mkdtemp(prefix="cadenza-w4-")

    def fresh(kind: str) -> str:
        path = os.path.join(tmp, f"{kind}-{time.perf_counter_ns()}.db")
        return path

    base = median_of(lambda: asyncio.run(baseline_sqlite_linear(n, fresh("base"))))
    value = median_of(lambda: asyncio.run(cadenza_linear(n, lambda: SQLiteStore(fresh("cadenza")))))
    return report("W4", value, "µs/run", base, "≤ 600 µs/run")


# --- W2 / W3: an agent with one tool ---------------------------------------------------------


@tool
async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def add_sync(a: int, b: int) -> int:
    """Add two integers (a sync tool: runs in a worker thread)."""
    return a + b


def adder_script(tool_name: str, delay: float) -> Callable[[ModelRequest], object]:
    async def respond(request: ModelRequest) -> object:
        if delay:
            await asyncio.sleep(delay)
        last = request.messages[-1]
        if last.role == "tool":
            return str(last.tool_results[0].content)
        return call(tool_name, a=2, b=3)

    return respond


async def fake_model(messages: list[dict[str, object]], delay: float) -> dict[str, object]:
    if delay:
        await asyncio.sleep(delay)
    last = messages[-1]
    if last["role"] == "tool":
        return {"text": str(last["content"])}
    return {"tool": "add", "args": {"a": 2, "b": 3}}


async def baseline_agent_once(delay: float) -> str:
    tools = {"add": lambda a, b: a + b}
    messages: list[dict[str, object]] = [{"role": "user", "content": "2+3"}]
    while True:
        out = await fake_model(messages, delay)
        if "text" in out:
            return str(out["text"])
        result = tools[str(out["tool"])](**out["args"])  # type: ignore[arg-type]
        messages.append({"role": "assistant", "content": out})
        messages.append({"role": "tool", "content": result})


async def baseline_agent(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        assert await baseline_agent_once(0.0) == "5"
    return (time.perf_counter() - start) / n * 1e6


async def cadenza_agent(n: int, sync_tool: bool) -> float:
    t = add_sync if sync_tool else add
    agent = Agent(ScriptedModel(adder_script(t.name, 0.0)), tools=[t])
    store = MemoryStore()
    start = time.perf_counter()
    for _ in range(n):
        r = await agent.run("2+3", store=store)
        assert r.output == "5"
    return (time.perf_counter() - start) / n * 1e6


def w2() -> dict[str, object]:
    n = 1000
    base = median_of(lambda: asyncio.run(baseline_agent(n)))
    value = median_of(lambda: asyncio.run(cadenza_agent(n, False)))
    sync_value = median_of(lambda: asyncio.run(cadenza_agent(n, True)))
    print(f"     (the same with a sync tool, run in a worker thread: {sync_value:.1f} µs/run)")
    return report("W2", value, "µs/run", base, "≤ 100 µs/run")


def w3_child(kind: str) -> None:
    """One W3 repetition in this process: prints wall seconds and peak RSS in MiB."""

    async def run_cadenza() -> None:
        agent = Agent(ScriptedModel(adder_script("add", 0.05)), tools=[add])
        store = MemoryStore()
        results = await asyncio.gather(*(agent.run("2+3", store=store) for _ in range(1000)))
        assert all(r.output == "5" for r in results)

    async def run_baseline() -> None:
        results = await asyncio.gather(*(baseline_agent_once(0.05) for _ in range(1000)))
        assert all(r == "5" for r in results)

    start = time.perf_counter()
    asyncio.run(run_cadenza() if kind == "cadenza" else run_baseline())
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "rss": rss}))


def w3() -> dict[str, object]:
    def one(kind: str) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, __file__, "--w3-child", kind],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    base = [one("baseline") for _ in range(REPS)]
    mine = [one("cadenza") for _ in range(REPS)]
    wall = statistics.median(m["wall"] for m in mine)
    rss = statistics.median(m["rss"] for m in mine)
    base_rss = statistics.median(b["rss"] for b in base)
    print(f"     peak RSS {rss:.1f} MiB (baseline process {base_rss:.1f} MiB)   target ≤ 60 MiB")
    return report("W3", wall, "s wall", statistics.median(b["wall"] for b in base), "≤ 0.25 s")


# --- W5: one model turn with 5 slow tool calls -------------------------------------------------


@tool
async def slow(i: int) -> int:
    """Sleep 100 ms, then echo."""
    await asyncio.sleep(0.1)
    return i


async def cadenza_fanout() -> float:
    model = ScriptedModel([[call("slow", i=i) for i in range(5)], "done"])
    agent = Agent(model, tools=[slow])
    start = time.perf_counter()
    r = await agent.run("go", store=MemoryStore())
    wall = (time.perf_counter() - start) * 1000
    assert r.output == "done"
    assert [x.content for x in model.requests[-1].messages[-1].tool_results] == [0, 1, 2, 3, 4]
    return wall


async def baseline_fanout() -> float:
    async def one(i: int) -> int:
        await asyncio.sleep(0.1)
        return i

    start = time.perf_counter()
    assert await asyncio.gather(*(one(i) for i in range(5))) == [0, 1, 2, 3, 4]
    return (time.perf_counter() - start) * 1000


def w5() -> dict[str, object]:
    base = median_of(lambda: asyncio.run(baseline_fanout()))
    value = median_of(lambda: asyncio.run(cadenza_fanout()))
    return report("W5", value, "ms wall", base, "≤ 103 ms")


# --- import time ---------------------------------------------------------------------------


def imports() -> dict[str, object]:
    def timed(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    base = median_of(lambda: timed("pass"))
    value = median_of(lambda: timed("import cadenza"))
    return report("imp", value, "s", base, "≤ 0.15 s (python -c 'import cadenza')")


BENCHES = {"w1": w1, "w2": w2, "w3": w3, "w4": w4, "w5": w5, "import": imports}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--w3-child"]:
        w3_child(argv[1])
        return
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    print(f"cadenza {cadenza.__version__} on Python {sys.version.split()[0]}, medians of {REPS}")
    results = [BENCHES[n]() for n in names]
    out = (
        Path(os.environ.get("CADENZA_BENCH_OUT", ""))
        if os.environ.get("CADENZA_BENCH_OUT")
        else None
    )
    if out:
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
