"""Issue 2 end to end: intents become fills over a real nats-server, bad input is refused field by field,
duplicates execute once, and replicas never place an order twice."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from bus.bus import Bus
from bus.ops.client import execute
from bus.runtime import ActorHost
from bus.ops.system import build_actor
from messages import (
    ExecutionCompleted,
    IntentAccepted,
    IntentRejected,
    OrderFilled,
    PlaceOrder,
    SubmitIntent,
    subjects,
)
from tests.e2e.conftest import Running, start_running, stop_running, system_config
from tests.helpers import assert_invariants, fast_settings, new_intent, wait_until
from venues.gateway import VenuePool


async def test_market_buy_fills_and_reports_totals_equal_to_its_fills(running: Running) -> None:
    intent = new_intent(qty=Decimal("0.5"))

    report = await execute(running.bus, intent, timeout=10)

    assert isinstance(report, ExecutionCompleted)
    assert report.status == "filled"
    assert report.filled_qty == Decimal("0.5")
    assert report.arrival_mid is not None and report.slippage_bps is not None
    fills = await assert_invariants(report, running.recorder, running.exchange)
    assert all(f.liquidity == "taker" for f in fills)
    # the venue charges a buyer's fee in the asset received (BTC); the report values it in USDT
    assert report.fees == sum(f.fee * f.price if f.fee_currency == "BTC" else f.fee for f in fills)
    assert report.fees > 0


async def test_market_sell_that_walks_levels_reports_the_volume_weighted_price(stepped: Running) -> None:
    book = await stepped.exchange.fetch_order_book("BTC/USDT")
    assert book["bids"][0][1] < 10, "precondition: the first bid level holds less than 10 BTC"
    intent = new_intent(side="sell", qty=Decimal("10"))

    report = await execute(stepped.bus, intent, timeout=10)

    assert isinstance(report, ExecutionCompleted) and report.status == "filled"
    fills = await assert_invariants(report, stepped.recorder, stepped.exchange)
    assert len({f.price for f in fills}) > 1, "10 BTC takes more than one bid level"
    assert all(f.price <= Decimal(repr(book["bids"][0][0])) for f in fills)


BAD_INTENTS = [
    pytest.param(b"{not json", "", "malformed JSON", id="malformed-json"),
    pytest.param({"side": "buy"}, "qty", "missing required field", id="missing-qty"),
    pytest.param({"qty": True}, "qty", "Expected", id="wrong-type"),
    pytest.param({"qty": "0"}, "qty", "> 0", id="zero-qty"),
    pytest.param({"qty": "-0.1"}, "qty", "> 0", id="negative-qty"),
    pytest.param({"qty": "NaN"}, "qty", "finite", id="nan-qty"),
    pytest.param({"side": "hold"}, "side", "Invalid enum value", id="bad-side"),
    pytest.param({"strategy": "vwap"}, "strategy", "Invalid enum value", id="unknown-strategy"),
    pytest.param({"params": {"max_retires": 3}}, "params.max_retires", "unknown field", id="misspelt-param"),
    pytest.param({"symbol": "DOGE/USDT"}, "symbol", "no market", id="unknown-symbol"),
    pytest.param({"venue": "nosuchvenue"}, "venue", "unknown venue", id="unknown-venue"),
    pytest.param({"qty": "0.000001"}, "qty", "below the market minimum", id="below-minimum"),
    pytest.param({"qty": "0.123456"}, "qty", "finer than the market amount step", id="too-precise"),
]


@pytest.mark.parametrize(("change", "field", "reason_part"), BAD_INTENTS)
async def test_bad_input_is_rejected_naming_the_field_and_nothing_is_placed(
    running: Running, change: bytes | dict[str, object], field: str, reason_part: str
) -> None:
    intent_id = f"bad-{abs(hash(str(change))) % 10**8}"
    body: dict[str, object] = {
        "type": "SubmitIntent", "intent_id": intent_id, "venue": "paper", "symbol": "BTC/USDT",
        "side": "buy", "qty": "0.01",
    }
    if isinstance(change, dict):
        body.update(change)
        if "side" in change and "qty" not in change and change == {"side": "buy"}:
            del body["qty"]
        payload = json.dumps(body).encode()
    else:
        payload = change
    venue = str(body["venue"])
    symbol = str(body["symbol"])
    subject = subjects.subject("submit_intent", venue, symbol, intent_id)

    await running.bus.nc.publish(subject, payload)
    rejected = await running.recorder.wait_for(IntentRejected, intent_id, timeout=5)

    assert rejected[0].field == field
    assert reason_part in rejected[0].reason
    assert running.recorder.of(IntentAccepted, intent_id) == []
    assert running.recorder.of(PlaceOrder, intent_id) == []
    # the actors keep running: a good intent right after executes
    report = await execute(running.bus, new_intent(), timeout=10)
    assert isinstance(report, ExecutionCompleted) and report.status == "filled"


async def test_a_body_that_disagrees_with_its_subject_is_rejected(running: Running) -> None:
    body = new_intent(intent_id="subject-mismatch")
    wrong_subject = subjects.subject("submit_intent", "paper", "BTC/USDT", "other-id")
    from messages import encode

    await running.bus.nc.publish(wrong_subject, encode(body))
    rejected = await running.recorder.wait_for(IntentRejected, "other-id", timeout=5)

    assert rejected[0].field == "intent_id"
    assert running.recorder.of(PlaceOrder, "subject-mismatch") == []


async def test_the_same_intent_published_twice_executes_once(running: Running) -> None:
    intent = new_intent()
    report = await execute(running.bus, intent, timeout=10)
    assert isinstance(report, ExecutionCompleted)

    # Inside the window JetStream drops the copy (same Nats-Msg-Id) ...
    ack = await running.bus.publish(intent)
    assert ack.duplicate
    # ... and a copy without the header (a plain client) gets past JetStream but not the intent guard.
    from messages import encode

    await running.bus.nc.publish(subjects.subject("submit_intent", "paper", "BTC/USDT", intent.intent_id), encode(intent))
    dup = await running.recorder.wait_for(IntentRejected, intent.intent_id, timeout=5)

    assert dup[0].duplicate and dup[0].field == "intent_id"
    assert len(running.recorder.of(PlaceOrder, intent.intent_id)) == 1
    assert len(running.recorder.of(ExecutionCompleted, intent.intent_id)) == 1


async def test_an_intent_id_reused_after_the_duplicate_window_is_still_rejected() -> None:
    r = await start_running(system_config(settings=fast_settings(duplicate_window_s=0.5)))
    try:
        intent = new_intent()
        assert isinstance(await execute(r.bus, intent, timeout=10), ExecutionCompleted)

        async def republished_past_window() -> bool:
            # each try is itself the check: the server says when the window is over
            return not (await r.bus.publish(intent)).duplicate

        await wait_until(republished_past_window, timeout=10, interval=0.1)
        dup = await r.recorder.wait_for(IntentRejected, intent.intent_id, timeout=5)

        assert dup[0].duplicate
        assert len(r.recorder.of(PlaceOrder, intent.intent_id)) == 1
        assert len(await r.exchange.fetch_closed_orders("BTC/USDT")) >= 1
        mine = [o for o in await r.exchange.fetch_closed_orders("BTC/USDT") if o["clientOrderId"].startswith(intent.intent_id)]
        assert len(mine) == 1
    finally:
        await stop_running(r)


async def test_two_replicas_of_placer_and_supervisor_place_every_order_exactly_once() -> None:
    r = await start_running(system_config())
    extra: list[tuple[Bus, ActorHost, VenuePool]] = []
    try:
        for name in ("placer", "supervisor"):
            bus = await Bus.connect(r.system.url, r.system.bus.settings, name=f"replica-{name}")
            venues = VenuePool(nats_url=r.system.url)
            host = await ActorHost(bus, build_actor(name, venues), replica=_sharing_name(r.system.hosts[name])).start()
            extra.append((bus, host, venues))
        first = {name: r.system.hosts[name] for name in ("placer", "supervisor")}
        await wait_until(
            lambda: all(h.partitions for _, h, _ in extra) and all(first[n].partitions for n in first), timeout=10
        )

        intents = [new_intent(side="buy" if i % 2 else "sell", qty=Decimal("0.01")) for i in range(24)]
        import asyncio

        reports = await asyncio.gather(*(execute(r.bus, i, timeout=20) for i in intents))

        assert all(isinstance(rep, ExecutionCompleted) and rep.status == "filled" for rep in reports)
        closed = await r.exchange.fetch_closed_orders("BTC/USDT", None, 1000)
        per_cid: dict[str, int] = {}
        for order in closed:
            per_cid[order["clientOrderId"]] = per_cid.get(order["clientOrderId"], 0) + 1
        for intent in intents:
            assert per_cid.get(f"{intent.intent_id}-1") == 1
        assert extra[0][1].actor.stats["created"] > 0 and first["placer"].actor.stats["created"] > 0
        for rep in reports:
            await assert_invariants(rep, r.recorder, r.exchange)
    finally:
        for bus, host, venues in extra:
            await host.stop()
            await venues.close()
            await bus.close()
        await stop_running(r)


def _sharing_name(first: ActorHost) -> str:
    """A replica name that the rendezvous hash gives some partitions and leaves the first replica some: with
    random names, one of two replicas gets none of 8 partitions once in 128 starts."""
    from bus.partitions import rendezvous_owner

    for k in range(1000):
        name = f"replica-{k}"
        owners = {rendezvous_owner(p, [first.replica, name]) for p in range(first.bus.settings.partitions)}
        if len(owners) == 2:
            return name
    raise AssertionError("no sharing replica name found")


async def test_status_query_answers_from_the_tracker(running: Running) -> None:
    from messages import IntentStatus, StatusQuery

    intent = new_intent()
    await execute(running.bus, intent, timeout=10)

    status = await running.bus.request(
        subjects.control("tracker", "intent"), StatusQuery(intent_id=intent.intent_id), IntentStatus
    )
    unknown = await running.bus.request(subjects.control("tracker", "intent"), StatusQuery(intent_id="nope"), IntentStatus)

    assert status.known and status.completed and status.filled_qty == intent.qty
    assert status.orders[0].client_order_id == f"{intent.intent_id}-1"
    assert not unknown.known


_ = (SubmitIntent, OrderFilled)
