"""Per-run budgets (steps, tool calls, tokens, cost, wall-clock time), checked *before* spending.

One `BudgetTracker` serves a run and every child run it starts (agent nodes, sub-graphs), so
all agents of a run draw on the same budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import BudgetExceeded
from .messages import Usage
from .models import ModelRequest
from .quotas import Quota, QuotaMeter

__all__ = ["Budget", "BudgetTracker", "estimate_tokens"]


@dataclass(slots=True, frozen=True)
class Budget:
    """Limits for one run; None means unlimited."""

    max_steps: int | None = 50
    """Model turns (agent steps) across the run."""
    max_tool_calls: int | None = None
    """Tool executions across the run."""
    max_tokens: int | None = None
    """Input plus output tokens across the run."""
    max_cost: float | None = None
    """US dollars across the run."""
    timeout: float | None = None
    """Seconds of wall-clock time from the run's start (or resume)."""
    quotas: tuple[Quota, ...] = ()
    """Limits per user and per tenant over a window, shared by all their runs (`Quota`)."""


def estimate_tokens(request: ModelRequest) -> int:
    """Rough input-token count of a request (4 characters per token), used before the call."""
    chars = 0
    for m in request.messages:
        chars += len(m.text) + 8
        for c in m.tool_calls:
            chars += len(c.name) + 16 * len(c.arguments)
        for r in m.tool_results:
            content = r.content
            if isinstance(content, str):
                chars += len(content) + 8
            elif isinstance(content, dict | list):
                chars += len(str(content)) + 8  # pyright: ignore[reportUnknownArgumentType]
            else:
                chars += 16
    for t in request.tools:
        chars += t.size
    return chars // 4 + 1


class BudgetTracker:
    """Counts what a run has spent and refuses the next call when it would overspend."""

    __slots__ = ("budget", "deadline", "meter", "steps", "tool_calls", "usage")

    def __init__(
        self, budget: Budget, usage: Usage | None = None, steps: int = 0, tool_calls: int = 0
    ) -> None:
        self.budget = budget
        self.usage = usage if usage is not None else Usage()
        self.steps = steps
        self.tool_calls = tool_calls
        t = budget.timeout
        self.deadline = None if t is None else time.monotonic() + t
        self.meter: QuotaMeter | None = None
        """The run's per-user and per-tenant quotas, when the budget has any."""

    @property
    def caps_output(self) -> bool:
        """Whether `before_model` may lower a request's max_tokens (tokens or cost budget)."""
        return self.budget.max_tokens is not None or self.budget.max_cost is not None

    def remaining_time(self) -> float | None:
        """Seconds left before the deadline (None when there is none)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _check_time(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            assert self.budget.timeout is not None
            raise BudgetExceeded("time", self.budget.timeout, self.budget.timeout, "seconds")

    def before_model(self, request: ModelRequest, price: tuple[float, float] | None) -> None:
        """Check that one more model call fits; cap its output tokens to what is left.

        Raises:
            BudgetExceeded: steps, tokens, cost or time would be overspent.

        """
        b = self.budget
        if b.max_steps is not None and self.steps >= b.max_steps:
            raise BudgetExceeded("steps", b.max_steps, self.steps, "model turns")
        self._check_time()
        if b.max_tokens is None and (b.max_cost is None or price is None):
            return
        est_in = estimate_tokens(request)
        if b.max_tokens is not None:
            left = b.max_tokens - self.usage.total_tokens - est_in
            if left <= 0:
                raise BudgetExceeded(
                    "tokens", b.max_tokens, self.usage.total_tokens,
                    f"the next request needs about {est_in} input tokens",
                )  # fmt: skip
            s = request.settings
            s.max_tokens = left if s.max_tokens is None else min(s.max_tokens, left)
        if b.max_cost is not None and price is not None:
            left_cost = b.max_cost - self.usage.cost - est_in * price[0]
            max_out = int(left_cost / price[1]) if price[1] > 0 else None
            if left_cost <= 0 or (max_out is not None and max_out < 1):
                raise BudgetExceeded(
                    "cost", b.max_cost, self.usage.cost,
                    f"the next request's input alone would cost about ${est_in * price[0]:.4f}",
                )  # fmt: skip
            if max_out is not None:
                s = request.settings
                s.max_tokens = max_out if s.max_tokens is None else min(s.max_tokens, max_out)

    async def quota_before_model(
        self, request: ModelRequest, price: tuple[float, float] | None
    ) -> None:
        """Check the user's and tenant's token and cost quotas; cap the output to what is left.

        Raises:
            BudgetExceeded: a quota is used up (nothing was spent on this call).

        """
        meter = self.meter
        assert meter is not None
        est_in = estimate_tokens(request)
        left = await meter.headroom("tokens", est_in + 1)
        s = request.settings
        if left is not None:
            cap = max(int(left) - est_in, 1)
            s.max_tokens = cap if s.max_tokens is None else min(s.max_tokens, cap)
        if price is not None:
            left_cost = await meter.headroom("cost", est_in * price[0])
            if left_cost is not None and price[1] > 0:
                cap = max(int((left_cost - est_in * price[0]) / price[1]), 1)
                s.max_tokens = cap if s.max_tokens is None else min(s.max_tokens, cap)

    def after_model(self, usage: Usage) -> None:
        """Charge a completed model call."""
        self.steps += 1
        self.usage.add(usage)

    def before_tools(self, n: int) -> None:
        """Check that `n` more tool executions fit, and count them.

        Raises:
            BudgetExceeded: tool calls or time would be overspent (nothing is counted then).

        """
        b = self.budget
        if b.max_tool_calls is not None and self.tool_calls + n > b.max_tool_calls:
            raise BudgetExceeded(
                "tool_calls", b.max_tool_calls, self.tool_calls,
                f"the model asked for {n} more call(s)",
            )  # fmt: skip
        self._check_time()
        self.tool_calls += n
