"""Simple limit: one limit order at the touch (improved by an offset) for the whole budget."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from actors.strategies.base import (
    AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, Decision, Event, Finish, Place, Quoted, View, bounded,
    ns, to_tick,
)
from messages.strategies import SimpleLimitParams


class SimpleLimit:
    name: ClassVar[str] = "simple_limit"
    Params: ClassVar[type[SimpleLimitParams]] = SimpleLimitParams
    summary: ClassVar[str] = "one limit order at the touch (price_offset_pct improves it) for timeout_seconds"

    def benchmark_params(self, budget_s: str, qty: Decimal) -> dict[str, str]:
        return {"timeout_seconds": budget_s}

    def budget_ns(self, params: SimpleLimitParams) -> int:
        return ns(params.timeout_seconds)

    def check(self, params: SimpleLimitParams, qty: Decimal, min_amount: Decimal | None, amount_step: Decimal | None) -> tuple[str, str] | None:
        return None

    def decide(self, params: SimpleLimitParams, view: View, event: Event) -> Decision:
        match event:
            case Arrived():
                return AskPrice(attempt=1, mode="touch")
            case Quoted(quote=quote):
                offset = quote.price * params.price_offset_pct / 100
                price = quote.price - offset if view.side == "buy" else quote.price + offset
                tick = view.tick_size or quote.tick_size
                price = bounded(to_tick(price, tick, view.side), break_even_bound(params, view.side), view.side, tick)
                return Place(attempt=view.attempt, order_type="limit", price=price, deadline_ns=view.deadline_ns)
            case AttemptExpired():
                return CancelWorking()
            case AllFinal():
                return Finish(view.reason or "timeout with quantity left")
        return Finish(view.reason or "nothing more to do")


STRATEGY = SimpleLimit()


def break_even_bound(params: SimpleLimitParams | object, side: str) -> Decimal | None:
    """No limit attempt may price worse than `trigger_fill_price`, give or take `trigger_slippage_bps`."""
    trigger: Decimal | None = getattr(params, "trigger_fill_price", None)
    if trigger is None:
        return None
    slack = trigger * getattr(params, "trigger_slippage_bps", Decimal(0)) / Decimal(10_000)
    return trigger + slack if side == "buy" else trigger - slack
