"""TWAP places no limit order after its horizon, and hands the rest to the fallback at the horizon: was, TWAP kept placing limit orders after its budget (`deadline_ns`, the horizon) is over: the last slice's
attempts each get `now + max(interval/(2*attempts), ...)` and AllFinal asks for the next attempt 'even when the
interval is over'. Every other strategy stops placing at `deadline_ns` (aggressive: `now < deadline_ns`);
`Strategy.budget_ns` says 'How long after acceptance the strategy may place orders (the fallback comes after)'."""
import logging
import structlog
from messages import PlaceOrder, TwapParams, IntentAccepted, ExecutionTimedOut
from tests.actors.kit import D, NS, supervised
from tests.helpers import new_intent
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


async def test_twap_places_no_limit_order_after_its_horizon() -> None:
    kit, market = await supervised(rule="nothing")
    intent = new_intent(qty=D(1), strategy="twap", params=TwapParams(horizon_seconds=D(6), slices=4, fallback="market"))
    market.at("4.4", unavailable="book stale")  # the pricer refuses for the start of the last slice
    market.at("5.9", unavailable="")
    await kit.send(intent)
    await kit.run_until_finished(intent.intent_id, within=60)
    (accepted,) = kit.of(IntentAccepted, intent.intent_id)
    late = [(o.client_order_id, (o.ts_event - accepted.deadline_ns) / NS, (o.deadline_ns - accepted.deadline_ns) / NS)
            for o in kit.of(PlaceOrder, intent.intent_id) if o.origin == "supervisor" and o.ts_event >= accepted.deadline_ns]
    (to,) = kit.of(ExecutionTimedOut, intent.intent_id)

    assert late == []
