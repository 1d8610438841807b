"""The old owner's order of the attempt lands after the new owner's first price request for it: the new owner
and any owner rebuilt from the log must still work it and finish with nothing left working."""
import logging
import structlog
from messages import PlaceOrder, PriceQuoted, PriceRequested, AggressiveLimitParams
from tests.actors.kit import D, NS, supervised
from tests.helpers import new_intent
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


async def _setup():
    kit, market = await supervised(rule="nothing")
    market.script("reject-retryable")
    intent = new_intent(qty=D(1), strategy="aggressive_limit",
                        params=AggressiveLimitParams(total_timeout_seconds=D(60), max_retries=3, fallback="none"))
    st = {"failed_over": False, "a_quote": None, "injected": False}

    async def hook(k):
        if not st["failed_over"] and any(m.attempt == 2 for m in k.of(PriceRequested, intent.intent_id)):
            st["failed_over"] = True
            await k.failover()
    kit.on_step = hook
    answer = market.on_message

    async def on_message(msg):
        if isinstance(msg, PriceRequested) and msg.attempt == 2 and msg.epoch == 2 and not st["injected"]:
            st["injected"] = True  # A, 2 s late, sends the order for the quote it consumed
            kit.append(PlaceOrder(intent_id=intent.intent_id, venue="paper", symbol="BTC/USDT",
                                  client_order_id=f"{intent.intent_id}-2", attempt=2, side="buy", order_type="limit",
                                  qty=D(1), price=st["a_quote"].price, deadline_ns=kit.clock.now_ns() + 20 * NS), epoch=1)
        await answer(msg)
        if isinstance(msg, PriceRequested) and msg.attempt == 2 and msg.epoch == 1 and st["a_quote"] is None:
            kit._pending[-1].to_actor = False  # A consumed this quote
            st["a_quote"] = kit.log[-1][1]
    market.on_message = on_message
    return kit, market, intent


async def test_a_late_old_owners_order_is_worked_live_and_nothing_is_stranded() -> None:
    kit, market, intent = await _setup()
    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id, within=120)
    working = [o.cmd.client_order_id for o in market.working()]
    assert working == []


async def test_an_owner_rebuilt_after_a_late_old_owners_order_reports() -> None:
    kit, market, intent = await _setup()
    await kit.send(intent)
    await kit.advance("2.1")  # B re-asked (epoch 2), A's order came in, B's Place refused
    await kit.failover()
    await kit.advance(600)
    assert kit.finished(intent.intent_id) is not None, f"no report after 10 min; log tail {kit.kinds(intent.intent_id)[-5:]}"
