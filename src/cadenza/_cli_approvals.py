"""`cadenza approvals`: list the tool calls waiting for a human, approve or deny them, resume."""

from __future__ import annotations

import getpass
import os
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from . import approvals as ap
from ._cli_common import (
    JsonOpt,
    StoreOpt,
    cli_store,
    clock,
    err,
    fail,
    json_object,
    listed_elsewise,
    load_wf,
    out,
    print_table,
    run_async,
    short,
)
from .stores import StateStore

approvals_app = typer.Typer(
    help="Tool calls waiting for a human decision: list, approve, deny.", no_args_is_help=True
)

IdArg = Annotated[str, typer.Argument(help="The approval id (RUN:STEP:INDEX, from `list`).")]
ByOpt = Annotated[
    str | None,
    typer.Option("--by", help="Who decides (default: $CADENZA_USER, else your login name)."),
]
NoResumeOpt = Annotated[
    bool, typer.Option("--no-resume", help="Record the decision only; resume the run later.")
]
WorkflowOpt = Annotated[
    str | None,
    typer.Option("--workflow", help="Resume with this workflow (path/file.py:name)."),
]


@approvals_app.command("list")
def approvals_list(
    all_: Annotated[bool, typer.Option("--all", help="Decided ones too.")] = False,
    run: Annotated[str | None, typer.Option("--run", help="Only this run's.")] = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """List pending approvals (oldest first), with the call and the rule that asked."""
    st = cli_store(store)
    found = run_async(lambda: ap.list_approvals(st, status=None if all_ else "pending", run_id=run))
    if as_json:
        out.print_json(data=[a.to_dict() for a in found])
        return
    if listed_elsewise(found, False, "nothing waits for approval"):
        return
    table = Table(box=None)
    table.add_column("approval", no_wrap=True)
    table.add_column("call", overflow="fold")
    table.add_column("rule", overflow="fold")
    table.add_column("asked", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for a in found:
        status = a.status if a.status == "pending" else f"{a.status} by {a.decided_by}"
        table.add_row(
            a.id, f"{escape(a.tool)}({short(a.arguments, 120)})",
            f"{escape(a.rule)}: {escape(a.reason)}", clock(a.requested_at), escape(status),
        )  # fmt: skip
    print_table(table)


@approvals_app.command("approve")
def approvals_approve(
    approval_id: IdArg,
    by: ByOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the record).")] = "",
    arguments: Annotated[
        str | None,
        typer.Option("--arguments", help="Approve with these arguments instead (a JSON object)."),
    ] = None,
    no_resume: NoResumeOpt = False,
    workflow: WorkflowOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Approve a waiting call (optionally with edited arguments), then resume its run."""
    edited: dict[str, Any] | None = None
    if arguments is not None:
        edited = json_object(
            arguments, "--arguments is not valid JSON",
            "--arguments takes a JSON object of the tool's arguments",
        )  # fmt: skip
    st = cli_store(store)
    decider = _decider(by)
    a = run_async(lambda: ap.approve(st, approval_id, by=decider, reason=reason, arguments=edited))
    err.print(f"[green]approved[/] {escape(a.tool)} ({a.id}) by {escape(decider)}")
    _continue(st, a, no_resume, workflow, as_json)


@approvals_app.command("deny")
def approvals_deny(
    approval_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (the model is told).")],
    by: ByOpt = None,
    no_resume: NoResumeOpt = False,
    workflow: WorkflowOpt = None,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
) -> None:
    """Deny a waiting call with a reason, then resume its run (the model hears why)."""
    st = cli_store(store)
    decider = _decider(by)
    a = run_async(lambda: ap.deny(st, approval_id, by=decider, reason=reason))
    err.print(f"[red]denied[/] {escape(a.tool)} ({a.id}) by {escape(decider)}")
    _continue(st, a, no_resume, workflow, as_json)


def _decider(by: str | None) -> str:
    if by:
        return by
    return os.environ.get("CADENZA_USER") or getpass.getuser()


def _continue(
    st: StateStore, a: ap.Approval, no_resume: bool, workflow: str | None, as_json: bool
) -> None:
    """Resume the run the decision unblocks, unless others are still pending."""
    root = ap.root_run(a.run_id)
    waiting = run_async(lambda: ap.list_approvals(st, status="pending", run_id=root))
    if waiting:
        ids = ", ".join(w.id for w in waiting)
        err.print(f"run {root} still waits for: {ids}")
        return
    if no_resume:
        err.print(f"resume it with: cadenza runs resume {root}", style="dim")
        return
    rec = run_async(lambda: st.get_run(root))
    ref = workflow or (rec.ref if rec is not None else None)
    if not ref:
        fail(f"run {root} does not record where its workflow lives; pass --workflow file.py:name")
    from .cli import print_result

    wf = load_wf(ref)
    result = run_async(lambda: wf.resume(root, store=st))
    print_result(result, as_json, wf)
    if as_json:
        return
    if result.status == "finished":
        err.print(f"run {root} finished", style="dim")
