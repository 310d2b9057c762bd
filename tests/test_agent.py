"""The agent loop, budgets, resume, structured output, instructions and the test doubles,
through the public API."""

import asyncio
import itertools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

import cadenza
from cadenza import Agent, Budget, MemoryStore, RunContext, Template, tool
from cadenza.budgets import estimate_tokens
from cadenza.errors import (
    BudgetExceeded,
    ConfigError,
    ModelError,
    OutputValidationError,
    ScriptExhausted,
)
from cadenza.messages import Message, ToolResult
from cadenza.models import (
    ModelRequest,
    ModelResponse,
    StreamDone,
    TextDelta,
    ToolCallEvent,
    resolve_model,
)
from cadenza.testing import Delay, ScriptedModel, call, mock_tool

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A model name no other test uses (scripted names are process-global)."""
    return f"{prefix}-{next(_names)}"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def make_add() -> tuple[cadenza.Tool, list[tuple[int, int]]]:
    """A fresh `add` tool and the list of calls it actually executed."""
    calls: list[tuple[int, int]] = []

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first addend.
            b: The second addend.
        """
        calls.append((a, b))
        return a + b

    return add, calls


def results_in(request: ModelRequest) -> list[ToolResult]:
    """The tool results carried by the last message of a request."""
    last = request.messages[-1]
    assert last.role == "tool", f"expected a tool message last, got {last.role}"
    return last.tool_results


async def model_usage(store: MemoryStore, run_id: str) -> tuple[int, float]:
    """Total tokens and cost of every model response recorded for a run."""
    tokens, cost = 0, 0.0
    for e in await store.events(run_id):
        if e.type == "model.responded":
            u = e.data["usage"]
            tokens += u["input_tokens"] + u["output_tokens"]
            cost += u["cost"]
    return tokens, cost


# --- the loop --------------------------------------------------------------------------------


async def test_final_text_answer(store: MemoryStore):
    model = ScriptedModel(["Hello there!"])
    agent = Agent(model, instructions="Be brief.")
    result = await agent.run("Hi", store=store)

    assert result.status == "finished"
    assert result.output == "Hello there!"
    assert result.usage.requests == 1
    assert len(model.requests) == 1
    req = model.requests[0]
    assert [(m.role, m.text) for m in req.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert req.tools == []
    assert req.output_schema is None

    rec = await store.get_run(result.run_id)
    assert rec is not None
    assert rec.status == "finished"
    assert rec.output == "Hello there!"
    assert rec.kind == "agent"


async def test_tool_call_then_answer_reaches_the_model(store: MemoryStore):
    add, calls = make_add()
    c = call("add", a=2, b=3)
    model = ScriptedModel([c, "The sum is 5."])
    agent = Agent(model, tools=[add])
    result = await agent.run("What is 2 + 3?", store=store)

    assert result.output == "The sum is 5."
    assert calls == [(2, 3)]
    assert len(model.requests) == 2
    assert model.requests[0].tools == [add.spec]
    second = model.requests[1].messages
    assert second[-2].role == "assistant"
    assert second[-2].tool_calls == [c]
    [r] = results_in(model.requests[1])
    assert r.content == 5
    assert r.is_error is False
    assert r.call_id == c.id
    assert r.name == "add"

    logged = await store.messages(result.run_id)
    assert [m.role for m in logged] == ["user", "assistant", "tool", "assistant"]
    assert logged[-1].text == "The sum is 5."


async def test_run_result_carries_the_conversation(store: MemoryStore):
    # RunResult.messages is documented as "The agent's conversation (empty for graphs)".
    add, _ = make_add()
    model = ScriptedModel([call("add", a=1, b=1), "2"])
    result = await Agent(model, tools=[add]).run("1+1?", store=store)
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.messages[-1].text == "2"


async def test_several_async_tool_calls_in_one_turn_run_concurrently(store: MemoryStore):
    started: list[float] = []

    @tool
    async def slow(i: int) -> int:
        """Sleep then echo."""
        started.append(time.perf_counter())
        await asyncio.sleep(0.2)
        return i * 10

    model = ScriptedModel([[call("slow", i=0), call("slow", i=1), call("slow", i=2)], "done"])
    t0 = time.perf_counter()
    result = await Agent(model, tools=[slow]).run("go", store=store)
    elapsed = time.perf_counter() - t0

    assert result.output == "done"
    assert len(started) == 3
    assert elapsed < 0.45, f"3 x 0.2s tools took {elapsed:.2f}s: not concurrent"
    # Results come back in call order.
    assert [r.content for r in results_in(model.requests[1])] == [0, 10, 20]


async def test_sync_tools_run_concurrently_in_worker_threads(store: MemoryStore):
    threads: list[int] = []
    lock = threading.Lock()

    @tool
    def blocking(i: int) -> int:
        """Block the thread for a while."""
        with lock:
            threads.append(threading.get_ident())
        time.sleep(0.2)
        return i

    model = ScriptedModel([[call("blocking", i=i) for i in range(3)], "done"])
    t0 = time.perf_counter()
    result = await Agent(model, tools=[blocking]).run("go", store=store)
    elapsed = time.perf_counter() - t0

    assert result.output == "done"
    assert elapsed < 0.45, f"3 x 0.2s sync tools took {elapsed:.2f}s: not concurrent"
    assert len(set(threads)) == 3
    assert threading.get_ident() not in threads
    assert [r.content for r in results_in(model.requests[1])] == [0, 1, 2]


async def test_unknown_tool_is_refused_and_model_corrects_itself(store: MemoryStore):
    add, calls = make_add()

    @tool
    def mul(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    model = ScriptedModel([call("subtract", a=5, b=3), call("add", a=5, b=3), "8"])
    result = await Agent(model, tools=[add, mul]).run("5+3", store=store)

    assert result.output == "8"
    assert calls == [(5, 3)]
    [err] = results_in(model.requests[1])
    assert err.is_error is True
    assert "subtract" in err.content
    assert "add" in err.content and "mul" in err.content
    [ok] = results_in(model.requests[2])
    assert ok.is_error is False and ok.content == 8


async def test_invalid_arguments_are_refused_naming_the_field(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel(
        [
            call("add", a=1, b="three"),
            call("add", a=1),
            call("add", a=1, b=2, c=3),
            call("add", a=1, b=3),
            "4",
        ]
    )
    result = await Agent(model, tools=[add], max_retries=5).run("1+3", store=store)

    assert result.output == "4"
    assert calls == [(1, 3)], "tools must not run with invalid arguments"
    wrong_type = results_in(model.requests[1])[0]
    missing = results_in(model.requests[2])[0]
    extra = results_in(model.requests[3])[0]
    for r in (wrong_type, missing, extra):
        assert r.is_error is True
        assert "add" in r.content
    # The field at fault is named (as a word, not as a letter inside another word).
    assert re.search(r"\bb\b", wrong_type.content)
    assert re.search(r"\bb\b", missing.content)
    assert re.search(r"\bc\b", extra.content)


@pytest.mark.parametrize(
    "bad_call",
    [lambda: call("no_such_tool", x=1), lambda: call("add", a="x", b="y")],
    ids=["unknown-tool", "invalid-arguments"],
)
async def test_invalid_tool_calls_are_bounded_by_max_retries(
    store: MemoryStore, bad_call: Callable[[], Any]
):
    add, calls = make_add()
    model = ScriptedModel([bad_call()], repeat=True)
    agent = Agent(model, tools=[add], max_retries=2)
    with pytest.raises(ModelError) as info:
        await agent.run("go", store=store)

    assert not isinstance(info.value, ScriptExhausted)
    assert len(model.requests) == 3  # the first try and two corrections
    assert calls == []
    assert info.value.run_id is not None
    rec = await store.get_run(info.value.run_id)
    assert rec is not None and rec.status == "failed"
    assert rec.error is not None and rec.error["type"] == "ModelError"


async def test_tool_that_raises_becomes_an_error_result(store: MemoryStore):
    @tool
    def explode(reason: str) -> str:
        """Always fails."""
        raise ValueError(f"boom: {reason}")

    model = ScriptedModel([call("explode", reason="disk full"), "It failed, sorry."])
    result = await Agent(model, tools=[explode]).run("try", store=store)

    assert result.output == "It failed, sorry."
    [r] = results_in(model.requests[1])
    assert r.is_error is True
    assert "ValueError" in r.content
    assert "boom: disk full" in r.content


async def test_tool_timeout_becomes_an_error_result(store: MemoryStore):
    finished: list[bool] = []

    @tool(timeout=0.1)
    async def sluggish(x: int) -> int:
        """Takes far too long."""
        await asyncio.sleep(1)
        finished.append(True)
        return x

    model = ScriptedModel([call("sluggish", x=1), "gave up"])
    t0 = time.perf_counter()
    result = await Agent(model, tools=[sluggish]).run("go", store=store)
    elapsed = time.perf_counter() - t0

    assert result.output == "gave up"
    assert elapsed < 0.8
    assert finished == []
    [r] = results_in(model.requests[1])
    assert r.is_error is True
    assert "timed out" in r.content
    assert "sluggish" in r.content


# --- budgets ---------------------------------------------------------------------------------


async def test_max_steps_budget(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel([call("add", a=1, b=1), call("add", a=2, b=1)], repeat=True)
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model, tools=[add]).run("loop", store=store, budget=Budget(max_steps=2))

    assert info.value.kind == "steps"
    assert info.value.limit == 2
    assert info.value.used == 2
    assert len(model.requests) == 2, "the model must not receive a request past the budget"
    assert calls == [(1, 1), (2, 1)]


async def test_max_tool_calls_budget_sequential(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel(
        [call("add", a=1, b=0), call("add", a=2, b=0), call("add", a=3, b=0), "done"]
    )
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model, tools=[add]).run("go", store=store, budget=Budget(max_tool_calls=2))

    assert info.value.kind == "tool_calls"
    assert info.value.limit == 2
    assert calls == [(1, 0), (2, 0)], "the tool ran more often than the budget allows"
    assert len(model.requests) == 3


async def test_max_tool_calls_budget_within_one_turn(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel([[call("add", a=i, b=0) for i in range(3)], "done"])
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model, tools=[add]).run("go", store=store, budget=Budget(max_tool_calls=2))

    assert info.value.kind == "tool_calls"
    assert len(calls) <= 2


async def test_tool_call_budget_reports_what_was_used(store: MemoryStore):
    # BudgetExceeded.used is "what the run had used when it stopped": when a turn asks for more
    # calls than are left, none run, so none were used.
    add, calls = make_add()
    model = ScriptedModel([[call("add", a=i, b=0) for i in range(3)], "done"])
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model, tools=[add]).run("go", store=store, budget=Budget(max_tool_calls=2))
    assert info.value.used == len(calls)


async def test_refused_calls_do_not_count_as_tool_calls(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel([call("nope"), call("add", a=1, b=0), call("add", a=2, b=0), "done"])
    result = await Agent(model, tools=[add]).run("go", store=store, budget=Budget(max_tool_calls=2))
    assert result.output == "done"
    assert calls == [(1, 0), (2, 0)]


async def test_max_tokens_budget_is_never_overspent(store: MemoryStore):
    add, _ = make_add()
    model = ScriptedModel([call("add", a=1, b=1)], repeat=True)
    limit = 600
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model, tools=[add]).run("go", store=store, budget=Budget(max_tokens=limit))

    assert info.value.kind == "tokens"
    assert info.value.limit == limit
    assert info.value.used <= limit
    assert len(model.requests) >= 2
    tokens, _ = await model_usage(store, info.value.run_id or "")
    assert 0 < tokens <= limit
    # Each request was capped so that even a maximal answer fits in what was left.
    spent = 0
    for req, e in zip(
        model.requests, await _responses(store, info.value.run_id or ""), strict=True
    ):
        cap = req.settings.max_tokens
        assert cap is not None and cap > 0
        assert spent + estimate_tokens(req) + cap <= limit
        spent += e["input_tokens"] + e["output_tokens"]


async def _responses(store: MemoryStore, run_id: str) -> list[dict[str, Any]]:
    return [e.data["usage"] for e in await store.events(run_id) if e.type == "model.responded"]


async def test_max_cost_budget(store: MemoryStore):
    add, _ = make_add()
    model = ScriptedModel([call("add", a=1, b=1)], repeat=True, price=(0.001, 0.002))
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model, tools=[add]).run("go", store=store, budget=Budget(max_cost=0.5))

    assert info.value.kind == "cost"
    assert info.value.limit == 0.5
    assert len(model.requests) >= 2
    _, cost = await model_usage(store, info.value.run_id or "")
    assert cost > 0
    assert info.value.used == pytest.approx(cost)


async def test_max_cost_budget_is_never_overspent(store: MemoryStore):
    # A cost budget must bound the *output* of the next call too (as max_tokens does), so that
    # a long answer cannot overspend it: the request must carry a max_tokens cap whose
    # worst-case cost fits in what is left.
    price = (0.001, 0.01)
    model = ScriptedModel(["word " * 400], price=price)
    limit = 0.05
    try:
        result = await Agent(model).run("essay", store=store, budget=Budget(max_cost=limit))
        spent = result.usage.cost
    except BudgetExceeded as exc:
        assert exc.kind == "cost"
        spent = exc.used
    [req] = model.requests
    cap = req.settings.max_tokens
    assert cap is not None, "a cost budget sent the model an uncapped request"
    assert estimate_tokens(req) * price[0] + cap * price[1] <= limit
    assert spent <= limit


async def test_timeout_budget_stops_a_slow_model(store: MemoryStore):
    model = ScriptedModel([Delay(2.0, "too late")])
    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model).run("go", store=store, budget=Budget(timeout=0.2))
    elapsed = time.perf_counter() - t0

    assert info.value.kind == "time"
    assert info.value.limit == 0.2
    assert elapsed < 1.0


async def test_timeout_budget_between_steps(store: MemoryStore):
    @tool
    async def nap(s: float) -> str:
        """Sleep."""
        await asyncio.sleep(s)
        return "rested"

    model = ScriptedModel([call("nap", s=0.15), call("nap", s=0.151)], repeat=True)
    t0 = time.perf_counter()
    with pytest.raises(BudgetExceeded) as info:
        await Agent(model, tools=[nap]).run("go", store=store, budget=Budget(timeout=0.25))
    assert info.value.kind == "time"
    assert time.perf_counter() - t0 < 1.0
    assert len(model.requests) <= 2


async def test_budget_exceeded_run_is_failed_checkpointed_and_resumable(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel([call("add", a=1, b=2), call("add", a=3, b=4), "all added"])
    agent = Agent(model, tools=[add])
    with pytest.raises(BudgetExceeded) as info:
        await agent.run("add things", store=store, budget=Budget(max_steps=2))
    run_id = info.value.run_id
    assert run_id is not None

    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status == "failed"
    assert rec.error is not None and rec.error["type"] == "BudgetExceeded"
    cp = await store.checkpoint(run_id)
    assert cp is not None
    assert cp.messages[-1].role == "tool"
    assert [r.content for r in cp.messages[-1].tool_results] == [7]

    result = await agent.resume(run_id, store=store, budget=Budget(max_steps=10))
    assert result.run_id == run_id
    assert result.status == "finished"
    assert result.output == "all added"
    assert calls == [(1, 2), (3, 4)], "completed tool calls were executed again"
    assert len(model.requests) == 3
    rec = await store.get_run(run_id)
    assert rec is not None and rec.status == "finished"
    assert rec.output == "all added"


async def test_resume_after_tool_call_budget_runs_the_pending_call(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel(
        [call("add", a=1, b=0), call("add", a=2, b=0), call("add", a=3, b=0), "done"]
    )
    agent = Agent(model, tools=[add])
    with pytest.raises(BudgetExceeded) as info:
        await agent.run("go", store=store, budget=Budget(max_tool_calls=2))
    assert calls == [(1, 0), (2, 0)]
    run_id = info.value.run_id
    assert run_id is not None
    assert await store.checkpoint(run_id) is not None

    result = await agent.resume(run_id, store=store, budget=Budget(max_tool_calls=5))
    assert result.output == "done"
    assert calls == [(1, 0), (2, 0), (3, 0)]
    assert len(model.requests) == 4


async def test_refused_calls_do_not_count_as_tool_calls_after_resume(store: MemoryStore):
    # In a live run a refused call (unknown tool) does not consume max_tool_calls; a resumed
    # run must count what was spent the same way.
    add, calls = make_add()
    model = ScriptedModel([call("nope"), call("add", a=1, b=0), call("add", a=2, b=0), "done"])
    agent = Agent(model, tools=[add])
    with pytest.raises(BudgetExceeded) as info:
        await agent.run("go", store=store, budget=Budget(max_steps=2, max_tool_calls=2))
    assert info.value.kind == "steps"
    run_id = info.value.run_id
    assert run_id is not None

    result = await agent.resume(run_id, store=store, budget=Budget(max_steps=10, max_tool_calls=2))
    assert result.output == "done"
    assert calls == [(1, 0), (2, 0)]


# --- structured output -----------------------------------------------------------------------


class CityFacts(BaseModel):
    city: str
    population: int


async def test_output_type_validates_json_answer(store: MemoryStore):
    model = ScriptedModel(['{"city": "Paris", "population": 2100000}'])
    agent = Agent(model, output_type=CityFacts)
    result = await agent.run("Tell me about Paris", store=store)

    assert isinstance(result.output, CityFacts)
    assert result.output == CityFacts(city="Paris", population=2100000)
    schema = model.requests[0].output_schema
    assert schema is not None
    assert set(schema["properties"]) == {"city", "population"}
    rec = await store.get_run(result.run_id)
    assert rec is not None and rec.output == {"city": "Paris", "population": 2100000}


async def test_output_type_accepts_fenced_json_and_dict_items(store: MemoryStore):
    fenced = '```json\n{"city": "Oslo", "population": 700000}\n```'
    r1 = await Agent(ScriptedModel([fenced]), output_type=CityFacts).run("x", store=store)
    assert r1.output == CityFacts(city="Oslo", population=700000)
    r2 = await Agent(
        ScriptedModel([{"city": "Rome", "population": 2800000}]), output_type=CityFacts
    ).run("x", store=store)
    assert r2.output == CityFacts(city="Rome", population=2800000)


async def test_output_type_retries_on_invalid_answer(store: MemoryStore):
    model = ScriptedModel(
        [
            "Paris is big.",
            '{"city": "Paris", "population": "lots"}',
            CityFacts(city="Paris", population=2),
        ]
    )
    result = await Agent(model, output_type=CityFacts).run("Paris?", store=store)

    assert result.output == CityFacts(city="Paris", population=2)
    assert len(model.requests) == 3
    second = model.requests[1].messages
    assert second[-2].role == "assistant" and second[-2].text == "Paris is big."
    assert second[-1].role == "user"
    assert "JSON" in second[-1].text
    third = model.requests[2].messages
    assert third[-1].role == "user"
    assert "population" in third[-1].text


async def test_output_type_gives_up_after_max_retries(store: MemoryStore):
    model = ScriptedModel(["not json at all"], repeat=True)
    agent = Agent(model, output_type=CityFacts, max_retries=2)
    with pytest.raises(OutputValidationError, match="CityFacts") as info:
        await agent.run("x", store=store)
    assert len(model.requests) == 3
    rec = await store.get_run(info.value.run_id or "")
    assert rec is not None and rec.status == "failed"


# --- instructions ----------------------------------------------------------------------------


async def test_template_instructions_with_vars(store: MemoryStore):
    model = ScriptedModel(["ok"])
    agent = Agent(model, instructions=Template("You are {persona} at {company}. Use {{braces}}."))
    await agent.run("hi", store=store, vars={"persona": "a concierge", "company": "Acme"})
    system = model.requests[0].messages[0]
    assert system.role == "system"
    assert system.text == "You are a concierge at Acme. Use {braces}."


async def test_template_missing_var_is_a_config_error(store: MemoryStore):
    model = ScriptedModel(["ok"])
    agent = Agent(model, instructions=Template("You are {persona} at {company}."))
    with pytest.raises(ConfigError, match="company") as info:
        await agent.run("hi", store=store, vars={"persona": "a concierge"})
    assert "persona" not in str(info.value).split("pass")[0]
    assert model.requests == []


async def test_instructions_as_function_of_run_context(store: MemoryStore):
    seen: list[RunContext] = []

    def instructions(ctx: RunContext) -> str:
        seen.append(ctx)
        return f"Serve {ctx.principal.user_id} in {ctx.deps['lang']}."

    model = ScriptedModel(["ok"])
    result = await Agent(model, instructions=instructions).run(
        "hi", store=store, deps={"lang": "French"}, principal=cadenza.Principal("bob")
    )
    assert model.requests[0].messages[0].text == "Serve bob in French."
    assert seen[0].run_id == result.run_id


# --- ScriptedModel ---------------------------------------------------------------------------


def _request(text: str = "hi") -> ModelRequest:
    return ModelRequest([Message.user(text)], [])


async def test_scripted_model_records_requests():
    model = ScriptedModel(["one", call("add", a=1, b=2)])
    r1, r2 = _request("a"), _request("b")
    first = await model.request(r1)
    second = await model.request(r2)
    assert model.requests == [r1, r2]
    assert model.requests[0] is r1
    assert first.text == "one" and first.tool_calls == [] and first.finish_reason == "stop"
    assert second.text == ""
    assert [(c.name, c.arguments) for c in second.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert second.finish_reason == "tool_calls"
    assert model.remaining == 0


async def test_scripted_model_raises_script_exhausted(store: MemoryStore):
    model = ScriptedModel(["only one"])
    await model.request(_request())
    with pytest.raises(ScriptExhausted, match="#2"):
        await model.request(_request())

    add, _ = make_add()
    agent_model = ScriptedModel([call("add", a=1, b=1)])
    with pytest.raises(ScriptExhausted):
        await Agent(agent_model, tools=[add]).run("x", store=store)
    assert len(agent_model.requests) == 2


async def test_scripted_model_raises_scripted_exception(store: MemoryStore):
    model = ScriptedModel([ConnectionError("provider down")])
    with pytest.raises(ConnectionError, match="provider down"):
        await model.request(_request())

    agent_model = ScriptedModel(["fine", ConnectionError("provider down")])
    agent = Agent(agent_model)
    assert (await agent.run("1", store=store)).output == "fine"
    # Inside a run, a model failure surfaces as a typed ModelError caused by the original.
    with pytest.raises(ModelError, match="ConnectionError: provider down") as info:
        await agent.run("2", store=store)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert info.value.run_id is not None
    failed = await store.list_runs(status="failed")
    assert len(failed) == 1
    assert failed[0].error is not None and failed[0].error["type"] == "ModelError"


async def test_scripted_model_delay():
    model = ScriptedModel([Delay(0.1, "slow"), "fast"])
    t0 = time.perf_counter()
    r = await model.request(_request())
    assert time.perf_counter() - t0 >= 0.09
    assert r.text == "slow"
    t0 = time.perf_counter()
    assert (await model.request(_request())).text == "fast"
    assert time.perf_counter() - t0 < 0.05


async def test_scripted_model_function_of_request():
    model = ScriptedModel(lambda req: f"echo: {req.messages[-1].text}")
    assert (await model.request(_request("ping"))).text == "echo: ping"
    assert (await model.request(_request("pong"))).text == "echo: pong"
    assert len(model.requests) == 2


async def test_scripted_model_callable_and_async_callable_items():
    async def later(req: ModelRequest) -> str:
        await asyncio.sleep(0)
        return f"async {len(req.messages)}"

    model = ScriptedModel([lambda req: req.messages[-1].text.upper(), later])
    assert (await model.request(_request("shout"))).text == "SHOUT"
    assert (await model.request(_request())).text == "async 1"


async def test_scripted_model_repeat():
    model = ScriptedModel(["a", "b"], repeat=True)
    texts = [(await model.request(_request())).text for _ in range(5)]
    assert texts == ["a", "b", "a", "b", "a"]


async def test_scripted_model_price_sets_cost():
    model = ScriptedModel(["hello world"], price=(0.5, 2.0))
    r = await model.request(_request())
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.cost == pytest.approx(r.usage.input_tokens * 0.5 + r.usage.output_tokens * 2.0)


async def test_scripted_model_is_safe_when_shared_by_concurrent_runs(store: MemoryStore):
    add, calls = make_add()

    def script(req: ModelRequest) -> Any:
        last = req.messages[-1]
        if last.role == "user":
            n = int(last.text)
            return call("add", a=n, b=1000)
        return f"result {last.tool_results[0].content}"

    model = ScriptedModel(script)
    agent = Agent(model, tools=[add])
    results = await asyncio.gather(*(agent.run(str(i), store=store) for i in range(50)))

    assert [r.output for r in results] == [f"result {i + 1000}" for i in range(50)]
    assert len(model.requests) == 100
    assert sorted(calls) == [(i, 1000) for i in range(50)]
    assert len({r.run_id for r in results}) == 50


async def test_stream_yields_deltas_tool_calls_and_done_equal_to_request():
    c = call("add", a=1, b=2)
    script = ["The answer is  forty two.", c, [c, call("add", a=3, b=4)]]
    streamed = ScriptedModel(script)
    requested = ScriptedModel(script)

    for _ in range(len(script)):
        req = _request("q")
        events = [e async for e in streamed.stream(req)]
        expected = await requested.request(req)

        assert isinstance(events[-1], StreamDone)
        assert sum(isinstance(e, StreamDone) for e in events) == 1
        assert events[-1].response == expected
        text = "".join(e.text for e in events if isinstance(e, TextDelta))
        assert text == expected.text
        assert [e.call for e in events if isinstance(e, ToolCallEvent)] == expected.tool_calls
        # Text comes before tool calls.
        kinds = [type(e).__name__ for e in events]
        assert kinds == sorted(kinds, key=["TextDelta", "ToolCallEvent", "StreamDone"].index)
    assert len(streamed.requests) == len(script)


async def test_stream_of_text_has_several_deltas():
    model = ScriptedModel(["one two three"])
    events = [e async for e in model.stream(_request())]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["one", " two", " three"]


# --- model strings ---------------------------------------------------------------------------


async def test_agent_with_scripted_model_string(store: MemoryStore):
    name = unique("weather-bot")
    model = ScriptedModel(["Sunny."], name=name)
    assert model.name == f"scripted:{name}"
    agent = Agent(f"scripted:{name}")
    result = await agent.run("Weather?", store=store)
    assert result.output == "Sunny."
    assert len(model.requests) == 1
    assert resolve_model(f"scripted:{name}") is model


async def test_run_model_override(store: MemoryStore):
    default = ScriptedModel(["default"])
    override = ScriptedModel(["override"])
    result = await Agent(default).run("x", store=store, model=override)
    assert result.output == "override"
    assert default.requests == []


async def test_scripted_echo_model(store: MemoryStore):
    result = await Agent("scripted:echo").run("repeat after me", store=store)
    assert result.output == "repeat after me"


def test_resolve_model_unknown_provider_lists_known_providers():
    with pytest.raises(ConfigError) as info:
        resolve_model("nope:x")
    msg = str(info.value)
    assert "nope" in msg
    assert "scripted" in msg


@pytest.mark.parametrize("bad", ["no-colon", "scripted:", ":x"])
def test_resolve_model_malformed_strings(bad: str):
    with pytest.raises(ConfigError):
        resolve_model(bad)


def test_resolve_model_unknown_scripted_name():
    name = unique("never-created")
    with pytest.raises(ConfigError, match=name):
        resolve_model(f"scripted:{name}")


def test_resolve_model_passes_models_through():
    m = ScriptedModel(["x"])
    assert resolve_model(m) is m


# --- mock_tool -------------------------------------------------------------------------------


async def test_mock_tool_replaces_tool_and_records_calls(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel([call("add", a=2, b=3), "mocked"])
    with mock_tool("add", returns=42) as mock:
        result = await Agent(model, tools=[add]).run("x", store=store)

    assert result.output == "mocked"
    assert calls == [], "the real tool ran despite the mock"
    assert mock.calls == [{"a": 2, "b": 3}]
    [r] = results_in(model.requests[1])
    assert r.content == 42 and r.is_error is False

    # Outside the block the real tool is back.
    model2 = ScriptedModel([call("add", a=2, b=3), "real"])
    await Agent(model2, tools=[add]).run("x", store=store)
    assert calls == [(2, 3)]
    assert results_in(model2.requests[1])[0].content == 5


async def test_mock_tool_arguments_are_validated_against_real_schema(store: MemoryStore):
    add, calls = make_add()
    model = ScriptedModel([call("add", a=2, b="three"), call("add", a=2, b="3"), "done"])
    with mock_tool("add", returns=0) as mock:
        await Agent(model, tools=[add]).run("x", store=store)

    bad = results_in(model.requests[1])[0]
    assert bad.is_error is True and re.search(r"\bb\b", bad.content)
    # Only the valid call reached the mock, with arguments as validated (coerced to int).
    assert mock.calls == [{"a": 2, "b": 3}]
    assert calls == []


async def test_mock_tool_side_effect_and_exception(store: MemoryStore):
    add, _ = make_add()

    def fake_add(a: int, b: int) -> int:
        if a < 0:
            raise RuntimeError("negative")
        return a * 100 + b

    model = ScriptedModel([call("add", a=1, b=2), call("add", a=-1, b=0), "done"])
    with mock_tool("add", side_effect=fake_add) as mock:
        await Agent(model, tools=[add]).run("x", store=store)

    assert results_in(model.requests[1])[0].content == 102
    err = results_in(model.requests[2])[0]
    assert err.is_error is True and "negative" in err.content
    assert len(mock.calls) == 2


# --- threads, deps, side effects -------------------------------------------------------------


async def test_second_run_on_a_thread_sees_the_first(store: MemoryStore):
    model = ScriptedModel(["Nice to meet you, Ada.", "Your name is Ada."])
    agent = Agent(model, instructions="Be kind.")
    r1 = await agent.run("My name is Ada.", store=store, thread="t-1")
    r2 = await agent.run("What is my name?", store=store, thread="t-1")

    assert r1.thread == r2.thread == "t-1"
    first_request = model.requests[1]
    assert [(m.role, m.text) for m in first_request.messages] == [
        ("system", "Be kind."),
        ("user", "My name is Ada."),
        ("assistant", "Nice to meet you, Ada."),
        ("user", "What is my name?"),
    ]

    # Another thread starts fresh.
    other = ScriptedModel(["Who are you?"])
    await Agent(other).run("What is my name?", store=store, thread="t-2")
    assert [m.text for m in other.requests[0].messages] == ["What is my name?"]


async def test_deps_are_injected_through_run_context(store: MemoryStore):
    seen: list[RunContext] = []

    @tool
    async def lookup(ctx: RunContext, key: str) -> str:
        """Look a key up in the injected database."""
        seen.append(ctx)
        return ctx.deps["db"][key]

    model = ScriptedModel([call("lookup", key="color"), "blue it is"])
    db = {"db": {"color": "blue"}}
    result = await Agent(model, tools=[lookup]).run("color?", store=store, deps=db)

    assert result.output == "blue it is"
    assert results_in(model.requests[1])[0].content == "blue"
    [ctx] = seen
    assert ctx.deps is db
    assert ctx.run_id == result.run_id
    assert ctx.step == 1
    assert ctx.idempotency_key == f"{result.run_id}:1:0"
    assert "ctx" not in str(model.requests[0].tools[0].parameters)


async def test_side_effect_tool_results_are_recorded(store: MemoryStore):
    sent: list[str] = []

    @tool(side_effects=True)
    def send_email(to: str) -> str:
        """Send an e-mail."""
        sent.append(to)
        return f"sent to {to}"

    add, _ = make_add()
    model = ScriptedModel([[call("send_email", to="ada@example.com"), call("add", a=1, b=1)], "ok"])
    result = await Agent(model, tools=[send_email, add]).run("mail", store=store)

    assert sent == ["ada@example.com"]
    rec = await store.tool_record(f"{result.run_id}:1:0")
    assert rec is not None
    assert rec.status == "done"
    assert rec.run_id == result.run_id
    assert rec.result == {
        "name": "send_email",
        "content": "sent to ada@example.com",
        "is_error": False,
    }
    # Side-effect-free tools are not journaled.
    assert await store.tool_record(f"{result.run_id}:1:1") is None


def test_run_sync():
    model = ScriptedModel(["sync answer"])
    result = Agent(model).run_sync("x", store=MemoryStore())
    assert result.output == "sync answer"


async def test_listeners_see_the_journal(store: MemoryStore):
    add, _ = make_add()
    events: list[str] = []
    model = ScriptedModel([call("add", a=1, b=1), "2"])
    await Agent(model, tools=[add]).run(
        "x", store=store, listeners=[lambda e: events.append(e.type)]
    )
    assert events[0] == "run.started"
    assert events[-1] == "run.finished"
    assert events.count("model.responded") == 2
    assert "tool.called" in events and "tool.returned" in events


def test_model_response_message_roundtrip():
    c = call("add", a=1, b=2)
    resp = ModelResponse("thinking", [c])
    msg = resp.message()
    assert msg.role == "assistant" and msg.text == "thinking" and msg.tool_calls == [c]


async def test_a_model_repeating_its_previous_call_is_refused_and_nudged() -> None:
    seen: list[int] = []

    @tool
    def lookup(n: int) -> int:
        """Look up.

        Args:
            n: A number.
        """
        seen.append(n)
        return n * 10

    model = ScriptedModel([call("lookup", n=1), call("lookup", n=1), call("lookup", n=2), "20"])
    result = await Agent(model, tools=[lookup]).run("go", store=MemoryStore())
    assert result.output == "20"
    assert seen == [1, 2]  # the repeat never ran
    nudge = model.requests[2].messages[-1].tool_results[0]
    assert nudge.is_error and nudge.content.startswith("you already called lookup with exactly")


async def test_repeats_may_be_allowed_for_polling_agents() -> None:
    polls: list[int] = []

    @tool
    def status(job: int) -> str:
        """Poll a job.

        Args:
            job: The job.
        """
        polls.append(job)
        return "done" if len(polls) == 3 else "running"

    model = ScriptedModel([call("status", job=7)] * 3 + ["finished"])
    result = await Agent(model, tools=[status], refuse_repeats=False).run(
        "wait", store=MemoryStore()
    )
    assert result.output == "finished" and polls == [7, 7, 7]


async def test_streamed_runs_tell_listeners_each_piece_and_journal_only_the_answer() -> None:
    from cadenza.stores._base import Event

    seen: list[Event] = []
    model = ScriptedModel([call("add", a=2, b=3), "The sum is 5."])
    add, _ = make_add()
    store = MemoryStore()
    result = await Agent(model, tools=[add]).run(
        "2+3?", store=store, stream=True, listeners=[seen.append]
    )
    assert result.output == "The sum is 5."
    deltas = "".join(e.data["text"] for e in seen if e.type == "model.delta")
    assert deltas == "The sum is 5."
    assert [e.data["name"] for e in seen if e.type == "model.tool_call"] == ["add"]
    assert all(e.seq == 0 for e in seen if e.type.startswith("model.") and e.type != "model.requested"
               and e.type != "model.responded")  # fmt: skip
    journal = {e.type for e in await store.events(result.run_id)}
    assert "model.delta" not in journal and "model.responded" in journal


async def test_a_cut_stream_never_becomes_an_answer() -> None:
    from collections.abc import AsyncIterator

    from cadenza.models import ModelRequest, ModelResponse, StreamEvent, TextDelta

    class Cut:
        name = "cut"

        async def request(self, request: ModelRequest) -> ModelResponse:
            raise AssertionError("streaming runs ask for streams")

        async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
            yield TextDelta("The answer is")  # and then the connection drops

    with pytest.raises(ModelError, match="ended its stream without a final response"):
        await Agent(Cut()).run("q", store=MemoryStore(), stream=True)
