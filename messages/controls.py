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

from messages.base import Message, require_non_negative, require_positive

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
    "ReservedTotals",
    "ReservedWindow",
    "RESERVATION_WINDOW_NS",
    "reservation_window",
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
"""The venue's reservation totals no longer fit one message of the NATS server (`max_payload`). They grow with
the windows of 10 s that in-flight intents' expiries span, not with the number of intents: only budgets
spread over days could reach it."""

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

    def __post_init__(self) -> None:
        require_non_negative("amount", self.amount)
        require_non_negative("notional", self.notional)


RESERVATION_WINDOW_NS = 10_000_000_000
"""The venue's totals group reservations by the 10 s window their expiry falls in: a reservation that is never
released counts until the end of its window (at most 10 s past its expiry), and then stops counting."""


def reservation_window(expires_ns: int) -> int:
    """The end of the window `expires_ns` falls in."""
    return -(-expires_ns // RESERVATION_WINDOW_NS) * RESERVATION_WINDOW_NS


class ReservedWindow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the intents whose reservations expire in one window hold together."""

    until_ns: int
    count: int = 0
    amounts: dict[str, Decimal] = {}
    """By currency."""
    notional: dict[str, Decimal] = {}
    """By symbol, in its quote currency."""

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"`count` must be >= 0, got {self.count}")
        for name, values in (("amounts", self.amounts), ("notional", self.notional)):
            for value in values.values():
                require_non_negative(name, value)


class ReservedTotals(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A venue's reservations summed (`reserve.<venue>.total` in the controls bucket), changed by
    compare-and-set so two intents on different supervisor replicas cannot both take the same balance. Each
    intent's own reservation is a key of its own (`reserve.<venue>.intent.<intent_id>`, a `Reservation`): the
    totals stay a few hundred bytes however many intents are in flight, and nobody reads every intent's."""

    windows: tuple[ReservedWindow, ...] = ()

    def live(self, now_ns: int) -> tuple[ReservedWindow, ...]:
        return tuple(w for w in self.windows if w.until_ns > now_ns)

    def reserved(self, currency: str, now_ns: int) -> Decimal:
        return sum((w.amounts.get(currency, Decimal(0)) for w in self.live(now_ns)), Decimal(0))

    def open_notional(self, symbol: str, now_ns: int) -> Decimal:
        return sum((w.notional.get(symbol, Decimal(0)) for w in self.live(now_ns)), Decimal(0))

    def in_flight(self, now_ns: int) -> int:
        return sum(w.count for w in self.live(now_ns))

    def adding(self, reservation: Reservation, now_ns: int) -> ReservedTotals:
        until = reservation_window(reservation.expires_ns)
        windows = list(self.live(now_ns))
        at = next((i for i, w in enumerate(windows) if w.until_ns == until), None)
        window = windows[at] if at is not None else ReservedWindow(until_ns=until)
        changed = _moved(window, reservation, +1)
        if at is None:
            windows.append(changed)
            windows.sort(key=lambda w: w.until_ns)
        else:
            windows[at] = changed
        return ReservedTotals(windows=tuple(windows))

    def removing(self, reservation: Reservation, now_ns: int) -> ReservedTotals:
        """Without `reservation` (nothing taken if its window has ended: it stopped counting then). Never
        below zero: a total that a crash left counting an intent twice only ever holds back too much."""
        until = reservation_window(reservation.expires_ns)
        windows = []
        for window in self.live(now_ns):
            if window.until_ns == until:
                window = _moved(window, reservation, -1)
                if window.count == 0 and not window.amounts and not window.notional:
                    continue
            windows.append(window)
        return ReservedTotals(windows=tuple(windows))


def _moved(window: ReservedWindow, reservation: Reservation, sign: int) -> ReservedWindow:
    def shifted(totals: dict[str, Decimal], key: str, by: Decimal) -> dict[str, Decimal]:
        out = dict(totals)
        value = max(out.get(key, Decimal(0)) + sign * by, Decimal(0))
        if value:
            out[key] = value
        else:
            out.pop(key, None)
        return out

    return ReservedWindow(
        until_ns=window.until_ns,
        count=max(window.count + sign, 0),
        amounts=shifted(window.amounts, reservation.currency, reservation.amount),
        notional=shifted(window.notional, reservation.symbol, reservation.notional),
    )
