"""Regressions found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import threading
import types
from pathlib import Path

from pydantic import BaseModel

from cadenza import END, START, Agent, Graph, MemoryStore, interrupt, tool
from cadenza.apps.support.tickets import TicketDesk
from cadenza.apps.support.workflow import build
from cadenza.stores import SQLiteStore
from cadenza.testing import ScriptedModel, call


def test_one_sqlite_store_serves_runs_from_several_threads(tmp_path: Path) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    model = ScriptedModel(lambda r: call("add", a=1, b=2) if r.messages[-1].role == "user" else "3")
    agent = Agent(model, tools=[add])
    store = SQLiteStore(tmp_path / "shared.db")
    errors: list[BaseException] = []

    def worker() -> None:
        for _ in range(25):
            try:
                assert agent.run_sync("1+2", store=store).output == "3"
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    runs = asyncio.run(store.list_runs(limit=1000))
    assert len(runs) == 100 and {r.status for r in runs} == {"finished"}


class S(BaseModel):
    ans: str = ""


async def test_replay_after_a_tool_call_then_an_interrupt_in_one_node() -> None:
    charged: list[int] = []

    @tool(side_effects=True)
    def charge(amount: int) -> str:
        """Charge."""
        charged.append(amount)
        return f"charged {amount}"

    async def pay(s: S, ctx) -> dict[str, str]:  # type: ignore[no-untyped-def]
        await ctx.call_tool("charge", amount=5)
        return {"ans": str(interrupt("ok?"))}

    g = Graph(S, name="pay", tools=[charge])
    g.add_node("pay", pay).add_edge(START, "pay").add_edge("pay", END)
    app = g.compile()
    store = MemoryStore()
    first = await app.run({}, store=store)
    assert first.status == "interrupted"
    done = await app.resume(first.run_id, answer="yes", store=store)
    assert done.output.ans == "yes" and charged == [5]  # the redo reused the recorded charge
    replayed = await app.replay(first.run_id, store=store)
    assert replayed.output.ans == "yes" and charged == [5]


async def test_replay_of_a_parent_waiting_on_its_sub_graph_reports_the_interrupt() -> None:
    sub = Graph(S, name="sub")
    sub.add_node("ask", lambda s: {"ans": str(interrupt("ok?"))}).add_edge(START, "ask")
    sub.add_edge("ask", END)
    parent = Graph(S, name="parent")
    parent.add_node("child", sub).add_node("after", lambda s: {"ans": s.ans + "!"})
    parent.add_sequence(START, "child", "after", END)
    app = parent.compile()
    store = MemoryStore()
    live = await app.run({}, store=store)
    assert live.status == "interrupted"
    assert (await app.replay(live.run_id, store=store)).status == "interrupted"


async def test_support_bot_threads_do_not_carry_the_last_answer_over() -> None:
    ScriptedModel([{"kind": "question"}], name="regression-support", repeat=True)
    bot = build("scripted:regression-support")
    deps = types.SimpleNamespace(tickets=TicketDesk(":memory:"))
    store = MemoryStore()
    empty = await bot.run("   ", store=store, thread="t1", deps=deps)
    assert empty.output.route == "clarify"
    real = await bot.run("How do I change my email address?", store=store, thread="t1", deps=deps)
    assert real.output.route == "answer" and real.output.article_id is not None
    odd = await bot.run("zzqx blorf wibble", store=store, thread="t1", deps=deps)
    assert odd.output.route == "ticket" and odd.output.article_id is None
    assert odd.output.ticket_id is not None and odd.output.ticket_id in odd.output.reply
    deps.tickets.close()
