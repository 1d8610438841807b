"""The market-fallback actor: when an execution's budget runs out with quantity left, it executes the
remainder at market. It only subscribes to `ExecutionTimedOut` and places through the same placer, so the
supervisor needs to know nothing about how the fallback works."""

from __future__ import annotations

from typing import Any

from bus.actor import Actor, IntentContext
from messages import ExecutionTimedOut, PlaceOrder
from messages.base import Message, routing

__all__ = ["MarketFallback", "FALLBACK_ATTEMPT"]

FALLBACK_ATTEMPT = 0
"""Attempt number of the fallback order; its client order id is `<intent>-F`."""


class MarketFallback(Actor[None]):
    name = "market_fallback"
    consumes = (ExecutionTimedOut,)
    produces = (PlaceOrder,)

    def __init__(self) -> None:
        self.executed = 0
        self.refused = 0

    def status(self) -> dict[str, Any]:
        return {"executed": self.executed, "refused_late": self.refused}

    async def handle(self, msg: Message, ctx: IntentContext[None]) -> None:
        assert isinstance(msg, ExecutionTimedOut)
        if msg.fallback != "market":
            return
        now = ctx.clock.now_ns()
        if msg.act_by_ns and now > msg.act_by_ns:
            # The supervisor stopped waiting for us: an order now would be a ghost nobody accounts for.
            self.refused += 1
            ctx.log.warning(
                "fallback_too_late", remaining=str(msg.remaining_qty), late_ms=(now - msg.act_by_ns) // 1_000_000
            )
            return
        self.executed += 1
        ctx.log.info("fallback_market", remaining=str(msg.remaining_qty))
        await ctx.publish(
            PlaceOrder(
                **routing(msg),
                client_order_id=f"{msg.intent_id}-F",
                attempt=FALLBACK_ATTEMPT,
                side=msg.side,
                order_type="market",
                qty=msg.remaining_qty,
                origin="market_fallback",
            )
        )
