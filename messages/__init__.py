"""The execbus contract: every message, every subject, one codec. Imports nothing else from execbus."""

from messages.base import Message
from messages.codec import (
    BY_KIND,
    MESSAGE_TYPES,
    AnyMessage,
    InvalidMessage,
    decode,
    decode_as,
    encode,
    headers_for,
    json_schema,
)
from messages.controls import (
    CancelIntent,
    CancelIntentAccepted,
    CancelIntentRejected,
    Reservation,
    Reservations,
    RiskLimits,
    ScopeState,
    TradingStateChanged,
    TradingStates,
)
from messages.intents import (
    AttemptTimedOut,
    OrderKept,
    ExecutionCompleted,
    ExecutionParams,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    StrategyFinished,
    SubmitIntent,
)
from messages.ops import DeadLetter, IntentStatus, OrderStatus, StatusQuery
from messages.orders import (
    CancelOrder,
    CancelRejected,
    OrderCanceled,
    OrderFilled,
    LateFillRecorded,
    OrderFinalized,
    OrderOutcomeUnknown,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
)
from messages.pricing import PriceQuoted, PriceRequested, PriceUnavailable

__all__ = [
    "Message", "BY_KIND", "MESSAGE_TYPES", "AnyMessage", "InvalidMessage", "decode", "decode_as", "encode",
    "headers_for", "json_schema", "AttemptTimedOut", "OrderKept", "ExecutionCompleted", "ExecutionParams",
    "ExecutionTimedOut", "IntentAccepted", "IntentRejected", "StrategyFinished", "SubmitIntent",
    "DeadLetter", "IntentStatus", "OrderStatus", "StatusQuery", "CancelOrder", "CancelRejected",
    "OrderCanceled", "OrderFilled", "LateFillRecorded", "OrderFinalized", "OrderOutcomeUnknown", "OrderPlaced", "OrderRejected",
    "PlaceOrder", "PriceQuoted", "PriceRequested", "PriceUnavailable", "CancelIntent", "CancelIntentAccepted",
    "CancelIntentRejected", "Reservation", "Reservations", "RiskLimits", "ScopeState", "TradingStateChanged",
    "TradingStates",
]
