"""Issue 5, start-up reconciliation (`bus.ops.startup.reconcile_with_venues`): orders of ours at the venue that
the reconciler does not watch are adopted (watched to their end) or canceled (after being adopted, so their
fills are still reported); orders it watches, orders about to reach it through the log, and orders that are
not ours are left alone; a venue that cannot be listed stops the start-up with an error naming it.

The whole system runs in the test process on a real nats-server, with a step-driven paper venue.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from bus.ops.startup import (
    StartupReconciliationError,
    orphan_policy,
    parse_client_order_id,
    reconcile_with_venues,
)
from messages import (
    IntentAccepted,
    ExecutionCompleted,
    SimpleLimitParams,
    OrderCanceled,
    OrderFilled,
    OrderFinalized,
    OrderPlaced,
    PlaceOrder,
)
from tests.e2e.conftest import Running, start_running, stop_running, system_config
from tests.helpers import new_intent, wait_until
from venues.config import PaperVenueConfig
from venues.gateway import VenuePool


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = await start_running(
        system_config(
            paper_config=PaperVenueConfig(speed=0),
            actor_options={
                "pricer": {"max_age_s": 3600.0},
                "reconciler": {"poll_interval_s": 0.3, "confirm_interval_s": 0.05},
            },
        )
    )
    pool = VenuePool(nats_url=r.system.url)
    r.pool = pool  # type: ignore[attr-defined]
    try:
        yield r
    finally:
        await pool.close()
        await stop_running(r)


async def _accepted_earlier(r: Running) -> str:
    """An intent id execbus accepted before (its once-only guard is in KV) but whose orders nothing watches
    now: the reconciler's state of it is gone, as after a crash that lost it or a restore from an old backup."""
    intent_id = f"orph{uuid.uuid4().hex[:10]}"
    await r.bus.buckets.intents.create(f"intent.{intent_id}", b"1")
    return intent_id


async def _bid(r: Running) -> float:
    book = await r.exchange.fetch_order_book("BTC/USDT")
    return float(book["bids"][0][0])


async def _listed(r: Running, cid: str) -> None:
    """Wait until the venue lists the order (the binance venue lists a new order only after its lag)."""

    async def listed() -> bool:
        return any(o.get("clientOrderId") == cid for o in await r.exchange.fetch_open_orders("BTC/USDT"))

    await wait_until(listed, timeout=5, interval=0.05)


async def _place_at_venue(r: Running, cid: str | None, qty: float = 0.01, price: float | None = None) -> dict[str, Any]:
    """An order straight at the venue, on the account execbus trades on, that execbus never commanded."""
    params = {"clientOrderId": cid} if cid else {}
    order = await r.exchange.create_order("BTC/USDT", "limit", "buy", qty, price or await _bid(r), params)

    async def listed() -> bool:  # the binance venue lists a new order only after its indexing lag
        return any(o["id"] == order["id"] for o in await r.exchange.fetch_open_orders("BTC/USDT"))

    await wait_until(listed, timeout=5, interval=0.05)
    return order


async def _status(r: Running, cid: str) -> str:
    return (await r.exchange.fetch_order(None, "BTC/USDT", {"clientOrderId": cid}))["status"]


async def test_with_the_adopt_policy_an_unknown_order_of_ours_is_watched_to_its_end(running: Running) -> None:
    intent_id = await _accepted_earlier(running)
    cid = f"{intent_id}-2"
    order = await _place_at_venue(running, cid)
    foreign = await _place_at_venue(running, "web_order_7")  # same account, not ours
    anonymous = await _place_at_venue(running, None)  # the venue names it `paper-<n>`: our shape, not our intent
    lookalike = await _place_at_venue(running, "never-accepted-1")

    report = await reconcile_with_venues(running.bus, running.pool, policy="adopt")  # type: ignore[attr-defined]

    (paper,) = report.venues
    assert paper.adopted == [cid] and paper.canceled == [] and paper.known == []
    assert sorted(paper.unverified) == sorted([anonymous["clientOrderId"], "never-accepted-1"])
    assert paper.open_orders == 4
    (adopted,) = await running.recorder.wait_for(OrderPlaced, intent_id)
    assert adopted.recovered and adopted.order_id == str(order["id"]) and adopted.attempt == 2
    assert await _status(running, cid) == "open"
    # the reconciler now watches it: its fills and its end are published like any order's
    await running.exchange.paper_control("advance_until", {"clientOrderId": cid, "until": "done", "max_seconds": 300})
    (final,) = await running.recorder.wait_for(OrderFinalized, intent_id, timeout=10)
    fills = running.recorder.of(OrderFilled, intent_id)
    assert final.status == "filled" and final.filled_qty == Decimal("0.01")
    assert sum((f.qty for f in fills), Decimal(0)) == Decimal("0.01")
    for other in (foreign, anonymous, lookalike):
        assert (await running.exchange.fetch_order(other["id"], "BTC/USDT"))["status"] == "open"
        await running.exchange.cancel_order(other["id"], "BTC/USDT")


async def test_with_the_cancel_policy_an_orphan_is_canceled_and_its_fills_are_still_reported(running: Running) -> None:
    intent_id = await _accepted_earlier(running)
    cid = f"{intent_id}-F"
    await _place_at_venue(running, cid, qty=5.0)
    partial = await running.exchange.paper_control("advance_until", {"clientOrderId": cid, "until": "fill", "max_seconds": 300})
    executed = Decimal(partial["order"]["executedQty"])
    assert 0 < executed < 5

    report = await reconcile_with_venues(running.bus, running.pool, policy="cancel")  # type: ignore[attr-defined]

    assert report.orphans == [cid] and report.venues[0].canceled == [cid]
    assert await _status(running, cid) == "canceled"
    (placed,) = await running.recorder.wait_for(OrderPlaced, intent_id)
    assert placed.attempt == 0 and placed.recovered
    await running.recorder.wait_for(OrderCanceled, intent_id)
    (final,) = await running.recorder.wait_for(OrderFinalized, intent_id, timeout=10)
    assert final.status == "canceled" and final.filled_qty == executed
    assert sum((f.qty for f in running.recorder.of(OrderFilled, intent_id)), Decimal(0)) == executed


async def test_orders_the_reconciler_watches_are_left_alone(running: Running) -> None:
    intent = new_intent(strategy="simple_limit", params=SimpleLimitParams(price_offset_pct=Decimal("1"), timeout_seconds=Decimal("3")))
    await running.bus.publish(intent)
    (placed,) = await running.recorder.wait_for(OrderPlaced, intent.intent_id)
    await wait_until(lambda: running.system.hosts["reconciler"].actor.status()["watched"] > 0)  # type: ignore[attr-defined]
    await _listed(running, placed.client_order_id)

    report = await reconcile_with_venues(running.bus, running.pool, policy="cancel")  # type: ignore[attr-defined]

    # Known from the reconciler's stored state, or (its state write still held back with the ack of
    # OrderPlaced, see BusSettings.flush_delay_s) in flight in the log: either way ours and left alone.
    venue = report.venues[0]
    assert venue.known + venue.in_flight == [placed.client_order_id] and report.orphans == []
    assert await _status(running, placed.client_order_id) == "open"
    (done,) = await running.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=10)
    assert done.status == "unfilled" and running.recorder.of(OrderCanceled, intent.intent_id)[0].msg_id.endswith(placed.client_order_id)


async def test_an_order_whose_command_the_reconciler_has_not_consumed_yet_is_in_flight(running: Running) -> None:
    """The reconciler is down; the log already holds the `PlaceOrder` and the venue already has the order (the
    placer was quicker): that order is on its way to the reconciler, and canceling it would be wrong."""
    await running.system.hosts["reconciler"].stop()
    intent_id = await _accepted_earlier(running)
    cid = f"{intent_id}-1"
    bid = Decimal(repr(await _bid(running)))
    await running.bus.publish(  # the placer creates nothing for an intent it has not seen accepted
        IntentAccepted(intent_id=intent_id, venue="paper", symbol="BTC/USDT", side="buy", qty=Decimal("0.01"),
                       strategy="simple_limit", deadline_ns=time.time_ns() + 60 * 1_000_000_000)
    )
    await running.bus.publish(
        PlaceOrder(intent_id=intent_id, venue="paper", symbol="BTC/USDT", client_order_id=cid, attempt=1,
                   side="buy", order_type="limit", qty=Decimal("0.01"), price=bid)
    )
    await running.recorder.wait_for(OrderPlaced, intent_id)  # the placer placed it; the reconciler is down
    await _listed(running, cid)

    report = await reconcile_with_venues(running.bus, running.pool, policy="cancel")  # type: ignore[attr-defined]

    assert report.venues[0].in_flight == [cid] and report.orphans == []
    assert await _status(running, cid) == "open"
    await running.exchange.cancel_order(None, "BTC/USDT", {"clientOrderId": cid})


async def test_a_venue_that_cannot_be_listed_stops_the_start_up_with_an_error_naming_it(running: Running) -> None:
    await running.exchange.paper_control(
        "faults_set", {"rules": [{"kind": "rate_limit", "methods": ["open_orders"], "name": "no-listing"}]}
    )
    try:
        with pytest.raises(StartupReconciliationError) as raised:
            await reconcile_with_venues(running.bus, running.pool, attempts=2, retry_delay_s=0.01)  # type: ignore[attr-defined]
    finally:
        await running.exchange.paper_control("faults_clear", {"name": "no-listing"})
    assert raised.value.venue == "paper"
    assert "list open orders" in raised.value.reason and "RateLimitExceeded" in raised.value.reason
    assert "paper" in str(raised.value)


async def test_a_venue_that_is_not_there_stops_the_start_up_with_an_error_naming_it(running: Running) -> None:
    nowhere = VenuePool(nats_url=running.system.url, options={"paper": {"venue": "nowhere"}})
    try:
        with pytest.raises(StartupReconciliationError) as raised:
            await reconcile_with_venues(running.bus, nowhere, venue_ids=["paper"])
    finally:
        await nowhere.close()
    assert raised.value.venue == "paper" and "cannot open the venue" in raised.value.reason


def test_the_policy_and_what_counts_as_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECBUS_ORPHAN_POLICY", raising=False)
    assert orphan_policy() == "cancel"
    monkeypatch.setenv("EXECBUS_ORPHAN_POLICY", "Adopt")
    assert orphan_policy() == "adopt"
    assert orphan_policy("cancel") == "cancel"
    monkeypatch.setenv("EXECBUS_ORPHAN_POLICY", "ignore")
    with pytest.raises(ValueError, match="EXECBUS_ORPHAN_POLICY"):
        orphan_policy()
    assert parse_client_order_id("I-42-3") == ("I-42", 3)
    assert parse_client_order_id("cli-abc-F") == ("cli-abc", 0)
    for not_ours in (None, "", "web_order_7", "I-42-", "-3", "I 42-1", "x-1.5"):
        assert parse_client_order_id(not_ours) is None
