"""Orders at the venue: commands to the placer, and what the placer and reconciler report back.

The placer alone calls create/cancel; the reconciler alone declares an order terminal (`OrderFinalized`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from messages.base import (
    ClientOrderId,
    Message,
    OrderType,
    Side,
    TimeInForce,
    check_decimal,
    require_non_negative,
    require_positive,
)

__all__ = [
    "PlaceOrder",
    "OrderPlaced",
    "OrderRejected",
    "OrderOutcomeUnknown",
    "CancelOrder",
    "OrderCanceled",
    "CancelRejected",
    "OrderFilled",
    "OrderFinalized",
    "LateFillRecorded",
    "FinalOrderStatus",
]

FinalOrderStatus = Literal["filled", "canceled", "expired", "rejected"]


class _OrderMessage(Message, frozen=True, kw_only=True):
    client_order_id: ClientOrderId
    """Deterministic: `<intent_id>-<attempt>`, so a duplicated command can never place twice."""

    def dedup_suffix(self) -> str:
        return self.client_order_id


class PlaceOrder(_OrderMessage, frozen=True, kw_only=True):
    """Place one order. Only the placer acts on it."""

    attempt: int
    """1, 2, ... for strategy attempts; 0 for the fallback's market order."""
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None = None
    time_in_force: TimeInForce = "GTC"
    post_only: bool = False
    origin: str = "supervisor"
    """Which actor asked (supervisor or market_fallback): reports say who placed what."""
    deadline_ns: int = 0
    """When the attempt this order belongs to ends (0: none): an owner rebuilt from the log knows it."""
    ref_price: Decimal | None = None
    """The fresh, uncrossed touch the command was priced from (the ask for a buy, the bid for a sell). A
    market order carries it so the placer need not ask the book again; without it the placer asks."""
    ref_ts_ns: int = 0
    """When `ref_price` was read from the book."""
    leg: int = 0
    """The strategy's step this order belongs to (see `PriceRequested.leg`)."""

    epoch_in_id = True

    def dedup_suffix(self) -> str:
        # One owner sending it twice is one message; a new owner's copy is another, so the placer sees both
        # and can refuse the old owner's copy without refusing the new owner's order.
        return f"{self.client_order_id}.e{self.epoch}" if self.epoch else self.client_order_id

    def validate(self) -> None:
        require_positive("qty", self.qty)
        require_positive("price", self.price)
        require_positive("ref_price", self.ref_price)
        if self.order_type == "limit" and self.price is None:
            raise ValueError("`price` is required for a limit order")


class OrderPlaced(_OrderMessage, frozen=True, kw_only=True):
    """The venue accepted the order (or it was found there by client order id after an unknown outcome)."""

    order_id: str
    attempt: int
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None = None
    recovered: bool = False
    """True when found by client order id after a timeout, not from create's own answer."""


class OrderRejected(_OrderMessage, frozen=True, kw_only=True):
    """The venue refused the order; nothing rests there."""

    attempt: int
    reason: str
    error: str
    """The ccxt exception class, e.g. `InvalidOrder`, `InsufficientFunds`."""
    retryable: bool = False


class OrderOutcomeUnknown(_OrderMessage, frozen=True, kw_only=True):
    """Create timed out or failed on the network: the order may or may not exist. The placer keeps
    looking it up by client order id; this is a state, never a rejection."""

    attempt: int
    error: str


class CancelOrder(_OrderMessage, frozen=True, kw_only=True):
    """Cancel one order. Only the placer acts on it."""

    order_id: str | None = None
    reason: str = ""
    retry: int = 0
    """0 for the first cancel of an order; the canceling phase's deadline sends it again as 1, 2, ..."""

    def dedup_suffix(self) -> str:
        return self.client_order_id if not self.retry else f"{self.client_order_id}.{self.retry}"


class OrderCanceled(_OrderMessage, frozen=True, kw_only=True):
    """The venue accepted the cancel request. The order is not terminal until `OrderFinalized`."""

    order_id: str


class CancelRejected(_OrderMessage, frozen=True, kw_only=True):
    """The cancel did not go through (typically: the order had already filled). The reconciler still
    confirms the order's final state."""

    order_id: str | None
    reason: str
    error: str


class OrderFilled(_OrderMessage, frozen=True, kw_only=True):
    """One venue trade of one of our orders. Deduplicated by `trade_id`."""

    order_id: str
    trade_id: str
    attempt: int
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: Literal["maker", "taker"]
    late: bool = False
    """True when it arrived after the intent's report was published (the tracker announces it)."""

    def validate(self) -> None:
        require_positive("qty", self.qty)
        require_positive("price", self.price)
        check_decimal("fee", self.fee, minimum=None, strict=False)  # negative: a maker rebate

    def dedup_suffix(self) -> str:
        return f"{self.client_order_id}.{self.trade_id}"


class OrderFinalized(_OrderMessage, frozen=True, kw_only=True):
    """The reconciler confirms the order is terminal at the venue, with its final filled quantity.
    Every `OrderFilled` of this order was published before this message."""

    order_id: str | None
    attempt: int
    status: FinalOrderStatus
    filled_qty: Decimal
    avg_price: Decimal | None = None
    reason: str = ""

    def validate(self) -> None:
        require_non_negative("filled_qty", self.filled_qty)


class LateFillRecorded(_OrderMessage, frozen=True, kw_only=True):
    """A fill that reached the tracker after the intent's report: recorded and announced, never lost."""

    trade_id: str
    qty: Decimal
    price: Decimal
    filled_qty_now: Decimal
    """The intent's filled quantity including this fill."""

    def validate(self) -> None:
        require_positive("qty", self.qty)
        require_positive("price", self.price)

    def dedup_suffix(self) -> str:
        return f"{self.client_order_id}.{self.trade_id}"
