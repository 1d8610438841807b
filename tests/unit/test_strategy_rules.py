"""Pure pricing and sizing rules of the supervisor and pricer, without the bus."""

from __future__ import annotations

from decimal import Decimal

from actors.pricer import price_for_mode, sweep_average
from actors.strategies.base import to_tick as _to_tick
from actors.strategies.simple_limit import break_even_bound
from actors.supervisor import SupervisorState, _dust
from tests.helpers import new_intent
from messages import AggressiveLimitParams

D = Decimal
BID, ASK, TICK = D("100.00"), D("100.02"), D("0.01")


def test_touch_inside_and_cross_prices_for_each_side() -> None:
    assert price_for_mode("touch", "buy", BID, ASK, TICK) == BID
    assert price_for_mode("inside", "buy", BID, ASK, TICK) == D("100.01")
    assert price_for_mode("cross", "buy", BID, ASK, TICK) == ASK
    assert price_for_mode("touch", "sell", BID, ASK, TICK) == ASK
    assert price_for_mode("inside", "sell", BID, ASK, TICK) == D("100.01")
    assert price_for_mode("cross", "sell", BID, ASK, TICK) == BID


def test_inside_stays_at_the_touch_when_the_spread_is_one_tick() -> None:
    assert price_for_mode("inside", "buy", BID, BID + TICK, TICK) == BID
    assert price_for_mode("inside", "sell", BID, BID + TICK, TICK) == BID + TICK


def test_sweep_average_walks_levels_and_reports_a_thin_book() -> None:
    levels = [(D("100"), D("1")), (D("101"), D("1"))]
    assert sweep_average(levels, D("1.5")) == (D("100") + D("0.5") * D("101")) / D("1.5")
    assert sweep_average(levels, D("3")) is None


def test_rounding_to_the_tick_never_crosses_in_our_disfavour() -> None:
    assert _to_tick(D("100.019"), TICK, "buy") == D("100.01")
    assert _to_tick(D("100.011"), TICK, "sell") == D("100.02")


def test_break_even_bound_moves_by_the_allowed_slippage_against_us() -> None:
    params = AggressiveLimitParams(trigger_fill_price=D("100"), trigger_slippage_bps=D("10"))
    assert break_even_bound(params, "buy") == D("100.1")
    assert break_even_bound(params, "sell") == D("99.9")
    assert break_even_bound(AggressiveLimitParams(), "buy") is None


def test_a_remainder_below_the_minimum_order_value_is_dust() -> None:
    state = SupervisorState(
        intent=new_intent(), accepted_ns=0, deadline_ns=0, min_amount=D("0.00001"), min_cost=D("5"),
        arrival_bid=D("60000"), arrival_ask=D("60000.02"),
    )
    assert "minimum order value" in _dust(state, D("0.00002"))
    assert "minimum amount" in _dust(state, D("0.000001"))
    assert _dust(state, D("0.001")) == ""
