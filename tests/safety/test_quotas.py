"""Quotas: per-user and per-tenant budgets over a window, shared by all their runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from cadenza import Agent, Budget, BudgetExceeded, Principal, RunContext, tool
from cadenza.errors import ConfigError
from cadenza.quotas import Quota
from cadenza.stores import SQLiteStore
from cadenza.testing import ScriptedModel, call

CALLS: list[int] = []


class Order(BaseModel):
    out: str = ""


@tool
def ping(n: int) -> int:
    """Count.

    Args:
        n: A number.
    """
    CALLS.append(n)
    return n


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


async def test_a_users_token_quota_spans_runs_and_stops_before_the_call(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    budget = Budget(quotas=(Quota("user", "tokens", 60),))
    ann = Principal("ann")
    model = ScriptedModel(["a fairly short answer"], repeat=True)
    agent = Agent(model, tools=[ping], budget=budget)
    first = await agent.run("hello there", store=store, principal=ann)
    spent = first.usage.total_tokens
    assert 0 < spent < 60
    key = Quota("user", "tokens", 60).key(ann, time.time())
    assert key is not None
    assert await store.charge(key, 0) == (True, spent)
    runs = 1
    with pytest.raises(BudgetExceeded, match="tokens per day of user ann") as exc:
        for _ in range(10):
            await agent.run("hello there", store=store, principal=ann)
            runs += 1
    assert exc.value.limit == 60 and exc.value.used >= 60 - 20
    assert len(model.requests) == runs  # the refused call never reached the model
    # Another user has their own quota; the same store in another "process" sees the same count.
    other = SQLiteStore(tmp_path / "q.db")
    bob_run = await agent.run("hello there", store=other, principal=Principal("bob"))
    assert bob_run.status == "finished"
    with pytest.raises(BudgetExceeded, match="user ann"):
        await agent.run("hello there", store=other, principal=ann)


async def test_a_tenants_tool_call_quota_is_shared_by_its_users(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    budget = Budget(quotas=(Quota("tenant", "tool_calls", 3, per="hour"),))

    def agent() -> Agent[str]:
        return Agent(
            ScriptedModel([[call("ping", n=1), call("ping", n=2)], "ok"]),
            tools=[ping],
            budget=budget,
        )

    ok = await agent().run("go", store=store, principal=Principal("ann", tenant="acme"))
    assert ok.status == "finished" and CALLS == [1, 2]
    with pytest.raises(BudgetExceeded, match="tool_calls per hour of tenant acme"):
        await agent().run("go", store=store, principal=Principal("bob", tenant="acme"))
    assert CALLS == [1, 2]  # neither of the two calls that did not fit ran
    # Another tenant, and a user without a tenant, are not limited by acme's quota.
    await agent().run("go", store=store, principal=Principal("cy", tenant="globex"))
    await agent().run("go", store=store, principal=Principal("dee"))
    assert len(CALLS) == 6


async def test_run_time_quota_refuses_to_start_once_used_up(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    budget = Budget(quotas=(Quota("user", "seconds", 0.0001),))
    agent = Agent(ScriptedModel(["ok"], repeat=True, delay=0.01), budget=budget)
    await agent.run("first", store=store, principal=Principal("ann"))
    with pytest.raises(BudgetExceeded, match="seconds per day of user ann"):
        await agent.run("second", store=store, principal=Principal("ann"))
    assert len(await store.list_runs()) == 1


def test_quota_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="metric"):
        Quota("user", "apples", 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="per must be"):
        Quota("user", "tokens", 1, per="week")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scope"):
        Quota("team", "tokens", 1)  # type: ignore[arg-type]


async def test_calls_redone_after_a_pause_are_charged_once(tmp_path: Path) -> None:
    from cadenza import END, START, Graph, Policy, Rule
    from cadenza.approvals import approve, list_approvals

    @tool(side_effects=True)
    def reserve(sku: str) -> str:
        """Reserve stock.

        Args:
            sku: Item.
        """
        CALLS.append(1)
        return "reserved"

    @tool(side_effects=True)
    def charge(amount: int) -> str:
        """Charge a card.

        Args:
            amount: Euros.
        """
        CALLS.append(amount)
        return "charged"

    async def order(state: Order, ctx: RunContext) -> dict[str, str]:
        await ctx.call_tool("reserve", sku="X1")
        await ctx.call_tool("charge", amount=500)  # waits for approval; the node runs again
        return {"out": "ok"}

    policy = Policy([Rule("ask", "approve", tools=("charge",)), Rule("rest", "allow")], version="1")
    g = Graph(Order, name="order", tools=[reserve, charge], policy=policy)
    g.add_node("order", order)
    g.add_edge(START, "order")
    g.add_edge("order", END)
    wf = g.compile()
    store = SQLiteStore(tmp_path / "q.db")
    quota = Quota("user", "tool_calls", 100)
    ann = Principal("ann")
    first = await wf.run({}, store=store, principal=ann, budget=Budget(quotas=(quota,)))
    (pending,) = await list_approvals(store)
    await approve(store, pending.id, by="bob")
    await wf.resume(first.run_id, store=store, budget=Budget(quotas=(quota,)))
    assert CALLS == [1, 500]  # each ran once
    key = quota.key(ann, time.time())
    assert key is not None and await store.charge(key, 0) == (True, 2.0)
    returned = [e.data for e in await store.events(first.run_id) if e.type == "tool.returned"]
    assert [(d["name"], bool(d.get("reused"))) for d in returned] == [
        ("reserve", False), ("reserve", True), ("charge", False),
    ]  # fmt: skip
