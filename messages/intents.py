"""The intent lifecycle: what upstream asks for, whether it was taken, timers, and the final report."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from messages.strategies import PARAMS_BY_STRATEGY, AnyParams, Fallback, StrategyName, strategy_of
from messages.base import (
    ClientOrderId,
    Message,
    Side,
    require_non_negative,
    require_positive,
)

__all__ = [
    "Strategy",
    "Fallback",
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

Strategy = StrategyName
ExecutionStatus = Literal["filled", "partially_filled", "unfilled", "failed", "canceled"]
"""`canceled`: stopped by a `CancelIntent` (or a halt with `--cancel-working`) before it was filled; the
report's `filled_qty` says what did fill."""


class SubmitIntent(Message, frozen=True, kw_only=True):
    """Upstream asks execbus to buy or sell `qty` of `symbol` on `venue` with a strategy."""

    side: Side
    qty: Decimal
    """Base-currency amount, > 0."""
    strategy: Strategy | None = None
    """The strategy's name; may be left out when `params` names it (`params.strategy`). Default market."""
    params: AnyParams | None = None
    """The strategy's parameters (`messages/strategies.py`); default: the strategy's defaults."""

    def validate(self) -> None:
        require_positive("qty", self.qty)
        params = self.params
        if isinstance(params, dict):  # (a Python caller's plain values; the decoder never gives a dict)
            kind = PARAMS_BY_STRATEGY.get(self.strategy or str(params.get("strategy") or "market"))
            if kind is None:
                raise ValueError(f"`strategy` {self.strategy!r} is not one of {', '.join(PARAMS_BY_STRATEGY)}")
            try:
                params = msgspec.convert({k: v for k, v in params.items() if k != "strategy"}, kind)
            except msgspec.ValidationError as exc:
                raise ValueError(f"`params` {exc}") from None
            msgspec.structs.force_setattr(self, "params", params)
        if params is None:
            kind = PARAMS_BY_STRATEGY.get(self.strategy or "market")
            if kind is None:  # (the decoder checks the name; a Python caller may not)
                raise ValueError(f"`strategy` {self.strategy!r} is not one of {', '.join(PARAMS_BY_STRATEGY)}")
            try:
                params = kind()
            except TypeError as exc:  # a required parameter (iceberg's display_qty)
                raise ValueError(f"`params` {self.strategy} needs parameters: {exc}") from None
            msgspec.structs.force_setattr(self, "params", params)
        named = strategy_of(params)
        if self.strategy is None:
            msgspec.structs.force_setattr(self, "strategy", named)
        elif self.strategy != named:
            raise ValueError(f"`params` are {named}'s but `strategy` is {self.strategy!r}")


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
    accepted_ns: int = 0
    """When the intent was accepted: its `IntentAccepted`'s `ts_event`, the report's `started_ns`. With the
    fields above, all the report needs of the intent, so the tracker is not delivered `IntentAccepted`. 0 in
    messages from before the field existed."""


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
