"""The controls bucket (bus/controls.py) on a real nats-server, seen from two connections (two processes):
trading states written and announced, risk limits validated, reservations and the order-rate budget never
over-committed by concurrent writers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from actors.risk import reservation_denial, reservation_for
from bus.bus import Bus
from bus.controls import ControlStore
from bus.server import EmbeddedNats
from messages import decode
from messages.controls import (
    CONTROL_INTENT,
    DENY_BALANCE,
    Reservation,
    Reservations,
    RiskLimits,
    TradingStateChanged,
    TradingStates,
)
from tests.helpers import fast_settings, wait_until

D = Decimal
ANNOUNCED = "exec.trading_state_changed.>"
VENUE, SYMBOL = "paper", "BTC/USDT"


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, fast_settings())
    yield b
    await b.close()


@pytest.fixture
async def other(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    """A second connection with its own store: another process."""
    b = await Bus.connect(nats_server.url, fast_settings(), name="execbus-other")
    yield b
    await b.close()


class Announcements:
    """Every `TradingStateChanged` seen live, with the subject it came on."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, TradingStateChanged]] = []

    async def attach(self, bus: Bus) -> Announcements:
        async def keep(raw: Msg) -> None:
            msg = decode(raw.data)
            assert isinstance(msg, TradingStateChanged)
            self.seen.append((raw.subject, msg))

        await bus.nc.subscribe(ANNOUNCED, cb=keep)
        await bus.nc.flush()
        return self

    @property
    def subjects(self) -> list[str]:
        return [subject for subject, _ in self.seen]


async def stored_announcements(bus: Bus) -> int:
    """How many `TradingStateChanged` the log holds."""
    info = await bus.js.stream_info(bus.settings.stream, subjects_filter=ANNOUNCED)
    return sum((info.state.subjects or {}).values())


async def revision(store: ControlStore, key: str) -> int:
    try:
        return (await store._kv.get(key)).revision
    except nats.js.errors.KeyNotFoundError:
        return 0


# -- trading states ---------------------------------------------------------------------------------------


async def test_set_trading_writes_each_scope_and_announces_it_on_its_subject(bus: Bus) -> None:
    store = await bus.controls()
    heard = await Announcements().attach(bus)

    every = await store.set_trading(bus.publish, state="HALTED", reason="incident", by="ops", cancel_working=True)
    venue = await store.set_trading(bus.publish, venue=VENUE, state="REDUCING", by="ops")
    market = await store.set_trading(bus.publish, venue=VENUE, symbol=SYMBOL, state="HALTED")
    assert every is not None and venue is not None and market is not None

    assert (every.venue, every.symbol, every.scope_venue, every.scope_symbol) == ("_any", "ANY/ANY", "", "")
    assert (every.state, every.previous, every.reason, every.by, every.cancel_working) == (
        "HALTED", "ACTIVE", "incident", "ops", True,
    )
    assert (venue.venue, venue.symbol, venue.scope_venue, venue.scope_symbol) == (VENUE, "ANY/ANY", VENUE, "")
    assert (market.venue, market.symbol, market.scope_venue, market.scope_symbol) == (VENUE, SYMBOL, VENUE, SYMBOL)
    assert {e.intent_id for e in (every, venue, market)} == {CONTROL_INTENT}
    assert every.revision < venue.revision < market.revision

    await wait_until(lambda: len(heard.seen) == 3)
    assert heard.subjects == [
        "exec.trading_state_changed._any.ANY-ANY.trading_state",
        "exec.trading_state_changed.paper.ANY-ANY.trading_state",
        "exec.trading_state_changed.paper.BTC-USDT.trading_state",
    ]
    assert [msgspec.structs.replace(msg, ts_init=0) for _, msg in heard.seen] == [every, venue, market]
    assert await stored_announcements(bus) == 3

    states = await store.trading()
    assert {(s.venue, s.symbol, s.state) for s in states.scopes} == {
        ("", "", "HALTED"), (VENUE, "", "REDUCING"), (VENUE, SYMBOL, "HALTED"),
    }
    everywhere = states.find("", "")
    assert everywhere is not None and everywhere.cancel_working and everywhere.reason == "incident"
    assert everywhere.changed_ns == every.ts_event
    # The document is plain JSON: a tool that is not execbus reads it.
    raw = msgspec.json.decode((await store._kv.get("trading")).value)
    assert {(s["venue"], s["symbol"], s["state"]) for s in raw["scopes"]} == {
        ("", "", "HALTED"), (VENUE, "", "REDUCING"), (VENUE, SYMBOL, "HALTED"),
    }


async def test_setting_the_same_state_twice_announces_once(bus: Bus) -> None:
    store = await bus.controls()
    first = await store.set_trading(bus.publish, venue=VENUE, state="HALTED", reason="first")
    assert first is not None
    written = await revision(store, "trading")

    assert await store.set_trading(bus.publish, venue=VENUE, state="HALTED", reason="again") is None
    assert await revision(store, "trading") == written
    assert await stored_announcements(bus) == 1
    scope = (await store.trading()).find(VENUE, "")
    assert scope is not None and scope.reason == "first"

    # Asking for canceling the working intents is a change; so is another state.
    cancel = await store.set_trading(bus.publish, venue=VENUE, state="HALTED", cancel_working=True)
    assert cancel is not None and (cancel.previous, cancel.state, cancel.cancel_working) == ("HALTED", "HALTED", True)
    reducing = await store.set_trading(bus.publish, venue=VENUE, state="REDUCING")
    assert reducing is not None and (reducing.previous, reducing.state) == ("HALTED", "REDUCING")
    assert await stored_announcements(bus) == 3


async def test_active_removes_the_scope_and_active_again_changes_nothing(bus: Bus) -> None:
    store = await bus.controls()
    await store.set_trading(bus.publish, state="HALTED")
    await store.set_trading(bus.publish, venue=VENUE, symbol=SYMBOL, state="REDUCING")

    resumed = await store.set_trading(bus.publish, venue=VENUE, symbol=SYMBOL, state="ACTIVE", by="ops")
    assert resumed is not None and (resumed.previous, resumed.state) == ("REDUCING", "ACTIVE")
    states = await store.trading()
    assert [(s.venue, s.symbol) for s in states.scopes] == [("", "")]

    written = await revision(store, "trading")
    assert await store.set_trading(bus.publish, venue=VENUE, symbol=SYMBOL, state="ACTIVE") is None
    assert await store.set_trading(bus.publish, venue="binance", state="ACTIVE") is None  # never listed
    assert await revision(store, "trading") == written
    assert await stored_announcements(bus) == 3

    await store.set_trading(bus.publish, state="ACTIVE")
    assert await store.trading() == TradingStates()


async def test_the_watch_keeps_another_processs_cached_states_fresh(bus: Bus, other: Bus) -> None:
    mine, theirs = await bus.controls(), await other.controls()
    heard: list[TradingStates] = []
    theirs.on_trading_change(heard.append)

    def effective() -> str:
        scope = theirs.trading_cached.effective(VENUE, SYMBOL)
        return scope.state if scope is not None else "ACTIVE"

    await mine.set_trading(bus.publish, venue=VENUE, state="HALTED", reason="watch me")
    await wait_until(lambda: effective() == "HALTED")
    await wait_until(lambda: heard and heard[-1].find(VENUE, "") is not None)

    await mine.set_trading(bus.publish, venue=VENUE, state="REDUCING")
    await wait_until(lambda: effective() == "REDUCING")
    await mine.set_trading(bus.publish, venue=VENUE, state="ACTIVE")
    await wait_until(lambda: effective() == "ACTIVE")
    assert theirs.trading_cached == TradingStates()

    await mine.set_limit("max_intent_notional", "1234.5")
    await wait_until(lambda: theirs.limits_cached.max_intent_notional == D("1234.5"))
    assert (await theirs.limits()).max_intent_notional == D("1234.5")


async def test_a_deleted_key_reads_as_the_default_and_can_be_written_again(bus: Bus, other: Bus) -> None:
    """`nats kv del execbus_controls risk` is how an operator goes back to the defaults: the delete marker
    is the key's last message, and the next change must compare against it."""
    store, theirs = await bus.controls(), await other.controls()
    await store.set_limit("max_intent_notional", "500")
    await store.set_trading(bus.publish, venue=VENUE, state="HALTED")
    await wait_until(lambda: theirs.limits_cached != RiskLimits() and theirs.trading_cached != TradingStates())
    await store._kv.delete("risk")
    await store._kv.purge("trading")
    await wait_until(lambda: theirs.limits_cached == RiskLimits() and theirs.trading_cached == TradingStates())
    assert await theirs.limits(fresh=True) == RiskLimits()

    assert (await store.set_limit("max_intent_notional", "700")).max_intent_notional == D("700")
    assert (await theirs.limits(fresh=True)).max_intent_notional == D("700")
    again = await store.set_trading(bus.publish, venue=VENUE, state="HALTED")
    assert again is not None and again.previous == "ACTIVE"


@pytest.mark.parametrize(
    ("venue", "symbol", "message"),
    [
        ("", SYMBOL, "a symbol scope needs its venue"),
        ("Binance", "", "'Binance' is not a venue id"),
        ("bin.ance", "", "'bin.ance' is not a venue id"),
        ("_any", "", "reserved"),
        (VENUE, "BTCUSDT", "'BTCUSDT' is not a symbol"),
        (VENUE, "BTC/USDT€", "is not a symbol"),
        (VENUE, "ANY/ANY", "reserved"),
    ],
)
async def test_an_unknown_scope_is_a_clear_error_that_changes_nothing(
    bus: Bus, venue: str, symbol: str, message: str
) -> None:
    store = await bus.controls()
    await store.set_trading(bus.publish, venue="binance", state="REDUCING")
    before, written = await store.trading(), await revision(store, "trading")

    with pytest.raises(ValueError, match=message):
        await store.set_trading(bus.publish, venue=venue, symbol=symbol, state="HALTED")
    assert await store.trading() == before
    assert await revision(store, "trading") == written
    assert await stored_announcements(bus) == 1


# -- risk limits ------------------------------------------------------------------------------------------


async def test_set_limit_values_round_trip_through_another_connection(bus: Bus, other: Bus) -> None:
    store, theirs = await bus.controls(), await other.controls()
    assert await theirs.limits(fresh=True) == RiskLimits()  # nothing stored: the defaults

    changes = [
        ("max_intent_notional", "1000.5"),
        ("max_open_notional", " 5000 "),
        ("max_orders_per_second", "1"),  # at its lower bound
        ("balance_check", "off"),
        ("balance_buffer_pct", "100"),  # at its upper bound
    ]
    for key, raw in changes:
        await store.set_limit(key, raw)
    expected = RiskLimits(
        max_intent_notional=D("1000.5"), max_open_notional=D("5000"), max_orders_per_second=1,
        balance_check=False, balance_buffer_pct=D("100"),
    )
    assert await store.limits() == expected
    assert await theirs.limits(fresh=True) == expected

    assert (await store.set_limit("balance_buffer_pct", "0")).balance_buffer_pct == D("0")  # the lower bound
    assert (await store.set_limit("balance_check", "ON")).balance_check is True
    assert (await theirs.limits(fresh=True)) == msgspec.structs.replace(
        expected, balance_buffer_pct=D("0"), balance_check=True
    )
    raw_doc = msgspec.json.decode((await store._kv.get("risk")).value)
    assert raw_doc["max_intent_notional"] == "1000.5"  # decimals travel as strings


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("max_notional", "5", "unknown risk limit 'max_notional'"),
        ("", "5", "unknown risk limit ''"),
        ("max_intent_notional", "abc", "max_intent_notional is a number, got 'abc'"),
        ("max_intent_notional", "", "max_intent_notional is a number"),
        ("max_intent_notional", "NaN", "max_intent_notional must be a finite number"),
        ("max_intent_notional", "-5", "max_intent_notional must be > 0, got -5"),
        ("max_intent_notional", "0", "max_intent_notional must be > 0, got 0"),
        ("max_open_notional", "-0.01", "max_open_notional must be > 0"),
        ("max_orders_per_second", "0", "max_orders_per_second must be >= 1, got 0"),
        ("max_orders_per_second", "-5", "max_orders_per_second must be >= 1"),
        ("max_orders_per_second", "2.5", "max_orders_per_second is a whole number, got '2.5'"),
        ("balance_buffer_pct", "150", "balance_buffer_pct must be between 0 and 100, got 150"),
        ("balance_buffer_pct", "100.01", "balance_buffer_pct must be between 0 and 100"),
        ("balance_buffer_pct", "-1", "balance_buffer_pct must be between 0 and 100"),
        ("balance_check", "maybe", "balance_check is on or off, got 'maybe'"),
    ],
)
async def test_a_bad_limit_is_a_clear_error_that_changes_nothing(
    bus: Bus, other: Bus, key: str, raw: str, message: str
) -> None:
    store, theirs = await bus.controls(), await other.controls()
    # Nothing stored yet: a bad value does not even create the key.
    with pytest.raises(ValueError, match=message):
        await store.set_limit(key, raw)
    assert await revision(store, "risk") == 0

    good = await store.set_limit("max_intent_notional", "2000")
    written = await revision(store, "risk")
    with pytest.raises(ValueError, match=message):
        await store.set_limit(key, raw)
    assert await revision(store, "risk") == written
    assert await store.limits(fresh=True) == good
    assert store.limits_cached == good
    assert await theirs.limits(fresh=True) == good


# -- reservations -----------------------------------------------------------------------------------------

LIMITS = RiskLimits(balance_buffer_pct=D("0"))


def buy(intent_id: str, qty: str, price: str = "100", expires_ns: int | None = None) -> Reservation:
    return reservation_for(
        LIMITS, intent_id=intent_id, symbol=SYMBOL, side="buy", qty=D(qty), ref_price=D(price),
        expires_ns=expires_ns if expires_ns is not None else time.time_ns() + 60_000_000_000,
    )


def against(free: Decimal, reservation: Reservation) -> Callable[[Reservations], str | None]:
    """The supervisor's decision: the venue's free balance less what the others in flight reserved."""

    def decide(current: Reservations) -> str | None:
        denial = reservation_denial(LIMITS, reservation, free, current, time.time_ns())
        return None if denial is None else f"{denial.code}: {denial.reason}"

    return decide


async def test_two_concurrent_intents_exceeding_the_balance_one_runs_one_is_denied(bus: Bus, other: Bus) -> None:
    mine, theirs = await bus.controls(), await other.controls()
    free = D("1500")
    a, b = buy("intent-a", "10"), buy("intent-b", "10")  # 1000 each
    results = await asyncio.gather(mine.reserve(VENUE, a, against(free, a)), theirs.reserve(VENUE, b, against(free, b)))

    granted = [r for r in results if r is None]
    denied = [r for r in results if r is not None]
    assert len(granted) == 1 and len(denied) == 1
    assert denied[0].startswith(DENY_BALANCE)
    assert "needs 1000 USDT; held 1500 less 1000 reserved" in denied[0]
    held = await mine.reservations(VENUE)
    assert len(held.entries) == 1 and held.entries[0].amount == D("1000")


async def test_concurrent_reservations_from_two_processes_never_over_commit(bus: Bus, other: Bus) -> None:
    stores = (await bus.controls(), await other.controls())
    free = D("1000")
    wanted = [buy(f"intent-{i}", "1") for i in range(24)]  # 100 each: exactly 10 fit
    results = await asyncio.gather(
        *(stores[i % 2].reserve(VENUE, res, against(free, res)) for i, res in enumerate(wanted))
    )

    assert sum(r is None for r in results) == 10
    assert all(r.startswith(DENY_BALANCE) for r in results if r is not None)
    held = await stores[1].reservations(VENUE)
    now = time.time_ns()
    assert len(held.entries) == 10
    assert held.reserved("USDT", now) == free
    assert held.open_notional(SYMBOL, now) == free
    assert {r.intent_id for r in held.entries} == {res.intent_id for res, r in zip(wanted, results) if r is None}

    # Released, the balance is free for the next one, and for no more than that.
    await stores[0].release(VENUE, held.entries[0].intent_id)
    assert len((await stores[1].reservations(VENUE)).entries) == 9
    late = buy("late", "1")
    assert await stores[1].reserve(VENUE, late, against(free, late)) is None
    later = buy("later", "0.01")
    denial = await stores[0].reserve(VENUE, later, against(free, later))
    assert denial is not None and denial.startswith(DENY_BALANCE)


async def test_reserve_replaces_the_intents_own_and_drops_expired_ones(bus: Bus) -> None:
    store = await bus.controls()
    free = D("1000")
    stale = buy("stale", "9", expires_ns=time.time_ns() - 1)
    assert await store.reserve(VENUE, stale, lambda current: None) is None  # written as is, expired already

    first = buy("mine", "6")
    assert await store.reserve(VENUE, first, against(free, first)) is None  # the expired 900 does not count
    bigger = buy("mine", "10")
    assert await store.reserve(VENUE, bigger, against(free, bigger)) is None  # its own 600 does not count
    held = await store.reservations(VENUE)
    assert [(r.intent_id, r.amount) for r in held.entries] == [("mine", D("1000"))]

    # Another venue's reservations are its own.
    elsewhere = buy("mine-too", "10")
    assert await store.reserve("binance", elsewhere, against(free, elsewhere)) is None
    assert len((await store.reservations(VENUE)).entries) == 1


async def test_release_frees_and_an_unknown_release_changes_nothing(bus: Bus, other: Bus) -> None:
    store, theirs = await bus.controls(), await other.controls()
    res = buy("held", "5")
    assert await store.reserve(VENUE, res, against(D("500"), res)) is None
    written = await revision(store, "reserve.paper")

    await theirs.release(VENUE, "never-reserved")
    assert await revision(store, "reserve.paper") == written
    await theirs.release(VENUE, "held")
    assert await store.reservations(VENUE) == Reservations()
    await theirs.release(VENUE, "held")  # twice: nothing left to give back
    await store.release("nowhere", "held")  # a venue with no reservations at all


async def test_reservations_that_would_outgrow_one_message_refuse_the_new_intent_and_still_release(bus: Bus) -> None:
    """One venue's reservations are one KV value, and a value must fit one NATS message (`max_payload`, 1 MB
    by default: about 7,000 intents in flight). Past that the next intent gets a reason, not a handler
    failure; the rest of its batch is written, each change admitted in turn while the value fits."""
    store = await bus.controls()
    empty = len(msgspec.json.encode(Reservations()))
    entry = len(msgspec.json.encode(Reservations(entries=(buy("intent-00", "1"),)))) - empty
    store.max_payload_override = 1024 + empty + 9 * entry + entry // 2  # room for nine (1024: for the headers)
    granted = [await store.reserve(VENUE, r, lambda current: None) for r in (buy(f"intent-{i:02}", "1") for i in range(9))]
    assert granted == [None] * 9
    held = await store.reservations(VENUE)

    # A batch of a reservation, a release and another reservation: each is admitted in turn while the value
    # fits. The first would make ten (refused); the release makes eight; the second then fits.
    results = await asyncio.gather(
        store.reserve(VENUE, buy("late-1", "1"), lambda current: None),
        store.release(VENUE, "intent-00"),
        store.reserve(VENUE, buy("late-2", "1"), lambda current: None),
        return_exceptions=True,
    )

    assert isinstance(results[0], str) and "too many intents in flight on this venue" in results[0]
    assert "10 reservations of intents in flight" in results[0] and "max_payload" in results[0]
    assert results[1] is None and results[2] is None
    after = await store.reservations(VENUE)
    assert sorted(r.intent_id for r in after.entries) == sorted(
        [r.intent_id for r in held.entries if r.intent_id != "intent-00"] + ["late-2"]
    )
    assert len(msgspec.json.encode(after)) <= store.max_payload - 1024
    # An intent that reserves again what it holds does not grow the value: it is not refused.
    assert await store.reserve(VENUE, buy("late-2", "1"), lambda current: None) is None
    # Once some have finished, an intent fits again.
    for r in held.entries[1:5]:
        await store.release(VENUE, r.intent_id)
    assert await store.reserve(VENUE, buy("later", "1"), lambda current: None) is None


# -- the order-rate budget --------------------------------------------------------------------------------


async def test_order_slots_are_shared_by_two_processes_at_most_per_second_each_second(bus: Bus, other: Bus) -> None:
    stores = (await bus.controls(), await other.controls())
    per_second, calls = 5, 30

    async def take(store: ControlStore) -> tuple[float, float, float]:
        before = time.time()
        wait = await store.take_order_slot(VENUE, per_second)
        return before, time.time(), wait

    started = time.time()
    results = await asyncio.gather(*(take(stores[i % 2]) for i in range(calls)))
    finished = time.time()

    grants = [(before, after) for before, after, wait in results if wait == 0]
    waits = [(before, after, wait) for before, after, wait in results if wait > 0]
    # Each grant counted in the wall-clock second it was taken in; one that straddles a second boundary
    # (taken in either) only counts towards the total.
    per: dict[int, int] = {}
    for before, after in grants:
        if int(before) == int(after):
            per[int(before)] = per.get(int(before), 0) + 1
    assert all(count <= per_second for count in per.values()), per
    seconds = int(finished) - int(started) + 1
    assert len(grants) <= per_second * seconds
    assert len(grants) >= min(per_second, calls)  # the budget is used, not lost to contention
    assert waits, "no call was told to wait"
    for before, after, wait in waits:  # until the start of a second after the one the call was refused in
        # (up to two: a call in a second's last SLOT_GUARD_S counts in the next one too, and that may be full)
        assert 0 < wait <= 2
        assert after + wait >= int(before) + 1 - 1e-6, (before, after, wait)

    # A second nobody has taken slots in has its whole budget. (Waiting for a second is the point here.)
    await asyncio.sleep(int(time.time()) + 2.01 - time.time())
    assert await stores[0].take_order_slot(VENUE, per_second) == 0


# -- stopping ---------------------------------------------------------------------------------------------


async def test_stop_ends_the_watch_even_when_a_cancel_is_swallowed(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under Python 3.11 `asyncio.wait_for` (nats-py's requests) drops a cancel that lands as its reply
    arrives; the watch went on and `stop` (so `Bus.close`, so every CLI command) waited forever."""
    kv = bus.buckets.controls
    real_watch = kv.watch
    in_flight = asyncio.Event()

    async def watch_that_swallows_one_cancel(key: str) -> Any:
        in_flight.set()
        try:
            await asyncio.Event().wait()  # a request whose reply lands with the cancel
        except asyncio.CancelledError:
            pass  # what wait_for does then: the reply is returned, the cancel is lost
        return await real_watch(key)

    monkeypatch.setattr(kv, "watch", watch_that_swallows_one_cancel)
    store = await ControlStore(kv, bus.acks).start()
    await in_flight.wait()
    await asyncio.wait_for(store.stop(), timeout=5)
    assert store._watch_task is None
