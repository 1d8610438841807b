"""Operator control: cancelling an intent, the trading state (kill switch) and the risk limits.

`CancelIntent` is a command like any other (any NATS client may send it). The trading states and the risk
limits are documents in the `execbus_controls` KV bucket, JSON like every message, so a tool that is not
execbus can read them; every change of a trading state is also announced in the log
(`TradingStateChanged`). A denial, wherever it is made, names its cause with one of the `DENY_*` codes
and gives the numbers behind it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from messages.base import Message, require_positive

__all__ = [
    "TradingState",
    "RESTRICTIVENESS",
    "CONTROL_INTENT",
    "ANY_VENUE",
    "ANY_SYMBOL",
    "DENY_HALTED",
    "DENY_REDUCING",
    "DENY_MAX_NOTIONAL",
    "DENY_OPEN_NOTIONAL",
    "DENY_ORDER_RATE",
    "DENY_BALANCE",
    "DENY_NO_PRICE",
    "CancelIntent",
    "CancelIntentAccepted",
    "CancelIntentRejected",
    "ScopeState",
    "TradingStates",
    "TradingStateChanged",
    "RiskLimits",
    "Reservation",
    "Reservations",
]

TradingState = Literal["ACTIVE", "REDUCING", "HALTED"]
RESTRICTIVENESS: dict[str, int] = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}

CONTROL_INTENT = "trading_state"
"""The intent id `TradingStateChanged` is filed under in the log (it belongs to no execution)."""
ANY_VENUE = "_any"
ANY_SYMBOL = "ANY/ANY"
"""The routing fields of a `TradingStateChanged` whose scope is wider than one venue or one symbol."""

DENY_HALTED = "trading_state.halted"
DENY_REDUCING = "trading_state.reducing"
DENY_MAX_NOTIONAL = "risk.max_notional"
DENY_OPEN_NOTIONAL = "risk.open_notional"
DENY_ORDER_RATE = "risk.order_rate"
DENY_BALANCE = "risk.balance"
DENY_NO_PRICE = "risk.no_reference_price"
"""The limits need a reference price and the book has none (empty on that side)."""
DENY_IN_FLIGHT = "risk.in_flight"
"""The venue's reservations no longer fit one message of the NATS server (`max_payload`): too many intents
in flight on one venue for the reservations document (about 7,000 at the default 1 MB)."""

RequestId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")]


class CancelIntent(Message, frozen=True, kw_only=True):
    """Stop the intent: no new attempt, no fallback, every working order canceled and confirmed terminal.
    The report then says `canceled` with what was filled (or `filled`, if the fills won the race)."""

    request: RequestId = ""
    """The sender's id for this request, echoed in the answer. Two cancels with the same request id are one
    (the log keeps one); leave it empty only if one cancel per intent is all you will ever send."""
    reason: str = ""
    requested_by: str = ""

    def dedup_suffix(self) -> str:
        return self.request or "0"


class CancelIntentAccepted(Message, frozen=True, kw_only=True):
    """The supervisor stopped the strategy for this request; the report follows once every order is terminal."""

    request: str = ""
    phase: str
    """Where the strategy was when the cancel reached it (pricing, working, canceling, fallback, ...)."""
    already: bool = False
    """The intent was being canceled already (an earlier request): this one changed nothing."""

    def dedup_suffix(self) -> str:
        return self.request or "0"


class CancelIntentRejected(Message, frozen=True, kw_only=True):
    """The cancel could not apply: the intent is unknown to execbus, finished already, or the cancel is
    malformed."""

    request: str = ""
    reason: str
    status: Literal["unknown", "finished", "invalid"]
    """`invalid`: the cancel itself did not decode (it is dead-lettered; the reason says what is wrong)."""

    def dedup_suffix(self) -> str:
        return self.request or "0"


class ScopeState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The trading state of one scope: every venue (`venue` empty), one venue (`symbol` empty), or one
    venue and symbol. A scope that is not listed is ACTIVE."""

    venue: str = ""
    symbol: str = ""
    state: TradingState
    reason: str = ""
    changed_ns: int = 0
    by: str = ""
    cancel_working: bool = False
    """HALTED with this: intents accepted before `changed_ns` are canceled, not left to finish."""

    def __post_init__(self) -> None:
        if self.symbol and not self.venue:
            raise ValueError("a symbol scope needs its venue")

    @property
    def label(self) -> str:
        if not self.venue:
            return "all venues"
        return f"{self.venue} {self.symbol}" if self.symbol else self.venue

    def covers(self, venue: str, symbol: str) -> bool:
        return (not self.venue or self.venue == venue) and (not self.symbol or self.symbol == symbol)


class TradingStates(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every scope that is not ACTIVE (the `trading` key of the controls bucket)."""

    scopes: tuple[ScopeState, ...] = ()

    def effective(self, venue: str, symbol: str) -> ScopeState | None:
        """The most restrictive scope covering (venue, symbol); None: ACTIVE. A halt of every venue is not
        lifted by resuming one of them: the strictest word counts."""
        covering = [s for s in self.scopes if s.covers(venue, symbol)]
        if not covering:
            return None
        return max(covering, key=lambda s: (RESTRICTIVENESS[s.state], len(s.venue) + len(s.symbol)))

    def find(self, venue: str, symbol: str) -> ScopeState | None:
        """The scope exactly (venue, symbol), if listed."""
        return next((s for s in self.scopes if s.venue == venue and s.symbol == symbol), None)


class TradingStateChanged(Message, frozen=True, kw_only=True):
    """A scope's trading state changed (`execbus halt`, `resume`, or any client writing the controls bucket
    through `bus.controls`). Filed under intent `trading_state`; `venue`/`symbol` route it (`_any`,
    `ANY/ANY` for a wider scope) and `scope_venue`/`scope_symbol` say the scope ("" = every)."""

    scope_venue: str = ""
    scope_symbol: str = ""
    state: TradingState
    previous: TradingState
    reason: str = ""
    by: str = ""
    cancel_working: bool = False
    revision: int
    """The controls bucket's revision of the change: what makes each announcement its own message."""

    def dedup_suffix(self) -> str:
        return str(self.revision)


class RiskLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The risk gate's limits (the `risk` key of the controls bucket); change them with `execbus risk set`.
    Notional amounts are in the symbol's quote currency (USDT for BTC/USDT)."""

    max_intent_notional: Decimal = Decimal("100000")
    """One intent's quantity at the reference price (ask for a buy, bid for a sell) may not exceed this; the
    placer holds every order of it to the same bound."""
    max_open_notional: Decimal = Decimal("250000")
    """Per venue and symbol: the notional of every intent in flight there, plus the new one."""
    max_orders_per_second: int = 10
    """Per venue, shared by every placer replica: new orders sent in one wall-clock second. Binance's spot
    limit is 100 per 10 s; an order over the budget waits for the next second (within its deadline)."""
    balance_check: bool = True
    """Reserve what an intent may spend (buy: quote; sell: base) against the venue's free balance minus what
    the intents in flight reserved; an intent the rest does not cover is denied."""
    balance_buffer_pct: Decimal = Decimal("2")
    """A buy reserves qty x ask x (1 + this / 100): room for the price to move while it executes."""

    def __post_init__(self) -> None:
        require_positive("max_intent_notional", self.max_intent_notional)
        require_positive("max_open_notional", self.max_open_notional)
        if self.max_orders_per_second < 1:
            raise ValueError(f"`max_orders_per_second` must be >= 1, got {self.max_orders_per_second}")
        if not self.balance_buffer_pct.is_finite() or not Decimal(0) <= self.balance_buffer_pct <= Decimal(100):
            raise ValueError(f"`balance_buffer_pct` must be between 0 and 100, got {self.balance_buffer_pct}")


class Reservation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one in-flight intent holds of a venue's balance and open notional."""

    intent_id: str
    symbol: str
    currency: str
    """What it may spend: the quote currency for a buy, the base currency for a sell."""
    amount: Decimal
    notional: Decimal
    """In the symbol's quote currency (for `max_open_notional`)."""
    expires_ns: int
    """A reservation its intent never released (a supervisor that died at the wrong moment and an intent
    never finished) stops counting after this."""


class Reservations(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One venue's reservations (`reserve.<venue>` in the controls bucket), changed by compare-and-set so
    two intents on different supervisor replicas cannot both take the same balance."""

    entries: tuple[Reservation, ...] = ()

    def live(self, now_ns: int) -> tuple[Reservation, ...]:
        return tuple(r for r in self.entries if r.expires_ns > now_ns)

    def reserved(self, currency: str, now_ns: int, *, besides: str = "") -> Decimal:
        return sum((r.amount for r in self.live(now_ns) if r.currency == currency and r.intent_id != besides), Decimal(0))

    def open_notional(self, symbol: str, now_ns: int, *, besides: str = "") -> Decimal:
        return sum((r.notional for r in self.live(now_ns) if r.symbol == symbol and r.intent_id != besides), Decimal(0))

    def of(self, intent_id: str) -> Reservation | None:
        return next((r for r in self.entries if r.intent_id == intent_id), None)
