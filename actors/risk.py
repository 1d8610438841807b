"""The risk gate's rules: pure functions of the limits, the trading states and what the venue says.

Not an actor: the supervisor applies them at intake (`intake_denial`, then `reservation_for` under the
reservations' compare-and-set) and the placer again to every order (`order_denial`), so an order that
slipped past a supervisor that was behind is still stopped before the venue. Every denial names its cause
(`messages.controls.DENY_*`) and the numbers behind it. A value at a limit passes; only beyond it is denied.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import msgspec

from messages.controls import (
    DENY_BALANCE,
    DENY_HALTED,
    DENY_MAX_NOTIONAL,
    DENY_OPEN_NOTIONAL,
    DENY_REDUCING,
    Reservation,
    ReservedTotals,
    RiskLimits,
    TradingStates,
)

__all__ = [
    "Denial",
    "trading_denial",
    "intake_denial",
    "reservation_for",
    "reservation_denial",
    "order_denial",
    "base_and_quote",
]


class Denial(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    """`trading_state.halted`, `risk.max_notional`, ... (`messages.controls.DENY_*`)."""
    reason: str
    """For people: the scope or the numbers that caused it."""


def base_and_quote(symbol: str) -> tuple[str, str]:
    """`BTC/USDT` -> (BTC, USDT); `BTC/USDT:USDT` -> (BTC, USDT)."""
    base, _, rest = symbol.partition("/")
    return base, rest.split(":", 1)[0]


def trading_denial(
    states: TradingStates, venue: str, symbol: str, side: str, qty: Decimal, position: Decimal | None
) -> Denial | None:
    """HALTED denies everything; REDUCING only what does not reduce the position in `symbol`: a sell of at
    most the base currency held (`position`; None: unknown, so nothing counts as reducing). Spot has no
    short position, so a buy never reduces."""
    scope = states.effective(venue, symbol)
    if scope is None or scope.state == "ACTIVE":
        return None
    because = f": {scope.reason}" if scope.reason else ""
    if scope.state == "HALTED":
        return Denial(code=DENY_HALTED, reason=f"trading is halted for {scope.label}{because}")
    if side == "buy":
        return Denial(code=DENY_REDUCING, reason=f"{scope.label} only reduces positions{because}: a buy adds to one")
    if position is None:
        return Denial(code=DENY_REDUCING, reason=f"{scope.label} only reduces positions{because}: position unknown")
    if qty > position:
        return Denial(
            code=DENY_REDUCING,
            reason=(
                f"{scope.label} only reduces positions{because}: selling {_plain(qty)} exceeds the "
                f"{_plain(position)} held"
            ),
        )
    return None


def intake_denial(
    limits: RiskLimits,
    *,
    symbol: str,
    qty: Decimal,
    ref_price: Decimal,
    reservations: ReservedTotals,
    now_ns: int,
) -> Denial | None:
    """One intent's notional, and the notional in flight on its venue and symbol with it."""
    notional = qty * ref_price
    too_big = _notional_denial(limits, qty, ref_price, "notional")
    if too_big is not None:
        return too_big
    in_flight = reservations.open_notional(symbol, now_ns)
    if in_flight + notional > limits.max_open_notional:
        return Denial(
            code=DENY_OPEN_NOTIONAL,
            reason=(
                f"{symbol}: {_plain(in_flight)} in flight + {_plain(notional)} exceeds max_open_notional "
                f"{_plain(limits.max_open_notional)}"
            ),
        )
    return None


def reservation_for(
    limits: RiskLimits, *, intent_id: str, symbol: str, side: str, qty: Decimal, ref_price: Decimal, expires_ns: int
) -> Reservation:
    """What the intent may spend: a buy its notional plus the buffer, in quote; a sell its quantity, in base."""
    base, quote = base_and_quote(symbol)
    notional = qty * ref_price
    if side == "buy":
        amount = notional * (1 + limits.balance_buffer_pct / 100)
        currency = quote
    else:
        amount, currency = qty, base
    return Reservation(
        intent_id=intent_id, symbol=symbol, currency=currency, amount=_up(amount), notional=_up(notional),
        expires_ns=expires_ns,
    )


_RESERVATION_STEP = Decimal("1e-12")


def _up(value: Decimal) -> Decimal:
    """Rounded up to 12 places: a sum of thousands of reservations then stays exact within Decimal's 28 digits
    (so taking one off leaves exactly the others), and holds back a trillionth more, never less."""
    return value.quantize(_RESERVATION_STEP, rounding=ROUND_CEILING).normalize() if value else value


def reservation_denial(
    limits: RiskLimits, reservation: Reservation, free: Decimal | None, reservations: ReservedTotals, now_ns: int
) -> Denial | None:
    """The balance held (`free`: the account's total of the currency; the venue's own "free" leaves out what
    our resting orders lock, which their reservations count already), less what the other intents in flight
    reserved, must cover the reservation. None: the venue said nothing of the currency, which is no balance."""
    if not limits.balance_check:
        return None
    held = free if free is not None else Decimal(0)
    others = reservations.reserved(reservation.currency, now_ns)
    available = held - others
    if reservation.amount > available:
        return Denial(
            code=DENY_BALANCE,
            reason=(
                f"needs {_plain(reservation.amount)} {reservation.currency}; held {_plain(held)} less "
                f"{_plain(others)} reserved by intents in flight leaves {_plain(available)}"
            ),
        )
    return None


def order_denial(
    limits: RiskLimits,
    states: TradingStates,
    *,
    venue: str,
    symbol: str,
    side: str,
    qty: Decimal,
    price: Decimal | None,
    reservation: Reservation | None,
    position: Decimal | None,
) -> Denial | None:
    """The placer's last word on one order: the trading state, the per-intent notional bound (at `price`: the
    limit price, or for a market order the touch it takes from), and the intent's reservation (`None`: it holds
    none, e.g. admitted before the gate or with `balance_check` off: not checked here)."""
    denial = trading_denial(states, venue, symbol, side, qty, position)
    if denial is not None:
        return denial
    if price is not None:
        too_big = _notional_denial(limits, qty, price, "order notional")
        if too_big is not None:
            return too_big
    if limits.balance_check and reservation is not None:
        if side == "sell":
            cost: Decimal | None = qty
        else:
            cost = qty * price if price is not None else None
        if cost is not None and cost > reservation.amount:
            return Denial(
                code=DENY_BALANCE,
                reason=(
                    f"order needs {_plain(cost)} {reservation.currency}, more than the {_plain(reservation.amount)} "
                    f"the intent reserved"
                ),
            )
    return None


def _notional_denial(limits: RiskLimits, qty: Decimal, price: Decimal, what: str) -> Denial | None:
    notional = qty * price
    if notional <= limits.max_intent_notional:
        return None
    return Denial(
        code=DENY_MAX_NOTIONAL,
        reason=(
            f"{what} {_plain(notional)} ({_plain(qty)} x {_plain(price)}) exceeds max_intent_notional "
            f"{_plain(limits.max_intent_notional)}"
        ),
    )


def _plain(value: Decimal) -> str:
    """Without an exponent, and without trailing zeros past the point."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
