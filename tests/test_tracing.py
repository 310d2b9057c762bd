"""Traces rebuilt from the journal (`trace_run`, `build_trace`), JSONL, OpenTelemetry export
with the GenAI conventions, and the sampling `Tracer` run listener."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from cadenza import END, START, Agent, Graph, MemoryStore, tool
from cadenza.errors import ConfigError, ModelError
from cadenza.models import ModelRequest
from cadenza.stores._base import Event
from cadenza.testing import ScriptedModel, call
from cadenza.tracing import Span, Tracer, build_trace, export_otel, to_jsonl, trace_run

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A scripted model name no other test uses (scripted names are process-global)."""
    return f"trace_{prefix}_{next(_names)}"


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


@tool
def divide(a: int, b: int) -> float:
    """Divide a by b."""
    return a / b


def calculator(request: ModelRequest) -> Any:
    """Call `add` on 'a+b', then answer with the tool's result."""
    last = request.messages[-1]
    if last.role == "tool":
        return f"The sum is {last.tool_results[0].content}."
    a, b = (int(x) for x in last.text.split("+"))
    return call("add", a=a, b=b)


def calc_agent(name: str = "calc") -> Agent[Any]:
    return Agent(ScriptedModel(calculator, name=unique("calc")), name=name, tools=[add])


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


def by_kind(spans: list[Span], kind: str) -> list[Span]:
    return [s for s in spans if s.kind == kind]


def assert_well_formed(spans: list[Span]) -> None:
    """One root first, unique ids, parents exist and come first, children inside parents."""
    assert spans, "empty trace"
    assert spans[0].parent_id is None
    assert [s for s in spans if s.parent_id is None] == [spans[0]]
    ids = [s.span_id for s in spans]
    assert len(ids) == len(set(ids)), f"duplicate span ids: {ids}"
    seen: dict[str, Span] = {}
    for s in spans:
        assert s.end >= s.start, f"{s.name} ends before it starts"
        assert s.duration_ms >= 0
        if s.parent_id is not None:
            assert s.parent_id in seen, f"{s.name}: parent {s.parent_id} missing or later"
            parent = seen[s.parent_id]
            assert parent.start <= s.start and s.end <= parent.end, (
                f"{s.name} [{s.start}, {s.end}] is outside its parent {parent.name} "
                f"[{parent.start}, {parent.end}]"
            )
        seen[s.span_id] = s


# --- agent runs --------------------------------------------------------------------------------


async def test_agent_run_trace_matches_the_journal(store: MemoryStore) -> None:
    agent = calc_agent("adder")
    result = await agent.run("2+3", store=store)
    assert result.output == "The sum is 5."

    spans = await trace_run(store, result.run_id)
    assert_well_formed(spans)
    root = spans[0]
    assert (root.kind, root.name, root.run_id, root.span_id) == (
        "run",
        "run adder",
        result.run_id,
        result.run_id,
    )
    assert root.error is None
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "adder"
    assert root.attributes["cadenza.workflow.kind"] == "agent"

    models, tools = by_kind(spans, "model"), by_kind(spans, "tool")
    assert len(models) == 2 and len(tools) == 1 and len(spans) == 4
    assert all(s.parent_id == root.span_id for s in models + tools)
    model_name = agent.model.name  # type: ignore[union-attr]
    for s in models:
        assert s.name == f"chat {model_name}"
        assert s.attributes["gen_ai.operation.name"] == "chat"
        assert s.attributes["gen_ai.provider.name"] == "scripted"
        assert s.attributes["gen_ai.request.model"] == model_name
        assert s.attributes["gen_ai.response.model"] == model_name
        assert s.attributes["gen_ai.agent.name"] == "adder"
    assert models[0].attributes["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert models[1].attributes["gen_ai.response.finish_reasons"] == ["stop"]
    (t,) = tools
    assert t.name == "execute_tool add"
    assert t.error is None
    assert t.attributes["gen_ai.operation.name"] == "execute_tool"
    assert t.attributes["gen_ai.tool.name"] == "add"
    # the tool span sits between the two model calls
    assert models[0].end <= t.start and t.end <= models[1].start

    # span tokens and times are those of the journal
    events = await store.events(result.run_id)
    requested = [e for e in events if e.type == "model.requested"]
    responded = [e for e in events if e.type == "model.responded"]
    assert len(responded) == 2
    for s, req, resp in zip(models, requested, responded, strict=True):
        u = resp.data["usage"]
        assert s.attributes["gen_ai.usage.input_tokens"] == u["input_tokens"] > 0
        assert s.attributes["gen_ai.usage.output_tokens"] == u["output_tokens"] > 0
        assert s.attributes["cadenza.cost_usd"] == u["cost"]
        assert (s.start, s.end) == (req.ts, resp.ts)
    called = next(e for e in events if e.type == "tool.called")
    returned = next(e for e in events if e.type == "tool.returned")
    assert (t.start, t.end) == (called.ts, returned.ts)
    assert t.attributes["gen_ai.tool.call.id"] == called.data["call_id"]
    assert (root.start, root.end) == (events[0].ts, events[-1].ts)
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in models) == (
        result.usage.input_tokens
    )
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in models) == (
        result.usage.output_tokens
    )


async def test_failed_run_span_carries_the_error(store: MemoryStore) -> None:
    model = ScriptedModel([ModelError("upstream returned HTTP 503")], name=unique("down"))
    agent = Agent(model, name="fragile")
    with pytest.raises(ModelError) as info:
        await agent.run("hello", store=store)
    run_id = info.value.run_id
    assert run_id is not None

    spans = await trace_run(store, run_id)
    assert_well_formed(spans)
    root = spans[0]
    assert root.error == "ModelError: upstream returned HTTP 503"
    # the request never got an answer: no model span, nothing else marked failed
    assert by_kind(spans, "model") == []
    assert all(s.error is None for s in spans[1:])


async def test_tool_errors_mark_the_tool_span(store: MemoryStore) -> None:
    model = ScriptedModel(
        [
            [call("divide", a=1, b=0), call("add", a=1, b=1), call("nosuch", x=1)],
            "could not divide",
        ],
        name=unique("tools"),
    )
    agent = Agent(model, name="mixed", tools=[add, divide])
    result = await agent.run("go", store=store)
    assert result.output == "could not divide"

    spans = await trace_run(store, result.run_id)
    assert_well_formed(spans)
    assert spans[0].error is None  # the run itself went on and finished
    tools = {s.attributes["gen_ai.tool.name"]: s for s in by_kind(spans, "tool")}
    assert set(tools) == {"divide", "add", "nosuch"}
    assert tools["add"].error is None
    failed = tools["divide"].error
    assert failed is not None and "ZeroDivisionError" in failed
    refused = tools["nosuch"].error
    assert refused is not None and "unknown tool 'nosuch'" in refused
    assert {s.span_id for s in tools.values()} == {
        f"{result.run_id}/t1.0",
        f"{result.run_id}/t1.1",
        f"{result.run_id}/t1.2",
    }


async def test_trace_of_unknown_run_is_empty(store: MemoryStore) -> None:
    assert await trace_run(store, "no-such-run") == []


# --- graphs with child runs ----------------------------------------------------------------------


class Job(BaseModel):
    question: str = ""
    answer: str = ""
    note: str = ""
    n: int = 0


def job_graph(fail_inner: bool = False) -> Any:
    """outer: ask (agent node) -> sub (sub-graph: inc -> explain (agent node)) -> END."""
    explainer = Agent(
        ScriptedModel(
            [ModelError("explainer offline")] if fail_inner else ["explained"],
            name=unique("explain"),
            repeat=not fail_inner,
        ),
        name="explainer",
    )
    inner = Graph(Job, name="inner")
    inner.add_node("inc", lambda s: {"n": s.n + 1})
    inner.add_node("explain", explainer, input=lambda s: f"explain {s.n}", output="note")
    inner.add_sequence(START, "inc", "explain", END)

    outer = Graph(Job, name="outer")
    outer.add_node("ask", calc_agent("asker"), input=lambda s: s.question, output="answer")
    outer.add_node("sub", inner)
    outer.add_sequence(START, "ask", "sub", END)
    return outer.compile()


async def test_graph_trace_nests_child_runs(store: MemoryStore) -> None:
    result = await job_graph().run({"question": "2+3"}, store=store)
    assert result.status == "finished"
    assert result.output.answer == "The sum is 5."
    assert result.output.note == "explained"
    rid = result.run_id

    spans = await trace_run(store, rid)
    assert_well_formed(spans)
    by_id = {s.span_id: s for s in spans}
    root = spans[0]
    assert (root.name, root.kind, root.attributes["cadenza.workflow.kind"]) == (
        "run outer",
        "run",
        "graph",
    )

    # run -> node ask -> child run (agent) -> model / tool spans
    ask = by_id[f"{rid}/n1"]
    assert (ask.name, ask.kind, ask.parent_id) == ("node ask", "node", rid)
    assert ask.attributes == {"cadenza.node": "ask", "cadenza.step": 1}
    agent_run = by_id[f"{rid}.1"]
    assert (agent_run.kind, agent_run.name, agent_run.parent_id) == (
        "run",
        "run asker",
        ask.span_id,
    )
    agent_children = [s for s in spans if s.parent_id == agent_run.span_id]
    assert sorted(s.kind for s in agent_children) == ["model", "model", "tool"]
    assert all(s.run_id == f"{rid}.1" for s in agent_children)

    # run -> node sub -> child run (graph) -> node explain -> grandchild run (agent) -> model
    sub = by_id[f"{rid}/n2"]
    assert (sub.name, sub.parent_id) == ("node sub", rid)
    inner_run = by_id[f"{rid}.2"]
    assert (inner_run.name, inner_run.parent_id) == ("run inner", sub.span_id)
    inner_nodes = [s for s in spans if s.parent_id == inner_run.span_id]
    assert [s.name for s in inner_nodes] == ["node inc", "node explain"]
    explain_run = by_id[f"{rid}.2.2"]
    assert (explain_run.name, explain_run.parent_id) == ("run explainer", inner_nodes[1].span_id)
    (explain_model,) = [s for s in spans if s.parent_id == explain_run.span_id]
    assert explain_model.kind == "model"
    assert explain_model.attributes["gen_ai.agent.name"] == "explainer"

    assert {s.run_id for s in spans} == {rid, f"{rid}.1", f"{rid}.2", f"{rid}.2.2"}
    assert len(by_kind(spans, "run")) == 4
    assert len(by_kind(spans, "node")) == 4
    # tokens of every model span add up to the run's usage (child runs included)
    models = by_kind(spans, "model")
    assert len(models) == 3
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in models) == (
        result.usage.input_tokens
    )


@pytest.mark.parametrize("source", ["trace_run", "live Tracer"])
async def test_failed_child_run_marks_child_and_parent(store: MemoryStore, source: str) -> None:
    got = Collector()
    tracer = Tracer(got, sample_rate=0.0)
    with pytest.raises(ModelError) as info:
        await job_graph(fail_inner=True).run({"question": "1+1"}, store=store, listeners=[tracer])
    assert info.value.run_id is not None
    rid = info.value.run_id.split(".")[0]  # child run ids are PARENT.STEP
    rec = await store.get_run(rid)
    assert rec is not None and (rec.workflow, rec.status) == ("outer", "failed")
    for child in (f"{rid}.2", f"{rid}.2.2"):  # the journal holds the failed child runs
        c = await store.get_run(child)
        assert c is not None and c.status == "failed"
        assert c.error is not None and c.error["message"] == "explainer offline"
    if source == "trace_run":
        spans = await trace_run(store, rid)
    else:
        assert len(got.traces) == 1
        spans = got.traces[0]
    assert_well_formed(spans)
    assert spans[0].run_id == rid
    # the trace shows where the run failed: the failed child runs are in it too
    assert {s.run_id for s in spans} == {rid, f"{rid}.1", f"{rid}.2", f"{rid}.2.2"}
    by_id = {s.span_id: s for s in spans}
    for run_id in (rid, f"{rid}.2", f"{rid}.2.2"):
        err = by_id[run_id].error
        assert err is not None and "ModelError: explainer offline" in err, run_id
    assert by_id[f"{rid}.1"].error is None  # the first agent node finished fine


# --- JSONL --------------------------------------------------------------------------------------


async def test_to_jsonl_one_object_per_line(store: MemoryStore) -> None:
    result = await job_graph().run({"question": "4+4"}, store=store)
    spans = await trace_run(store, result.run_id)
    text = to_jsonl(spans)
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == len(spans)
    for line, span in zip(lines, spans, strict=True):
        obj = json.loads(line)
        assert isinstance(obj, dict)
        assert obj["span_id"] == span.span_id
        assert obj["parent_id"] == span.parent_id
        assert obj["name"] == span.name
        assert obj["kind"] == span.kind
        assert obj["attributes"] == json.loads(json.dumps(span.attributes))
        assert obj["error"] == span.error
        assert obj["duration_ms"] == pytest.approx(span.duration_ms, abs=1e-3)
        assert obj["duration_ms"] >= 0
    assert to_jsonl([]) == ""


def test_build_trace_from_plain_events() -> None:
    ev = [
        Event("r", 1, "run.started", 10.0, {"workflow": "w", "kind": "agent", "input": "hi"}),
        Event("r", 2, "model.requested", 10.5, {"step": 1, "model": "scripted:x"}),
        Event(
            "r",
            3,
            "model.responded",
            11.0,
            {"step": 1, "model": "scripted:x", "usage": {"input_tokens": 7, "output_tokens": 3}},
        ),
        Event("r", 4, "run.finished", 12.0, {"step": 1}),
    ]
    spans = build_trace({"r": ev}, "r")
    assert [(s.span_id, s.parent_id, s.start, s.end) for s in spans] == [
        ("r", None, 10.0, 12.0),
        ("r/m1", "r", 10.5, 11.0),
    ]
    assert spans[1].duration_ms == pytest.approx(500.0)
    assert spans[1].attributes["gen_ai.usage.input_tokens"] == 7
    assert spans[1].attributes["gen_ai.usage.output_tokens"] == 3
    assert build_trace({}, "r") == []


# --- OpenTelemetry ------------------------------------------------------------------------------


def otel_export(spans: list[Span]) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    export_otel(spans, tracer_provider=provider)
    provider.shutdown()
    return list(exporter.get_finished_spans())


def match(spans: list[Span], exported: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """Each cadenza span's OTel span, matched on name and exact start/end times."""
    assert len(exported) == len(spans)
    index = {(o.name, o.start_time, o.end_time): o for o in exported}
    assert len(index) == len(exported)
    out: dict[str, ReadableSpan] = {}
    for s in spans:
        key = (s.name, int(s.start * 1e9), int(s.end * 1e9))
        assert key in index, f"no exported span {key}"
        out[s.span_id] = index[key]
    return out


async def test_export_otel_links_and_genai_attributes(store: MemoryStore) -> None:
    result = await job_graph().run({"question": "2+3"}, store=store)
    spans = await trace_run(store, result.run_id)
    exported = otel_export(spans)
    o = match(spans, exported)

    trace_ids = {x.context.trace_id for x in exported}
    assert len(trace_ids) == 1  # one trace for the run and its child runs
    for s in spans:
        x = o[s.span_id]
        assert x.name == s.name
        assert x.start_time == int(s.start * 1e9) and x.end_time == int(s.end * 1e9)
        if s.parent_id is None:
            assert x.parent is None
        else:
            assert x.parent is not None
            assert x.parent.span_id == o[s.parent_id].context.span_id
        want_kind = SpanKind.CLIENT if s.kind in ("model", "tool") else SpanKind.INTERNAL
        assert x.kind == want_kind
        assert x.status.status_code == StatusCode.UNSET
        attrs = dict(x.attributes or {})
        for k, v in s.attributes.items():
            assert attrs[k] == (tuple(v) if isinstance(v, list) else v), k

    models = [o[s.span_id] for s in spans if s.kind == "model"]
    assert len(models) == 3
    for x in models:
        a = x.attributes or {}
        assert a["gen_ai.operation.name"] == "chat"
        assert str(a["gen_ai.request.model"]).startswith("scripted:trace_")
        assert (
            isinstance(a["gen_ai.usage.input_tokens"], int) and a["gen_ai.usage.input_tokens"] > 0
        )
        assert isinstance(a["gen_ai.usage.output_tokens"], int)
    (tool_span,) = [o[s.span_id] for s in spans if s.kind == "tool"]
    assert (tool_span.attributes or {})["gen_ai.operation.name"] == "execute_tool"
    assert (tool_span.attributes or {})["gen_ai.tool.name"] == "add"
    assert tool_span.name == "execute_tool add"
    root = o[spans[0].span_id]
    assert (root.attributes or {})["cadenza.run.id"] == result.run_id


async def test_export_otel_marks_failed_spans(store: MemoryStore) -> None:
    model = ScriptedModel([call("divide", a=1, b=0), "gave up"], name=unique("otelerr"))
    ok = await Agent(model, name="divider", tools=[divide]).run("x", store=store)
    spans = await trace_run(store, ok.run_id)
    o = match(spans, otel_export(spans))
    (tool_span,) = by_kind(spans, "tool")
    x = o[tool_span.span_id]
    assert x.status.status_code == StatusCode.ERROR
    assert "ZeroDivisionError" in (x.status.description or "")
    assert (x.attributes or {})["error.type"]
    assert o[spans[0].span_id].status.status_code == StatusCode.UNSET

    bad = Agent(ScriptedModel([ModelError("quota exceeded")], name=unique("otelfail")), name="b")
    with pytest.raises(ModelError) as info:
        await bad.run("x", store=store)
    assert info.value.run_id is not None
    spans = await trace_run(store, info.value.run_id)
    o = match(spans, otel_export(spans))
    root = o[spans[0].span_id]
    assert root.status.status_code == StatusCode.ERROR
    assert root.status.description == "ModelError: quota exceeded"
    assert (root.attributes or {})["error.type"] == "ModelError"


# --- the sampling Tracer ------------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.traces: list[list[Span]] = []

    def __call__(self, spans: list[Span]) -> None:
        self.traces.append(spans)

    @property
    def roots(self) -> list[str]:
        return [t[0].run_id for t in self.traces]


async def test_tracer_rate_one_exports_every_run_once(store: MemoryStore) -> None:
    got = Collector()
    tracer = Tracer(got, sample_rate=1.0)
    graph = job_graph()
    g = await graph.run({"question": "2+3"}, store=store, listeners=[tracer])
    a = await calc_agent().run("1+1", store=store, listeners=[tracer])
    a2 = await calc_agent().run("5+5", store=store, listeners=[tracer])

    assert got.roots == [g.run_id, a.run_id, a2.run_id]
    assert (tracer.kept, tracer.dropped) == (3, 0)
    graph_trace = got.traces[0]
    assert_well_formed(graph_trace)
    # child runs are folded into the parent's trace, not exported on their own
    assert {s.run_id for s in graph_trace} == {
        g.run_id,
        f"{g.run_id}.1",
        f"{g.run_id}.2",
        f"{g.run_id}.2.2",
    }
    # the live trace is the one rebuilt from the journal
    rebuilt = await trace_run(store, g.run_id)

    def key(spans: list[Span]) -> list[tuple[Any, ...]]:
        return [(s.span_id, s.parent_id, s.name, s.start, s.end, s.error) for s in spans]

    assert key(graph_trace) == key(rebuilt)
    assert key(got.traces[1]) == key(await trace_run(store, a.run_id))


async def test_tracer_rate_zero_keeps_only_failed_runs(store: MemoryStore) -> None:
    got = Collector()
    tracer = Tracer(got, sample_rate=0.0)
    failed: list[str] = []
    for i in range(10):
        await calc_agent().run(f"{i}+1", store=store, listeners=[tracer])
        if i % 3 == 0:
            bad = Agent(ScriptedModel([ModelError("boom")], name=unique("zero")), name="bad")
            with pytest.raises(ModelError) as info:
                await bad.run("x", store=store, listeners=[tracer])
            assert info.value.run_id is not None
            failed.append(info.value.run_id)
    with pytest.raises(ModelError) as info:
        await job_graph(fail_inner=True).run({"question": "1+2"}, store=store, listeners=[tracer])
    assert info.value.run_id is not None
    graph_id = info.value.run_id.split(".")[0]  # child run ids are PARENT.STEP
    failed.append(graph_id)

    assert got.roots == failed
    assert (tracer.kept, tracer.dropped) == (len(failed), 10)
    for t in got.traces:
        assert t[0].error is not None
    # one trace for the failed graph, its child runs not exported on their own
    graph_trace = got.traces[-1]
    assert graph_trace[0].run_id == graph_id
    assert graph_trace[0].error == "ModelError: explainer offline"
    assert f"{graph_id}.1" in {s.run_id for s in graph_trace}


async def test_tracer_sampling_share_and_stable_decision(store: MemoryStore) -> None:
    agent = Agent(ScriptedModel(["ok"], name=unique("sample"), repeat=True), name="s")
    got = Collector()
    tracer = Tracer(got, sample_rate=0.3)
    ids: list[str] = []
    for _ in range(200):
        ids.append((await agent.run("hi", store=store, listeners=[tracer])).run_id)
    kept = set(got.roots)
    assert tracer.kept + tracer.dropped == 200
    assert tracer.kept == len(kept) == len(got.traces)
    assert 0.18 <= len(kept) / 200 <= 0.42, f"kept {len(kept)} of 200 at rate 0.3"
    # kept exactly when the documented rule says so
    assert kept == {rid for rid in ids if zlib.crc32(rid.encode()) % 10000 < 3000}
    assert kept == {rid for rid in ids if tracer.sampled(rid)}

    # the same run ids, run again elsewhere (new store, new tracer): the same decisions
    again = Collector()
    tracer2 = Tracer(again, sample_rate=0.3)
    other = MemoryStore()
    for rid in ids:
        await agent.run("hi", store=other, run_id=rid, listeners=[tracer2])
    await other.close()
    assert set(again.roots) == kept
    assert [Tracer(Collector(), sample_rate=0.3).sampled(r) for r in ids] == [
        tracer.sampled(r) for r in ids
    ]


@pytest.mark.parametrize("rate", [-0.01, 1.01, 2.0, -1.0, math.nan])
def test_tracer_rejects_rates_outside_0_1(rate: float) -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        Tracer(Collector(), sample_rate=rate)


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_tracer_accepts_rates_inside_0_1(rate: float) -> None:
    assert Tracer(Collector(), sample_rate=rate).sample_rate == rate
