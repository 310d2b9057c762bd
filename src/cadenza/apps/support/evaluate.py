"""Measure the support bot on the labelled messages: intent accuracy, correct routes, latency.

The set (`eval/messages.jsonl`) is split into `dev` (used to tune prompts and retrieval) and
`holdout` (never looked at while tuning): the two figures side by side show whether tuning
generalises.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...stores import MemoryStore
from .tickets import TicketDesk
from .workflow import HERE, build

__all__ = ["Case", "Report", "evaluate", "load_cases"]


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled message."""

    id: str
    message: str
    intent: str
    route: str
    article: str | None
    split: str


@dataclass
class Outcome:
    """What the bot did with one case."""

    case: Case
    intent: str | None
    route: str | None
    article: str | None
    seconds: float
    input_tokens: int
    output_tokens: int
    error: str | None = None

    @property
    def intent_ok(self) -> bool:
        return self.intent == self.case.intent

    @property
    def route_ok(self) -> bool:
        if self.route != self.case.route:
            return False
        return self.case.route != "answer" or self.article == self.case.article


@dataclass
class Report:
    """Figures per split ('dev', 'holdout', 'all')."""

    model: str
    outcomes: list[Outcome] = field(default_factory=lambda: [])

    def figures(self, split: str) -> dict[str, Any]:
        """Accuracy, correct routes, latency and tokens over one split."""
        rows = [o for o in self.outcomes if split == "all" or o.case.split == split]
        if not rows:
            return {"n": 0}
        secs = sorted(o.seconds for o in rows)
        return {
            "n": len(rows),
            "intent_accuracy": sum(o.intent_ok for o in rows) / len(rows),
            "route_accuracy": sum(o.route_ok for o in rows) / len(rows),
            "seconds_mean": statistics.fmean(secs),
            "seconds_p50": secs[len(secs) // 2],
            "seconds_p95": secs[min(len(secs) - 1, int(len(secs) * 0.95))],
            "input_tokens_mean": statistics.fmean(o.input_tokens for o in rows),
            "output_tokens_mean": statistics.fmean(o.output_tokens for o in rows),
            "errors": sum(o.error is not None for o in rows),
        }

    def to_dict(self) -> dict[str, Any]:
        """Every split's figures and the cases the bot got wrong."""
        return {
            "model": self.model,
            "splits": {s: self.figures(s) for s in ("dev", "holdout", "all")},
            "mistakes": [
                {
                    "id": o.case.id, "message": o.case.message[:80],
                    "want": [o.case.intent, o.case.route, o.case.article],
                    "got": [o.intent, o.route, o.article], "error": o.error,
                }
                for o in self.outcomes
                if not (o.intent_ok and o.route_ok)
            ],
        }  # fmt: skip


def load_cases(path: str | Path | None = None, split: str = "all") -> list[Case]:
    """The labelled messages of `split` ('dev', 'holdout' or 'all')."""
    file = Path(path) if path else HERE / "eval" / "messages.jsonl"
    cases = [Case(**json.loads(line)) for line in file.read_text().splitlines() if line.strip()]
    return [c for c in cases if split == "all" or c.split == split]


class _Deps:
    def __init__(self) -> None:
        self.tickets = TicketDesk(":memory:")


async def evaluate(
    model: str,
    *,
    split: str = "all",
    limit: int | None = None,
    on_case: Callable[[Outcome], None] | None = None,
) -> Report:
    """Run the bot on every case (one at a time, as latency is part of the measure)."""
    bot = build(model)
    store = MemoryStore()
    deps = _Deps()
    report = Report(model)
    for case in load_cases(split=split)[:limit]:
        start = time.perf_counter()
        try:
            result = await bot.run(case.message, store=store, deps=deps)
            state: Any = result.output
            outcome = Outcome(
                case, state.intent, state.route, state.article_id,
                time.perf_counter() - start, result.usage.input_tokens, result.usage.output_tokens,
            )  # fmt: skip
        except Exception as exc:  # a failure is a wrong answer, not the end of the evaluation
            outcome = Outcome(
                case, None, None, None, time.perf_counter() - start, 0, 0,
                f"{type(exc).__name__}: {exc}",
            )  # fmt: skip
        report.outcomes.append(outcome)
        if on_case is not None:
            on_case(outcome)
    return report
