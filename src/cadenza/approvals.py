"""Human approval of tool calls: list what waits, approve (optionally with edited arguments) or deny.

A call the policy marks "approve" pauses its run before anything executes; the Gate journals an
`approval.requested` event whose id is the call's position, `run:step:index`. A decision is an
`approval.decided` event appended to that run's journal (and an audit entry), by any process,
at any time; resuming the run then applies it. The journal is the only record: there is no
separate approvals table to fall out of step with the runs.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ._run import descendants
from .audit._chain import canonical_json, utc_timestamp
from .errors import ApprovalError
from .safety.guards import redact_value
from .stores._base import Batch, Event, StateStore

__all__ = ["Approval", "approve", "deny", "list_approvals", "root_run"]


@dataclass(slots=True)
class Approval:
    """One tool call that needs (or got) a human decision."""

    id: str
    """`run:step:index`: the call's position in its run."""
    run_id: str
    """The run (possibly a child run, `parent.step`) that made the call."""
    tool: str
    """The tool's name."""
    version: str
    """The tool's version."""
    arguments: dict[str, Any]
    """The arguments the model asked for."""
    rule: str
    """The policy rule that asked for approval."""
    reason: str
    """Why, in the policy's words."""
    requested_at: float
    """Unix time of the request."""
    agent: str | None = None
    """The agent that made the call, if any."""
    status: Literal["pending", "approved", "denied"] = "pending"
    """Where the decision stands."""
    decided_by: str | None = None
    """Who decided."""
    decided_at: float | None = None
    """Unix time of the decision."""
    note: str = ""
    """The approver's reason."""
    edited: dict[str, Any] | None = field(default=None)
    """Arguments the approver substituted, if any."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `--json`)."""
        return {
            "id": self.id, "run_id": self.run_id, "tool": self.tool, "version": self.version,
            "arguments": self.arguments, "rule": self.rule, "reason": self.reason,
            "agent": self.agent, "status": self.status, "requested_at": self.requested_at,
            "decided_by": self.decided_by, "decided_at": self.decided_at, "note": self.note,
            "edited": self.edited,
        }  # fmt: skip


def root_run(run_id: str) -> str:
    """The top-level run of a (child) run id: `abc.3.1` → `abc`."""
    return run_id.split(".", 1)[0]


def run_of(approval_id: str) -> str:
    """The run an approval id belongs to."""
    run_id, sep, _ = approval_id.rpartition(":")
    run_id, sep2, _ = run_id.rpartition(":")
    if not (sep and sep2 and run_id):
        raise ApprovalError(
            f"{approval_id!r} is not an approval id (they look like RUN:STEP:INDEX; "
            "see `cadenza approvals list`)"
        )
    return run_id


def _from_events(run_id: str, events: list[Event]) -> list[Approval]:
    found: dict[str, Approval] = {}
    for e in events:
        d = e.data
        if e.type == "approval.requested":
            if d["id"] in found and found[d["id"]].status != "pending":
                continue  # re-requested after a resume that had not seen the decision yet
            found[d["id"]] = Approval(
                d["id"], run_id, d["name"], d.get("version", ""), d["arguments"], d["rule"],
                d.get("reason", ""), e.ts, d.get("agent"),
            )  # fmt: skip
        elif e.type == "approval.decided" and d["id"] in found:
            a = found[d["id"]]
            a.status = "approved" if d["approved"] else "denied"
            a.decided_by, a.decided_at = d.get("by"), e.ts
            a.note, a.edited = d.get("reason", ""), d.get("arguments")
    return list(found.values())


async def decisions(store: StateStore, run_id: str) -> dict[str, dict[str, Any]]:
    """The decisions recorded in a run's journal, by approval id."""
    return {
        e.data["id"]: e.data for e in await store.events(run_id) if e.type == "approval.decided"
    }


async def list_approvals(
    store: StateStore, *, status: str | None = "pending", run_id: str | None = None
) -> list[Approval]:
    """Approvals, oldest first: of one run (and its child runs), or of all waiting runs.

    Args:
        store: The state store.
        status: "pending", "approved", "denied", or None for all.
        run_id: Only this run and its child runs.

    """
    out: list[Approval] = []
    if run_id is not None:
        root = root_run(run_id)
        events = await store.events(root)
        for rid, evs in [(root, events), *await descendants(store, events)]:
            out.extend(_from_events(rid, evs))
    else:
        runs = await store.list_runs(status="interrupted", limit=10_000)
        if status != "pending":
            runs += [r for r in await store.list_runs(limit=1000) if r.status != "interrupted"]
        for r in runs:
            out.extend(_from_events(r.id, await store.events(r.id)))
    if status is not None:
        out = [a for a in out if a.status == status]
    return sorted(out, key=lambda a: a.requested_at)


async def get_approval(store: StateStore, approval_id: str) -> Approval:
    """One approval by id.

    Raises:
        ApprovalError: there is no such approval.

    """
    run_id = run_of(approval_id)
    for a in _from_events(run_id, await store.events(run_id)):
        if a.id == approval_id:
            return a
    raise ApprovalError(f"no approval {approval_id!r}; list them with `cadenza approvals list`")


async def _decide(
    store: StateStore,
    approval_id: str,
    approved: bool,
    by: str,
    reason: str,
    arguments: dict[str, Any] | None,
) -> Approval:
    if not by.strip():
        raise ApprovalError("say who decides (`--by NAME`): the record keeps it")
    a = await get_approval(store, approval_id)
    if a.status != "pending":
        raise ApprovalError(
            f"approval {approval_id} was already {a.status} by {a.decided_by}; decisions are final"
        )
    run = await store.get_run(a.run_id)
    if run is None or run.status != "interrupted":
        raise ApprovalError(f"run {a.run_id} is not waiting for a decision (status: "
                            f"{run.status if run else 'missing'})")  # fmt: skip
    events = await store.events(a.run_id)
    seq = events[-1].seq + 1 if events else 1
    data: dict[str, Any] = {"id": approval_id, "approved": approved, "by": by, "reason": reason}
    if arguments is not None:
        data["arguments"] = arguments
    now = time.time()
    batch = Batch()
    batch.events.append(Event(a.run_id, seq, "approval.decided", now, data))
    principal = run.principal
    used = arguments if arguments is not None else a.arguments
    batch.audit = [
        {
            "ts": utc_timestamp(now),
            "run": a.run_id,
            "workflow": run.workflow,
            "actor": by,
            "on_behalf_of": principal.get("user_id"),
            "tenant": principal.get("tenant"),
            "agent": a.agent,
            "tool": a.tool,
            "version": a.version,
            "args_hash": hashlib.sha256(canonical_json(used).encode()).hexdigest(),
            "args": redact_value(used),
            "decision": {"effect": "approve", "rule": a.rule},
            "approver": by,
            "outcome": "approved" if approved else "denied-by-approver",
            "approval": approval_id,
            "detail": redact_value(reason),
        }
    ]
    try:
        await store.commit(a.run_id, batch)
    except Exception as exc:  # a concurrent decision took this journal position
        raise ApprovalError(f"approval {approval_id} could not be recorded: {exc}") from exc
    a.status = "approved" if approved else "denied"
    a.decided_by, a.decided_at, a.note, a.edited = by, now, reason, arguments
    return a


async def approve(
    store: StateStore,
    approval_id: str,
    *,
    by: str,
    reason: str = "",
    arguments: dict[str, Any] | None = None,
) -> Approval:
    """Approve a pending call (optionally with edited `arguments`); resume its run afterwards.

    Raises:
        ApprovalError: no such pending approval, or it was already decided.

    """
    return await _decide(store, approval_id, True, by, reason, arguments)


async def deny(store: StateStore, approval_id: str, *, by: str, reason: str) -> Approval:
    """Deny a pending call with a reason (the model is told); resume its run afterwards.

    Raises:
        ApprovalError: no such pending approval, or it was already decided.

    """
    return await _decide(store, approval_id, False, by, reason, None)
