"""Quotas: budgets per user and per tenant over a time window, shared by all their runs.

A `Budget` limits one run; a `Quota` limits everything a user (or a tenant) spends in a
minute, an hour or a day — tokens, cost, tool calls or run time — across runs and processes.
Counters live in the state store (`StateStore.charge`), one per scope, metric and window, and
are checked *before* spending, like every budget:

- tokens and cost: a model call is refused when the window is used up, and its output is
  capped to what is left; what the call really used is charged after it;
- tool calls: charged atomically before the calls run (refused when they would not fit);
- seconds: a run may not start (or resume) once the window's run time is used up; each run
  segment charges its wall time when it ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import BudgetExceeded, ConfigError

if TYPE_CHECKING:
    from .context import Principal
    from .stores._base import StateStore

__all__ = ["Quota", "QuotaMeter"]

Metric = Literal["tokens", "cost", "tool_calls", "seconds"]
_WINDOWS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True, slots=True)
class Quota:
    """A limit on what one user (or tenant) may spend per window."""

    scope: Literal["user", "tenant"]
    """Whose spending is counted: the principal's user id, or its tenant."""
    metric: Metric
    """tokens (input + output), cost (US dollars), tool_calls, or seconds of run time."""
    limit: float
    """The most that may be spent per window."""
    per: Literal["minute", "hour", "day"] = "day"
    """The window; counters restart at each window's start (UTC)."""

    def __post_init__(self) -> None:
        if self.scope not in ("user", "tenant"):
            raise ConfigError(f"Quota scope must be 'user' or 'tenant', not {self.scope!r}")
        if self.metric not in ("tokens", "cost", "tool_calls", "seconds"):
            raise ConfigError(
                f"Quota metric must be tokens, cost, tool_calls or seconds, not {self.metric!r}"
            )
        if self.per not in _WINDOWS:
            raise ConfigError(f"Quota per must be minute, hour or day, not {self.per!r}")
        if self.limit < 0:
            raise ConfigError(f"Quota limit must be >= 0, got {self.limit}")

    def key(self, principal: Principal, now: float) -> str | None:
        """The store counter for `principal` in the window holding `now` (None: no tenant)."""
        who = principal.user_id if self.scope == "user" else principal.tenant
        if who is None:
            return None
        window = int(now // _WINDOWS[self.per])
        return f"{self.scope}:{who}:{self.metric}:{self.per}:{window}"

    def describe(self, principal: Principal) -> str:
        """e.g. `tokens per day of user alice`."""
        who = principal.user_id if self.scope == "user" else principal.tenant
        return f"{self.metric} per {self.per} of {self.scope} {who}"


class QuotaMeter:
    """Checks and charges a run's quotas in the store (one per run, shared with child runs)."""

    __slots__ = ("principal", "quotas", "store")

    def __init__(self, quotas: tuple[Quota, ...], principal: Principal, store: StateStore) -> None:
        self.quotas = quotas
        self.principal = principal
        self.store = store

    def _keyed(self, metric: Metric) -> list[tuple[Quota, str]]:
        now = time.time()
        out: list[tuple[Quota, str]] = []
        for q in self.quotas:
            if q.metric == metric:
                key = q.key(self.principal, now)
                if key is not None:
                    out.append((q, key))
        return out

    async def headroom(self, metric: Metric, needed: float = 0.0) -> float | None:
        """What is left of the tightest quota on `metric` (None: no quota applies).

        Raises:
            BudgetExceeded: a quota is used up, or has less than `needed` left.

        """
        least: float | None = None
        for q, key in self._keyed(metric):
            _, used = await self.store.charge(key, 0.0)
            left = q.limit - used
            if left <= 0 or left < needed:
                raise BudgetExceeded(
                    q.describe(self.principal), q.limit, used,
                    "the quota is shared by all of this "
                    f"{q.scope}'s runs; it restarts with the next {q.per}",
                )  # fmt: skip
            least = left if least is None else min(least, left)
        return least

    async def spend(self, metric: Metric, amount: float) -> None:
        """Charge what was spent (after the fact: model usage, run time)."""
        if amount > 0:
            for _, key in self._keyed(metric):
                await self.store.charge(key, amount)

    async def reserve(self, metric: Metric, amount: float) -> None:
        """Charge `amount` before spending it, atomically refusing what would not fit.

        Raises:
            BudgetExceeded: a quota has less than `amount` left (nothing is charged then).

        """
        charged: list[str] = []
        for q, key in self._keyed(metric):
            ok, used = await self.store.charge(key, amount, q.limit)
            if not ok:
                for k in charged:
                    await self.store.charge(k, -amount)
                raise BudgetExceeded(
                    q.describe(self.principal), q.limit, used,
                    f"the next {amount:g} would not fit; it restarts with the next {q.per}",
                )  # fmt: skip
            charged.append(key)
