"""Integration tests on the real bundled model (qwen2.5-coder-0.5b through llama.cpp).

They need `cadenza[local]` and the model's parts; locally they are skipped with the reason when
those are missing, in CI (CI=true) they must run.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Literal

import pytest
from pydantic import BaseModel

from cadenza import MemoryStore, Principal, tool
from cadenza.messages import Message
from cadenza.models import ModelRequest, ModelSettings, StreamDone, TextDelta
from cadenza.providers import catalog

ENTRY = catalog.find_entry("qwen2.5-coder-0.5b")


def _why_missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'cadenza[local]')"
    if catalog.status(ENTRY) == "missing":
        return f"the model parts are not installed ({ENTRY.pip_install})"
    return None


_missing = _why_missing()
if _missing and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the local-model tests, but {_missing}")
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from cadenza.providers.local import LocalModel

    return LocalModel("qwen2.5-coder-0.5b")


@tool
def get_order_status(order_id: str) -> str:
    """Look up the delivery status of an order.

    Args:
        order_id: The order number, e.g. A-1042.
    """
    return "shipped"


@tool
def create_ticket(subject: str, priority: Literal["low", "normal", "high"] = "normal") -> str:
    """Open a support ticket.

    Args:
        subject: One-line summary.
        priority: low, normal or high.
    """
    return "T-1"


def _request(text: str, **kw: object) -> ModelRequest:
    return ModelRequest(
        [Message.system("You are a helpful assistant."), Message.user(text)],
        kw.pop("tools", []),  # type: ignore[arg-type]
        kw.pop("schema", None),  # type: ignore[arg-type]
        ModelSettings(temperature=0.0, max_tokens=int(kw.pop("max_tokens", 64))),  # type: ignore[arg-type]
    )


async def test_the_assembled_file_matches_the_catalog(model) -> None:  # type: ignore[no-untyped-def]
    path = catalog.assemble(ENTRY)
    assert path.stat().st_size == ENTRY.size


async def test_plain_chat_answers_with_text(model) -> None:  # type: ignore[no-untyped-def]
    response = await model.request(_request("What is the capital of France? One word."))
    assert "paris" in response.text.lower()
    assert response.usage.input_tokens > 5 and response.usage.output_tokens > 0
    assert not response.tool_calls


async def test_constrained_tool_calls_are_known_and_valid(model) -> None:  # type: ignore[no-untyped-def]
    tools = [get_order_status.spec, create_ticket.spec]
    for text in ("Where is my order A-1042?", "Please open a high priority ticket: sync is broken"):
        response = await model.request(_request(text, tools=tools, max_tokens=96))
        for c in response.tool_calls:
            t = {"get_order_status": get_order_status, "create_ticket": create_ticket}[c.name]
            t.validate(c.arguments)  # raises if the grammar let invalid arguments through
        assert response.tool_calls or response.text


async def test_structured_output_follows_the_schema(model) -> None:  # type: ignore[no-untyped-def]
    class Intent(BaseModel):
        intent: Literal["FAQ", "Billing", "Technical", "Other"]

    schema = Intent.model_json_schema()
    response = await model.request(
        _request("I was charged twice for my subscription this month.", schema=schema)
    )
    Intent.model_validate(json.loads(response.text))


async def test_streaming_gives_deltas_then_the_full_answer(model) -> None:  # type: ignore[no-untyped-def]
    deltas: list[str] = []
    done = None
    async for event in model.stream(_request("Count from 1 to 5, separated by spaces.")):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        elif isinstance(event, StreamDone):
            done = event.response
    assert done is not None and len(deltas) > 1
    assert "".join(deltas).strip() == done.text


async def test_support_bot_end_to_end_on_the_real_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cadenza.apps.support import build
    from cadenza.apps.support.tickets import TicketDesk

    class Deps:
        tickets = TicketDesk(tmp_path / "tickets.db")

    bot = build("local:qwen2.5-coder-0.5b")
    store = MemoryStore()
    faq = await bot.run("How do I reset my password? I forgot it.", store=store, deps=Deps())
    assert faq.output.intent == "FAQ"
    assert faq.output.route == "answer" and faq.output.article_id is not None
    assert "password" in faq.output.reply.lower()

    billing = await bot.run(
        "You charged my card twice this month, I want a refund.",
        store=store, deps=Deps(), principal=Principal("u-7"),
    )  # fmt: skip
    assert billing.output.route == "ticket" and billing.output.ticket_id
    ticket = Deps.tickets.get(billing.output.ticket_id)
    assert ticket is not None and ticket.user_id == "u-7"
    assert billing.output.ticket_id in billing.output.reply


async def test_the_evaluated_prefix_is_saved_and_reused(model, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A long, fixed prefix (instructions + examples) is evaluated once and saved; a process
    # that has not evaluated it (simulated by resetting the context) loads it instead.
    monkeypatch.setenv("CADENZA_CACHE", str(tmp_path))
    system = "You label customer messages. " + " ".join(f"Example {i}: label A." for i in range(60))
    request = ModelRequest(
        [Message.system(system), Message.user("first"), Message.assistant("A"), Message.user("x")],
        [], None, ModelSettings(temperature=0.0, max_tokens=4),
    )  # fmt: skip
    first = await model.request(request)
    saved = list((tmp_path / "prefixes").glob("*.state"))
    assert len(saved) == 1 and saved[0].stat().st_size < 64 << 20
    llm = model.llm()
    llm.reset()
    evaluated: list[int] = []
    real_eval = llm.eval
    monkeypatch.setattr(llm, "eval", lambda toks: (evaluated.append(len(toks)), real_eval(toks))[1])
    again = await model.request(request)
    assert again.text == first.text
    assert evaluated and max(evaluated) < 64  # only the new tokens, not the ~900-token prefix
