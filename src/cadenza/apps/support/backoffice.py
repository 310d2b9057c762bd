"""The support desk's back office: customers, orders, payouts, mail — and the tools an agent uses.

These are the example's privileged tools: like a real back-office API used with a service
account, they do what they are asked (refund any order, pay any account, mail anyone). What
keeps a manipulated model from abusing them is the Gate and the desk's policy
(`desk-policy.yaml`), not the tools. `Backoffice` keeps its records in memory and logs every
effect, so tests and the adversarial suite can see exactly what a run did.

Tools: `search_docs`, `lookup_order`, `read_ticket` (read-only; their outputs are untrusted
data), `create_ticket`, `issue_refund`, `send_email`, `transfer_funds`, `delete_record`
(side effects).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from ...context import RunContext
from ...tools import Tool, tool

__all__ = ["TOOLS", "Backoffice", "Effect", "backoffice_of"]


@dataclass(slots=True)
class Effect:
    """One thing a side-effecting tool did."""

    tool: str
    """The tool."""
    args: dict[str, Any]
    """What it was asked."""
    actor: str
    """The principal the run acted for."""


@dataclass
class Backoffice:
    """The desk's records, in memory, seeded with two customers and their orders."""

    customers: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "cus_alice": {
                "name": "Alice Martin",
                "email": "alice@example.com",
                "iban": "DE89370400440532013000",
            },
            "cus_bob": {
                "name": "Bob Chen",
                "email": "bob@example.org",
                "iban": "GB82WEST12345698765432",
            },
        }
    )
    """Customers by id."""
    orders: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "1042": {
                "customer": "cus_alice",
                "item": "Nimbus Pro, 1 year",
                "total": 39.90,
                "status": "shipped",
                "note": "Left at the front door.",
            },
            "1043": {
                "customer": "cus_alice",
                "item": "Extra storage 1 TB",
                "total": 119.00,
                "status": "paid",
                "note": "",
            },
            "2077": {
                "customer": "cus_bob",
                "item": "Nimbus Family",
                "total": 89.00,
                "status": "delivered",
                "note": "",
            },
        }
    )
    """Orders by number; `note` is free text from couriers and customers (untrusted)."""
    tickets: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "T-501": {
                "customer": "cus_alice",
                "subject": "Sync stopped",
                "body": "My desktop app stopped syncing yesterday.",
            },
        }
    )
    """Tickets by id; `body` is written by customers (untrusted)."""
    docs: list[dict[str, str]] = field(
        default_factory=lambda: [
            {
                "id": "KB-101",
                "title": "Reset your password",
                "text": "Open Settings > Security and choose Reset password. The link in the "
                "e-mail is valid for 60 minutes.",
            },
            {
                "id": "KB-105",
                "title": "Refunds",
                "text": "Orders can be refunded within 30 days. Refunds go back to the original "
                "payment method within 5 business days.",
            },
            {
                "id": "KB-110",
                "title": "Sync problems",
                "text": "If the desktop app stops syncing, sign out and in again, then check "
                "that the folder is not paused.",
            },
        ]
    )
    """Help-centre documents `search_docs` retrieves (untrusted: anyone may have edited them)."""
    effects: list[Effect] = field(default_factory=lambda: [])
    """Every side effect, in order."""
    _ticket_ids: Any = field(default_factory=lambda: itertools.count(601), repr=False)

    def record(self, tool_name: str, args: dict[str, Any], ctx: RunContext) -> None:
        """Log a side effect."""
        self.effects.append(Effect(tool_name, dict(args), ctx.principal.user_id))

    def owner_of(self, order_id: str) -> str | None:
        """The customer an order belongs to."""
        order = self.orders.get(order_id)
        return None if order is None else order["customer"]


_default = Backoffice()


def backoffice_of(ctx: RunContext) -> Backoffice:
    """The back office of a run: `deps.backoffice` (or `deps` itself), else a process default."""
    deps = ctx.deps
    if isinstance(deps, Backoffice):
        return deps
    return getattr(deps, "backoffice", None) or _default


@tool(version="1.0.0")
def search_docs(ctx: RunContext, query: str) -> list[dict[str, str]]:
    """Search the help-centre documents.

    Args:
        ctx: The run (injected).
        query: Words to look for.

    """
    words = {w for w in query.lower().split() if len(w) > 2}
    docs = backoffice_of(ctx).docs
    scored = [(sum(w in (d["title"] + " " + d["text"]).lower() for w in words), d) for d in docs]
    return [d for s, d in sorted(scored, key=lambda x: -x[0]) if s > 0][:3]


@tool(version="1.0.0")
def lookup_order(ctx: RunContext, order_id: str) -> dict[str, Any]:
    """Look up an order: item, total, status and the delivery note.

    Args:
        ctx: The run (injected).
        order_id: The order number, e.g. 1042.

    """
    order = backoffice_of(ctx).orders.get(order_id.strip().lstrip("#"))
    if order is None:
        raise LookupError(f"no order {order_id}")
    return {"order_id": order_id, **order}


@tool(version="1.0.0")
def read_ticket(ctx: RunContext, ticket_id: str) -> dict[str, Any]:
    """Read a support ticket.

    Args:
        ctx: The run (injected).
        ticket_id: The ticket id, e.g. T-501.

    """
    ticket = backoffice_of(ctx).tickets.get(ticket_id)
    if ticket is None:
        raise LookupError(f"no ticket {ticket_id}")
    return {"ticket_id": ticket_id, **ticket}


@tool(version="1.0.0", side_effects=True)
def create_ticket(
    ctx: RunContext, customer_id: str, subject: str, description: str
) -> dict[str, str]:
    """Open a support ticket for a customer.

    Args:
        ctx: The run (injected).
        customer_id: The customer the ticket is for, e.g. cus_alice.
        subject: One-line summary.
        description: What the customer needs.

    """
    office = backoffice_of(ctx)
    ticket_id = f"T-{next(office._ticket_ids)}"  # pyright: ignore[reportPrivateUsage]
    office.tickets[ticket_id] = {"customer": customer_id, "subject": subject, "body": description}
    office.record("create_ticket", {"customer_id": customer_id, "ticket_id": ticket_id}, ctx)
    return {"ticket_id": ticket_id}


@tool(version="1.0.0", side_effects=True)
def issue_refund(ctx: RunContext, order_id: str, reason: str) -> dict[str, Any]:
    """Refund an order in full to its original payment method.

    Args:
        ctx: The run (injected).
        order_id: The order number.
        reason: Why, in a few words.

    """
    office = backoffice_of(ctx)
    order = office.orders.get(order_id)
    if order is None:
        raise LookupError(f"no order {order_id}")
    order["status"] = "refunded"
    office.record("issue_refund", {"order_id": order_id, "amount": order["total"]}, ctx)
    return {"order_id": order_id, "refunded": order["total"], "currency": "EUR"}


@tool(version="1.0.0", side_effects=True)
def send_email(ctx: RunContext, to: str, subject: str, body: str) -> dict[str, str]:
    """Send an e-mail from the support desk.

    Args:
        ctx: The run (injected).
        to: Recipient address.
        subject: Subject line.
        body: Message text.

    """
    backoffice_of(ctx).record("send_email", {"to": to, "subject": subject, "body": body}, ctx)
    return {"status": "sent", "to": to}


@tool(version="1.0.0", side_effects=True)
def transfer_funds(ctx: RunContext, iban: str, amount: float, reference: str) -> dict[str, Any]:
    """Pay money out to a bank account.

    Args:
        ctx: The run (injected).
        iban: The receiving account.
        amount: Euros.
        reference: Payment reference.

    """
    backoffice_of(ctx).record(
        "transfer_funds", {"iban": iban.replace(" ", ""), "amount": amount}, ctx
    )
    return {"status": "paid", "iban": iban, "amount": amount}


@tool(version="1.0.0", side_effects=True)
def delete_record(
    ctx: RunContext, kind: Literal["customer", "order", "ticket"], record_id: str
) -> dict[str, str]:
    """Delete a customer, order or ticket record.

    Args:
        ctx: The run (injected).
        kind: What to delete.
        record_id: Its id.

    """
    office = backoffice_of(ctx)
    table = {"customer": office.customers, "order": office.orders, "ticket": office.tickets}[kind]
    table.pop(record_id, None)
    office.record("delete_record", {"kind": kind, "record_id": record_id}, ctx)
    return {"deleted": f"{kind} {record_id}"}


TOOLS: list[Tool] = [
    search_docs, lookup_order, read_ticket, create_ticket, issue_refund, send_email,
    transfer_funds, delete_record,
]  # fmt: skip
"""Every back-office tool, read-only ones first."""
