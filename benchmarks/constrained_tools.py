"""How often does a local model produce a malformed or unknown tool call, with and without the
grammar? Runs the same requests both ways on the same model and counts.

    python benchmarks/constrained_tools.py [--model qwen2.5-coder-0.5b] [--limit N]

A call is bad when its JSON does not parse, names a tool that was not offered, or has
arguments that fail that tool's schema. An answer without any tool call is counted apart (it is
well-formed, just not a call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Literal

from pydantic import ValidationError

from cadenza import tool
from cadenza.messages import Message
from cadenza.models import ModelRequest, ModelSettings
from cadenza.providers.local import LocalModel


@tool
def search_kb(query: str, limit: int = 3) -> list[str]:
    """Search the help centre for articles.

    Args:
        query: Words to search for.
        limit: How many articles, 1 to 10.
    """
    return []


@tool
def create_ticket(
    subject: str, description: str, priority: Literal["low", "normal", "high"] = "normal"
) -> str:
    """Open a support ticket.

    Args:
        subject: One-line summary.
        description: What the customer needs.
        priority: low, normal or high.
    """
    return ""


@tool
def get_order_status(order_id: str) -> str:
    """Look up the delivery status of an order.

    Args:
        order_id: The order number, e.g. A-1042.
    """
    return ""


@tool
def convert_currency(amount: float, source: str, target: str) -> float:
    """Convert an amount of money between currencies.

    Args:
        amount: How much.
        source: ISO code of the currency it is in, e.g. EUR.
        target: ISO code to convert to.
    """
    return 0.0


@tool
def schedule_meeting(title: str, day: str, hour: int, attendees: list[str]) -> str:
    """Put a meeting in the calendar.

    Args:
        title: What the meeting is about.
        day: The date, YYYY-MM-DD.
        hour: Start hour, 0-23.
        attendees: Email addresses of the people invited.
    """
    return ""


TOOLS = [search_kb, create_ticket, get_order_status, convert_currency, schedule_meeting]
BY_NAME = {t.name: t for t in TOOLS}

REQUESTS = [
    "How do I reset my password?",
    "Find help articles about sharing a folder.",
    "Search the help centre for two-factor authentication.",
    "Look up articles on restoring deleted files, just the top one.",
    "Is there documentation about selective sync? Give me 5 results.",
    "My app crashes on start, please open a ticket.",
    "Open a high priority ticket: the whole team cannot log in since this morning.",
    "Create a ticket saying my invoice has the wrong VAT number.",
    "I want to report a bug: uploads stop at 99%.",
    "File a low priority ticket to suggest a dark mode.",
    "Where is my order A-1042?",
    "What's the status of order B-77?",
    "Has order 5531 shipped yet?",
    "Track my package, order number Z-9.",
    "Can you check order A-1000 for me?",
    "Convert 100 EUR to USD.",
    "How much is 2500 yen in euros?",
    "What is 19.99 dollars in British pounds?",
    "Convert 1 BTC to USD please.",
    "I have 350 Swiss francs, how many euros is that?",
    "Schedule a meeting called Sprint review on 2026-12-01 at 10 with ann@example.com and bob@example.com.",
    "Set up a 3pm meeting tomorrow (2026-11-26) titled Budget with cfo@example.com.",
    "Book a kickoff on 2027-01-05 at 9 with team@example.com.",
    "Put 'Lunch with Eve' in my calendar on 2026-12-24 at 12, invite eve@example.com.",
    "Create a meeting for the design review on 2026-12-02 at 16:00 with ux@example.com, pm@example.com.",
    "search kb: version history",
    "I need the article about storage quota",
    "ticket: phone app logs me out every hour",
    "order status C-3?",
    "convert 10 usd to jpy",
    "Please look for articles on camera upload and also tell me about offline files.",
    "Open a ticket, subject 'Refund', description 'charged twice in May'.",
    "Check orders A-1 and A-2.",
    "Convert 50 GBP to EUR and 50 GBP to USD.",
    "Meeting 'Retro' 2026-12-10 17h with a@x.io",
    "Help! Nothing syncs and I have a deadline, make a ticket now!!",
    "Can you find anything about keyboard shortcuts in the web app?",
    "What's the weather in Paris?",
    "Tell me a joke about cloud storage.",
    "Hi!",
    "Est-ce que ma commande A-55 est partie ?",
    "¿Cuánto son 20 euros en dólares?",
    "Bitte ein Ticket eröffnen: Synchronisation hängt bei 0 Dateien.",
    "Find articles: delete account",
    "I'd like to export all my data, is there an article?",
    "Open a normal priority ticket about a missing invoice for March.",
    "Where's order #A-2024-11?",
    "How many Canadian dollars is 75 euros?",
    "Schedule 'Onboarding' on 2026-12-03 at 11 with new.hire@example.com and hr@example.com",
    "Search help for SSO setup and open a ticket if nothing is found.",
    "Look up order Q-8 and convert its price of 120 USD to EUR.",
    "Search: link expiry passwords",
]


def classify(
    calls_text: str, response_calls: list[tuple[str, dict[str, object]]]
) -> tuple[int, int]:
    """(good calls, bad calls) among the calls the model produced."""
    good = bad = 0
    for name, args in response_calls:
        t = BY_NAME.get(name)
        if t is None:
            bad += 1
            continue
        try:
            t.validate(args)
            good += 1
        except ValidationError:
            bad += 1
    return good, bad


async def run(model_name: str, limit: int | None) -> dict[str, dict[str, float]]:
    system = Message.system(
        "You are an assistant with tools. Call a tool when one fits the request."
    )
    out: dict[str, dict[str, float]] = {}
    for constrained in (True, False):
        model = LocalModel(model_name, constrained=constrained)
        good = bad = answers = 0
        start = time.perf_counter()
        for text in REQUESTS[:limit]:
            request = ModelRequest(
                [system, Message.user(text)], [t.spec for t in TOOLS], None,
                ModelSettings(temperature=0.0, max_tokens=160),
            )  # fmt: skip
            response = await model.request(request)
            calls = [(c.name, c.arguments) for c in response.tool_calls]
            g, b = classify(response.text, calls)
            good, bad = good + g, bad + b
            answers += not calls
        out["constrained" if constrained else "unconstrained"] = {
            "requests": len(REQUESTS[:limit]),
            "well_formed_calls": good,
            "malformed_or_unknown_calls": bad,
            "answers_without_call": answers,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.model, args.limit))
    print(json.dumps(result, indent=2))
    assert result["constrained"]["malformed_or_unknown_calls"] == 0, (
        "the grammar let a bad call through"
    )


if __name__ == "__main__":
    main()
