"""The risk gate's pure rules (actors/risk.py) and the limits' validation, without the bus.

Every limit is tried at, just under and just over it: a value at a limit passes, only beyond it is denied,
and a denial names its code and the numbers behind it, written without exponents."""

from __future__ import annotations

import re
from decimal import Decimal

import msgspec
import pytest

from actors.risk import (
    Denial,
    base_and_quote,
    intake_denial,
    order_denial,
    reservation_denial,
    reservation_for,
    trading_denial,
)
from messages import encode
from messages.controls import (
    DENY_BALANCE,
    DENY_HALTED,
    DENY_MAX_NOTIONAL,
    DENY_OPEN_NOTIONAL,
    DENY_REDUCING,
    RESERVATION_WINDOW_NS,
    Reservation,
    ReservedTotals,
    RiskLimits,
    ScopeState,
    TradingStates,
)

D = Decimal
NOW = 1_700_000_000_000_000_000
LATER = NOW + 60_000_000_000
SYMBOL = "BTC/USDT"
ACTIVE = TradingStates()
# One quantity and three reference prices putting the notional at, just under and just over 1000.
QTY = D("1")
AT, UNDER, OVER = D("1000"), D("999.99"), D("1000.01")


def limits(**overrides: object) -> RiskLimits:
    return msgspec.structs.replace(RiskLimits(), **overrides)


def reservation(intent_id: str, *, currency: str = "USDT", amount: str = "0", notional: str = "0",
                symbol: str = SYMBOL, expires_ns: int = LATER) -> Reservation:
    return Reservation(
        intent_id=intent_id, symbol=symbol, currency=currency, amount=D(amount), notional=D(notional),
        expires_ns=expires_ns,
    )


def totals(*reservations: Reservation) -> ReservedTotals:
    """A venue's totals with these reservations in them."""
    out = ReservedTotals()
    for r in reservations:
        out = out.adding(r, 0)
    return out


def intake(lim: RiskLimits, qty: Decimal, ref: Decimal, held: ReservedTotals = ReservedTotals(),
           symbol: str = SYMBOL) -> Denial | None:
    return intake_denial(lim, symbol=symbol, qty=qty, ref_price=ref, reservations=held, now_ns=NOW)


def assert_denied(denial: Denial | None, code: str, *numbers: str) -> Denial:
    assert denial is not None, f"expected a {code} denial"
    assert denial.code == code, denial
    for number in numbers:
        assert number in denial.reason, f"{number!r} not in {denial.reason!r}"
    assert not re.search(r"\dE[+-]?\d", denial.reason, re.IGNORECASE), f"exponent in {denial.reason!r}"
    return denial


# -- max_intent_notional ----------------------------------------------------------------------------------


def test_max_intent_notional_passes_at_and_under_the_limit_and_denies_over_it() -> None:
    lim = limits(max_intent_notional=D("1000"))
    assert intake(lim, QTY, AT) is None
    assert intake(lim, QTY, UNDER) is None
    denial = assert_denied(intake(lim, QTY, OVER), DENY_MAX_NOTIONAL, "1000.01", "1000")
    assert "max_intent_notional" in denial.reason


def test_max_intent_notional_is_quantity_times_reference_price() -> None:
    lim = limits(max_intent_notional=D("1000"))
    assert intake(lim, D("0.5"), D("2000")) is None
    assert intake(lim, D("0.49999"), D("2000")) is None
    assert_denied(intake(lim, D("0.50001"), D("2000")), DENY_MAX_NOTIONAL, "1000.02", "0.50001", "2000")


def test_a_limit_written_with_an_exponent_is_reported_without_one() -> None:
    lim = limits(max_intent_notional=D("1E+3"))
    assert intake(lim, QTY, AT) is None
    over = intake(lim, D("1E+1"), D("1E+2") + D("0.001"))
    denial = assert_denied(over, DENY_MAX_NOTIONAL, "1000.01", "10", "100.001")
    assert "1000" in denial.reason


# -- max_open_notional ------------------------------------------------------------------------------------


def open_limits() -> RiskLimits:
    return limits(max_intent_notional=D("100000"), max_open_notional=D("3000"))


def in_flight() -> ReservedTotals:
    """2000 of BTC/USDT in flight from two other intents, plus what does not count against BTC/USDT."""
    return totals(
        reservation("other-1", notional="1500"),
        reservation("other-2", notional="500"),
        reservation("eth", notional="99999", symbol="ETH/USDT"),
        reservation("stale", notional="99999", expires_ns=NOW),  # expired: at NOW no longer counts
    )


def test_max_open_notional_counts_other_intents_in_flight_at_under_and_over() -> None:
    lim, held = open_limits(), in_flight()
    assert intake(lim, QTY, AT, held) is None
    assert intake(lim, QTY, UNDER, held) is None
    denial = assert_denied(intake(lim, QTY, OVER, held), DENY_OPEN_NOTIONAL, "2000", "1000.01", "3000")
    assert SYMBOL in denial.reason and "max_open_notional" in denial.reason


def test_an_expired_reservation_no_longer_counts_and_a_live_one_does() -> None:
    lim = open_limits()
    expired = totals(reservation("gone", notional="2500", expires_ns=NOW - 1))
    assert intake(lim, D("3"), AT, expired) is None
    live = totals(reservation("gone", notional="2500", expires_ns=NOW + 1))
    assert_denied(intake(lim, D("3"), AT, live), DENY_OPEN_NOTIONAL, "2500", "3000")


def test_a_reservation_counts_to_the_end_of_its_window_of_expiry_and_no_longer() -> None:
    """Totals keep windows, not intents: one never released counts up to a window (10 s) past its expiry."""
    held = totals(reservation("late", notional="2500", expires_ns=NOW + 1))
    assert held.open_notional(SYMBOL, NOW + RESERVATION_WINDOW_NS - 1) == D("2500")
    assert held.open_notional(SYMBOL, NOW + RESERVATION_WINDOW_NS) == 0
    assert held.in_flight(NOW) == 1 and held.in_flight(NOW + RESERVATION_WINDOW_NS) == 0


def test_removing_a_reservation_takes_off_exactly_it_and_never_goes_below_zero() -> None:
    mine = reservation("me", amount="1000", notional="3000")
    other = reservation("other", amount="0.00000001", notional="1")
    held = totals(mine, other)
    without = held.removing(mine, NOW)
    assert without == totals(other)
    assert (without.reserved("USDT", NOW), without.open_notional(SYMBOL, NOW)) == (D("0.00000001"), D("1"))
    # Taken off twice (it never is: a release empties the intent's key first) it still does not go negative.
    assert without.removing(mine, NOW).reserved("USDT", NOW) == 0
    assert without.removing(other, NOW) == ReservedTotals()
    # From a window that has ended there is nothing to take: it stopped counting then.
    gone = reservation("gone", amount="5", expires_ns=NOW - 1)
    assert totals(gone).removing(gone, NOW) == ReservedTotals()
    # No exponent on the wire, however small the amounts.
    wire = encode(without)  # (what the store writes)
    assert b'"0.00000001"' in wire and not re.search(rb"\d[eE][+-]?\d", wire)


def test_open_notional_of_another_symbol_does_not_count() -> None:
    lim = open_limits()
    held = totals(reservation("eth", notional="3000", symbol="ETH/USDT"))
    assert intake(lim, D("3"), AT, held) is None


def test_the_per_intent_limit_is_checked_before_the_open_notional() -> None:
    lim = limits(max_intent_notional=D("1000"), max_open_notional=D("1000"))
    assert_denied(intake(lim, QTY, OVER, in_flight()), DENY_MAX_NOTIONAL)


# -- the balance ------------------------------------------------------------------------------------------


def test_a_buy_reserves_its_notional_plus_the_buffer_in_quote() -> None:
    res = reservation_for(limits(balance_buffer_pct=D("2")), intent_id="i", symbol=SYMBOL, side="buy",
                          qty=D("0.5"), ref_price=D("2000"), expires_ns=LATER)
    assert (res.currency, res.amount, res.notional) == ("USDT", D("1020"), D("1000"))
    assert (res.intent_id, res.symbol, res.expires_ns) == ("i", SYMBOL, LATER)


def test_a_sell_reserves_its_quantity_in_base() -> None:
    res = reservation_for(limits(), intent_id="i", symbol="BTC/USDT:USDT", side="sell",
                          qty=D("0.5"), ref_price=D("2000"), expires_ns=LATER)
    assert (res.currency, res.amount, res.notional) == ("BTC", D("0.5"), D("1000"))


def test_buffer_zero_reserves_exactly_the_notional() -> None:
    res = reservation_for(limits(balance_buffer_pct=D("0")), intent_id="i", symbol=SYMBOL, side="buy",
                          qty=QTY, ref_price=AT, expires_ns=LATER)
    assert res.amount == D("1000")


def buy(qty: Decimal, ref: Decimal, *, buffer: str = "2", intent_id: str = "me") -> Reservation:
    return reservation_for(limits(balance_buffer_pct=D(buffer)), intent_id=intent_id, symbol=SYMBOL, side="buy",
                           qty=qty, ref_price=ref, expires_ns=LATER)


def test_balance_for_a_buy_at_under_and_over_the_free_quote() -> None:
    lim = limits()
    free = D("1020")  # 1000 x 1.02
    assert reservation_denial(lim, buy(QTY, AT), free, ReservedTotals(), NOW) is None
    assert reservation_denial(lim, buy(QTY, UNDER), free, ReservedTotals(), NOW) is None
    assert_denied(reservation_denial(lim, buy(QTY, OVER), free, ReservedTotals(), NOW), DENY_BALANCE,
                  "1020.0102 USDT", "held 1020", "leaves 1020")


def test_balance_for_a_sell_at_under_and_over_the_free_base() -> None:
    lim = limits()

    def sell(qty: str) -> Reservation:
        return reservation_for(
            lim, intent_id="me", symbol=SYMBOL, side="sell", qty=D(qty), ref_price=AT, expires_ns=LATER
        )

    assert reservation_denial(lim, sell("0.5"), D("0.5"), ReservedTotals(), NOW) is None
    assert reservation_denial(lim, sell("0.49999999"), D("0.5"), ReservedTotals(), NOW) is None
    assert_denied(reservation_denial(lim, sell("0.50000001"), D("0.5"), ReservedTotals(), NOW), DENY_BALANCE,
                  "0.50000001 BTC", "held 0.5")


def test_other_intents_reservations_subtract_from_the_free_balance() -> None:
    lim = limits()
    others = totals(
        reservation("a", amount="600"),
        reservation("b", amount="400"),
        reservation("btc", currency="BTC", amount="50"),  # another currency: does not count
        reservation("old", amount="5000", expires_ns=NOW),  # expired: does not count
    )
    free = D("2020")  # 1000 reserved by others, 1020 left for 1000 x 1.02
    assert reservation_denial(lim, buy(QTY, AT), free, others, NOW) is None
    assert reservation_denial(lim, buy(QTY, UNDER), free, others, NOW) is None
    assert_denied(reservation_denial(lim, buy(QTY, OVER), free, others, NOW), DENY_BALANCE,
                  "1020.0102 USDT", "held 2020", "less 1000 reserved", "leaves 1020")


def test_no_balance_reported_is_no_balance_and_balance_check_off_denies_nothing() -> None:
    assert_denied(reservation_denial(limits(), buy(QTY, AT), None, ReservedTotals(), NOW), DENY_BALANCE, "held 0")
    assert reservation_denial(limits(balance_check=False), buy(QTY, AT), None, ReservedTotals(), NOW) is None


def test_two_intents_that_together_exceed_the_balance_one_fits_one_is_denied() -> None:
    lim, free = limits(balance_buffer_pct=D("0")), D("1500")
    first, second = buy(QTY, AT, buffer="0", intent_id="first"), buy(QTY, AT, buffer="0", intent_id="second")
    assert reservation_denial(lim, first, free, ReservedTotals(), NOW) is None
    after_first = totals(first)
    assert_denied(reservation_denial(lim, second, free, after_first, NOW), DENY_BALANCE, "leaves 500")


# -- the placer's check of one order ----------------------------------------------------------------------


def order(lim: RiskLimits, *, side: str = "buy", qty: Decimal = QTY, price: Decimal | None = AT,
          res: Reservation | None = None, states: TradingStates = ACTIVE,
          position: Decimal | None = None) -> Denial | None:
    return order_denial(lim, states, venue="paper", symbol=SYMBOL, side=side, qty=qty, price=price,
                        reservation=res, position=position)


def test_order_notional_at_under_and_over_max_intent_notional() -> None:
    lim = limits(max_intent_notional=D("1000"))
    assert order(lim, price=AT) is None
    assert order(lim, price=UNDER) is None
    assert_denied(order(lim, price=OVER), DENY_MAX_NOTIONAL, "1000.01", "1000")
    assert order(lim, price=None) is None  # a market order without a reference: no notional to hold it to


def test_order_cost_of_a_buy_limit_or_market_with_reference_against_the_reservation() -> None:
    lim = limits()
    res = reservation("me", amount="1000", notional="1000")
    assert order(lim, price=AT, res=res) is None
    assert order(lim, price=UNDER, res=res) is None
    assert_denied(order(lim, price=OVER, res=res), DENY_BALANCE, "1000.01 USDT", "1000")
    assert order(lim, price=None, res=res) is None  # market without a reference: the cost is unknown here


def test_order_cost_of_a_sell_against_the_reservation() -> None:
    lim = limits()
    res = reservation("me", currency="BTC", amount="0.5", notional="1000")
    assert order(lim, side="sell", qty=D("0.5"), res=res) is None
    assert order(lim, side="sell", qty=D("0.49999999"), res=res) is None
    assert_denied(order(lim, side="sell", qty=D("0.50000001"), res=res), DENY_BALANCE, "0.50000001 BTC", "0.5")
    assert order(lim, side="sell", qty=D("0.50000001"), price=None, res=res) is not None  # a market sell too


def test_order_without_a_reservation_or_with_balance_check_off_is_not_held_to_one() -> None:
    res = reservation("me", amount="1000")
    assert order(limits(), price=OVER, res=None) is None
    assert order(limits(balance_check=False), price=OVER, res=res) is None


def test_order_denied_by_the_trading_state_first() -> None:
    halted = TradingStates(scopes=(ScopeState(venue="paper", state="HALTED", reason="ops"),))
    assert_denied(order(limits(max_intent_notional=D("1")), states=halted), DENY_HALTED)
    reducing = TradingStates(scopes=(ScopeState(venue="paper", state="REDUCING"),))
    assert_denied(order(limits(), states=reducing), DENY_REDUCING)
    res = reservation("me", currency="BTC", amount="0.5")
    assert order(limits(), side="sell", qty=D("0.5"), res=res, states=reducing, position=D("0.5")) is None
    assert_denied(order(limits(), side="sell", qty=D("0.6"), res=res, states=reducing, position=D("1")), DENY_BALANCE)


# -- trading states ---------------------------------------------------------------------------------------


def states(*scopes: ScopeState) -> TradingStates:
    return TradingStates(scopes=scopes)


def sell_denial(st: TradingStates, qty: str = "1", position: Decimal | None = D("1"),
                venue: str = "paper", symbol: str = SYMBOL, side: str = "sell") -> Denial | None:
    return trading_denial(st, venue, symbol, side, D(qty), position)


@pytest.mark.parametrize(
    ("scope", "label"),
    [
        (ScopeState(state="HALTED", reason="fat finger"), "all venues"),
        (ScopeState(venue="paper", state="HALTED", reason="fat finger"), "paper"),
        (ScopeState(venue="paper", symbol=SYMBOL, state="HALTED", reason="fat finger"), f"paper {SYMBOL}"),
    ],
)
def test_halted_denies_both_sides_in_every_covering_scope(scope: ScopeState, label: str) -> None:
    for side in ("buy", "sell"):
        denial = assert_denied(sell_denial(states(scope), side=side), DENY_HALTED, label, "fat finger")
        assert "halted" in denial.reason


def test_a_scope_that_does_not_cover_denies_nothing() -> None:
    st = states(
        ScopeState(venue="binance", state="HALTED"),
        ScopeState(venue="paper", symbol="ETH/USDT", state="HALTED"),
    )
    assert sell_denial(st, side="buy") is None
    assert sell_denial(st, side="sell") is None
    assert_denied(sell_denial(st, venue="binance"), DENY_HALTED, "binance")
    assert_denied(sell_denial(st, symbol="ETH/USDT"), DENY_HALTED, "paper ETH/USDT")
    assert sell_denial(ACTIVE, side="buy") is None


def test_reducing_denies_a_buy_and_allows_a_sell_of_at_most_the_position() -> None:
    st = states(ScopeState(venue="paper", state="REDUCING", reason="wind down"))
    assert_denied(sell_denial(st, side="buy"), DENY_REDUCING, "paper", "wind down", "buy")
    assert sell_denial(st, qty="0.5", position=D("0.5")) is None
    assert sell_denial(st, qty="0.49999999", position=D("0.5")) is None
    assert_denied(sell_denial(st, qty="0.50000001", position=D("0.5")), DENY_REDUCING, "0.50000001", "0.5")
    assert_denied(sell_denial(st, qty="0.1", position=D("0")), DENY_REDUCING)


def test_reducing_with_an_unknown_position_denies_a_sell() -> None:
    st = states(ScopeState(venue="paper", state="REDUCING"))
    assert_denied(sell_denial(st, position=None), DENY_REDUCING, "unknown")


def test_reducing_reports_quantities_without_exponents() -> None:
    st = states(ScopeState(venue="paper", state="REDUCING"))
    assert_denied(sell_denial(st, qty="2E+1", position=D("1E+1")), DENY_REDUCING, "20", "10")


def test_the_most_restrictive_covering_scope_wins() -> None:
    st = states(ScopeState(state="HALTED", reason="global"), ScopeState(venue="paper", state="REDUCING"))
    assert_denied(sell_denial(st), DENY_HALTED, "all venues", "global")
    # The other way round too: a wide REDUCING does not soften a narrow HALTED.
    st = states(ScopeState(state="REDUCING"), ScopeState(venue="paper", symbol=SYMBOL, state="HALTED"))
    assert_denied(sell_denial(st), DENY_HALTED, f"paper {SYMBOL}")
    assert sell_denial(st, symbol="ETH/USDT") is None  # only REDUCING covers it: a covered sell passes
    assert_denied(sell_denial(st, symbol="ETH/USDT", side="buy"), DENY_REDUCING, "all venues")


def test_between_equally_restrictive_scopes_the_narrowest_is_reported() -> None:
    st = states(
        ScopeState(state="HALTED", reason="wide"),
        ScopeState(venue="paper", symbol=SYMBOL, state="HALTED", reason="narrow"),
    )
    assert_denied(sell_denial(st), DENY_HALTED, "narrow")


def test_a_symbol_scope_needs_its_venue() -> None:
    with pytest.raises(ValueError, match="needs its venue"):
        ScopeState(symbol=SYMBOL, state="HALTED")
    with pytest.raises(msgspec.ValidationError, match="needs its venue"):
        msgspec.json.decode(b'{"symbol": "BTC/USDT", "state": "HALTED"}', type=ScopeState)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"venue": "paper", "state": "PAUSED"}', type=ScopeState)


# -- symbols and limits -----------------------------------------------------------------------------------


def test_base_and_quote_of_spot_and_settled_symbols() -> None:
    assert base_and_quote("BTC/USDT") == ("BTC", "USDT")
    assert base_and_quote("BTC/USDT:USDT") == ("BTC", "USDT")
    assert base_and_quote("ETH/BTC") == ("ETH", "BTC")


def test_risk_limits_defaults_decode_from_an_empty_document() -> None:
    assert msgspec.json.decode(b"{}", type=RiskLimits) == RiskLimits()
    lim = msgspec.json.decode(b'{"max_intent_notional": "1000", "balance_buffer_pct": "100"}', type=RiskLimits)
    assert lim.max_intent_notional == D("1000") and lim.balance_buffer_pct == D("100")
    lowest = msgspec.json.decode(b'{"balance_buffer_pct": "0", "max_orders_per_second": 1}', type=RiskLimits)
    assert lowest.balance_buffer_pct == 0 and lowest.max_orders_per_second == 1


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b'{"max_intent_notional": "-1"}', "max_intent_notional"),
        (b'{"max_intent_notional": "0"}', "max_intent_notional"),
        (b'{"max_intent_notional": "NaN"}', "max_intent_notional"),
        (b'{"max_open_notional": "-0.01"}', "max_open_notional"),
        (b'{"max_open_notional": "0"}', "max_open_notional"),
        (b'{"max_orders_per_second": 0}', "max_orders_per_second"),
        (b'{"max_orders_per_second": -1}', "max_orders_per_second"),
        (b'{"balance_buffer_pct": "100.01"}', "balance_buffer_pct"),
        (b'{"balance_buffer_pct": "150"}', "balance_buffer_pct"),
        (b'{"balance_buffer_pct": "-1"}', "balance_buffer_pct"),
        (b'{"balance_buffer_pct": "Infinity"}', "balance_buffer_pct"),
        (b'{"max_order_per_second": 5}', "max_order_per_second"),  # a typo is an unknown field, not ignored
        (b'{"max_orders_per_second": "ten"}', "max_orders_per_second"),
    ],
)
def test_risk_limits_validation_rejects_bad_documents(document: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        msgspec.json.decode(document, type=RiskLimits)
    assert isinstance(caught.value, msgspec.ValidationError)


def test_risk_limits_construction_rejects_the_same_values() -> None:
    with pytest.raises(ValueError, match="max_intent_notional"):
        RiskLimits(max_intent_notional=D("0"))
    with pytest.raises(ValueError, match="max_orders_per_second"):
        RiskLimits(max_orders_per_second=0)
    with pytest.raises(ValueError, match="balance_buffer_pct"):
        RiskLimits(balance_buffer_pct=D("150"))
