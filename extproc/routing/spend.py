"""Tenants' spend against their budgets (T4), pure: spends in (this worker's tries and, through
the bus, every other replica's), a verdict out — within budget, or over it, why, and until when.

Windows are fixed and aligned to the epoch (every replica agrees where an hour starts without
talking); the cost-rate guardrail is a sliding minute kept as per-second buckets."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from ..policy import Budget

RATE_WINDOW_S = 60
MAX_TENANTS = 10_000  # tenants with spend remembered (least recently spending forgotten first)


@dataclass(frozen=True, slots=True)
class OverBudget:
    """Why a tenant is over budget now, and in how many seconds that can change."""

    reason: str  # "tokens", "cost" or "cost_rate"
    retry_after_s: int
    spent: float
    limit: float


@dataclass(slots=True)
class _TenantSpend:
    window: int = -1  # the window index the sums below are for
    tokens: int = 0
    cost: float = 0.0
    # second → cost, for the cost-rate guardrail (at most RATE_WINDOW_S + 1 entries kept)
    seconds: dict[int, float] = field(default_factory=dict)


class SpendLedger:
    """Spend per tenant in its budget's current window. Commands: `record`. Queries: `over`,
    `spent` (they never change anything)."""

    def __init__(self, window_s: dict[str, float], default_window_s: float = 3600.0) -> None:
        self._window_s = window_s  # by tenant, from the policy
        self._default_window_s = default_window_s
        self._tenants: OrderedDict[str, _TenantSpend] = OrderedDict()

    def resize(self, window_s: dict[str, float], default_window_s: float) -> None:
        """A reloaded policy's windows (a command): a tenant whose window changed size starts a
        new window; every other tenant's spend stays."""
        changed = [
            t
            for t in self._tenants
            if window_s.get(t, default_window_s) != self._window_s.get(t, self._default_window_s)
        ]
        for tenant in changed:
            del self._tenants[tenant]
        self._window_s, self._default_window_s = window_s, default_window_s

    def _window(self, tenant: str, now: float) -> tuple[int, float]:
        size = self._window_s.get(tenant, self._default_window_s)
        return math.floor(now / size), size

    def record(self, tenant: str, tokens: int, cost: float, at: float) -> None:
        """A spend at `at` (a try's end, here or on another replica); a spend of an earlier window
        than the tenant's current one is too late to count and is dropped."""
        if tokens < 0 or cost < 0 or not math.isfinite(cost) or not math.isfinite(at):
            return
        window, _ = self._window(tenant, at)
        spend = self._tenants.get(tenant)
        if spend is None:
            spend = self._tenants[tenant] = _TenantSpend()
            if len(self._tenants) > MAX_TENANTS:
                self._tenants.popitem(last=False)
        self._tenants.move_to_end(tenant)
        if window < spend.window:
            return
        if window > spend.window:
            spend.window, spend.tokens, spend.cost = window, 0, 0.0
        spend.tokens += tokens
        spend.cost += cost
        second = math.floor(at)
        spend.seconds[second] = spend.seconds.get(second, 0.0) + cost
        for old in [s for s in spend.seconds if s <= second - RATE_WINDOW_S]:
            del spend.seconds[old]

    def spent(self, tenant: str, now: float) -> tuple[int, float, float]:
        """Tokens and cost in the tenant's current window, and cost in the last minute."""
        spend = self._tenants.get(tenant)
        if spend is None:
            return 0, 0.0, 0.0
        window, _ = self._window(tenant, now)
        second = math.floor(now)
        rate = sum(c for s, c in spend.seconds.items() if second - RATE_WINDOW_S < s <= second)
        if window != spend.window:
            return 0, 0.0, rate
        return spend.tokens, spend.cost, rate

    def over(self, tenant: str, budget: Budget | None, now: float) -> OverBudget | None:
        """The first limit the tenant has reached, or None (no budget: never over)."""
        if budget is None:
            return None
        tokens, cost, rate = self.spent(tenant, now)
        window, size = self._window(tenant, now)
        until_window_end = max(1, math.ceil((window + 1) * size - now))
        if budget.max_tokens is not None and tokens >= budget.max_tokens:
            return OverBudget("tokens", until_window_end, float(tokens), float(budget.max_tokens))
        if budget.max_cost is not None and cost >= budget.max_cost:
            return OverBudget("cost", until_window_end, cost, budget.max_cost)
        if budget.max_cost_per_minute is not None and rate >= budget.max_cost_per_minute:
            return OverBudget("cost_rate", self._rate_clears_in(tenant, budget.max_cost_per_minute, now), rate,
                              budget.max_cost_per_minute)  # fmt: skip
        return None

    def _rate_clears_in(self, tenant: str, limit: float, now: float) -> int:
        """Seconds until the last minute's spend falls below `limit` with nothing new spent."""
        spend = self._tenants[tenant]
        second = math.floor(now)
        live = sorted((s, c) for s, c in spend.seconds.items() if second - RATE_WINDOW_S < s <= second)
        total = sum(c for _, c in live)
        for s, c in live:
            total -= c
            if total < limit:
                return max(1, s + RATE_WINDOW_S - second)
        return RATE_WINDOW_S
