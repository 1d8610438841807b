"""Never trade twice, never strand an order (issue 10): the placer's last check before money moves, state
rebuilt from the log on takeover, a durable finished marker, no market order without a price, a fallback
that refuses to act late, and a venue outage at intake that is retried instead of rejecting the intent.

Every test runs the real actors on a real nats-server against the paper venue in its default (`binance`)
profile; each fails on the code before issue 10.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors.supervisor import OrderRecord, Supervisor, SupervisorState
from bus.bus import Bus
from bus.ops.client import execute
from bus.runtime import ActorHost
from bus.server import EmbeddedNats
from bus.ops.system import System
from messages import (
    CancelOrder,
    ExecutionCompleted,
    AggressiveLimitParams,
    SimpleLimitParams,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    OrderFinalized,
    OrderOutcomeUnknown,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
    PriceQuoted,
    PriceRequested,
    StrategyFinished,
    subjects,
)
from tests.e2e.conftest import Running, start_running, stepped_config, stop_running, system_config
from tests.e2e.test_actor_edges import stale  # noqa: F401 - the fixture (a frozen market's book is stale at once)
from tests.helpers import Recorder, fast_settings, handler_context, new_intent, wait_until
from venues.config import PaperVenueConfig
from venues.gateway import VenuePool
from venues.service import run_paper_venue

D = Decimal
NS = 1_000_000_000


async def _bid(running: Running) -> Decimal:
    book = await running.exchange.fetch_order_book("BTC/USDT")
    return D(repr(book["bids"][0][0]))


def _accepted(intent_id: str, qty: str, **fields: Any) -> IntentAccepted:
    return IntentAccepted(
        intent_id=intent_id, venue="paper", symbol="BTC/USDT", side="buy", qty=D(qty), strategy="aggressive_limit",
        deadline_ns=time.time_ns() + 60 * NS, **fields,
    )


def _place(intent_id: str, suffix: str, qty: str, price: Decimal | None, **fields: Any) -> PlaceOrder:
    return PlaceOrder(
        intent_id=intent_id, venue="paper", symbol="BTC/USDT", client_order_id=f"{intent_id}-{suffix}",
        attempt=0 if suffix == "F" else int(suffix), side="buy", order_type="limit" if price else "market",
        qty=D(qty), price=price, origin="market_fallback" if suffix == "F" else "supervisor", **fields,
    )


def _routing(intent_id: str) -> dict[str, str]:
    return {"intent_id": intent_id, "venue": "paper", "symbol": "BTC/USDT"}


async def _created(running: Running, intent_id: str) -> list[dict[str, Any]]:
    """Every create the venue accepted for the intent (its own audit, whatever our actors think)."""
    audit = await running.exchange.paper_control("audit", {"client_order_id_prefix": f"{intent_id}-"})
    return list(audit["accepted"])


async def _cancel_all(running: Running) -> None:
    for order in await running.exchange.fetch_open_orders("BTC/USDT"):
        try:
            await running.exchange.cancel_order(order["id"], "BTC/USDT")
        except Exception:
            pass


# -- the placer's last check -------------------------------------------------------------------------------


async def test_the_placer_refuses_a_create_beyond_what_the_intent_still_needs(stepped: Running) -> None:
    """Attempt 1 rests with the whole quantity; a fallback `PlaceOrder` for the same quantity (a supervisor
    that acted on a stale state, say) must not reach the venue."""
    intent_id = new_intent().intent_id
    low = (await _bid(stepped)) - D(500)
    await stepped.bus.publish(_accepted(intent_id, "0.01"))
    await stepped.bus.publish(_place(intent_id, "1", "0.01", low))
    await stepped.recorder.wait_for(OrderPlaced, intent_id)

    await stepped.bus.publish(_place(intent_id, "F", "0.01", None))

    (rejected,) = await stepped.recorder.wait_for(OrderRejected, intent_id)
    assert rejected.client_order_id == f"{intent_id}-F" and rejected.error == "ExposureExceeded", rejected
    assert "0.01" in rejected.reason
    assert [p.client_order_id for p in stepped.recorder.of(OrderPlaced, intent_id)] == [f"{intent_id}-1"]
    assert [o["client_order_id"] for o in await _created(stepped, intent_id)] == [f"{intent_id}-1"]
    await _cancel_all(stepped)


async def test_the_placer_refuses_an_order_of_an_intent_it_never_saw_accepted(stepped: Running) -> None:
    intent_id = new_intent().intent_id
    await stepped.bus.publish(_place(intent_id, "1", "0.01", (await _bid(stepped)) - D(500)))

    (rejected,) = await stepped.recorder.wait_for(OrderRejected, intent_id)
    assert rejected.error == "IntentUnknown", rejected
    assert stepped.recorder.of(OrderPlaced, intent_id) == []


async def test_a_command_from_an_owner_that_lost_its_lease_is_refused(stepped: Running) -> None:
    intent_id = new_intent().intent_id
    low = (await _bid(stepped)) - D(500)
    await stepped.bus.publish(_accepted(intent_id, "0.01"))
    await stepped.bus.publish(_place(intent_id, "1", "0.004", low, epoch=20))
    await stepped.recorder.wait_for(OrderPlaced, intent_id)

    await stepped.bus.publish(_place(intent_id, "2", "0.004", low, epoch=10))  # the old owner, still sending

    (rejected,) = await stepped.recorder.wait_for(OrderRejected, intent_id)
    assert rejected.client_order_id == f"{intent_id}-2" and rejected.error == "StaleEpoch", rejected
    await _cancel_all(stepped)


async def test_a_new_owners_copy_of_a_command_the_old_owner_sent_is_created_once(stepped: Running) -> None:
    """Chaos run: the old owner's PlaceOrder waited out a rate limit; the new owner, having rebuilt from the
    log, sent its own copy. The old copy must not be created (it is fenced), the new one must (it is the
    same order), and the id must reach the venue exactly once."""
    intent_id = new_intent().intent_id
    low = (await _bid(stepped)) - D(500)
    await stepped.exchange.paper_control(
        "faults_set", {"rules": [{"kind": "rate_limit", "client_order_id_prefix": intent_id, "count": 1, "name": "rl1"}]}
    )
    try:
        await stepped.bus.publish(_accepted(intent_id, "0.01"))
        await stepped.bus.publish(_place(intent_id, "1", "0.01", low, epoch=10))  # rate-limited: backs off
        await wait_until(lambda: stepped.system.hosts["placer"].actor.stats["rate_limited"] >= 1, timeout=10)
        await stepped.bus.publish(_place(intent_id, "1", "0.01", low, epoch=20))  # the new owner's copy

        (placed,) = await stepped.recorder.wait_for(OrderPlaced, intent_id, timeout=15)
    finally:
        await stepped.exchange.paper_control("faults_clear", {"name": "rl1"})
    assert placed.client_order_id == f"{intent_id}-1"
    assert stepped.recorder.of(OrderRejected, intent_id) == []
    assert [o["client_order_id"] for o in await _created(stepped, intent_id)] == [f"{intent_id}-1"]
    await _cancel_all(stepped)


async def test_a_command_in_the_log_before_the_new_owner_spoke_is_the_new_owners_to_keep(stepped: Running) -> None:
    """Chaos run: the old owner's PlaceOrder was in the log when the new owner took the intent over (and
    adopted it: its rebuild counts that order as its own). The create waited out a rate limit while the new
    owner spoke (a cancel of another order, here). Fencing the retry by the newest epoch seen then refused
    the new owner's own order and stranded the intent; only what an old owner sends *after* a newer one
    spoke is fenced."""
    intent_id = new_intent().intent_id
    low = (await _bid(stepped)) - D(500)
    await stepped.exchange.paper_control(
        "faults_set", {"rules": [{"kind": "rate_limit", "client_order_id_prefix": intent_id, "count": 1, "name": "rl2"}]}
    )
    try:
        await stepped.bus.publish(_accepted(intent_id, "0.01"))
        await stepped.bus.publish(_place(intent_id, "1", "0.004", low, epoch=10))  # rate-limited: backs off
        await wait_until(lambda: stepped.system.hosts["placer"].actor.stats["rate_limited"] >= 1, timeout=10)
        await stepped.bus.publish(CancelOrder(**_routing(intent_id), client_order_id=f"{intent_id}-9", epoch=20))

        (placed,) = await stepped.recorder.wait_for(OrderPlaced, intent_id, timeout=15)
    finally:
        await stepped.exchange.paper_control("faults_clear", {"name": "rl2"})
    assert placed.client_order_id == f"{intent_id}-1"
    assert not [r for r in stepped.recorder.of(OrderRejected, intent_id) if r.error == "StaleEpoch"]
    await _cancel_all(stepped)


async def test_a_redelivered_place_order_is_looked_up_and_never_created_again(stepped: Running) -> None:
    """The placer that took this `PlaceOrder` created the market order and died before recording it; the
    order filled and closed, and the `binance` venue would accept its client order id again. The redelivery
    must find it at the venue, not buy a second time."""
    intent_id = new_intent().intent_id
    cid = f"{intent_id}-1"
    await stepped.bus.buckets.intents.put(f"create.{cid}", b"placer-that-died")  # it claimed, then created
    await stepped.exchange.create_order("BTC/USDT", "market", "buy", "0.01", None, {"clientOrderId": cid})
    await stepped.exchange.paper_control("advance", {"seconds": 1})  # past the venue's indexing lag
    host = stepped.system.hosts["placer"]
    placer = host.actor
    ctx = _context(intent_id, delivered=2)
    ctx.state = placer.State(venue="paper", symbol="BTC/USDT", intent_qty=D("0.01"))

    found = await _eventually(placer, lambda: placer.handle(_place(intent_id, "1", "0.01", None), ctx), ctx)

    assert isinstance(found, OrderPlaced) and found.recovered, found
    created = await _created(stepped, intent_id)
    assert [(o["client_order_id"], D(o["filled"])) for o in created] == [(cid, D("0.01"))], created


async def test_a_create_an_earlier_owner_took_out_of_backoff_and_sent_is_found_and_canceled_not_called_unsent(
    stepped: Running,
) -> None:
    """Chaos (seed 12): a placer put a create in `backoff` (the order budget was spent), later took it out,
    sent it and died before its state was written. The next owner's snapshot still has the create waiting;
    the attempt's `CancelOrder` then came. Calling it "never sent" let the supervisor place the fallback for
    everything while the order filled: the venue traded more than the intent. It must look at the venue,
    find the order and cancel it."""
    from actors.placer import Pending

    intent_id = new_intent().intent_id
    cid = f"{intent_id}-1"
    low = (await _bid(stepped)) - D(500)  # rests: nothing moves the stepped market
    await stepped.bus.buckets.intents.put(f"create.{cid}", b"vm-1-dead#0123456789ab")  # its claim
    await stepped.exchange.create_order("BTC/USDT", "limit", "buy", "0.01", str(low), {"clientOrderId": cid})
    await stepped.exchange.paper_control("advance", {"seconds": 1})  # past the venue's indexing lag
    placer = stepped.system.hosts["placer"].actor
    ctx = _context(intent_id, delivered=1)
    command = _place(intent_id, "1", "0.01", low)
    ctx.state = placer.State(venue="paper", symbol="BTC/USDT", intent_qty=D("0.01"))
    ctx.state.backoff[cid] = Pending(command=command, since_ns=time.time_ns() + 60 * 10**9,
                                     holder="vm-1-dead#0123456789ab", reason="risk.order_rate")

    await placer.handle(CancelOrder(**_routing(intent_id), client_order_id=cid, reason="attempt deadline passed"), ctx)
    for _ in range(200):
        if [m for m in ctx.published if isinstance(m, OrderRejected)]:
            break
        open_ours = [o for o in await stepped.exchange.fetch_open_orders("BTC/USDT") if o["clientOrderId"] == cid]
        if not open_ours:
            break
        await asyncio.sleep(0.05)  # the venue's cancel and indexing lag pass in wall-clock time
        await placer.on_timer(ctx)

    assert not [m for m in ctx.published if isinstance(m, OrderRejected)], ctx.published  # never "unsent"
    assert [m.client_order_id for m in ctx.published if isinstance(m, OrderPlaced)] == [cid]  # found it
    open_ours = [o for o in await stepped.exchange.fetch_open_orders("BTC/USDT") if o["clientOrderId"] == cid]
    assert open_ours == [], "the order an earlier owner sent is still open"
    assert [o["client_order_id"] for o in await _created(stepped, intent_id)] == [cid]  # and never created twice


async def test_a_place_order_handed_back_after_our_own_create_is_not_created_again(stepped: Running) -> None:
    """Review: this placer claimed the id and created the order, then the step failed (a publish or state
    write) and the same message came back to it. Its own claim proves nothing then: the order, closed and
    still unknown to the venue's lookups, must be waited for, not bought again."""
    intent_id = new_intent().intent_id
    cid = f"{intent_id}-1"
    host = stepped.system.hosts["placer"]
    placer = host.actor
    await stepped.bus.buckets.intents.put(f"create.{cid}", host.replica.encode())  # our own claim
    await stepped.exchange.create_order("BTC/USDT", "market", "buy", "0.01", None, {"clientOrderId": cid})
    ctx = _context(intent_id, delivered=2)
    ctx.state = placer.State(venue="paper", symbol="BTC/USDT", intent_qty=D("0.01"))

    found = await _eventually(placer, lambda: placer.handle(_place(intent_id, "1", "0.01", None), ctx), ctx)

    assert isinstance(found, OrderPlaced) and found.recovered, found
    assert [o["client_order_id"] for o in await _created(stepped, intent_id)] == [cid]


async def test_of_two_placers_taking_over_one_create_claim_only_one_wins(stepped: Running) -> None:
    """Chaos run, seed 8: during a lease split two placers both resolved one pending create. One re-took its
    own claim (the same value written back), the other then saw the holder it expected and took it too:
    the order was bought twice. Every take writes a new token, and a takeover names the token it saw."""
    placer = stepped.system.hosts["placer"].actor
    cid = f"{new_intent().intent_id}-1"

    seen, first = await placer._claim(cid)
    retaken, again = await placer._claim(cid, replacing=seen)  # the holder, after its absent grace
    late, late_won = await placer._claim(cid, replacing=seen)  # the other placer, which had seen the same

    assert first and again and retaken != seen
    assert not late_won and late == retaken


async def test_amounts_and_prices_reach_ccxt_as_strings_at_the_venues_precision(stepped: Running) -> None:
    exchange = await stepped.system.hosts["placer"].actor._venues.get("paper")
    seen: list[tuple[Any, Any]] = []
    original = exchange.create_order

    async def spy(symbol: str, type: str, side: str, amount: Any, price: Any = None, params: dict[str, Any] = {}) -> Any:
        seen.append((amount, price))
        return await original(symbol, type, side, amount, price, params)

    exchange.create_order = spy
    try:
        intent_id = new_intent().intent_id
        await stepped.bus.publish(_accepted(intent_id, "0.0123"))
        await stepped.bus.publish(_place(intent_id, "1", "0.0123", (await _bid(stepped)) - D("500.004")))
        await stepped.recorder.wait_for(OrderPlaced, intent_id)
    finally:
        exchange.create_order = original
    ((amount, price),) = seen
    assert isinstance(amount, str) and D(amount) == D("0.0123"), amount
    assert isinstance(price, str) and D(price) % D("0.01") == 0, price  # on the tick grid, never a float
    await _cancel_all(stepped)


async def test_a_rate_limited_create_is_retried_after_the_back_off_not_treated_as_unknown(stepped: Running) -> None:
    intent = new_intent()
    await stepped.exchange.paper_control(
        "faults_set",
        {"rules": [{"kind": "rate_limit", "client_order_id_prefix": intent.intent_id, "count": 1, "name": "rl"}]},
    )
    try:
        report = await execute(stepped.bus, intent, timeout=30)
    finally:
        await stepped.exchange.paper_control("faults_clear", {"name": "rl"})
    assert isinstance(report, ExecutionCompleted) and report.status == "filled", report
    assert stepped.recorder.of(OrderOutcomeUnknown, intent.intent_id) == []
    assert stepped.system.hosts["placer"].actor.stats["rate_limited"] >= 1


async def test_a_cancel_the_venue_answers_not_found_is_retried_until_the_order_is_terminal(stepped: Running) -> None:
    """Binance's "Unknown order sent.": the venue has not indexed the new order yet when its attempt ends.
    Dropping that cancel left the order resting and the intent without a report."""
    intent = new_intent(strategy="simple_limit", params=SimpleLimitParams(timeout_seconds=D("0.2"), price_offset_pct=D(1)))

    report = await execute(stepped.bus, intent, timeout=30)

    assert isinstance(report, ExecutionCompleted) and report.status == "unfilled", report
    assert stepped.system.hosts["placer"].actor.stats["cancel_failed"] >= 1  # it did meet the lag
    assert [o["status"] for o in await _created(stepped, intent.intent_id)] == ["canceled"]


async def test_a_market_buy_on_a_venue_that_needs_a_price_carries_the_touch() -> None:
    """Gate, HTX, Coinbase: a market buy without a price is refused (`createMarketBuyOrderRequiresPrice`)."""
    from venues.config import VenueQuirks

    config = stepped_config()
    config.paper_config = PaperVenueConfig(speed=0, quirks=VenueQuirks(market_buy_requires_price=True))
    running = await start_running(config)
    try:
        intent = new_intent()

        report = await execute(running.bus, intent, timeout=30)

        assert isinstance(report, ExecutionCompleted) and report.filled_qty > 0, report
        assert report.filled_qty <= intent.qty and running.recorder.of(OrderRejected, intent.intent_id) == []
    finally:
        await stop_running(running)


# -- no market order without a price; a late fallback does nothing -------------------------------------------


async def test_no_price_ends_the_attempts_without_a_blind_market_fallback(stale: Running) -> None:
    await execute(stale.bus, new_intent(), timeout=30)  # opens the book stream; the next book is stale
    intent = new_intent(
        strategy="aggressive_limit",
        params=AggressiveLimitParams(total_timeout_seconds=D(20), max_retries=3, fallback="market"),
    )

    report = await execute(stale.bus, intent, timeout=30)

    assert isinstance(report, ExecutionCompleted) and report.status == "failed", report
    assert "no price" in report.reason
    assert stale.recorder.of(ExecutionTimedOut, intent.intent_id) == []
    assert stale.recorder.of(PlaceOrder, intent.intent_id) == []


async def test_the_fallback_refuses_an_execution_timed_out_it_got_too_late(stepped: Running) -> None:
    intent_id = new_intent().intent_id
    late = ExecutionTimedOut(
        intent_id=intent_id, venue="paper", symbol="BTC/USDT", side="buy", remaining_qty=D("0.01"),
        filled_qty=D(0), fallback="market", act_by_ns=time.time_ns() - NS,
    )
    fallback = stepped.system.hosts["market_fallback"].actor

    await stepped.bus.publish(late)

    await wait_until(lambda: fallback.refused == 1, timeout=10)
    assert stepped.recorder.of(PlaceOrder, intent_id) == []


# -- intake: an outage is not the intent's fault -----------------------------------------------------------


async def test_a_venue_unreachable_at_intake_is_retried_and_the_intent_executes() -> None:
    """Right after a restart the supervisor cannot reach the venue yet: the intent is not rejected, it is
    accepted once the venue answers, within its budget."""
    system = await System(system_config(paper_venue=False, reconcile_at_start=False)).start()
    assert system.bus is not None
    recorder = await Recorder().attach(system.bus)
    stop = asyncio.Event()
    venue: asyncio.Task[None] | None = None
    try:
        intent = new_intent()
        await system.bus.publish(intent)
        await wait_until(lambda: system.hosts["supervisor"].stats["handled"] >= 1, timeout=10)
        venue = asyncio.create_task(run_paper_venue(system.url, PaperVenueConfig(speed=20.0), stop=stop))

        (report,) = await recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=40)

        assert report.status == "filled", report
        assert recorder.of(IntentRejected, intent.intent_id) == []
    finally:
        stop.set()
        if venue is not None:
            await venue
        await system.stop()


# -- the log is the truth ----------------------------------------------------------------------------------


class LoneSupervisor:
    """A supervisor host alone on a real nats-server with the paper venue, on a log the test writes."""

    def __init__(self, bus: Bus, pool: VenuePool, recorder: Recorder) -> None:
        self.bus, self.pool, self.recorder = bus, pool, recorder
        self.host: ActorHost | None = None

    async def start(self) -> ActorHost:
        self.host = await ActorHost(self.bus, Supervisor(self.pool)).start()
        return self.host


@asynccontextmanager
async def lone_supervisor(server: EmbeddedNats) -> AsyncIterator[LoneSupervisor]:
    bus = await Bus.connect(server.url, fast_settings())
    stop = asyncio.Event()
    venue = asyncio.create_task(run_paper_venue(server.url, PaperVenueConfig(speed=0), stop=stop))
    pool = VenuePool(nats_url=server.url)
    lone = LoneSupervisor(bus, pool, await Recorder().attach(bus))
    try:
        yield lone
    finally:
        if lone.host is not None:
            await lone.host.stop()
        await pool.close()
        stop.set()
        await venue
        await bus.close()


async def _log_attempt_one(bus: Bus, intent: Any, *, deadline_ns: int, price: Decimal) -> str:
    """The log of an aggressive intent up to attempt 1's order resting at `price`; returns its client order id."""
    iid, cid, qty = intent.intent_id, f"{intent.intent_id}-1", intent.qty
    r = _routing(iid)
    quote = {"side": "buy", "price": price, "bid": price, "ask": price + D("0.01"), "tick_size": D("0.01")}
    for msg in (
        intent,
        IntentAccepted(**r, side="buy", qty=qty, strategy="aggressive_limit", deadline_ns=time.time_ns() + 60 * NS),
        PriceRequested(**r, attempt=0, side="buy", mode="arrival", qty=qty),
        PriceQuoted(**r, attempt=0, mode="arrival", **quote),
        PriceRequested(**r, attempt=1, side="buy", mode="touch", qty=qty, request=1),
        PriceQuoted(**r, attempt=1, mode="touch", request=1, **quote),
        PlaceOrder(**r, client_order_id=cid, attempt=1, side="buy", order_type="limit", qty=qty, price=price,
                   deadline_ns=deadline_ns),
        OrderPlaced(**r, client_order_id=cid, order_id="77", attempt=1, side="buy", order_type="limit", qty=qty,
                    price=price),
    ):
        await bus.publish(msg)
    return cid


def _aggressive_intent(fallback: str) -> Any:
    return new_intent(
        strategy="aggressive_limit",
        params=AggressiveLimitParams(total_timeout_seconds=D(60), max_retries=3, fallback=fallback),
    )


async def test_a_new_owner_rebuilds_from_the_log_and_ignores_a_stale_snapshot(nats_server: EmbeddedNats) -> None:
    """Issue 10's double buy: attempt 1 filled completely (in the log), but the KV snapshot the new owner
    finds is older and says the order is still working past its deadline. Acting on it would cancel, time
    out and send the fallback to buy it all again. Rebuilt from the log, the owner finishes: filled."""
    async with lone_supervisor(nats_server) as lone:
        intent, price, now = _aggressive_intent("market"), D("60000"), time.time_ns()
        iid = intent.intent_id
        cid = await _log_attempt_one(lone.bus, intent, deadline_ns=now - NS, price=price)
        await lone.bus.publish(
            OrderFinalized(**_routing(iid), client_order_id=cid, order_id="77", attempt=1, status="filled",
                           filled_qty=intent.qty, avg_price=price)
        )
        snapshot = SupervisorState(
            intent=intent, accepted_ns=now, deadline_ns=now + 60 * NS, phase="working", attempt=1,
            attempt_deadline_ns=now - NS, price_request=2,
            orders=[OrderRecord(client_order_id=cid, attempt=1, origin="supervisor", qty=intent.qty, price=price,
                                order_id="77", status="open")],
        )
        partition = await _partition_of(lone.bus, iid)
        await lone.bus.buckets.state.put(f"supervisor.{partition}.{iid}", msgspec.json.encode(snapshot))

        host = await lone.start()

        (finished,) = await lone.recorder.wait_for(StrategyFinished, iid, timeout=15)
        assert finished.reason == "filled", finished
        assert lone.recorder.of(CancelOrder, iid) == [] and lone.recorder.of(ExecutionTimedOut, iid) == []
        assert [p.client_order_id for p in lone.recorder.of(PlaceOrder, iid)] == [cid]
        assert host.stats["rebuilt"] == 1


async def test_a_state_written_by_an_owner_that_lost_its_lease_is_rebuilt_over(nats_server: EmbeddedNats) -> None:
    """The new owner rebuilt the intent; then the old owner, not yet aware it lost the lease, writes its own
    older state. The new owner's next write is refused (compare-and-set) and it rebuilds from the log again
    instead of carrying on from what the old owner wrote."""
    async with lone_supervisor(nats_server) as lone:
        intent, price, now = _aggressive_intent("none"), D("60000"), time.time_ns()
        iid = intent.intent_id
        cid = await _log_attempt_one(lone.bus, intent, deadline_ns=now + 50 * NS, price=price)
        older = SupervisorState(intent=intent, accepted_ns=now, deadline_ns=now + 60 * NS, phase="pricing", attempt=1)
        key = f"supervisor.{await _partition_of(lone.bus, iid)}.{iid}"
        await lone.bus.buckets.state.put(key, msgspec.json.encode(older))
        host = await lone.start()
        await wait_until(lambda: host.stats["rebuilt"] == 1, timeout=10)
        await wait_until(lambda: not host.working(iid), timeout=10)

        await lone.bus.buckets.state.put(key, msgspec.json.encode(older))  # the old owner, still writing
        await lone.bus.publish(
            OrderFinalized(**_routing(iid), client_order_id=cid, order_id="77", attempt=1, status="filled",
                           filled_qty=intent.qty, avg_price=price)
        )

        # The step publishes StrategyFinished at once; its state write is refused, and the redelivered
        # OrderFinalized is handled on a state rebuilt from the log, not on what the old owner wrote.
        await wait_until(lambda: host.stats["rebuilt"] == 2, timeout=15)
        await wait_until(lambda: not host.working(iid) and not host.queued(iid), timeout=10)
        (finished,) = lone.recorder.of(StrategyFinished, iid)
        assert finished.reason == "filled", finished
        assert [p.client_order_id for p in lone.recorder.of(PlaceOrder, iid)] == [cid]

        async def stored_phase() -> str:
            entry = await lone.bus.buckets.state.get(key)
            return msgspec.json.decode(entry.value, type=SupervisorState).phase

        await wait_until(lambda: _is(stored_phase(), "finished"), timeout=10)  # written back within a flush delay


async def test_a_finished_intent_is_not_restarted_by_its_submission_delivered_again(nats_server: EmbeddedNats) -> None:
    """After a nats-server crash a consumer can deliver again what it had delivered (its acks were not yet
    on disk), past the duplicate window: the submission's stream sequence is the same, so the intent-id
    guard lets it through. The supervisor's durable "finished" marker must stop it."""
    settings = fast_settings(duplicate_window_s=0.5)
    config = system_config(settings=settings, nats_url=nats_server.url)
    system = await System(config).start()
    assert system.bus is not None
    try:
        intent = new_intent()
        report = await execute(system.bus, intent, timeout=30)
        assert isinstance(report, ExecutionCompleted) and report.status == "filled"
        await system.hosts["supervisor"].stop()
        del system.hosts["supervisor"]
        await asyncio.sleep(0.6)  # the server's duplicate window passes: a real time span, nothing to await
        await _replay_consumers(system.bus, "supervisor", Supervisor.consumes)
        replay = await ActorHost(system.bus, Supervisor(system.venue_pool)).start()
        system.hosts["supervisor"] = replay

        await wait_until(lambda: replay.stats["handled"] >= 1, timeout=10)
        await wait_until(lambda: not replay.working(intent.intent_id) and not replay.queued(intent.intent_id))

        assert len(await _stored(system.bus, IntentAccepted, intent.intent_id)) == 1
        assert len(await _stored(system.bus, PriceRequested, intent.intent_id)) == 1
    finally:
        await system.stop()


# -- helpers -----------------------------------------------------------------------------------------------


def _context(intent_id: str, *, delivered: int) -> Any:
    return handler_context(intent_id, delivered=delivered)


async def _eventually(actor: Any, step: Any, ctx: Any) -> Any:
    """Run the handler, then the actor's timer, until it has published an answer (a lookup may meet the
    venue's indexing lag and be retried from the timer)."""
    await step()
    for _ in range(200):
        answers = [m for m in ctx.published if isinstance(m, OrderPlaced | OrderRejected)]
        if answers:
            return answers[-1]
        await asyncio.sleep(0.05)  # the venue's indexing lag passes in wall-clock time: nothing to await
        await actor.on_timer(ctx)
    raise AssertionError(f"no answer: {ctx.published}")


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def _partition_of(bus: Bus, intent_id: str) -> int:
    sub = await bus.js.subscribe(subjects.intent_filter(intent_id), ordered_consumer=True)
    try:
        msg = await sub.next_msg(timeout=5)
        return subjects.parse(msg.subject).partition  # type: ignore[return-value,union-attr]
    finally:
        await sub.unsubscribe()


async def _replay_consumers(bus: Bus, actor: str, kinds: tuple[type, ...]) -> None:
    """Make the actor's durable consumers deliver the whole log again, as after a store that lost acks."""
    stream = bus.settings.stream
    for partition in range(bus.settings.partitions):
        durable = f"{actor}-p{partition}"
        try:
            await bus.js.delete_consumer(stream, durable)
        except Exception:
            pass
        await bus.js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subjects=[subjects.partition_filter(k.kind, partition) for k in kinds],
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=bus.settings.ack_wait_s,
                max_ack_pending=10_000,
                max_deliver=-1,
            ),
        )


async def _stored(bus: Bus, kind: type, intent_id: str) -> list[Any]:
    from bus.ops.replay import read_stream

    return [
        r.message()
        async for r in read_stream(bus, f"{subjects.PREFIX}.{kind.kind}.*.*.{intent_id}")  # type: ignore[attr-defined]
    ]
