"""Traces: a run's journal seen as nested spans (run → node → model call / tool call).

Spans are derived from the journal, never recorded separately, so a trace can be rebuilt for
any past run (`trace_run`) and exported as JSONL or as OpenTelemetry spans following the GenAI
semantic conventions (`cadenza[otel]`). `Tracer` does it live, with sampling: a rate, and
failed runs always kept. Spans carry names, timings, usage and policy decisions, never tool
arguments or outputs; error messages are PII-redacted.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError
from .safety.guards import redact
from .stores._base import Event, StateStore

__all__ = ["Span", "Tracer", "build_trace", "export_otel", "to_jsonl", "trace_run"]


@dataclass(slots=True)
class Span:
    """One timed operation of a run."""

    span_id: str
    """Unique within the trace."""
    parent_id: str | None
    """The enclosing span (None for the root run)."""
    name: str
    """e.g. `run support`, `node classify`, `chat scripted`, `execute_tool add`."""
    kind: str
    """run, node, model or tool."""
    run_id: str
    """The run whose journal holds the operation."""
    start: float
    """Unix time it began."""
    end: float
    """Unix time it ended."""
    attributes: dict[str, Any] = field(default_factory=lambda: {})
    """GenAI semantic-convention attributes (model, tokens, tool name, ...)."""
    error: str | None = None
    """Error description when the operation failed."""

    @property
    def duration_ms(self) -> float:
        """Length in milliseconds."""
        return (self.end - self.start) * 1000


def build_trace(runs: dict[str, list[Event]], root: str) -> list[Span]:
    """Spans of the run `root` and its child runs, from their journals.

    Args:
        runs: Events by run id (the root's and every child run's).
        root: The top-level run id.

    """
    spans: list[Span] = []
    _run_spans(runs, root, None, spans)
    return spans


def _run_spans(
    runs: dict[str, list[Event]], run_id: str, parent: str | None, out: list[Span]
) -> None:
    events = runs.get(run_id, [])
    if not events:
        return
    first, last = events[0], events[-1]
    run_span = Span(
        f"{run_id}", parent, f"run {first.data.get('workflow', '')}".strip(), "run", run_id,
        first.ts, last.ts,
        {"cadenza.run.id": run_id, "cadenza.workflow.kind": first.data.get("kind", "")},
    )  # fmt: skip
    out.append(run_span)
    if first.data.get("kind") == "agent":
        run_span.attributes["gen_ai.operation.name"] = "invoke_agent"
        run_span.attributes["gen_ai.agent.name"] = first.data.get("workflow", "")
    prev_ts = first.ts  # a node starts when the previous journal entry was written
    pending_model: dict[int, Event] = {}
    pending_tool: dict[tuple[int, int], Event] = {}
    decided: dict[tuple[int, int], dict[str, Any]] = {}
    for e in events:
        d = e.data
        started, prev_ts = prev_ts, e.ts
        if e.type == "run.failed":
            run_span.error = redact(f"{d['error']['type']}: {d['error']['message']}")
            run_span.attributes["error.type"] = d["error"]["type"]
        elif e.type == "node.failed":
            sid = f"{run_id}/n{d['step']}"
            out.append(
                Span(sid, run_span.span_id, f"node {d['node']}", "node", run_id, started, e.ts,
                     {"cadenza.node": d["node"], "cadenza.step": d["step"],
                      "error.type": str(d.get("error", "")).split(":")[0]},
                     redact(str(d.get("error", ""))))
            )  # fmt: skip
            child = d.get("child")
            if child:
                _run_spans(runs, child, sid, out)
        elif e.type == "node.finished":
            sid = f"{run_id}/n{d['step']}"
            out.append(
                Span(sid, run_span.span_id, f"node {d['node']}", "node", run_id,
                     started, e.ts, {"cadenza.node": d["node"], "cadenza.step": d["step"]})
            )  # fmt: skip
            child = d.get("child")
            if child:
                _run_spans(runs, child, sid, out)
        elif e.type == "model.requested":
            pending_model[int(d["step"])] = e
        elif e.type == "model.responded":
            req = pending_model.pop(int(d["step"]), None)
            u = d.get("usage", {})
            out.append(
                Span(
                    f"{run_id}/m{d['step']}", run_span.span_id, f"chat {d.get('model', '')}", "model",
                    run_id, req.ts if req else e.ts, e.ts,
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": str(d.get("model", "")).split(":")[0],
                        "gen_ai.request.model": req.data.get("model", "") if req else d.get("model", ""),
                        "gen_ai.response.model": d.get("model", ""),
                        "gen_ai.response.finish_reasons": [d.get("finish_reason", "stop")],
                        "gen_ai.usage.input_tokens": int(u.get("input_tokens", 0)),
                        "gen_ai.usage.output_tokens": int(u.get("output_tokens", 0)),
                        "cadenza.cost_usd": float(u.get("cost", 0.0)),
                        "gen_ai.agent.name": d.get("agent", ""),
                    },
                )
            )  # fmt: skip
        elif e.type == "tool.called":
            pending_tool[(int(d["step"]), int(d["index"]))] = e
        elif e.type == "policy.decided":
            decided[(int(d["step"]), int(d["index"]))] = d
        elif e.type == "tool.returned":
            call = pending_tool.pop((int(d["step"]), int(d["index"])), None)
            s = Span(
                f"{run_id}/t{d['step']}.{d['index']}", run_span.span_id, f"execute_tool {d['name']}",
                "tool", run_id, call.ts if call else e.ts, e.ts,
                {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": d["name"],
                 "gen_ai.tool.call.id": d.get("call_id", "")},
            )  # fmt: skip
            policy = decided.pop((int(d["step"]), int(d["index"])), None)
            if policy is not None:
                s.attributes["cadenza.policy.effect"] = policy["effect"]
                s.attributes["cadenza.policy.rule"] = policy["rule"]
                s.attributes["cadenza.policy.version"] = policy["policy"]
            if d.get("is_error"):
                s.error = redact(str(d.get("content")))
                s.attributes["error.type"] = (
                    "refused" if d.get("refused")
                    else "timeout" if "timed out" in s.error
                    else "tool_error"
                )  # fmt: skip
            out.append(s)


async def trace_run(store: StateStore, run_id: str) -> list[Span]:
    """Rebuild the trace of a stored run (child runs included)."""
    runs: dict[str, list[Event]] = {}
    todo = [run_id]
    while todo:
        rid = todo.pop()
        events = await store.events(rid)
        runs[rid] = events
        todo.extend(
            str(e.data["child"])
            for e in events
            if e.type in ("node.finished", "node.failed") and e.data.get("child")
        )
    return build_trace(runs, run_id)


def to_jsonl(spans: Iterable[Span]) -> str:
    """One JSON object per span and line."""
    return "".join(
        json.dumps({**asdict(s), "duration_ms": round(s.duration_ms, 3)}, default=str) + "\n"
        for s in spans
    )


def export_otel(spans: list[Span], tracer_provider: Any = None) -> None:
    """Emit the spans through OpenTelemetry (needs `pip install 'cadenza[otel]'`).

    Args:
        spans: A trace from `build_trace` or `trace_run`.
        tracer_provider: Where to send them (default: the global provider).

    """
    try:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "OpenTelemetry export needs the otel extra: pip install 'cadenza[otel]'"
        ) from None
    tracer = trace.get_tracer("cadenza", tracer_provider=tracer_provider)
    live: dict[str, Any] = {}
    for s in spans:  # parents always precede their children
        parent = live.get(s.parent_id) if s.parent_id else None
        ctx = trace.set_span_in_context(parent) if parent is not None else None
        attrs = {k: v for k, v in s.attributes.items() if v is not None}
        otel_span = tracer.start_span(
            s.name, context=ctx, start_time=int(s.start * 1e9), attributes=attrs,
            kind=trace.SpanKind.CLIENT if s.kind in ("model", "tool") else trace.SpanKind.INTERNAL,
        )  # fmt: skip
        if s.error:
            otel_span.set_status(Status(StatusCode.ERROR, s.error[:500]))
        live[s.span_id] = otel_span
    for s in reversed(spans):
        live[s.span_id].end(end_time=int(s.end * 1e9))


class Tracer:
    """A run listener that turns each finished top-level run into a trace, with sampling.

    Pass it as `listeners=[tracer]` to `run()`. Runs are kept when
    `crc32(run_id) mod 10000 < sample_rate * 10000` (the same decision in every process), and
    always when they fail.

    Args:
        export: Called with the spans of every kept run (e.g. `export_otel`, or a JSONL writer).
        sample_rate: Fraction of successful runs to keep, 0..1.

    """

    def __init__(self, export: Callable[[list[Span]], None], *, sample_rate: float = 1.0) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be between 0 and 1, got {sample_rate}")
        self.export = export
        self.sample_rate = sample_rate
        self._runs: dict[str, list[Event]] = {}
        self._parents: dict[str, str] = {}
        self.kept = 0
        """Traces exported so far."""
        self.dropped = 0
        """Traces dropped by sampling so far."""

    def sampled(self, run_id: str) -> bool:
        """Whether a successful run with this id is kept."""
        return zlib.crc32(run_id.encode()) % 10000 < self.sample_rate * 10000

    def __call__(self, event: Event) -> None:
        """Receive one journal event."""
        if event.type == "run.started" and "parent" in event.data:
            self._parents[event.run_id] = str(event.data["parent"])
        self._runs.setdefault(event.run_id, []).append(event)
        if event.run_id in self._parents or event.type not in (
            "run.finished", "run.failed", "run.interrupted",
        ):  # fmt: skip
            return
        root = event.run_id
        mine = {rid for rid in self._runs if self._root(rid) == root}
        runs = {rid: self._runs.pop(rid) for rid in mine}
        for rid in mine:
            self._parents.pop(rid, None)
        if event.type == "run.failed" or self.sampled(root):
            self.kept += 1
            self.export(build_trace(runs, root))
        else:
            self.dropped += 1

    def _root(self, run_id: str) -> str:
        while run_id in self._parents:
            run_id = self._parents[run_id]
        return run_id
