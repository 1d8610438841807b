"""Iceberg: only `display_qty` shows at a time; the next child is placed once the previous one is terminal,
until everything filled or the budget is over (then the working child is canceled and the fallback, if any,
takes the rest). Children rest at `limit_price`, or join the touch when shown."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import ClassVar

from actors.strategies.base import (
    NS, AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, Decision, Event, HandOff, Place, Quoted, View,
    WaitUntil, Woke, bounded, floor_to_step, ns, to_tick,
)
from messages.strategies import IcebergParams

CHILD_PAUSE_NS = NS
"""After a child that filled nothing, the next is shown this much later."""
SPARE_CHILDREN = 3
"""Children allowed beyond what the quantity needs (a child refused retryably, or canceled by the venue)."""


class Iceberg:
    name: ClassVar[str] = "iceberg"
    Params: ClassVar[type[IcebergParams]] = IcebergParams
    summary: ClassVar[str] = (
        "display_qty at a time at limit_price (or the touch), the next child when one fills, within timeout_seconds"
    )

    def benchmark_params(self, budget_s: str, qty: Decimal) -> dict[str, str]:
        """A quarter of the quantity shown at a time, at the touch, with the market fallback after the budget."""
        return {"display_qty": str(qty / 4), "timeout_seconds": budget_s, "fallback": "market"}

    def budget_ns(self, params: IcebergParams) -> int:
        return ns(params.timeout_seconds)

    def check(self, params: IcebergParams, qty: Decimal, min_amount: Decimal | None, amount_step: Decimal | None) -> tuple[str, str] | None:
        if floor_to_step(params.display_qty, amount_step) != params.display_qty:
            return "params.display_qty", f"{params.display_qty} is finer than the market amount step {amount_step}"
        if min_amount is not None and params.display_qty < min_amount:
            return "params.display_qty", f"{params.display_qty} is below the market minimum amount {min_amount}"
        return None

    def decide(self, params: IcebergParams, view: View, event: Event) -> Decision:
        match event:
            case Arrived():
                return self._show(params, view, attempt=1)
            case Quoted(quote=quote):
                tick = view.tick_size or quote.tick_size
                price = bounded(to_tick(quote.price, tick, view.side), params.limit_price, view.side, tick)
                return Place(attempt=view.attempt, order_type="limit", price=price, deadline_ns=view.deadline_ns,
                             qty=self._child_qty(params, view))
            case AttemptExpired():
                return CancelWorking()  # (a child's deadline is the whole budget's)
            case AllFinal() | Woke():
                if view.now_ns >= view.deadline_ns:
                    return HandOff("iceberg budget over", fallback=params.fallback == "market")
                if view.attempt >= self._children_needed(params, view.qty) + SPARE_CHILDREN:
                    return HandOff(f"iceberg stopped after {view.attempt} children", fallback=params.fallback == "market")
                if isinstance(event, AllFinal) and view.last_filled == 0:
                    # The child ended with nothing filled (refused, or canceled by the venue): show the next
                    # after a pause, not at once — a venue refusing every child must not get a burst.
                    return WaitUntil(min(view.now_ns + CHILD_PAUSE_NS, view.deadline_ns))
                return self._show(params, view, attempt=view.attempt + 1)
        return HandOff("iceberg budget over", fallback=params.fallback == "market")

    def _show(self, params: IcebergParams, view: View, *, attempt: int) -> Decision:
        qty = self._child_qty(params, view)
        if params.limit_price is not None:
            price = to_tick(params.limit_price, view.tick_size, view.side)
            return Place(attempt=attempt, order_type="limit", price=price, deadline_ns=view.deadline_ns, qty=qty, leg=attempt)
        return AskPrice(attempt=attempt, mode="touch", leg=attempt, qty=qty)

    @staticmethod
    def _child_qty(params: IcebergParams, view: View) -> Decimal:
        return min(params.display_qty, view.remaining)

    @staticmethod
    def _children_needed(params: IcebergParams, qty: Decimal) -> int:
        return int((qty / params.display_qty).to_integral_value(rounding=ROUND_CEILING))


STRATEGY = Iceberg()
