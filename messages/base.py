"""The base of every execbus message and the field types they share.

Every message is a frozen, tagged `msgspec.Struct`: on the wire it is a JSON object whose `"type"` names the
class, so any NATS client can read it. Money and quantities are `Decimal` and travel as strings.

Each message carries the correlation key (`intent_id`) plus the routing fields (`venue`, `symbol`) that its
subject is built from, and a `msg_id` that is *deterministic* for state-changing messages: it is derived
from what the message means (for example "intent I, place order I-1"), so a handler that runs twice
publishes the same id twice and JetStream keeps one copy.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

import msgspec

__all__ = [
    "Message",
    "IntentId",
    "VenueId",
    "Symbol",
    "Side",
    "OrderType",
    "TimeInForce",
    "ClientOrderId",
    "require_positive",
    "require_non_negative",
    "check_decimal",
    "routing",
]

IntentId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Correlation key of one execution: 1-64 of A-Z a-z 0-9 _ - (it is a NATS subject token).",
    ),
]
VenueId = Annotated[
    str,
    msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$", description="ccxt exchange id, e.g. 'binance', or 'paper'."),
]
Symbol = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._-]{1,32}/[A-Za-z0-9._-]{1,32}(:[A-Za-z0-9._-]{1,32})?$",
        description="ccxt unified symbol, e.g. 'BTC/USDT'.",
    ),
]
ClientOrderId = Annotated[
    str,
    msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,80}$", description="Deterministic client order id."),
]
Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]
TimeInForce = Literal["GTC", "IOC", "FOK", "PO"]

_FIELD_NAME = re.compile(r"^[a-z_]+$")


def check_decimal(name: str, value: Decimal | None, *, minimum: Decimal | None, strict: bool) -> None:
    """Raise `ValueError` naming the field unless `value` is finite and above (or at) `minimum`.

    msgspec's `Meta(gt=...)` does not apply to `Decimal`, so the checks live here and run from
    `__post_init__`; msgspec turns the `ValueError` into a `ValidationError` at decode time.
    """
    if value is None:
        return
    assert _FIELD_NAME.match(name), name
    if not value.is_finite():
        raise ValueError(f"`{name}` must be a finite number, got {value}")
    if minimum is not None:
        if strict and value <= minimum:
            raise ValueError(f"`{name}` must be > {minimum}, got {value}")
        if not strict and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}, got {value}")


def require_positive(name: str, value: Decimal | None) -> None:
    check_decimal(name, value, minimum=Decimal(0), strict=True)


def require_non_negative(name: str, value: Decimal | None) -> None:
    check_decimal(name, value, minimum=Decimal(0), strict=False)


class Message(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Fields every message has. Subclasses add their own and say how their `msg_id` is derived."""

    intent_id: IntentId
    """Correlation key: every message of one execution carries it."""
    venue: VenueId
    """Where the execution happens; part of the subject."""
    symbol: Symbol
    """What is traded; part of the subject (as a NATS-safe token)."""
    msg_id: str = ""
    """Deduplication id (also the `Nats-Msg-Id` header). Derived from the content when left empty."""
    ts_event: int = 0
    """When the thing happened, integer nanoseconds since the epoch, from the producer's clock."""
    ts_init: int = 0
    """When this message object was created, integer nanoseconds since the epoch."""
    epoch: int = 0
    """Lease epoch of the producer's partition when it sent this (0: not sent by a partition owner). It grows
    with every change of owner, so a command from an owner that has lost its lease can be refused. Not part
    of `msg_id`: the same command re-sent by the next owner is still the same message."""

    #: the part of the subject that names the kind of message, e.g. "order_filled"; set per class.
    kind: ClassVar[str] = ""
    #: True where the sender's epoch is part of the message's identity (`msg_id`): a command that the next
    #: owner sends again must reach its consumer beside the old owner's copy, not be deduplicated into it.
    epoch_in_id: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = _snake(cls.__name__)

    def __post_init__(self) -> None:
        self.validate()
        if not self.msg_id:
            msgspec.structs.force_setattr(self, "msg_id", f"{self.intent_id}.{self.kind}.{self.dedup_suffix()}")

    def validate(self) -> None:
        """Semantic checks beyond the types; raise `ValueError` naming the field."""

    def dedup_suffix(self) -> str:
        """What makes this message unique within its intent and kind. One per intent by default."""
        return "0"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def routing(msg: Message) -> dict[str, str]:
    """The routing fields of `msg`, to build the next message of the same execution:
    `PlaceOrder(**routing(intent), ...)`."""
    return {"intent_id": msg.intent_id, "venue": msg.venue, "symbol": msg.symbol}
