"""A venue that refuses every child retryably gets one child a second, not a burst of a hundred at once (the
children cap alone would allow ceil(qty / display) + 3 of them in one instant)."""

from __future__ import annotations

from messages import IcebergParams, PlaceOrder
from tests.actors.kit import D, NS, supervised
from tests.helpers import new_intent


async def test_an_iceberg_whose_children_are_refused_pauses_between_them() -> None:
    kit, market = await supervised(rule="nothing")
    market.script(*["reject-retryable"] * 200)
    intent = new_intent(qty=D(1), strategy="iceberg",
                        params=IcebergParams(display_qty=D("0.01"), limit_price=D("100.00"), timeout_seconds=D(10)))
    t0 = kit.clock.now_ns()

    await kit.send(intent)
    report = await kit.run_until_finished(intent.intent_id, within=60)

    sent = sorted(o.ts_event for o in kit.of(PlaceOrder, intent.intent_id))
    assert 5 <= len(sent) <= 11, len(sent)  # one a second over the 10 s budget
    assert all(b - a >= NS for a, b in zip(sent, sent[1:])), [(t - t0) / NS for t in sent]
    assert report.reason.startswith("iceberg budget over") or "rejected" in report.reason, report.reason
