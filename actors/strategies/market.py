"""Market: one market order for everything, with the old market executor's slippage protection."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from actors.strategies.base import (
    NS, AllFinal, Arrived, AttemptExpired, CancelWorking, Decision, Event, Finish, Place, View, ns, to_tick,
)
from messages.pricing import PriceQuoted
from messages.strategies import MarketParams

MARKET_BUDGET_NS = 60 * NS
"""A sanity cap: a market order that has not ended by then is canceled."""


class Market:
    name: ClassVar[str] = "market"
    Params: ClassVar[type[MarketParams]] = MarketParams
    summary: ClassVar[str] = "one market order; with max_slippage_bps, a limit at the cap when the book is too thin"

    def benchmark_params(self, budget_s: str, qty: Decimal) -> dict[str, str]:
        """Its settings in the quality benchmark, for a time budget: none (one market order)."""
        return {}

    def budget_ns(self, params: MarketParams) -> int:
        return MARKET_BUDGET_NS

    def check(self, params: MarketParams, qty: Decimal, min_amount: Decimal | None, amount_step: Decimal | None) -> tuple[str, str] | None:
        return None

    def decide(self, params: MarketParams, view: View, event: Event) -> Decision:
        match event:
            case Arrived(quote=quote):
                return self._first_order(params, view, quote)
            case AttemptExpired():
                return CancelWorking()
            case AllFinal():
                return Finish(view.reason or "timeout with quantity left")
        return Finish(view.reason or "nothing more to do")

    def _first_order(self, params: MarketParams, view: View, quote: PriceQuoted) -> Place:
        cap_bps = params.max_slippage_bps
        if cap_bps is not None:
            cap = cap_price(view.side, quote, cap_bps)
            expected = quote.sweep_avg_price
            too_expensive = expected is None or (expected > cap if view.side == "buy" else expected < cap)
            if too_expensive:
                return Place(
                    attempt=1, order_type="limit", price=cap, deadline_ns=view.now_ns + ns(params.timeout_seconds),
                    reason=f"slippage cap {cap_bps} bps: limit at {cap}",
                )
        return Place(attempt=1, order_type="market", price=None, deadline_ns=view.deadline_ns, with_reference=True)


STRATEGY = Market()


def cap_price(side: str, quote: PriceQuoted, cap_bps: Decimal) -> Decimal:
    """The worst price `cap_bps` past the touch allows."""
    touch = quote.ask if side == "buy" else quote.bid
    factor = cap_bps / Decimal(10_000)
    raw = touch * (1 + factor) if side == "buy" else touch * (1 - factor)
    return to_tick(raw, quote.tick_size, side)
