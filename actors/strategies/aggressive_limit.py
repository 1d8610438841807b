"""Aggressive limit: attempts that escalate touch -> inside -> cross, each within its own budget; an attempt
that would price the same as the working order keeps it; then the market fallback takes what is left."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from actors.strategies.base import (
    AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, Decision, Event, HandOff, Place, Quoted, Reprice,
    View, Woke, bounded, escalation, ns, to_tick,
)
from actors.strategies.simple_limit import break_even_bound
from messages.strategies import AggressiveLimitParams


class AggressiveLimit:
    name: ClassVar[str] = "aggressive_limit"
    Params: ClassVar[type[AggressiveLimitParams]] = AggressiveLimitParams
    summary: ClassVar[str] = (
        "up to max_retries limit attempts, touch -> inside -> cross, within total_timeout_seconds; then the market fallback"
    )

    def benchmark_params(self, budget_s: str, qty: Decimal) -> dict[str, str]:
        return {"total_timeout_seconds": budget_s}

    def budget_ns(self, params: AggressiveLimitParams) -> int:
        return ns(params.total_timeout_seconds)

    def check(self, params: AggressiveLimitParams, qty: Decimal, min_amount: Decimal | None, amount_step: Decimal | None) -> tuple[str, str] | None:
        return None

    def decide(self, params: AggressiveLimitParams, view: View, event: Event) -> Decision:
        match event:
            case Arrived():
                return AskPrice(attempt=1, mode=escalation(0))
            case Quoted(quote=quote):
                per_attempt = params.attempt_timeout_seconds or params.total_timeout_seconds / params.max_retries
                deadline = min(view.now_ns + ns(per_attempt), view.deadline_ns)
                tick = view.tick_size or quote.tick_size
                price = bounded(to_tick(quote.price, tick, view.side), break_even_bound(params, view.side), view.side, tick)
                return Place(attempt=view.attempt, order_type="limit", price=price, deadline_ns=deadline)
            case AttemptExpired():
                if self._attempts_left(params, view):
                    return Reprice(attempt=view.attempt + 1, mode=escalation(view.attempt))
                return CancelWorking(announce=True)
            case AllFinal() | Woke():
                if self._attempts_left(params, view):
                    return AskPrice(attempt=view.attempt + 1, mode=escalation(view.attempt))
                return HandOff("budget exhausted", fallback=params.fallback == "market")
        return HandOff("budget exhausted", fallback=params.fallback == "market")

    @staticmethod
    def _attempts_left(params: AggressiveLimitParams, view: View) -> bool:
        return view.attempt < params.max_retries and view.now_ns < view.deadline_ns


STRATEGY = AggressiveLimit()
