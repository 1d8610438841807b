"""An owner that had lost the intent places the very attempt the new owner is pricing (the placer takes its
copy: the new owner had sent nothing yet). The new owner must work that order as its own — never report with
it still working — and an owner rebuilt from the log after that must go on, with a timer armed."""
import logging
from decimal import Decimal
import structlog
from messages import PlaceOrder, PriceQuoted, PriceRequested, AggressiveLimitParams, StrategyFinished, CancelOrder
from tests.actors.kit import D, NS, supervised
from tests.helpers import new_intent
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


async def _setup():
    kit, market = await supervised(rule="nothing")
    market.script("reject-retryable")  # attempt 1 refused retryably: attempt 2 is priced with nothing working
    intent = new_intent(qty=D(1), strategy="aggressive_limit",
                        params=AggressiveLimitParams(total_timeout_seconds=D(60), max_retries=3, fallback="none"))
    state = {"failed_over": False, "injected": False}

    async def hook(k):
        if not state["failed_over"] and any(m.attempt == 2 for m in k.of(PriceRequested, intent.intent_id)):
            state["failed_over"] = True
            await k.failover()  # B (epoch 2) takes over while attempt 2's price is being asked (A's request)
    kit.on_step = hook

    answer = market.on_message

    async def on_message(msg):
        await answer(msg)
        if isinstance(msg, PriceRequested) and msg.attempt == 2 and not state["injected"]:
            state["injected"] = True
            # A (epoch 1, not yet aware it lost the lease) consumed this quote and placed attempt 2:
            # the quote never reaches B; A's PlaceOrder is in the log before B spoke any command.
            kit._pending[-1].to_actor = False
            q = kit.log[-1][1]
            assert isinstance(q, PriceQuoted)
            kit.append(PlaceOrder(intent_id=intent.intent_id, venue="paper", symbol="BTC/USDT",
                                  client_order_id=f"{intent.intent_id}-2", attempt=2, side="buy",
                                  order_type="limit", qty=D(1), price=q.price,
                                  deadline_ns=kit.clock.now_ns() + 20 * NS), epoch=1)
    market.on_message = on_message
    return kit, market, intent


async def test_the_new_owner_works_the_old_owners_order_of_the_same_attempt_and_strands_nothing() -> None:
    kit, market, intent = await _setup()
    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id, within=120)
    working = [o.cmd.client_order_id for o in market.working()]
    assert working == [], f"finished ({report.reason!r}) with {working} still working at the venue"


async def test_an_owner_rebuilt_after_that_goes_on_with_a_timer_armed() -> None:
    kit, market, intent = await _setup()
    await kit.send(intent)
    await kit.advance("2.5")  # B re-asked for attempt 2's price once, its quote came, Place refused
    await kit.failover()       # C rebuilds: quote pending -> _quoted -> Place refused -> nothing armed
    await kit.advance(300)
    assert kit.finished(intent.intent_id) is not None or intent.intent_id in kit.timers, \
        f"stalled: no report, no timer; log tail {kit.kinds(intent.intent_id)[-6:]}"
