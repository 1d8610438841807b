"""Operator control (issue 11): cancel an intent in every phase, halt and resume trading, and the risk gate
at intake and at the placer — on a real nats-server, the real actors and the paper venue (binance profile).

Phases are held still the way they happen in production: an actor that is not running (stopped, so its
messages wait in the log) keeps the intent where it is until the cancel arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from bus.ops import cli
from bus.ops.client import execute
from bus.runtime import ActorHost
from bus.ops.system import build_actor
from messages import (
    CancelIntent,
    CancelIntentAccepted,
    CancelIntentRejected,
    CancelOrder,
    ExecutionCompleted,
    AggressiveLimitParams,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
    PriceRequested,
    RiskLimits,
    SubmitIntent,
    TradingStateChanged,
    encode,
)
from messages.base import routing
from messages.controls import (
    DENY_IN_FLIGHT,
    RESERVATION_WINDOW_NS,
    ReservedTotals,
    ReservedWindow,
    reservation_window,
)
from tests.e2e.conftest import Running, start_running, stepped_config, stop_running
from tests.helpers import assert_invariants, new_intent, wait_until
from venues.config import PaperVenueConfig

D = Decimal


def aggressive(**params: Any) -> SubmitIntent:
    qty = params.pop("qty", D("0.01"))
    side = params.pop("side", "buy")
    return new_intent(strategy="aggressive_limit", qty=qty, side=side, params=AggressiveLimitParams(**params))


def resting(**params: Any) -> SubmitIntent:
    """An aggressive-limit buy whose first attempt rests at the touch of a frozen market for a long time."""
    values: dict[str, Any] = {"attempt_timeout_seconds": D("60"), "total_timeout_seconds": D("120"), "max_retries": 2}
    values.update(params)
    return aggressive(**values)


@asynccontextmanager
async def stopped(running: Running, name: str) -> AsyncIterator[None]:
    """The actor is not running inside the block (its messages wait in the log), and runs again after it."""
    system = running.system
    await system.hosts[name].stop()
    try:
        yield
    finally:
        actor = build_actor(name, system.venue_pool, system.config.actor_options.get(name))
        system.hosts[name] = await ActorHost(system.bus, actor, clock=system.clock).start()


async def cancel(running: Running, intent: SubmitIntent, request: str, reason: str = "signal went stale") -> Any:
    """Publish a cancel and return the supervisor's answer to it."""
    await running.bus.publish(
        CancelIntent(**routing(intent), request=request, reason=reason, requested_by="test")
    )

    def answer() -> Any:
        found = [
            m for m in (*running.recorder.of(CancelIntentAccepted, intent.intent_id),
                        *running.recorder.of(CancelIntentRejected, intent.intent_id))
            if m.request == request
        ]
        return found[0] if found else None

    return await wait_until(answer, timeout=10)


async def report_of(running: Running, intent: SubmitIntent) -> ExecutionCompleted:
    (report,) = await running.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=20)
    return report


async def no_open_orders(running: Running, intent: SubmitIntent) -> None:
    open_orders = await running.exchange.fetch_open_orders(intent.symbol)
    assert [o for o in open_orders if str(o.get("clientOrderId", "")).startswith(intent.intent_id)] == []


# -- cancel an intent ----------------------------------------------------------------------------------------


async def test_a_cancel_while_pricing_ends_canceled_with_no_order(stepped: Running) -> None:
    intent = resting()
    async with stopped(stepped, "pricer"):
        await stepped.bus.publish(intent)
        await stepped.recorder.wait_for(PriceRequested, intent.intent_id)
        answer = await cancel(stepped, intent, "r1")
        report = await report_of(stepped, intent)

    assert isinstance(answer, CancelIntentAccepted) and answer.phase == "arrival"
    assert report.status == "canceled" and report.filled_qty == 0 and report.orders == ()
    assert "signal went stale" in report.reason
    assert stepped.recorder.of(PlaceOrder, intent.intent_id) == []


async def test_a_cancel_while_working_cancels_the_order_and_reports_canceled(stepped: Running) -> None:
    intent = resting()
    await stepped.bus.publish(intent)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)

    answer = await cancel(stepped, intent, "r1")
    report = await report_of(stepped, intent)

    assert isinstance(answer, CancelIntentAccepted) and answer.phase == "working" and not answer.already
    assert report.status == "canceled" and report.filled_qty == 0
    assert [c.client_order_id for c in stepped.recorder.of(CancelOrder, intent.intent_id)] == [f"{intent.intent_id}-1"]
    await assert_invariants(report, stepped.recorder, stepped.exchange)
    await no_open_orders(stepped, intent)


async def test_a_partly_filled_intent_canceled_reports_canceled_with_what_filled(stepped: Running) -> None:
    intent = resting(qty=D("10"))  # far more than the touch holds: it fills in part
    await stepped.bus.publish(intent)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)
    partial = await stepped.exchange.paper_control(
        "advance_until", {"clientOrderId": f"{intent.intent_id}-1", "until": "fill", "max_seconds": 300}
    )

    await cancel(stepped, intent, "r1")
    report = await report_of(stepped, intent)

    assert report.status == "canceled"
    assert 0 < report.filled_qty < intent.qty
    assert report.filled_qty >= D(partial["order"]["executedQty"])
    await assert_invariants(report, stepped.recorder, stepped.exchange)
    await no_open_orders(stepped, intent)


async def test_a_cancel_while_canceling_waits_for_the_order_then_reports_canceled(stepped: Running) -> None:
    intent = resting(attempt_timeout_seconds=D("0.3"))
    await stepped.bus.publish(intent)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)
    async with stopped(stepped, "placer"):
        # The attempt expires; its cancel waits in the log for a placer: the intent is canceling.
        await stepped.recorder.wait_for(CancelOrder, intent.intent_id)
        answer = await cancel(stepped, intent, "r1")
        assert isinstance(answer, CancelIntentAccepted) and answer.phase == "canceling"
        placed_before = len(stepped.recorder.of(PlaceOrder, intent.intent_id))
    report = await report_of(stepped, intent)

    assert report.status == "canceled" and report.filled_qty == 0
    assert len(stepped.recorder.of(PlaceOrder, intent.intent_id)) == placed_before  # no attempt after it
    await assert_invariants(report, stepped.recorder, stepped.exchange)
    await no_open_orders(stepped, intent)


async def test_a_cancel_in_the_fallback_stops_it_and_the_placer_refuses_its_order(stepped: Running) -> None:
    intent = aggressive(max_retries=1, attempt_timeout_seconds=D("0.2"), total_timeout_seconds=D("0.2"))
    async with stopped(stepped, "market_fallback"):
        await stepped.bus.publish(intent)
        await stepped.recorder.wait_for(ExecutionTimedOut, intent.intent_id)
        answer = await cancel(stepped, intent, "r1")
        report = await report_of(stepped, intent)
    # The fallback runs again and acts on the budget's end it had not seen: the placer refuses it.
    (refused,) = await stepped.recorder.wait_for(OrderRejected, intent.intent_id, timeout=10)

    assert isinstance(answer, CancelIntentAccepted) and answer.phase == "fallback"
    assert report.status == "canceled" and report.filled_qty == 0 and report.fallback_used
    assert refused.client_order_id == f"{intent.intent_id}-F" and refused.error == "IntentCanceled"
    audit = await stepped.exchange.paper_control("audit", {"client_order_id_prefix": f"{intent.intent_id}-F"})
    assert audit["accepted"] == []
    await no_open_orders(stepped, intent)


async def test_a_cancel_racing_a_full_fill_ends_filled(stepped: Running) -> None:
    intent = resting(qty=D("0.001"))
    await stepped.bus.publish(intent)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)
    async with stopped(stepped, "placer"):
        answer = await cancel(stepped, intent, "r1")  # its CancelOrder waits for a placer...
        await stepped.recorder.wait_for(CancelOrder, intent.intent_id)
        result = await stepped.exchange.paper_control(  # ...while the order fills whole
            "advance_until", {"clientOrderId": f"{intent.intent_id}-1", "until": "done", "max_seconds": 300}
        )
        report = await report_of(stepped, intent)

    assert isinstance(answer, CancelIntentAccepted) and result["reached"]
    assert report.status == "filled" and report.filled_qty == intent.qty
    await assert_invariants(report, stepped.recorder, stepped.exchange)


async def test_cancelling_twice_is_harmless_and_a_finished_or_unknown_intent_is_told_so(stepped: Running) -> None:
    intent = resting()
    await stepped.bus.publish(intent)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)

    async with stopped(stepped, "placer"):  # the first cancel is still under way when the second comes
        first = await cancel(stepped, intent, "r1")
        second = await cancel(stepped, intent, "r2")
    report = await report_of(stepped, intent)
    after = await cancel(stepped, intent, "r3")
    unknown = new_intent()
    never = await cancel(stepped, unknown, "r4")

    assert isinstance(first, CancelIntentAccepted) and not first.already
    assert isinstance(second, CancelIntentAccepted) and second.already
    assert report.status == "canceled"
    assert len(stepped.recorder.of(ExecutionCompleted, intent.intent_id)) == 1
    assert isinstance(after, CancelIntentRejected) and after.status == "finished" and "finished already" in after.reason
    assert isinstance(never, CancelIntentRejected) and never.status == "unknown" and "unknown" in never.reason
    assert stepped.recorder.of(IntentAccepted, unknown.intent_id) == []


async def test_a_cancel_that_does_not_decode_is_dead_lettered_and_changes_nothing(stepped: Running) -> None:
    intent = resting()
    await stepped.bus.publish(intent)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)
    subject = f"exec.cancel_intent.paper.BTC-USDT.{intent.intent_id}"
    await stepped.bus.nc.publish(subject, b'{"type":"CancelIntent","intent_id":"x"}')
    good = await cancel(stepped, intent, "r1")  # handled after the bad one: the supervisor is still there

    (invalid,) = await stepped.recorder.wait_for(CancelIntentRejected, intent.intent_id)
    assert invalid.status == "invalid" and "venue" in invalid.reason
    assert isinstance(good, CancelIntentAccepted) and good.phase == "working"
    report = await report_of(stepped, intent)
    assert report.status == "canceled"


# -- trading state -----------------------------------------------------------------------------------------


async def test_a_halt_rejects_new_intents_and_the_placer_refuses_a_raw_place_order(stepped: Running) -> None:
    controls = await stepped.bus.controls()
    changed = await controls.set_trading(stepped.bus.publish, state="HALTED", reason="venue incident", by="test")
    assert changed is not None

    intent = new_intent(qty=D("0.001"))
    outcome = await execute(stepped.bus, intent, timeout=1.0)  # the answer within one second, or TimeoutError
    assert isinstance(outcome, IntentRejected) and outcome.field == "trading_state"
    assert outcome.code == "trading_state.halted" and "halted for all venues: venue incident" in outcome.reason

    # A PlaceOrder straight to the bus, for an intent the placer knows as accepted: only the halt stops it.
    raw = new_intent(qty=D("0.001"))
    await stepped.bus.publish(
        IntentAccepted(**routing(raw), side="buy", qty=raw.qty, strategy="market", deadline_ns=time.time_ns() + 10**11)
    )
    await stepped.bus.publish(
        PlaceOrder(**routing(raw), client_order_id=f"{raw.intent_id}-1", attempt=1, side="buy", order_type="market",
                   qty=raw.qty)
    )
    (refused,) = await stepped.recorder.wait_for(OrderRejected, raw.intent_id)
    assert refused.error == "trading_state.halted"
    audit = await stepped.exchange.paper_control("audit", {"client_order_id_prefix": raw.intent_id})
    assert audit["accepted"] == []

    await controls.set_trading(stepped.bus.publish, state="ACTIVE", by="test")
    after = await execute(stepped.bus, new_intent(qty=D("0.001")), timeout=15)
    assert isinstance(after, ExecutionCompleted) and after.status == "filled"
    states = [(m.state, m.previous) for m in stepped.recorder.of(TradingStateChanged)]
    assert states == [("HALTED", "ACTIVE"), ("ACTIVE", "HALTED")]


async def test_a_halt_of_one_symbol_leaves_the_others_trading(stepped: Running) -> None:
    controls = await stepped.bus.controls()
    await controls.set_trading(stepped.bus.publish, venue="paper", symbol="ETH/USDT", state="HALTED", by="test")

    outcome = await execute(stepped.bus, new_intent(qty=D("0.001")), timeout=15)

    assert isinstance(outcome, ExecutionCompleted) and outcome.status == "filled"


async def test_a_halt_lets_working_intents_finish_and_with_cancel_working_cancels_them(stepped: Running) -> None:
    finishing = resting(qty=D("0.001"))
    canceled = resting()
    await stepped.bus.publish(canceled)
    await stepped.recorder.wait_for(OrderPlaced, canceled.intent_id)
    controls = await stepped.bus.controls()

    await controls.set_trading(stepped.bus.publish, state="HALTED", reason="risk review", by="test", cancel_working=True)
    report = await report_of(stepped, canceled)

    assert report.status == "canceled" and "cancel-working" in report.reason
    await no_open_orders(stepped, canceled)
    (halt_cancel,) = stepped.recorder.of(CancelIntent, canceled.intent_id)
    assert halt_cancel.requested_by == "test"
    # Without --cancel-working a halt lets a working intent go on (to its fill, here).
    await controls.set_trading(stepped.bus.publish, state="ACTIVE", by="test")
    await stepped.bus.publish(finishing)
    await stepped.recorder.wait_for(OrderPlaced, finishing.intent_id)
    await controls.set_trading(stepped.bus.publish, state="HALTED", by="test")
    await stepped.exchange.paper_control(
        "advance_until", {"clientOrderId": f"{finishing.intent_id}-1", "until": "done", "max_seconds": 300}
    )
    assert (await report_of(stepped, finishing)).status == "filled"


async def test_reducing_accepts_only_sells_within_the_position(stepped: Running) -> None:
    controls = await stepped.bus.controls()
    await controls.set_trading(stepped.bus.publish, venue="paper", state="REDUCING", by="test")

    buy = await execute(stepped.bus, new_intent(qty=D("0.001")), timeout=5)
    too_big = await execute(stepped.bus, new_intent(side="sell", qty=D("1000")), timeout=5)  # 100 BTC held
    sell = await execute(stepped.bus, new_intent(side="sell", qty=D("0.001")), timeout=15)

    assert isinstance(buy, IntentRejected) and buy.code == "trading_state.reducing" and "a buy adds" in buy.reason
    assert isinstance(too_big, IntentRejected) and too_big.code == "trading_state.reducing"
    assert isinstance(sell, ExecutionCompleted) and sell.status == "filled"


# -- the risk gate -----------------------------------------------------------------------------------------


async def _ask(running: Running) -> Decimal:
    book = await running.exchange.fetch_order_book("BTC/USDT")
    return D(repr(book["asks"][0][0]))


async def _limits(running: Running, **values: Any) -> None:
    controls = await running.bus.controls()
    for key, value in values.items():
        await controls.set_limit(key, str(value))
    await wait_until(lambda: all(str(getattr(controls.limits_cached, k)) == str(v) for k, v in values.items()))


async def test_max_intent_notional_at_intake_at_and_over_the_limit(stepped: Running) -> None:
    qty = D("0.01")
    notional = qty * await _ask(stepped)

    await _limits(stepped, max_intent_notional=notional)
    at = await execute(stepped.bus, new_intent(qty=qty), timeout=15)
    await _limits(stepped, max_intent_notional=notional - D("0.01"))
    over = await execute(stepped.bus, new_intent(qty=qty), timeout=5)

    assert isinstance(at, ExecutionCompleted) and at.status == "filled"
    assert isinstance(over, IntentRejected) and over.code == "risk.max_notional"
    assert "exceeds max_intent_notional" in over.reason and "E" not in over.reason.split("exceeds")[1]


async def test_the_placer_holds_every_order_to_the_notional_limit(stepped: Running) -> None:
    """A supervisor that is behind (or a client writing to the bus) cannot get past the gate."""
    await _limits(stepped, max_intent_notional=D("100"))
    raw = new_intent(qty=D("0.01"))
    await stepped.bus.publish(
        IntentAccepted(**routing(raw), side="buy", qty=raw.qty, strategy="market", deadline_ns=time.time_ns() + 10**11)
    )
    await stepped.bus.publish(
        PlaceOrder(**routing(raw), client_order_id=f"{raw.intent_id}-1", attempt=1, side="buy", order_type="limit",
                   qty=raw.qty, price=D("20000"))
    )
    (refused,) = await stepped.recorder.wait_for(OrderRejected, raw.intent_id)
    assert refused.error == "risk.max_notional" and "order notional 200" in refused.reason


async def test_open_notional_counts_the_intents_in_flight(stepped: Running) -> None:
    qty = D("0.01")
    notional = qty * await _ask(stepped)
    await _limits(stepped, max_open_notional=notional * 2)
    first, second = resting(qty=qty), resting(qty=qty)
    for intent in (first, second):
        await stepped.bus.publish(intent)
        await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)

    third = await execute(stepped.bus, resting(qty=qty), timeout=5)
    await cancel(stepped, first, "r1")
    await report_of(stepped, first)  # its reservation is given back when it finishes
    fourth = resting(qty=qty)
    await stepped.bus.publish(fourth)
    await stepped.recorder.wait_for(OrderPlaced, fourth.intent_id)

    assert isinstance(third, IntentRejected) and third.code == "risk.open_notional"
    for intent in (second, fourth):
        await cancel(stepped, intent, "cleanup")


@pytest.fixture
async def poor() -> AsyncIterator[Running]:
    """An account with 1,000 USDT."""
    config = stepped_config()
    config.paper_config = PaperVenueConfig(speed=0, balances={"USDT": D("1000"), "BTC": D("1")})
    config.risk_limits = RiskLimits(max_orders_per_second=1000)  # the safe defaults, balance check on
    r = await start_running(config)
    try:
        yield r
    finally:
        await stop_running(r)


async def test_two_intents_that_together_exceed_the_balance_one_runs_one_is_denied(poor: Running) -> None:
    ask = await _ask(poor)
    qty = (D("600") / ask).quantize(D("0.00001"))  # each needs about 612 USDT with the 2% buffer: one fits
    intents = [resting(qty=qty), resting(qty=qty)]

    outcomes = await asyncio.gather(*(execute(poor.bus, i, timeout=3) for i in intents), return_exceptions=True)

    rejected = [o for o in outcomes if isinstance(o, IntentRejected)]
    assert len(rejected) == 1 and rejected[0].code == "risk.balance"
    assert "reserved by intents in flight" in rejected[0].reason
    runner = next(i for i in intents if i.intent_id != rejected[0].intent_id)
    assert poor.recorder.of(IntentAccepted, runner.intent_id)
    await cancel(poor, runner, "cleanup")
    assert (await report_of(poor, runner)).status == "canceled"


async def test_the_balance_check_at_and_over_the_free_balance(poor: Running) -> None:
    # A sell reserves its quantity of base, and 1 BTC is free.
    over = await execute(poor.bus, new_intent(side="sell", qty=D("1.00001")), timeout=3)
    at = await execute(poor.bus, new_intent(side="sell", qty=D("1")), timeout=15)

    assert isinstance(over, IntentRejected) and over.code == "risk.balance"
    assert "needs 1.00001 BTC; held 1 less 0 reserved" in over.reason
    assert isinstance(at, ExecutionCompleted) and at.status == "filled"


async def test_a_venue_whose_reservation_totals_fill_one_message_rejects_the_next_intent_with_the_reason(
    stepped: Running,
) -> None:
    """A venue's reservation totals are one KV value, kept per window of expiry, and a value must fit one NATS
    message (1 MB by default: budgets spread over most of a day). The intent that would not fit is rejected
    with the reason at once, not failed in its handler until it is dead-lettered with no answer upstream."""
    controls = await stepped.bus.controls()
    far = time.time_ns() + 3_600 * 10**9

    def totals(n: int) -> ReservedTotals:  # n windows of one reservation each, an hour and more away
        return ReservedTotals(windows=tuple(
            ReservedWindow(until_ns=reservation_window(far + i * RESERVATION_WINDOW_NS), count=1,
                           amounts={"USDT": D("0.01")}, notional={"BTC/USDT": D("0.01")})
            for i in range(n)
        ))

    size = len(encode(totals(2))) - len(encode(totals(1)))
    fits = (controls.max_payload - 1024 - len(encode(totals(1)))) // size + 1
    await stepped.bus.buckets.controls.put("reserve.paper.total", encode(totals(fits)))

    refused = await execute(stepped.bus, new_intent(qty=D("0.01")), timeout=15)

    assert isinstance(refused, IntentRejected) and refused.code == DENY_IN_FLIGHT and refused.field == "risk"
    assert f"over {fits + 1} windows of expiry" in refused.reason and "max_payload" in refused.reason
    assert not stepped.recorder.of(IntentAccepted, refused.intent_id)
    assert await controls.reservation("paper", refused.intent_id) is None
    await stepped.bus.buckets.controls.put("reserve.paper.total", encode(totals(10)))
    after = await execute(stepped.bus, new_intent(qty=D("0.01")), timeout=15)
    assert isinstance(after, ExecutionCompleted) and after.status == "filled"
    # Its reservation was taken and given back (as its strategy finished): the totals are the ten fillers again.
    async def given_back() -> bool:
        return await controls.reserved_totals("paper") == totals(10)

    await wait_until(given_back)
    assert await controls.reservation("paper", after.intent_id) is None


# -- the shared order-rate budget ------------------------------------------------------------------------------


async def test_the_order_rate_budget_holds_across_two_placer_replicas(stepped: Running) -> None:
    system = stepped.system
    second = await ActorHost(
        system.bus, build_actor("placer", system.venue_pool, system.config.actor_options.get("placer")),
        clock=system.clock, replica="placer-two",
    ).start()
    try:
        await _limits(stepped, max_orders_per_second=3)
        await wait_until(lambda: len(second.partitions) > 0, timeout=10)  # both replicas own partitions
        intents = [new_intent(qty=D("0.001"), intent_id=f"rate-{i}-{time.time_ns() % 10**9}") for i in range(12)]
        reports = await asyncio.gather(*(execute(stepped.bus, i, timeout=30) for i in intents))
        audit = await stepped.exchange.paper_control("audit", {"client_order_id_prefix": "rate-"})
    finally:
        await second.stop()

    assert all(isinstance(r, ExecutionCompleted) and r.status == "filled" for r in reports)
    per_second = Counter(row["received_wall_ms"] // 1000 for row in audit["accepted"])
    assert sum(per_second.values()) == 12
    assert max(per_second.values()) <= 3, per_second
    created = [system.hosts["placer"].actor.stats["created"], second.actor.stats["created"]]
    assert all(n > 0 for n in created), created  # both replicas created orders under the one budget


# -- the commands, against a running system -------------------------------------------------------------------


async def _cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    """`execbus ARGV --nats URL` in a worker thread: the CLI runs its own event loop, as a process would."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, [*argv, "--nats", url])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_halt_cancel_state_and_resume_from_the_command_line(stepped: Running, capsys: pytest.CaptureFixture[str]) -> None:
    url = stepped.system.url
    working = resting()
    await stepped.bus.publish(working)
    await stepped.recorder.wait_for(OrderPlaced, working.intent_id)

    code, out, _ = await _cli(capsys, url, "halt", "--reason", "venue incident")
    assert code == 0 and "ACTIVE -> HALTED" in out
    rejected = await execute(stepped.bus, new_intent(qty=D("0.001")), timeout=1.0)
    assert isinstance(rejected, IntentRejected) and rejected.code == "trading_state.halted"

    code, out, _ = await _cli(capsys, url, "state")
    assert code == 0 and "HALTED" in out and "venue incident" in out

    code, out, _ = await _cli(capsys, url, "cancel", working.intent_id, "--wait", "--reason", "ops says stop")
    assert code == 0 and "canceled" in out
    (report,) = stepped.recorder.of(ExecutionCompleted, working.intent_id)
    assert report.status == "canceled" and "ops says stop" in report.reason
    await no_open_orders(stepped, working)

    code, out, _ = await _cli(capsys, url, "cancel", working.intent_id)
    assert code == 2 and "finished already" in (out + _)

    code, out, _ = await _cli(capsys, url, "resume")
    assert code == 0 and "HALTED -> ACTIVE" in out
    after = await execute(stepped.bus, new_intent(qty=D("0.001")), timeout=15)
    assert isinstance(after, ExecutionCompleted) and after.status == "filled"


async def test_the_placer_refuses_any_create_after_the_cancel_whoever_sends_it(stepped: Running) -> None:
    """The fallback's order (or any client's) coming after the cancel in the log: the placer is the gate."""
    raw = new_intent(qty=D("0.001"))
    async with stopped(stepped, "supervisor"):
        await stepped.bus.publish(
            IntentAccepted(**routing(raw), side="buy", qty=raw.qty, strategy="aggressive_limit",
                           deadline_ns=time.time_ns() + 10**11)
        )
        await stepped.bus.publish(CancelIntent(**routing(raw), request="r1", reason="stop"))
        await stepped.bus.publish(
            PlaceOrder(**routing(raw), client_order_id=f"{raw.intent_id}-F", attempt=0, side="buy",
                       order_type="market", qty=raw.qty, origin="market_fallback")
        )
        (refused,) = await stepped.recorder.wait_for(OrderRejected, raw.intent_id)
    assert refused.error == "IntentCanceled"
    audit = await stepped.exchange.paper_control("audit", {"client_order_id_prefix": raw.intent_id})
    assert audit["accepted"] == []


async def test_a_cancel_before_the_intent_was_accepted_stops_nothing(stepped: Running) -> None:
    """Answered "unknown" by the supervisor, so the placer must not hold it against the intent later."""
    intent = new_intent(qty=D("0.001"))
    never = await cancel(stepped, intent, "early")
    report = await execute(stepped.bus, intent, timeout=15)

    assert isinstance(never, CancelIntentRejected) and never.status == "unknown"
    assert isinstance(report, ExecutionCompleted) and report.status == "filled"


async def test_a_halt_while_the_venue_is_down_still_rejects_at_once() -> None:
    config = stepped_config()
    config.paper_venue = False  # no venue at all: every venue call fails
    config.reconcile_at_start = False
    r = await start_running_without_venue(config)
    try:
        controls = await r.bus.controls()
        await controls.set_trading(r.bus.publish, venue="paper", state="HALTED", reason="exchange down", by="test")
        outcome = await execute(r.bus, new_intent(qty=D("0.001")), timeout=1.0)
        assert isinstance(outcome, IntentRejected) and outcome.code == "trading_state.halted"
        assert "exchange down" in outcome.reason
    finally:
        await r.system.stop()


async def start_running_without_venue(config: Any) -> Any:
    from bus.ops.system import System
    from tests.helpers import Recorder

    system = await System(config).start()
    recorder = await Recorder().attach(system.bus)
    return Running(system, recorder, None)



async def test_what_a_resting_order_locks_is_not_counted_twice(poor: Running) -> None:
    """The venue's free balance leaves out what our resting buy locks, which its reservation counts too."""
    ask = await _ask(poor)
    first = resting(qty=(D("600") / ask).quantize(D("0.00001")))  # reserves about 612 of the 1,000 USDT
    await poor.bus.publish(first)
    await poor.recorder.wait_for(OrderPlaced, first.intent_id)  # ...and locks about 600 at the venue

    small = resting(qty=(D("100") / ask).quantize(D("0.00001")))
    await poor.bus.publish(small)
    (accepted,) = await poor.recorder.wait_for(IntentAccepted, small.intent_id)

    assert accepted.qty == small.qty
    assert poor.recorder.of(IntentRejected, small.intent_id) == []
    for intent in (first, small):
        await cancel(poor, intent, "cleanup")


async def test_a_cancel_while_repricing_ends_canceled_and_places_nothing_more(stepped: Running) -> None:
    """The attempt expired with its order working and the next attempt's price is being asked for."""
    intent = resting(attempt_timeout_seconds=D("0.3"))
    await stepped.bus.publish(intent)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)
    async with stopped(stepped, "pricer"):
        requests = await stepped.recorder.wait_for(PriceRequested, intent.intent_id, count=3)  # arrival, 1, 2
        assert requests[-1].attempt == 2
        answer = await cancel(stepped, intent, "r1")
        report = await report_of(stepped, intent)

    assert isinstance(answer, CancelIntentAccepted) and answer.phase == "repricing"
    assert report.status == "canceled" and report.filled_qty == 0
    assert len(stepped.recorder.of(PlaceOrder, intent.intent_id)) == 1
    await assert_invariants(report, stepped.recorder, stepped.exchange)
    await no_open_orders(stepped, intent)
