"""Property tests of the matching engine on the recorded data: random order flows from two accounts.

Invariants checked after every action: no order overfills; balances are conserved (fees included)
and reservations equal what open orders hold; the book's count of our resting quantity per level equals the
sum over those orders; every maker fill respects price-time priority among our
own orders; and the same flow gives identical fills twice (determinism). Examples are derandomized so
the suite is deterministic.
"""

from __future__ import annotations

from decimal import Decimal

import ccxt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from venues.orders import Fill, SimOrder
from venues.simulator import PaperVenue

from paper_helpers import SYMBOL, stepped

D = Decimal
STEP = D("0.00001")
TICK = D("0.01")
ACCOUNTS = ("a", "b")

limit_action = st.tuples(st.just("limit"), st.sampled_from(ACCOUNTS), st.sampled_from(["buy", "sell"]),
                         st.sampled_from([-15, -2, -1, 0, 0, 0, 1, 2, 3]), st.integers(1, 40_000),
                         st.sampled_from(["GTC", "GTC", "IOC", "FOK", "PO"]))
join_action = st.tuples(st.just("limit"), st.sampled_from(ACCOUNTS), st.sampled_from(["buy", "sell"]),
                        st.just(0), st.integers(1_000, 60_000), st.just("GTC"))  # queue up at the touch
market_action = st.tuples(st.just("market"), st.sampled_from(ACCOUNTS), st.sampled_from(["buy", "sell"]),
                          st.integers(1, 150_000))
cancel_action = st.tuples(st.just("cancel"), st.integers(0, 50))
advance_action = st.tuples(st.just("advance"), st.integers(1, 4_000))
actions = st.lists(st.one_of(limit_action, join_action, join_action, market_action, cancel_action,
                             advance_action), min_size=1, max_size=25)
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


class Run:
    """Applies actions to a fresh venue while recording fills and priority violations."""

    def __init__(self) -> None:
        self.venue = PaperVenue(stepped(queue_cancel_model="prorata"))
        self.eng = self.venue.engine
        self.initial = {acct: dict(self.eng.account(acct).total) for acct in ACCOUNTS}
        self.orders: list[SimOrder] = []
        self.fills: list[Fill] = []
        self.violations: list[str] = []
        self.eng.listeners.append(self._on_event)

    def _on_event(self, kind: str, item: object) -> None:
        if kind != "trade":
            return
        fill: Fill = item  # type: ignore[assignment]
        self.fills.append(fill)
        if not fill.maker:
            return
        ms = self.eng.markets[fill.symbol]
        is_bid = fill.side == "buy"
        me = self.eng.account(fill.account).orders[fill.order_id]
        for price, level in ms.own[is_bid].items():
            better = price > fill.price if is_bid else price < fill.price
            for other in level:
                if other is me or other.remaining <= 0:
                    continue
                if better or (price == fill.price and other.seq < me.seq):
                    self.violations.append(f"{me.id}@{fill.price} filled before {other.id}@{price}")

    def apply(self, action: tuple) -> None:
        kind = action[0]
        ms = self.eng.markets[SYMBOL]
        try:
            if kind == "limit":
                _, acct, side, offset, steps, tif = action
                touch = ms.best(side == "buy") or D(60000)
                price = touch + offset * TICK if side == "buy" else touch - offset * TICK
                self.orders.append(self.eng.create_order(acct, SYMBOL, "limit", side, steps * STEP, price,
                                                         time_in_force=tif))
            elif kind == "market":
                _, acct, side, steps = action
                self.orders.append(self.eng.create_order(acct, SYMBOL, "market", side, steps * STEP))
            elif kind == "cancel":
                if self.orders:
                    o = self.orders[action[1] % len(self.orders)]
                    self.eng.cancel_order(o.account, o.id)
            else:
                self.venue.replay.advance(action[1] / 1000)
        except (ccxt.InvalidOrder, ccxt.InsufficientFunds, ccxt.OrderNotFound):
            pass

    def check(self) -> None:
        for o in self.orders:
            assert 0 <= o.filled <= o.amount, f"overfill {o}"
            assert sum((f.qty for f in o.trades), D(0)) == o.filled
            assert sum((f.qty * f.price for f in o.trades), D(0)) == o.cost
            assert (o.status == "closed") == (o.filled == o.amount)
            if o.type == "limit":
                limit = o.price
                assert all((f.price <= limit) if o.is_buy else (f.price >= limit) for f in o.trades)  # type: ignore
        for name in ACCOUNTS:
            acct = self.eng.account(name)
            expect = dict(self.initial[name])
            for f in acct.trades:
                sign = 1 if f.side == "buy" else -1
                expect["BTC"] += sign * f.qty - (f.fee if f.side == "buy" else 0)
                expect["USDT"] += -sign * f.qty * f.price - (f.fee if f.side == "sell" else 0)
            held = {"BTC": D(0), "USDT": D(0)}
            for oid in acct.open_ids:
                o = acct.orders[oid]
                held["USDT" if o.is_buy else "BTC"] += o.reserved
            for ccy in ("BTC", "USDT"):
                assert acct.total[ccy] == expect[ccy], f"{name} {ccy} not conserved"
                assert acct.used.get(ccy, D(0)) == held[ccy], f"{name} {ccy} reservation drift"
                assert acct.free(ccy) >= 0 and acct.used.get(ccy, D(0)) >= 0
        # The book shows, at each level, what our resting orders there have left (kept as they change).
        for ms in self.eng.markets.values():
            for is_bid in (True, False):
                walked = {p: sum((o.remaining for o in level), D(0)) for p, level in ms.own[is_bid].items()}
                assert ms.own_qty[is_bid] == {p: q for p, q in walked.items() if q > 0}
        assert not self.violations, self.violations


@SETTINGS
@given(actions)
def test_no_overfill_balances_conserved_and_price_time_priority(flow: list[tuple]) -> None:
    run = Run()
    for action in flow:
        run.apply(action)
        run.check()
    run.venue.replay.advance(60)  # let resting orders meet the market
    run.check()


@SETTINGS
@given(actions)
def test_the_same_flow_gives_identical_fills(flow: list[tuple]) -> None:
    def fills() -> list[tuple]:
        run = Run()
        for action in flow + [("advance", 5_000)]:
            run.apply(action)
        return [(f.order_id, f.account, f.price, f.qty, f.fee, f.maker, f.ts) for f in run.fills]

    assert fills() == fills()


def test_a_busy_flow_exercises_makers_takers_and_cancels() -> None:
    """Guard against the properties passing vacuously: a fixed flow must produce every kind of fill."""
    run = Run()
    ms = run.eng.markets[SYMBOL]
    for i in range(40):
        run.apply(("limit", ACCOUNTS[i % 2], "buy" if i % 3 else "sell", i % 4, 2_000 + i, "GTC"))
        run.apply(("advance", 700))
        if i % 5 == 0:
            run.apply(("market", ACCOUNTS[i % 2], "sell", 5_000))
            run.apply(("cancel", i))
    run.apply(("advance", 30_000))
    run.check()
    assert {f.maker for f in run.fills} == {True, False}
    assert any(o.status == "canceled" for o in run.orders) and ms.prints > 100


def test_the_book_shows_what_our_resting_orders_have_left_after_a_partial_fill() -> None:
    """Two of ours alone at a level inside the spread; a market sell fills part of the first: the book's
    level (and the count kept for it) is what both have left, and it goes once both are gone."""
    run = Run()
    ms = run.eng.markets[SYMBOL]
    bid, ask = ms.best(True), ms.best(False)
    assert bid is not None and ask is not None
    price = bid + TICK if ask - bid > TICK else bid
    first = run.eng.create_order("a", SYMBOL, "limit", "buy", D("0.01"), price)
    second = run.eng.create_order("a", SYMBOL, "limit", "buy", D("0.02"), price)
    run.eng.create_order("b", SYMBOL, "market", "sell", D("0.004") + (ms.eff(True, price) if price == bid else 0))
    assert first.filled > 0 and first.status == "open", first
    run.check()
    left = first.remaining + second.remaining + ms.eff(True, price)
    assert [D(q) for p, q in run.eng.order_book(SYMBOL, 50)["bids"] if D(p) == price] == [left]
    run.eng.cancel_order("a", first.id)
    run.eng.cancel_order("a", second.id)
    run.check()
    assert price not in ms.own_qty[True]
