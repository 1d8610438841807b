"""One factory per execbus message: a valid, realistic instance of each, overridable field by field.

`make(PlaceOrder, attempt=2)` builds a `PlaceOrder` for the intent `INTENT_ID` on `paper` / `BTC/USDT`
with every other field at a plausible value. Factories return the *fields*; `make` merges the overrides
and calls the class, so `__post_init__` validation and the `msg_id` derivation run exactly as in
production. A message type without a factory here fails `test_factory_registry_covers_every_message_type`.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from messages import (
    MESSAGE_TYPES,
    CancelIntent,
    CancelIntentAccepted,
    CancelIntentRejected,
    TradingStateChanged,
    AttemptTimedOut,
    OrderKept,
    CancelOrder,
    CancelRejected,
    DeadLetter,
    ExecutionCompleted,
    AggressiveLimitParams,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    IntentStatus,
    LateFillRecorded,
    OrderCanceled,
    OrderFilled,
    OrderFinalized,
    OrderOutcomeUnknown,
    OrderPlaced,
    OrderRejected,
    OrderStatus,
    PlaceOrder,
    PriceQuoted,
    PriceRequested,
    PriceUnavailable,
    StatusQuery,
    StrategyFinished,
    SubmitIntent,
)

__all__ = [
    "INTENT_ID",
    "VENUE",
    "SYMBOL",
    "CLIENT_ORDER_ID",
    "ORDER_ID",
    "TRADE_ID",
    "TS",
    "OPS_TYPES",
    "ALL_TYPES",
    "make",
    "registered_types",
]

INTENT_ID = "intent-7f3a"
VENUE = "paper"
SYMBOL = "BTC/USDT"
CLIENT_ORDER_ID = f"{INTENT_ID}-1"
ORDER_ID = "paper-000123"
TRADE_ID = "paper-t-000981"
TS = 1_732_713_600_000_000_000
"""2024-11-27T13:20:00Z in nanoseconds: every factory's event time."""

OPS_TYPES: tuple[type[msgspec.Struct], ...] = (DeadLetter, StatusQuery, IntentStatus)
"""Messages outside the data-plane union (not `Message` subclasses): dead letters and status queries."""
ALL_TYPES: tuple[type[msgspec.Struct], ...] = (*MESSAGE_TYPES, *OPS_TYPES)

T = TypeVar("T", bound=msgspec.Struct)
Fields = dict[str, Any]

_FACTORIES: dict[type[msgspec.Struct], Callable[[], Fields]] = {}


def _factory(cls: type[msgspec.Struct]) -> Callable[[Callable[[], Fields]], Callable[[], Fields]]:
    def register(fn: Callable[[], Fields]) -> Callable[[], Fields]:
        _FACTORIES[cls] = fn
        return fn

    return register


def make(cls: type[T], **overrides: Any) -> T:
    """A valid `cls` with realistic values, `overrides` replacing any of them."""
    try:
        factory = _FACTORIES[cls]
    except KeyError:
        raise LookupError(f"no factory for {cls.__name__}: add one to tests/unit/factories.py") from None
    fields = factory()
    fields.update(overrides)
    return cls(**fields)


def registered_types() -> frozenset[type[msgspec.Struct]]:
    return frozenset(_FACTORIES)


def _routing() -> Fields:
    """What every data-plane message carries."""
    return {"intent_id": INTENT_ID, "venue": VENUE, "symbol": SYMBOL, "ts_event": TS, "ts_init": TS + 1_000}


def _order() -> Fields:
    return {**_routing(), "client_order_id": CLIENT_ORDER_ID}


# -- intents ---------------------------------------------------------------------------------------------


@_factory(SubmitIntent)
def _submit_intent() -> Fields:
    return {
        **_routing(),
        "side": "buy",
        "qty": Decimal("0.5"),
        "strategy": "aggressive_limit",
        "params": AggressiveLimitParams(
            max_retries=4,
            total_timeout_seconds=Decimal("12"),
            attempt_timeout_seconds=Decimal("3"),
            trigger_fill_price=Decimal("61900.00"),
            trigger_slippage_bps=Decimal("5"),
        ),
    }


@_factory(IntentAccepted)
def _intent_accepted() -> Fields:
    return {
        **_routing(),
        "side": "buy",
        "qty": Decimal("0.5"),
        "strategy": "aggressive_limit",
        "deadline_ns": TS + 12_000_000_000,
    }


@_factory(IntentRejected)
def _intent_rejected() -> Fields:
    return {**_routing(), "field": "qty", "reason": "`qty` must be > 0, got 0"}


@_factory(AttemptTimedOut)
def _attempt_timed_out() -> Fields:
    return {**_routing(), "attempt": 1, "client_order_id": CLIENT_ORDER_ID}


@_factory(OrderKept)
def _order_kept() -> Fields:
    return {**_routing(), "attempt": 2, "client_order_id": CLIENT_ORDER_ID, "price": Decimal("60000.5"),
            "deadline_ns": 1_700_000_000_000_000_000}


@_factory(ExecutionTimedOut)
def _execution_timed_out() -> Fields:
    return {
        **_routing(),
        "side": "buy",
        "remaining_qty": Decimal("0.2"),
        "filled_qty": Decimal("0.3"),
        "fallback": "market",
    }


@_factory(StrategyFinished)
def _strategy_finished() -> Fields:
    return {
        **_routing(),
        "client_order_ids": (CLIENT_ORDER_ID, f"{INTENT_ID}-2"),
        "reason": "filled",
        "attempts": 2,
        "fallback_used": False,
        "arrival_bid": Decimal("61837.62"),
        "arrival_ask": Decimal("61837.63"),
        "side": "buy",
        "qty": Decimal("0.5"),
        "strategy": "aggressive_limit",
        "accepted_ns": TS - 2_000_000_000,
    }


@_factory(ExecutionCompleted)
def _execution_completed() -> Fields:
    return {
        **_routing(),
        "status": "filled",
        "side": "buy",
        "strategy": "aggressive_limit",
        "qty": Decimal("0.5"),
        "filled_qty": Decimal("0.5"),
        "avg_price": Decimal("61837.63"),
        "notional": Decimal("30918.815"),
        "fees": Decimal("30.918815"),
        "fee_currency": "USDT",
        "arrival_mid": Decimal("61837.625"),
        "slippage_bps": Decimal("0.0008"),
        "attempts": 1,
        "fallback_used": False,
        "fills": 1,
        "orders": (CLIENT_ORDER_ID,),
        "reason": "filled",
        "started_ns": TS - 412_500_000,
        "completed_ns": TS,
        "duration_ms": Decimal("412.5"),
    }


# -- pricing ---------------------------------------------------------------------------------------------


@_factory(PriceRequested)
def _price_requested() -> Fields:
    return {**_routing(), "attempt": 1, "side": "buy", "mode": "touch", "qty": Decimal("0.5")}


@_factory(PriceQuoted)
def _price_quoted() -> Fields:
    return {
        **_routing(),
        "attempt": 1,
        "side": "buy",
        "mode": "touch",
        "price": Decimal("61837.62"),
        "bid": Decimal("61837.62"),
        "ask": Decimal("61837.63"),
        "tick_size": Decimal("0.01"),
        "sweep_avg_price": Decimal("61837.71"),
        "book_ts_ns": TS - 20_000_000,
    }


@_factory(PriceUnavailable)
def _price_unavailable() -> Fields:
    return {**_routing(), "attempt": 1, "reason": "book is stale", "book_age_ms": 2_500}


# -- orders ----------------------------------------------------------------------------------------------


@_factory(PlaceOrder)
def _place_order() -> Fields:
    return {
        **_order(),
        "attempt": 1,
        "side": "buy",
        "order_type": "limit",
        "qty": Decimal("0.5"),
        "price": Decimal("61837.62"),
        "time_in_force": "GTC",
        "post_only": True,
    }


@_factory(OrderPlaced)
def _order_placed() -> Fields:
    return {
        **_order(),
        "order_id": ORDER_ID,
        "attempt": 1,
        "side": "buy",
        "order_type": "limit",
        "qty": Decimal("0.5"),
        "price": Decimal("61837.62"),
    }


@_factory(OrderRejected)
def _order_rejected() -> Fields:
    return {
        **_order(),
        "attempt": 1,
        "reason": "Account has insufficient balance for requested action.",
        "error": "InsufficientFunds",
    }


@_factory(OrderOutcomeUnknown)
def _order_outcome_unknown() -> Fields:
    return {**_order(), "attempt": 1, "error": "RequestTimeout"}


@_factory(CancelOrder)
def _cancel_order() -> Fields:
    return {**_order(), "order_id": ORDER_ID, "reason": "attempt timed out"}


@_factory(OrderCanceled)
def _order_canceled() -> Fields:
    return {**_order(), "order_id": ORDER_ID}


@_factory(CancelRejected)
def _cancel_rejected() -> Fields:
    return {**_order(), "order_id": ORDER_ID, "reason": "Unknown order sent.", "error": "OrderNotFound"}


@_factory(OrderFilled)
def _order_filled() -> Fields:
    return {
        **_order(),
        "order_id": ORDER_ID,
        "trade_id": TRADE_ID,
        "attempt": 1,
        "side": "buy",
        "qty": Decimal("0.5"),
        "price": Decimal("61837.62"),
        "fee": Decimal("0.0005"),
        "fee_currency": "BTC",
        "liquidity": "maker",
    }


@_factory(OrderFinalized)
def _order_finalized() -> Fields:
    return {
        **_order(),
        "order_id": ORDER_ID,
        "attempt": 1,
        "status": "filled",
        "filled_qty": Decimal("0.5"),
        "avg_price": Decimal("61837.62"),
    }


@_factory(LateFillRecorded)
def _late_fill_recorded() -> Fields:
    return {
        **_order(),
        "trade_id": TRADE_ID,
        "qty": Decimal("0.1"),
        "price": Decimal("61837.62"),
        "filled_qty_now": Decimal("0.5"),
    }


# -- ops -------------------------------------------------------------------------------------------------


@_factory(DeadLetter)
def _dead_letter() -> Fields:
    return {
        "actor": "supervisor",
        "subject": f"exec.submit_intent.paper.BTC-USDT.{INTENT_ID}",
        "reason": "qty: `qty` must be > 0, got 0",
        "raw": '{"type":"SubmitIntent","qty":"0"}',
        "ts_event": TS,
    }


@_factory(StatusQuery)
def _status_query() -> Fields:
    return {"intent_id": INTENT_ID}


@_factory(IntentStatus)
def _intent_status() -> Fields:
    return {
        "intent_id": INTENT_ID,
        "known": True,
        "state": "working",
        "qty": Decimal("0.5"),
        "filled_qty": Decimal("0.3"),
        "orders": (
            OrderStatus(
                client_order_id=CLIENT_ORDER_ID,
                order_id=ORDER_ID,
                attempt=1,
                state="open",
                filled_qty=Decimal("0.3"),
                fills=2,
            ),
        ),
    }


# -- operator control ------------------------------------------------------------------------------------


@_factory(CancelIntent)
def _cancel_intent() -> Fields:
    return {**_routing(), "request": "3f9c2a7d5e1b4c08", "reason": "signal went stale", "requested_by": "ops@desk-1"}


@_factory(CancelIntentAccepted)
def _cancel_intent_accepted() -> Fields:
    return {**_routing(), "request": "3f9c2a7d5e1b4c08", "phase": "working"}


@_factory(CancelIntentRejected)
def _cancel_intent_rejected() -> Fields:
    return {
        **_routing(), "request": "3f9c2a7d5e1b4c08", "status": "finished",
        "reason": "intent 'intent-7f3a' finished already (filled)",
    }


@_factory(TradingStateChanged)
def _trading_state_changed() -> Fields:
    return {
        "intent_id": "trading_state", "venue": VENUE, "symbol": "ANY/ANY", "ts_event": TS, "ts_init": TS + 1_000,
        "scope_venue": VENUE, "scope_symbol": "", "state": "HALTED", "previous": "ACTIVE",
        "reason": "venue incident", "by": "ops@desk-1", "revision": 42,
    }

