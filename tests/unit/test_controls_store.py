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
from bus.controls import HOLD_GRACE_S, RELEASED_TTL_S, ControlStore
from bus.server import EmbeddedNats
from messages import decode, encode
from messages.controls import (
    CONTROL_INTENT,
    DENY_BALANCE,
    RESERVATION_WINDOW_NS,
    Reservation,
    ReservedTotals,
    RiskLimits,
    TradingStateChanged,
    TradingStates,
    reservation_window,
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
TOTAL = "reserve.paper.total"


def buy(intent_id: str, qty: str, price: str = "100", expires_ns: int | None = None) -> Reservation:
    return reservation_for(
        LIMITS, intent_id=intent_id, symbol=SYMBOL, side="buy", qty=D(qty), ref_price=D(price),
        expires_ns=expires_ns if expires_ns is not None else time.time_ns() + 60_000_000_000,
    )


def against(free: Decimal, reservation: Reservation) -> Callable[[ReservedTotals], str | None]:
    """The supervisor's decision: the venue's free balance less what the others in flight reserved."""

    def decide(current: ReservedTotals) -> str | None:
        denial = reservation_denial(LIMITS, reservation, free, current, time.time_ns())
        return None if denial is None else f"{denial.code}: {denial.reason}"

    return decide


def anything(current: ReservedTotals) -> str | None:
    return None


async def held_by(store: ControlStore, intents: list[str]) -> dict[str, Decimal]:
    """What each of `intents` holds by its own key (those that hold nothing left out)."""
    found = {i: await store.reservation(VENUE, i) for i in intents}
    return {i: r.amount for i, r in found.items() if r is not None}


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
    totals = await mine.reserved_totals(VENUE)
    assert totals.reserved("USDT", time.time_ns()) == D("1000") and totals.in_flight(time.time_ns()) == 1
    winner = "intent-a" if results[0] is None else "intent-b"
    assert await held_by(theirs, ["intent-a", "intent-b"]) == {winner: D("1000")}


async def test_concurrent_reservations_from_two_processes_never_over_commit(bus: Bus, other: Bus) -> None:
    stores = (await bus.controls(), await other.controls())
    free = D("1000")
    wanted = [buy(f"intent-{i}", "1") for i in range(24)]  # 100 each: exactly 10 fit
    results = await asyncio.gather(
        *(stores[i % 2].reserve(VENUE, res, against(free, res)) for i, res in enumerate(wanted))
    )

    assert sum(r is None for r in results) == 10
    assert all(r.startswith(DENY_BALANCE) for r in results if r is not None)
    totals = await stores[1].reserved_totals(VENUE)
    now = time.time_ns()
    assert totals.in_flight(now) == 10
    assert totals.reserved("USDT", now) == free
    assert totals.open_notional(SYMBOL, now) == free
    granted = [res.intent_id for res, r in zip(wanted, results) if r is None]
    assert await held_by(stores[0], [r.intent_id for r in wanted]) == {i: D("100") for i in granted}

    # Released, the balance is free for the next one, and for no more than that.
    await stores[0].release(VENUE, granted[0])
    assert await stores[1].reservation(VENUE, granted[0]) is None
    assert (await stores[1].reserved_totals(VENUE)).reserved("USDT", time.time_ns()) == D("900")
    late = buy("late", "1")
    assert await stores[1].reserve(VENUE, late, against(free, late)) is None
    later = buy("later", "0.01")
    denial = await stores[0].reserve(VENUE, later, against(free, later))
    assert denial is not None and denial.startswith(DENY_BALANCE)


async def test_an_intent_reserving_again_replaces_its_own_and_expired_windows_stop_counting(bus: Bus) -> None:
    store = await bus.controls()
    free = D("1000")
    # Its window (10 s) ended before now: written as is, and it counts for nothing.
    stale = buy("stale", "9", expires_ns=time.time_ns() - 2 * RESERVATION_WINDOW_NS)
    assert await store.reserve(VENUE, stale, anything) is None
    assert (await store.reserved_totals(VENUE)).reserved("USDT", time.time_ns()) == 0

    first = buy("mine", "6")
    assert await store.reserve(VENUE, first, against(free, first)) is None  # the expired 900 does not count
    # The same intent again (a redelivered submission, its deadline restarted): decided without its own 600,
    # and replacing it, later expiry and all.
    again = buy("mine", "10", expires_ns=first.expires_ns + 5 * RESERVATION_WINDOW_NS)
    seen: list[Decimal] = []

    def decide(current: ReservedTotals) -> str | None:
        seen.append(current.reserved("USDT", time.time_ns()))
        return against(free, again)(current)

    assert await store.reserve(VENUE, again, decide) is None
    assert seen == [D("0")]
    totals = await store.reserved_totals(VENUE)
    assert totals.reserved("USDT", time.time_ns()) == D("1000") and totals.in_flight(time.time_ns()) == 1
    assert [w.until_ns for w in totals.windows] == [reservation_window(again.expires_ns)]
    assert await store.reservation(VENUE, "mine") == again
    # A denial on a later delivery is still a denial, and changes nothing (the supervisor then releases).
    too_big = buy("mine", "11")
    assert (await store.reserve(VENUE, too_big, against(free, too_big)) or "").startswith(DENY_BALANCE)
    assert await store.reserved_totals(VENUE) == totals and await store.reservation(VENUE, "mine") == again

    # Another venue's reservations are its own.
    elsewhere = buy("mine-too", "10")
    assert await store.reserve("binance", elsewhere, against(free, elsewhere)) is None
    assert (await store.reserved_totals(VENUE)).in_flight(time.time_ns()) == 1


async def test_a_first_delivery_reserves_without_reading_and_still_meets_a_key_that_is_there(bus: Bus) -> None:
    """`fresh` (a first delivery) skips the read of the intent's key: no key, a released one and, should it
    be there after all, a live one (replaced as on a redelivery) all end with the totals counting it once."""
    store = await bus.controls()
    reads: list[str] = []

    async def count(msg: Any) -> None:
        reads.append(msg.subject + " " + msg.data.decode())  # (the key is in the request's body)

    await bus.nc.subscribe("$JS.API.DIRECT.GET.>", cb=count)
    await bus.nc.subscribe("$JS.API.STREAM.MSG.GET.>", cb=count)
    await bus.nc.flush()
    await store.reserved_totals(VENUE)  # (the totals' first read, and the old layout's, out of the way)
    await store.reserve(VENUE, buy("warm", "1"), anything)
    await bus.nc.flush()
    reads.clear()

    assert await store.reserve(VENUE, buy("new", "2"), anything, fresh=True) is None
    await bus.nc.flush()
    assert not any("reserve.paper.intent" in r for r in reads), reads
    assert await store.reserve(VENUE, buy("other", "0.01"), anything) is None  # (not fresh: it reads the key)
    await bus.nc.flush()
    assert any("reserve.paper.intent.other" in r for r in reads), reads
    await store.release(VENUE, "other")
    await store.release(VENUE, "new")
    assert await store.reserve(VENUE, buy("new", "3"), anything, fresh=True) is None  # over its released key
    assert await store.reserve(VENUE, buy("new", "4"), anything, fresh=True) is None  # over its live key
    assert await store.reservation(VENUE, "new") == buy("new", "4", expires_ns=(await store.reservation(VENUE, "new")).expires_ns)
    totals = await store.reserved_totals(VENUE)
    assert totals.reserved("USDT", time.time_ns()) == D("500") and totals.in_flight(time.time_ns()) == 2


async def test_unreadable_totals_refuse_reservations_and_a_bad_change_fails_alone(bus: Bus) -> None:
    """Totals written by hand and wrong cannot be decided on (taken for empty, every intent could spend the
    same balance): a reservation is refused naming the key, a release is logged, neither crashes."""
    store = await bus.controls()
    res = buy("early", "1")
    assert await store.reserve(VENUE, res, anything) is None
    for bad in (b"not json", b'{"windows":[{"until_ns":1,"count":1,"amounts":{"USDT":"NaN"}}]}',
                b'{"windows":[{"until_ns":1,"count":-1}]}'):
        await bus.buckets.controls.put(TOTAL, bad)
        refused = await store.reserve(VENUE, buy("next", "1"), anything)
        assert refused is not None and "reserve.paper.total cannot be read" in refused and "fix or delete" in refused
        assert await store.reservation(VENUE, "next") is None
    await store.release(VENUE, "early")  # (logged: the totals cannot be changed)
    assert await store.reservation(VENUE, "early") is None
    with pytest.raises(msgspec.ValidationError, match="amount"):
        msgspec.json.decode(b'{"intent_id":"x","symbol":"BTC/USDT","currency":"USDT","amount":"NaN",'
                            b'"notional":"1","expires_ns":1}', type=Reservation)

    # One change of a batch that raises fails alone; the others are written.
    await bus.buckets.controls.put(TOTAL, encode(ReservedTotals()))

    def broken(current: ReservedTotals) -> ReservedTotals:
        raise ArithmeticError("a value this change cannot take")

    results = await asyncio.gather(
        store._update_together(TOTAL, ReservedTotals, broken),
        store._update_together(TOTAL, ReservedTotals, lambda c: c.adding(buy("fine", "1"), time.time_ns())),
        return_exceptions=True,
    )
    assert isinstance(results[0], ArithmeticError) and isinstance(results[1], int)
    assert (await store.reserved_totals(VENUE)).in_flight(time.time_ns()) == 1


async def test_reservations_of_the_layout_before_the_totals_are_moved_over_once(bus: Bus, other: Bus) -> None:
    """A deployment upgraded with intents in flight: their reservations in the old document (one key per
    venue) are folded into the totals and their own keys the first time the venue is reserved on."""
    store = await bus.controls()
    live, expired = buy("old-live", "3"), buy("old-gone", "4", expires_ns=time.time_ns() - 2 * RESERVATION_WINDOW_NS)
    moved_already = buy("old-moved", "5")
    await bus.buckets.controls.put("reserve.paper", msgspec.json.encode({"entries": [live, expired, moved_already]}))
    assert await store.reserve(VENUE, moved_already, anything) is None  # (moves the other two first)

    totals = await store.reserved_totals(VENUE)
    assert totals.reserved("USDT", time.time_ns()) == D("800") and totals.in_flight(time.time_ns()) == 2
    assert await held_by(store, ["old-live", "old-gone", "old-moved"]) == {"old-live": D("300"), "old-moved": D("500")}
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await bus.buckets.controls.get("reserve.paper")
    # Another process finds nothing left to move, and its release gives back what was moved.
    theirs = await other.controls()
    await theirs.release(VENUE, "old-live")
    assert (await theirs.reserved_totals(VENUE)).reserved("USDT", time.time_ns()) == D("500")


async def test_release_frees_once_and_an_unknown_release_writes_nothing(bus: Bus, other: Bus) -> None:
    store, theirs = await bus.controls(), await other.controls()
    expires_ns = time.time_ns() + 60_000_000_000  # (one window: two releases of "held" would empty it)
    for intent in ("held", "kept"):
        res = buy(intent, "5", expires_ns=expires_ns)
        assert await store.reserve(VENUE, res, against(D("1000"), res)) is None
    written = await revision(store, TOTAL)

    await theirs.release(VENUE, "never-reserved")
    assert await revision(store, TOTAL) == written
    # Two releases of one intent at once, from two processes: only one takes it off the totals.
    await asyncio.gather(theirs.release(VENUE, "held"), store.release(VENUE, "held"))
    totals = await store.reserved_totals(VENUE)
    assert totals.reserved("USDT", time.time_ns()) == D("500") and totals.in_flight(time.time_ns()) == 1
    await theirs.release(VENUE, "held")  # again: nothing left to give back
    assert await store.reserved_totals(VENUE) == totals
    await store.release("nowhere", "held")  # a venue with no reservations at all
    await store.release(VENUE, "kept")
    assert await store.reserved_totals(VENUE) == ReservedTotals()


async def test_an_intents_key_expires_by_itself_and_the_totals_stay_small_however_many_are_in_flight(bus: Bus) -> None:
    """The intent's own key carries a TTL past the end of its window (a supervisor that dies never leaves it
    behind), a released one a short one; the totals are one small value for a thousand intents."""
    store = await bus.controls()
    stream = f"KV_{bus.settings.control_bucket}"
    res = buy("ttl", "1")
    before = time.time_ns()
    assert await store.reserve(VENUE, res, anything) is None
    after = time.time_ns()
    stored = await bus.js.get_last_msg(stream, f"$KV.{bus.settings.control_bucket}.reserve.paper.intent.ttl")
    ttl = int((stored.headers or {})["Nats-TTL"])
    window_end = reservation_window(res.expires_ns)
    assert (window_end - after) / 1e9 + HOLD_GRACE_S <= ttl <= (window_end - before) / 1e9 + HOLD_GRACE_S + 1
    await store.release(VENUE, "ttl")
    stored = await bus.js.get_last_msg(stream, f"$KV.{bus.settings.control_bucket}.reserve.paper.intent.ttl")
    assert not stored.data and (stored.headers or {})["Nats-TTL"] == str(RELEASED_TTL_S)

    await asyncio.gather(*(store.reserve(VENUE, buy(f"many-{i}", "0.01"), anything) for i in range(1000)))
    totals = await store.reserved_totals(VENUE)
    assert totals.in_flight(time.time_ns()) == 1000 and totals.reserved("USDT", time.time_ns()) == D("1000")
    assert len(msgspec.json.encode(totals)) < 400


async def test_totals_that_would_outgrow_one_message_refuse_the_new_intent_and_still_release(bus: Bus) -> None:
    """The totals grow with the windows of expiry in flight, and a value must fit one NATS message
    (`max_payload`). Past that the next intent gets a reason, not a handler failure; the rest of its batch is
    written, each change admitted in turn while the value fits."""
    store = await bus.controls()
    base = time.time_ns() + 60_000_000_000

    def spread(intent_id: str, window: int) -> Reservation:  # each in a window of its own
        return buy(intent_id, "1", expires_ns=base + window * RESERVATION_WINDOW_NS)

    one = len(msgspec.json.encode(ReservedTotals().adding(spread("x", 0), 0)))
    two = len(msgspec.json.encode(ReservedTotals().adding(spread("x", 0), 0).adding(spread("y", 1), 0)))
    store.max_payload_override = 1024 + one + 8 * (two - one) + (two - one) // 2  # room for nine windows
    granted = [await store.reserve(VENUE, spread(f"intent-{i:02}", i), anything) for i in range(9)]
    assert granted == [None] * 9

    # At once, one that would make a tenth window and one in a window that is there already: however they
    # meet in a batch, the first is refused and the second goes in.
    results = await asyncio.gather(
        store.reserve(VENUE, spread("late-1", 20), anything), store.reserve(VENUE, spread("same-window", 3), anything)
    )
    assert isinstance(results[0], str) and "too many budgets spread too far on this venue" in results[0]
    assert "over 10 windows of expiry" in results[0] and "max_payload" in results[0]
    assert results[1] is None
    assert await store.reservation(VENUE, "late-1") is None
    after = await store.reserved_totals(VENUE)
    assert after.in_flight(time.time_ns()) == 10 and len(after.windows) == 9
    assert len(msgspec.json.encode(after)) <= store.max_payload - 1024
    # A release always goes in; then the tenth window fits.
    await store.release(VENUE, "intent-00")
    assert await store.reserve(VENUE, spread("late-2", 21), anything) is None
    # An intent that reserves again what it holds does not grow the value: it is not refused.
    assert await store.reserve(VENUE, spread("late-2", 21), anything) is None
    # Once some have finished, an intent fits again.
    for i in range(1, 5):
        await store.release(VENUE, f"intent-{i:02}")
    assert await store.reserve(VENUE, spread("later", 30), anything) is None


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
