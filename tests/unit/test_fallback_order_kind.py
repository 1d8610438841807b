"""`PlaceFallbackOrder`: a `PlaceOrder` of its own kind (its own subject, so only the actors that list it are
delivered it), that every reader of orders takes as one — including a placer's stored state, which holds the
command of a create still being resolved."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from actors.placer import Pending, PlacerState
from messages import BY_KIND, PlaceFallbackOrder, PlaceOrder, decode, decode_as, encode, subjects

ROUTE = {"intent_id": "fb-1", "venue": "paper", "symbol": "BTC/USDT"}


def fallback(**extra: object) -> PlaceFallbackOrder:
    return PlaceFallbackOrder(**ROUTE, client_order_id="fb-1-F", attempt=0, side="sell", order_type="market",
                              qty=Decimal("0.3"), **extra)  # type: ignore[arg-type]


def test_it_is_an_order_command_of_its_own_kind() -> None:
    msg = fallback()
    assert isinstance(msg, PlaceOrder) and msg.origin == "market_fallback"
    assert msg.kind == "place_fallback_order" and BY_KIND["place_fallback_order"] is PlaceFallbackOrder
    assert subjects.subject(msg.kind, msg.venue, msg.symbol, msg.intent_id) == "exec.place_fallback_order.paper.BTC-USDT.fb-1"
    assert decode(encode(msg)) == msg and decode_as(encode(msg), PlaceFallbackOrder) == msg
    with pytest.raises(ValueError):
        decode_as(encode(msg), PlaceOrder)  # (the tag says which kind: readers dispatch on it)


def test_its_origin_is_the_fallbacks() -> None:
    with pytest.raises(ValueError, match="origin"):
        fallback(origin="supervisor")


def test_a_placer_state_holding_one_is_read_back() -> None:
    order = PlaceOrder(**ROUTE, client_order_id="fb-1-1", attempt=1, side="sell", order_type="limit",
                       qty=Decimal("0.7"), price=Decimal("100"))
    state = PlacerState(venue="paper", symbol="BTC/USDT",
                        unknown={"fb-1-F": Pending(command=fallback(epoch=3), since_ns=1)},
                        backoff={"fb-1-1": Pending(command=order, since_ns=2)})
    back = msgspec.json.decode(msgspec.json.encode(state), type=PlacerState)
    assert back == state
    assert type(back.unknown["fb-1-F"].command) is PlaceFallbackOrder and type(back.backoff["fb-1-1"].command) is PlaceOrder
