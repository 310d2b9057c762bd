"""`explain`: what a run did and why, in plain language, built deterministically from its journal.

The same journal always gives the same text: the request, each decision of the workflow
(nodes and the routes they took, the model's answers and tool calls), each call's policy
decision with its rule, who approved or denied what, what the tools did, and how the run ended.
Child runs (agent nodes) are explained where they happened. Personal data (e-mail addresses,
phone, card and IBAN numbers) is redacted.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from ..errors import RunNotFound
from ..safety.guards import redact, redact_value
from ..stores._base import Event, RunRecord, StateStore

__all__ = ["explain"]


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show(value: Any, n: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(redact_value(value), ensure_ascii=False)
    text = redact(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _args(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v, 60)}" for k, v in redact_value(arguments).items())


async def explain(store: StateStore, run_id: str) -> str:
    """The story of run `run_id` (and its child runs), one sentence per line.

    Raises:
        RunNotFound: there is no such run.

    """
    record = await store.get_run(run_id)
    if record is None:
        raise RunNotFound(f"no run {run_id!r} in the store; list runs with `cadenza runs list`")
    lines: list[str] = []
    await _tell(store, record, lines, "")
    return "\n".join(lines)


async def _tell(store: StateStore, record: RunRecord, lines: list[str], pad: str) -> None:
    p = record.principal
    who = p.get("user_id", "anonymous")
    roles = f" (roles: {', '.join(p['roles'])})" if p.get("roles") else ""
    tenant = f" of tenant {p['tenant']}" if p.get("tenant") else ""
    if not pad:
        lines.append(
            f"Run {record.id} of {record.kind} '{record.workflow}' acted for user {who}{roles}"
            f"{tenant}; it started {_when(record.created_at)}."
        )
        lines.append(f"Request: {_show(record.input, 400)}")
    calls: dict[tuple[int, int], dict[str, str]] = {}
    for e in await store.events(record.id):
        for line in await _sentences(store, e, calls, pad):
            lines.append(pad + line)
    if not pad and record.status == "finished":
        lines.append(f"Result: {_show(record.output, 600)}")


async def _sentences(
    store: StateStore, e: Event, calls: dict[tuple[int, int], dict[str, str]], pad: str
) -> list[str]:
    d, t = e.data, e.type
    step: Any = d.get("step")
    if t == "run.resumed":
        extra = f" with the answer {_show(d['answer'])}" if "answer" in d else ""
        return [f"The run was resumed {_when(e.ts)} from step {d.get('from_step')}{extra}."]
    if t == "node.finished":
        out = [f"Step {step}: node '{d['node']}' ran"]
        update: Any = d.get("update")
        if isinstance(update, dict) and update:
            items = cast(dict[str, Any], update).items()
            shown = "; ".join(
                f"{k} = {_show(v, 80)}" for k, v in items if v not in (None, "", [], {})
            )
            if shown:
                out[0] += f" and set {shown}"
        nxt = d.get("next")
        out[0] += "; the run ended there." if nxt == "__end__" else f"; next: '{nxt}'."
        if d.get("child"):
            child = await store.get_run(d["child"])
            if child is not None:
                out.append(
                    f"  Inside '{d['node']}' (child run {child.id}, {child.kind} '{child.workflow}'):"
                )
                sub: list[str] = []
                await _tell(store, child, sub, pad + "    ")
                out.extend(line[len(pad) :] for line in sub)
        return out
    if t == "node.failed":
        return [f"Step {step}: node '{d['node']}' failed: {_show(d.get('error'))}."]
    if t == "model.responded":
        model = d.get("model", "the model")
        if d.get("tool_calls"):
            asked = "; ".join(f"{c['name']}({_args(c['arguments'])})" for c in d["tool_calls"])
            return [f"Step {step}: the model {model} asked to call {asked}."]
        return [f"Step {step}: the model {model} answered: {_show(d.get('text'), 300)}"]
    if t == "tool.called":
        calls[(step, d["index"])] = {}
        return []
    if t == "policy.decided":
        rule, why = d["rule"], d.get("reason") or ""
        verdict = {"allow": "allowed", "deny": "denied", "approve": "required human approval for"}
        because = f": {why}" if why and d["effect"] != "allow" else ""
        return [
            f"  Policy {d['policy']} {verdict[d['effect']]} {d['name']} under rule '{rule}'{because}."
        ]
    if t == "approval.requested":
        return [
            f"  The call {d['name']}({_args(d['arguments'])}) waited for a human decision (approval {d['id']})."
        ]
    if t == "approval.decided":
        verdict = "approved" if d["approved"] else "denied"
        why = f" ({_show(d['reason'])})" if d.get("reason") else ""
        edited = (
            f", changing the arguments to {_args(d['arguments'])}" if d.get("arguments") else ""
        )
        return [f"  {d.get('by')} {verdict} approval {d['id']} {_when(e.ts)}{why}{edited}."]
    if t == "approval.applied":
        if d["approved"]:
            edited = " with the arguments the approver set" if d.get("arguments") else ""
            return [f"  {d.get('by')} had approved it, so it went ahead{edited}."]
        return [f"  {d.get('by')} had denied it, so it did not run."]
    if t == "guard.flagged":  # told after the call's result
        calls.setdefault((step, d["index"]), {})["flagged"] = (
            f"  Its output contained text that looks like instructions "
            f"({', '.join(d['markers'])}); it was shown to the model as data, flagged."
        )
        return []
    if t == "guard.blocked":
        return [f"  Moderation withheld the output of {d['name']}: {_show(d['reason'])}."]
    if t == "tool.returned":
        if d.get("refused"):
            return [f"  {d['name']} did not run: {_show(d['content'], 200)}."]
        if d.get("is_error"):
            return [f"  {d['name']} failed: {_show(d['content'], 200)}."]
        told = [f"  {d['name']} ran and returned {_show(d['content'])}."]
        flagged = calls.get((step, d["index"]), {}).get("flagged")
        return [*told, flagged] if flagged else told
    if t == "run.interrupted":
        prompt = d.get("prompt")
        if isinstance(prompt, dict) and prompt.get("kind") == "approval":  # pyright: ignore[reportUnknownMemberType]
            return [f"The run paused {_when(e.ts)} to wait for approval."]
        return [f"The run paused {_when(e.ts)} to ask: {_show(prompt)}."]
    if t == "run.failed":
        err = d.get("error", {})
        return [f"The run failed: {err.get('type')}: {_show(err.get('message'), 300)}."]
    if t == "run.finished" and not pad:
        return [f"The run finished {_when(e.ts)}."]
    return []
