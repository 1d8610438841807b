"""The fallback's order is a `PlaceFallbackOrder`, the one order command the supervisor is delivered: it knows
of the fallback's order from the log, whoever else is up, and finishes only once that order is terminal — a
placer that answers long after `act_by_ns` included. An order it hears of only from the placer's answer (a
fallback of an older version still sending a plain `PlaceOrder`) counts too, and a rebuild folds either."""

from __future__ import annotations

from typing import Any

from actors.market_fallback import MarketFallback
from actors.placer import Placer
from actors.reconciler import Reconciler
from actors.supervisor import FALLBACK_GRACE_NS, FALLBACK_MARGIN_NS, Supervisor
from messages import (
    AggressiveLimitParams, ExecutionTimedOut, Message, OrderPlaced, PlaceFallbackOrder, PlaceOrder, StrategyFinished,
)
from messages.base import routing
from tests.actors.kit import NS, D, ScriptedMarket, order_violations, supervised
from tests.helpers import new_intent


def _intent() -> Any:
    return new_intent(qty=D(1), strategy="aggressive_limit",
                      params=AggressiveLimitParams(total_timeout_seconds=D(9), max_retries=3))


def test_the_supervisor_is_delivered_the_fallbacks_command_and_never_its_own() -> None:
    assert PlaceOrder not in Supervisor.consumes and PlaceFallbackOrder in Supervisor.consumes
    assert MarketFallback.produces == (PlaceFallbackOrder,)
    for actor in (Placer, Reconciler):  # (each kind is its own subject: both are listed)
        assert PlaceOrder in actor.consumes and PlaceFallbackOrder in actor.consumes
    assert issubclass(PlaceFallbackOrder, PlaceOrder)  # what reads the log sees an order command


class SlowPlacer(ScriptedMarket):
    """The placer takes the fallback's command only `delay_s` after it is in the log (down, say)."""

    delay_s: float = 0

    async def on_message(self, msg: Message) -> None:
        if isinstance(msg, PlaceOrder) and msg.origin == "market_fallback" and self.delay_s:
            assert self._kit is not None
            self._kit.at(self.delay_s, lambda: self._place(msg))
            return
        await super().on_message(msg)


async def test_a_placer_that_answers_the_fallback_long_after_its_deadline_leaves_no_order_out_of_the_report() -> None:
    market = SlowPlacer(rule="nothing")
    market.delay_s = (FALLBACK_GRACE_NS + FALLBACK_MARGIN_NS) / NS + 60
    kit, market = await supervised(market)
    intent = _intent()
    await kit.send(intent)

    await kit.advance(9 + market.delay_s - 1)  # past act_by_ns and its margin; the placer has not answered
    (timed_out,) = kit.of(ExecutionTimedOut, intent.intent_id)
    assert kit.clock.now_ns() > timed_out.act_by_ns + FALLBACK_MARGIN_NS
    assert kit.finished(intent.intent_id) is None, "finished without the fallback's order, which is still to come"

    report = await kit.run_until_finished(intent.intent_id, within=120)
    assert f"{intent.intent_id}-F" in report.client_order_ids and report.fallback_used
    assert report.reason == "filled"
    assert [o.cmd.client_order_id for o in market.working()] == []
    assert order_violations(kit, intent) == []


class OldFallback(SlowPlacer):
    """A market-fallback actor from before `PlaceFallbackOrder`: it sends a plain `PlaceOrder`."""

    async def on_message(self, msg: Message) -> None:
        if isinstance(msg, ExecutionTimedOut):
            now = self._now()
            if msg.fallback == "market" and not (msg.act_by_ns and now > msg.act_by_ns):
                self._send(PlaceOrder(**routing(msg), client_order_id=f"{msg.intent_id}-F", attempt=0, side=msg.side,
                                      order_type="market", qty=msg.remaining_qty, origin="market_fallback"))
            return
        await super().on_message(msg)


async def test_a_fallback_order_heard_of_only_from_the_placer_still_counts() -> None:
    kit, market = await supervised(OldFallback(rule="nothing"))
    intent = _intent()
    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id, within=120)
    assert not kit.of(PlaceFallbackOrder, intent.intent_id)
    assert f"{intent.intent_id}-F" in report.client_order_ids and report.fallback_used
    state = kit.states[intent.intent_id]
    (fallback,) = [o for o in state.orders if o.client_order_id == f"{intent.intent_id}-F"]
    assert fallback.origin == "market_fallback" and not fallback.fenced and fallback.filled == D(1)
    assert report.reason == "filled"


async def _until_the_fallback_is_sent(kit: Any, intent_id: str) -> None:
    while not any(isinstance(m, PlaceOrder) and m.origin == "market_fallback" for _, m in kit.history(intent_id)):
        due = kit.next_due()
        assert due is not None, kit.kinds(intent_id)
        kit.clock.set(due)
        await kit._due(due)


async def test_an_owner_rebuilt_after_the_fallbacks_command_waits_for_its_order() -> None:
    for market in (SlowPlacer(rule="nothing"), OldFallback(rule="nothing")):
        market.delay_s = 5.0  # (so the new owner takes over with the command in the log and no answer yet)
        kit, market = await supervised(market)
        intent = _intent()
        await kit.send(intent)
        await _until_the_fallback_is_sent(kit, intent.intent_id)
        await kit.failover()  # a new owner with nothing but the log
        state = kit.states[intent.intent_id]
        assert state.phase == "fallback" and state.order(f"{intent.intent_id}-F") is not None
        report = await kit.run_until_finished(intent.intent_id, within=300)
        assert f"{intent.intent_id}-F" in report.client_order_ids, type(market).__name__
        assert kit.of(OrderPlaced, intent.intent_id)[-1].client_order_id == f"{intent.intent_id}-F"
        assert len(kit.of(StrategyFinished, intent.intent_id)) == 1
