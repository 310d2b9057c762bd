"""The customer-support bot of the article, as a Cadenza graph.

```
START → check ─┬─(empty)──────────────────────────────→ END
               └→ classify ─┬─(FAQ)→ search ─┬─(found)→ answer → END
                            │                └─(none)─→ ticket → END
                            └─(Billing/Technical/Other)─→ ticket → END
```

`classify` and `answer` are agents on the local model by default (override with `--model`);
`search` and `ticket` call the tools `search_kb` and `create_ticket` through the Gate. The
ticket is opened for the run's principal: nothing the customer writes can choose the account.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ...agent import Agent
from ...context import RunContext
from ...graph import END, START, Graph
from ...models import ModelSettings
from ...prompts import PromptLibrary
from ...tools import tool
from .kb import KnowledgeBase
from .tickets import TicketDesk, default_desk

__all__ = ["DEFAULT_MODEL", "SupportState", "bot", "build", "create_ticket", "search_kb"]

HERE = Path(__file__).parent
DEFAULT_MODEL = "local:qwen2.5-coder-0.5b"
MAX_CHARS = 2000
"""Longer messages are cut for the models (the ticket keeps more)."""
FOUND = 3.0
"""BM25 score from which the best article counts as an answer (tuned on the dev split)."""

Intent = Literal["FAQ", "Billing", "Technical", "Other"]
_kb: KnowledgeBase | None = None


def knowledge_base() -> KnowledgeBase:
    """The articles shipped with the bot (loaded once)."""
    global _kb
    if _kb is None:
        _kb = KnowledgeBase.load(HERE / "kb")
    return _kb


class SupportState(BaseModel):
    """What the bot knows about one customer message."""

    message: str
    """The customer's message."""
    intent: Intent | None = None
    """How the message was classified."""
    route: Literal["answer", "ticket", "clarify"] | None = None
    """What the bot did: answered from an article, opened a ticket, or asked for more."""
    article_id: str | None = None
    """The article the answer comes from."""
    article_title: str | None = None
    """Its title."""
    score: float = 0.0
    """Search score of the best article."""
    ticket_id: str | None = None
    """The ticket opened, if any."""
    reply: str = ""
    """What the customer is told."""


class Classification(BaseModel):
    """The classifier's structured answer."""

    intent: Intent = Field(description="FAQ, Billing, Technical or Other")


@tool(version="1.0.0")
def search_kb(query: str, limit: int = 3) -> list[dict[str, Any]]:
    """Search the help centre.

    Args:
        query: What the customer asks, in their words.
        limit: How many articles to return, best first.

    """
    return [
        {"id": h.article.id, "title": h.article.title, "score": round(h.score, 3)}
        for h in knowledge_base().search(query, k=max(1, min(limit, 10)))
    ]


@tool(version="1.0.0", side_effects=True)
def create_ticket(
    ctx: RunContext,
    subject: str,
    description: str,
    intent: Intent = "Other",
) -> dict[str, Any]:
    """Open a support ticket for the customer of this run.

    Args:
        ctx: The run (injected): the ticket is for its principal.
        subject: One-line summary.
        description: The customer's request.
        intent: FAQ, Billing, Technical or Other.

    """
    desk: TicketDesk = getattr(ctx.deps, "tickets", None) or default_desk()
    ticket = desk.create(
        user_id=ctx.principal.user_id, intent=intent, subject=subject[:120],
        description=description[:10_000], run_id=ctx.run_id,
        idempotency_key=ctx.idempotency_key,
    )  # fmt: skip
    return {"ticket_id": ticket.id, "status": ticket.status}


def _check(state: SupportState) -> dict[str, Any]:
    text = state.message.strip()
    if not text:
        return {
            "route": "clarify",
            "reply": "Hi! Your message was empty. Tell us what you need help with and we'll "
            "take it from there.",
        }
    return {"message": text}


def _after_check(state: SupportState) -> str:
    return "done" if state.route == "clarify" else "classify"


async def _search(state: SupportState, ctx: RunContext) -> dict[str, Any]:
    hits: list[dict[str, Any]] = await ctx.call_tool(
        "search_kb", query=state.message[:MAX_CHARS], limit=1
    )
    if hits and hits[0]["score"] >= FOUND:
        best = hits[0]
        return {"article_id": best["id"], "article_title": best["title"], "score": best["score"]}
    return {"score": hits[0]["score"] if hits else 0.0}


async def _ticket(state: SupportState, ctx: RunContext) -> dict[str, Any]:
    intent = state.intent or "Other"
    first_line = state.message.strip().splitlines()[0] if state.message.strip() else "(empty)"
    result = await ctx.call_tool(
        "create_ticket",
        subject=f"[{intent}] {first_line[:100]}",
        description=state.message[:10_000],
        intent=intent,
    )
    ticket_id = result["ticket_id"]
    why = {
        "FAQ": "I couldn't find a help article that answers this, so",
        "Billing": "Billing questions are handled by our billing team, so",
        "Technical": "This looks like a technical problem for our engineers, so",
        "Other": "So the right person sees this,",
    }[intent]
    return {
        "route": "ticket",
        "ticket_id": ticket_id,
        "reply": f"Thanks for reaching out. {why} I've opened ticket {ticket_id} for you. "
        "Our team will reply by email within one business day; quote the ticket id if you "
        "write again.",
    }


def _answer_vars(state: SupportState) -> dict[str, Any]:
    article = knowledge_base().get(state.article_id or "")
    assert article is not None
    return {"article_id": article.id, "article_title": article.title, "article_body": article.body}


def build(model: str = DEFAULT_MODEL, prompts: PromptLibrary | None = None) -> Any:
    """The support graph on `model`, with prompts from `prompts` (default: the shipped ones)."""
    library = prompts or PromptLibrary(HERE / "prompts")
    classify_prompt = library.get("classify", "^1.0")
    answer_prompt = library.get("answer", "^1.0")
    classifier = Agent(
        model, name="classifier", instructions=classify_prompt.text,
        output_type=Classification, settings=ModelSettings(temperature=0.0, max_tokens=24),
        max_retries=1,
    )  # fmt: skip

    answerer = Agent(
        model, name="answerer", instructions=answer_prompt,
        settings=ModelSettings(temperature=0.0, max_tokens=160),
    )  # fmt: skip

    g = Graph(SupportState, name="support", input_key="message", tools=[search_kb, create_ticket])
    g.add_node("check", _check)
    g.add_node(
        "classify", classifier, input=lambda s: s.message[:MAX_CHARS],
        output=lambda c, s: {"intent": c.intent},
    )  # fmt: skip
    g.add_node("search", _search)
    g.add_node(
        "answer", answerer, input=_answer_input,
        output=lambda text, s: {
            "route": "answer",
            "reply": f"{str(text).strip()}\n\n(From our help article {s.article_id}: {s.article_title})",
        },
    )  # fmt: skip
    g.add_node("ticket", _ticket)
    g.add_edge(START, "check")
    g.add_route("check", _after_check, {"classify": "classify", "done": END})
    g.add_route(
        "classify", lambda s: "search" if s.intent == "FAQ" else "ticket", ["search", "ticket"]
    )
    g.add_route("search", lambda s: "answer" if s.article_id else "ticket", ["answer", "ticket"])
    g.add_edge("answer", END)
    g.add_edge("ticket", END)
    return g.compile()


def _answer_input(state: SupportState) -> dict[str, Any]:
    # The article travels in the child run's input, so resume and replay see the same one.
    return {"prompt": state.message[:MAX_CHARS], "vars": _answer_vars(state)}


bot = build()
"""The support bot on the default local model (`cadenza run support "..."`)."""
