"""The intent lifecycle: what upstream asks for, whether it was taken, timers, and the final report."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from messages.base import (
    ClientOrderId,
    Message,
    Side,
    check_decimal,
    require_non_negative,
    require_positive,
)

__all__ = [
    "Strategy",
    "Fallback",
    "ExecutionParams",
    "SubmitIntent",
    "IntentAccepted",
    "IntentRejected",
    "AttemptTimedOut",
    "OrderKept",
    "ExecutionTimedOut",
    "StrategyFinished",
    "ExecutionCompleted",
    "ExecutionStatus",
]

Strategy = Literal["market", "simple_limit", "aggressive_limit"]
Fallback = Literal["market", "none"]
ExecutionStatus = Literal["filled", "partially_filled", "unfilled", "failed", "canceled"]
"""`canceled`: stopped by a `CancelIntent` (or a halt with `--cancel-working`) before it was filled; the
report's `filled_qty` says what did fill."""

Attempts = Annotated[int, msgspec.Meta(ge=1, le=100)]


class ExecutionParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Strategy parameters, with the names the original executors used. Unknown names are an error:
    a misspelt `max_retires` silently ignored would execute with the wrong budget."""

    timeout_seconds: Decimal = Decimal("30")
    """simple_limit: how long the one limit order may rest."""
    price_offset_pct: Decimal = Decimal("0")
    """simple_limit: price = touch improved (buy: lower, sell: higher) by this percent; negative crosses."""
    max_retries: Attempts = 3
    """aggressive_limit: how many limit attempts at most."""
    total_timeout_seconds: Decimal = Decimal("13")
    """aggressive_limit: the whole budget before the fallback takes the remainder."""
    attempt_timeout_seconds: Decimal | None = None
    """aggressive_limit: one attempt's budget; default total / max_retries."""
    trigger_fill_price: Decimal | None = None
    """Break-even bound: no limit attempt may price worse than this (plus `trigger_slippage_bps`)."""
    trigger_slippage_bps: Decimal = Decimal("0")
    """How far past `trigger_fill_price` an attempt may price, in basis points."""
    max_slippage_bps: Decimal | None = None
    """market: cap on slippage versus the arrival touch; past it the remainder rests as a limit at the cap."""
    fallback: Fallback = "market"
    """aggressive_limit: what takes the remainder when the total budget runs out."""

    def __post_init__(self) -> None:
        require_positive("timeout_seconds", self.timeout_seconds)
        check_decimal("price_offset_pct", self.price_offset_pct, minimum=Decimal(-50), strict=False)
        require_positive("total_timeout_seconds", self.total_timeout_seconds)
        require_positive("attempt_timeout_seconds", self.attempt_timeout_seconds)
        require_positive("trigger_fill_price", self.trigger_fill_price)
        require_non_negative("trigger_slippage_bps", self.trigger_slippage_bps)
        require_non_negative("max_slippage_bps", self.max_slippage_bps)


class SubmitIntent(Message, frozen=True, kw_only=True):
    """Upstream asks execbus to buy or sell `qty` of `symbol` on `venue` with a strategy."""

    side: Side
    qty: Decimal
    """Base-currency amount, > 0."""
    strategy: Strategy = "market"
    params: ExecutionParams = msgspec.field(default_factory=ExecutionParams)

    def validate(self) -> None:
        require_positive("qty", self.qty)


class IntentAccepted(Message, frozen=True, kw_only=True):
    """The supervisor took the intent: it is valid for the venue's market and not a duplicate."""

    side: Side
    qty: Decimal
    strategy: Strategy
    deadline_ns: int
    """Absolute time (ns since the epoch) by which the strategy must have finished placing."""


class IntentRejected(Message, frozen=True, kw_only=True):
    """The intent was not taken; nothing was or will be placed for this submission."""

    field: str
    """The offending field (`"intent_id"` for a duplicate, `""` when the message could not be parsed)."""
    reason: str
    duplicate: bool = False
    """True when the intent id was already taken: the first submission goes on unaffected."""
    code: str = ""
    """For a denial by the trading state or the risk gate, its type: `trading_state.halted`,
    `trading_state.reducing`, `risk.max_notional`, `risk.open_notional`, `risk.balance`, ... (`field` is then
    `trading_state` or `risk`, and `reason` gives the scope or the numbers)."""

    def dedup_suffix(self) -> str:
        return "dup" if self.duplicate else "0"


class AttemptTimedOut(Message, frozen=True, kw_only=True):
    """An attempt's deadline passed with its order still working. The supervisor prices the next attempt
    and cancels the order, unless that price is the order's own (then `OrderKept`)."""

    attempt: int
    client_order_id: ClientOrderId

    def dedup_suffix(self) -> str:
        return str(self.attempt)


class OrderKept(Message, frozen=True, kw_only=True):
    """Attempt `attempt` priced at exactly the working order's price, so it keeps that order (and its place
    in the queue) instead of canceling and placing it again. In the log so an owner rebuilt from it knows
    which order the attempt is working with, until when."""

    attempt: int
    client_order_id: ClientOrderId
    price: Decimal
    deadline_ns: int

    def dedup_suffix(self) -> str:
        return str(self.attempt)


class ExecutionTimedOut(Message, frozen=True, kw_only=True):
    """The total budget ran out with quantity left; every earlier order is confirmed terminal."""

    side: Side
    remaining_qty: Decimal
    filled_qty: Decimal
    fallback: Fallback
    act_by_ns: int = 0
    """The supervisor waits for the fallback until then; a fallback that gets this later must not act (its
    order would be a ghost nobody waits for). 0: no limit (messages from before the field existed)."""
    reason: str = ""
    """Why the strategy stopped before the fallback (budget exhausted, attempts used up, ...)."""

    def validate(self) -> None:
        require_positive("remaining_qty", self.remaining_qty)
        require_non_negative("filled_qty", self.filled_qty)


class StrategyFinished(Message, frozen=True, kw_only=True):
    """The supervisor will place nothing more for this intent; `client_order_ids` are all its orders."""

    client_order_ids: tuple[ClientOrderId, ...]
    reason: str
    attempts: int
    fallback_used: bool
    arrival_bid: Decimal | None = None
    arrival_ask: Decimal | None = None
    side: Side | None = None
    qty: Decimal | None = None
    strategy: str = ""
    """The intent itself, so the report never depends on having seen `IntentAccepted` first."""
    canceled: bool = False
    """Stopped by a `CancelIntent` (or a halt that cancels working intents)."""


class ExecutionCompleted(Message, frozen=True, kw_only=True):
    """The final report: every order of the intent is terminal and every fill is counted."""

    status: ExecutionStatus
    side: Side
    strategy: str
    qty: Decimal
    filled_qty: Decimal
    avg_price: Decimal | None
    """Volume-weighted over all fills; None when nothing filled."""
    notional: Decimal
    """Sum of fill qty x price, in the quote currency."""
    fees: Decimal
    """Sum of fees converted to the quote currency (fees charged in base are valued at the fill price)."""
    fee_currency: str
    other_fees: dict[str, Decimal] = {}
    """Fees charged in a currency that is neither base nor quote (e.g. BNB), summed per currency and not
    converted: `fees` counts only base and quote fees, and no fee is ever dropped."""
    arrival_mid: Decimal | None
    slippage_bps: Decimal | None
    """Signed cost versus arrival mid: positive means worse than arrival (paid more / received less)."""
    attempts: int
    fallback_used: bool
    fills: int
    orders: tuple[ClientOrderId, ...]
    reason: str
    started_ns: int
    completed_ns: int
    duration_ms: Decimal
