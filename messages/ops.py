"""Operational messages: dead letters and status queries."""

from __future__ import annotations

from decimal import Decimal

import msgspec

__all__ = ["DeadLetter", "StatusQuery", "IntentStatus", "OrderStatus"]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A message an actor could not take, kept with the reason and the original bytes."""

    actor: str
    subject: str
    reason: str
    raw: str
    """The original payload, decoded as UTF-8 with invalid bytes replaced."""
    ts_event: int = 0


class StatusQuery(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Request/reply to the tracker: where is this intent?"""

    intent_id: str


class OrderStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One order as the tracker knows it: from its first fill (`placed`), or once it ended (`final`,
    `rejected`). An order still working with nothing filled is not listed yet."""

    client_order_id: str
    order_id: str | None
    attempt: int
    state: str
    filled_qty: Decimal
    fills: int


class IntentStatus(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The tracker's answer to a `StatusQuery`."""

    intent_id: str
    known: bool
    state: str = "unknown"
    """unknown, working, finishing (the strategy is over; orders or fills still to come), completed, rejected."""
    qty: Decimal | None = None
    """The intent's quantity, known once its strategy has finished (`StrategyFinished` tells the tracker):
    None while it works."""
    filled_qty: Decimal = Decimal(0)
    orders: tuple[OrderStatus, ...] = ()
    completed: bool = False
