"""The pricer's view of our own resting orders, and the book less them."""

from __future__ import annotations

from decimal import Decimal
from venues.types import VenueOrder, order_from_ccxt

D = Decimal


def _order(oid: str, status: str = "open", *, side: str = "buy", price: str = "100", amount: str = "1",
           filled: str = "0", ts: int = 1) -> VenueOrder:
    return order_from_ccxt({"id": oid, "symbol": "BTC/USDT", "status": status, "side": side, "price": float(price),
                            "amount": float(amount), "filled": float(filled), "lastUpdateTimestamp": ts,
                            "info": {"price": price, "origQty": amount, "executedQty": filled}})


def test_the_book_less_our_quantity_drops_levels_that_were_only_ours() -> None:
    from actors.pricer import without_own

    bids = [(D("100.02"), D("0.01")), (D("100.01"), D("0.5")), (D("100"), D("2"))]
    assert without_own(bids, {D("100.02"): D("0.01"), D("100"): D("0.5")}) == [(D("100.01"), D("0.5")), (D("100"), D("1.5"))]
    assert without_own(bids, {}) is bids


def test_own_orders_follow_fills_and_ends_and_a_late_list_cannot_revive_an_ended_one() -> None:
    from actors.pricer import OwnOrders

    own = OwnOrders("BTC/USDT")
    own.replace([_order("1"), _order("2", side="sell", price="101", amount="2")], fetched_ns=0)
    assert own.levels("buy") == {D("100"): D("1")} and own.levels("sell") == {D("101"): D("2")}
    own.apply(_order("1", filled="0.4", ts=2))  # partly filled: the rest still rests
    assert own.levels("buy") == {D("100"): D("0.6")}
    own.apply(_order("1", "canceled", filled="0.4", ts=3))
    assert own.levels("buy") == {}
    own.replace([_order("1"), _order("2", side="sell", price="101", amount="2")], fetched_ns=10**10)  # stale list
    assert own.levels("buy") == {}
    own.apply(_order("2", side="sell", price="101", amount="2", filled="2", ts=0))  # older than the one held
    assert own.levels("sell") == {D("101"): D("2")}


def test_an_order_the_stream_just_announced_survives_a_list_that_does_not_show_it_yet() -> None:
    import time

    from actors.pricer import OwnOrders

    own = OwnOrders("BTC/USDT")
    own.apply(_order("3", price="99"))
    own.replace([], fetched_ns=time.monotonic_ns())  # venues list fresh orders late
    assert own.levels("buy") == {D("99"): D("1")}
    own.replace([], fetched_ns=time.monotonic_ns() + 2 * OwnOrders.LIST_LAG_NS)
    assert own.levels("buy") == {}
