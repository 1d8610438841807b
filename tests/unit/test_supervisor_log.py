"""The supervisor's state as the log implies it (`_fold`), and decisions that depend on counting per attempt.

The handler is called directly with an intent context whose publishes are collected: no bus is involved,
only the supervisor's own logic.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from actors.supervisor import MAX_PRICE_REQUESTS, OrderRecord, Supervisor, SupervisorState, _fold
from bus.actor import IntentContext
from messages import (
    CancelOrder,
    AggressiveLimitParams,
    ExecutionTimedOut,
    IntentAccepted,
    OrderFinalized,
    OrderKept,
    OrderPlaced,
    PlaceOrder,
    PriceQuoted,
    PriceRequested,
    PriceUnavailable,
    StrategyFinished,
)
from tests.helpers import handler_context, new_intent

D = Decimal
NS = 1_000_000_000


class _Clock:
    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


def _ctx(intent_id: str, state: SupervisorState | None, now_ns: int = 10 * NS) -> IntentContext[Any]:
    return handler_context(intent_id, state, clock=_Clock(now_ns))


def _aggressive(**params: Any) -> Any:
    return new_intent(
        strategy="aggressive_limit",
        params=AggressiveLimitParams(total_timeout_seconds=D(60), max_retries=8, fallback="market", **params),
    )


async def test_the_price_request_cap_counts_per_attempt_not_per_intent() -> None:
    """With `max_retries=8`, attempts 0..4 already used nine price requests between them; one transient
    `PriceUnavailable` in attempt 5 must be retried, not end the limit attempts."""
    intent = _aggressive()
    state = SupervisorState(
        intent=intent, accepted_ns=0, deadline_ns=60 * NS, phase="pricing", attempt=5,
        price_request=MAX_PRICE_REQUESTS, attempt_price_requests=1,
    )
    ctx = _ctx(intent.intent_id, state)
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}

    await Supervisor(None).handle(PriceUnavailable(**r, attempt=5, reason="book crossed", request=9), ctx)

    kinds = [type(m) for m in ctx.published]  # type: ignore[attr-defined]
    assert StrategyFinished not in kinds and ExecutionTimedOut not in kinds, ctx.published  # type: ignore[attr-defined]
    assert ctx.wake_at_ns and state.phase == "pricing"


async def test_ten_refused_prices_in_one_attempt_end_it_without_the_market_fallback() -> None:
    intent = _aggressive()
    state = SupervisorState(
        intent=intent, accepted_ns=0, deadline_ns=60 * NS, phase="pricing", attempt=2,
        attempt_price_requests=MAX_PRICE_REQUESTS,
    )
    ctx = _ctx(intent.intent_id, state)
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}

    await Supervisor(None).handle(PriceUnavailable(**r, attempt=2, reason="book stale", request=12), ctx)

    (finished,) = [m for m in ctx.published if isinstance(m, StrategyFinished)]  # type: ignore[attr-defined]
    assert "no price" in finished.reason and not finished.fallback_used
    assert not any(isinstance(m, ExecutionTimedOut) for m in ctx.published)  # type: ignore[attr-defined]


def _history(intent: Any, *more: Any) -> list[tuple[int, Any]]:
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}
    base = [
        intent,
        IntentAccepted(**r, side="buy", qty=intent.qty, strategy=intent.strategy, deadline_ns=60 * NS, ts_event=NS),
        PriceRequested(**r, attempt=0, side="buy", mode="arrival", qty=intent.qty),
        PriceQuoted(**r, attempt=0, side="buy", mode="arrival", price=D(100), bid=D(100), ask=D("100.01"),
                    tick_size=D("0.01")),
    ]
    return list(enumerate([*base, *(m(r) for m in more)], start=1))


def test_the_fold_reads_attempts_orders_and_cancels_from_the_log() -> None:
    intent = _aggressive()
    cid1 = f"{intent.intent_id}-1"
    history = _history(
        intent,
        lambda r: PriceRequested(**r, attempt=1, side="buy", mode="touch", qty=intent.qty, request=1),
        lambda r: PriceQuoted(**r, attempt=1, side="buy", mode="touch", price=D(100), bid=D(100), ask=D("100.01"),
                              tick_size=D("0.01"), request=1),
        lambda r: PlaceOrder(**r, client_order_id=cid1, attempt=1, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), deadline_ns=9 * NS),
        lambda r: OrderPlaced(**r, client_order_id=cid1, order_id="5", attempt=1, side="buy", order_type="limit",
                              qty=intent.qty, price=D(100)),
        lambda r: CancelOrder(**r, client_order_id=cid1, order_id="5"),
    )

    state = _fold(history)

    assert state is not None
    assert (state.phase, state.attempt, state.attempt_deadline_ns, state.deadline_ns) == ("canceling", 1, 9 * NS, 60 * NS)
    assert state.accepted_ns == NS and state.arrival_bid == D(100) and state.price_request == 2
    (order,) = state.orders
    assert (order.client_order_id, order.order_id, order.status, order.cancel) == (cid1, "5", "open", True)
    assert state.quote is None  # acted on: the PlaceOrder follows it


def test_a_quote_the_old_owner_never_acted_on_is_kept_for_the_new_one() -> None:
    intent = _aggressive()
    history = _history(
        intent,
        lambda r: PriceRequested(**r, attempt=1, side="buy", mode="touch", qty=intent.qty, request=1),
        lambda r: PriceQuoted(**r, attempt=1, side="buy", mode="touch", price=D(100), bid=D(100), ask=D("100.01"),
                              tick_size=D("0.01"), request=1),
    )

    state = _fold(history)

    assert state is not None and state.phase == "pricing" and state.quote is not None and state.quote.attempt == 1


def test_the_fold_of_an_order_filled_in_the_log_leaves_nothing_to_buy() -> None:
    intent = _aggressive()
    cid1 = f"{intent.intent_id}-1"
    history = _history(
        intent,
        lambda r: PlaceOrder(**r, client_order_id=cid1, attempt=1, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100)),
        lambda r: OrderFinalized(**r, client_order_id=cid1, order_id="5", attempt=1, status="filled",
                                 filled_qty=intent.qty),
    )

    state = _fold(history)

    assert state is not None and state.all_final and state.remaining == 0


async def test_a_rebuilt_intent_whose_orders_are_all_final_acts_at_once() -> None:
    """The old owner died after the last `OrderFinalized` and before reacting: the new one finishes it."""
    intent = _aggressive()
    state = SupervisorState(
        intent=intent, accepted_ns=0, deadline_ns=60 * NS, phase="working", attempt=1,
        orders=[OrderRecord(client_order_id=f"{intent.intent_id}-1", attempt=1, origin="supervisor",
                            qty=intent.qty, status="final", filled=intent.qty)],
    )
    ctx = _ctx(intent.intent_id, state)

    await Supervisor(None).on_resume(ctx)

    (finished,) = [m for m in ctx.published if isinstance(m, StrategyFinished)]  # type: ignore[attr-defined]
    assert finished.reason == "filled" and ctx.retired


def _working(intent: Any, price: Decimal) -> SupervisorState:
    return SupervisorState(
        intent=intent, accepted_ns=0, deadline_ns=60 * NS, phase="working", attempt=1, attempt_deadline_ns=5 * NS,
        price_request=2, tick_size=D("0.01"),
        orders=[OrderRecord(client_order_id=f"{intent.intent_id}-1", attempt=1, origin="supervisor", qty=intent.qty,
                            price=price, order_id="9", status="open")],
    )


async def _expire_and_quote(price: Decimal) -> tuple[SupervisorState, list[Any]]:
    intent = _aggressive()
    state = _working(intent, D(100))
    ctx = _ctx(intent.intent_id, state, now_ns=6 * NS)
    supervisor = Supervisor(None)
    await supervisor.on_timer(ctx)
    assert state.phase == "repricing" and state.attempt == 2
    assert not any(isinstance(m, CancelOrder) for m in ctx.published)  # type: ignore[attr-defined]
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}
    quote = PriceQuoted(**r, attempt=2, side="buy", mode="inside", price=price, bid=D(100), ask=D("100.01"),
                        tick_size=D("0.01"), request=2)
    await supervisor.handle(quote, ctx)
    return state, ctx.published  # type: ignore[attr-defined]


async def test_an_attempt_priced_at_the_working_orders_price_keeps_that_order() -> None:
    """One-tick spread: attempt 2's "inside" price is attempt 1's own price. Canceling and placing it again
    would only lose the order's place in the queue."""
    state, published = await _expire_and_quote(D(100))

    (kept,) = [m for m in published if isinstance(m, OrderKept)]
    assert kept.attempt == 2 and kept.client_order_id.endswith("-1") and kept.price == D(100)
    assert not any(isinstance(m, CancelOrder | PlaceOrder) for m in published), published
    assert state.phase == "working" and state.attempt_deadline_ns == kept.deadline_ns > 6 * NS


async def test_an_attempt_priced_elsewhere_cancels_the_working_order_first() -> None:
    state, published = await _expire_and_quote(D("100.01"))

    (cancel,) = [m for m in published if isinstance(m, CancelOrder)]
    assert cancel.client_order_id.endswith("-1")
    assert not any(isinstance(m, OrderKept | PlaceOrder) for m in published)
    assert state.phase == "canceling" and state.attempt == 1  # attempt 2 is priced again once 1 is terminal


def test_the_fold_of_a_kept_order_gives_the_next_attempt_that_order() -> None:
    intent = _aggressive()
    cid1 = f"{intent.intent_id}-1"
    history = _history(
        intent,
        lambda r: PlaceOrder(**r, client_order_id=cid1, attempt=1, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), deadline_ns=5 * NS),
        lambda r: OrderPlaced(**r, client_order_id=cid1, order_id="9", attempt=1, side="buy", order_type="limit",
                              qty=intent.qty, price=D(100)),
        lambda r: PriceRequested(**r, attempt=2, side="buy", mode="inside", qty=intent.qty, request=2),
        lambda r: OrderKept(**r, attempt=2, client_order_id=cid1, price=D(100), deadline_ns=11 * NS),
    )

    state = _fold(history)

    assert state is not None and (state.phase, state.attempt, state.attempt_deadline_ns) == ("working", 2, 11 * NS)
    assert [o.status for o in state.orders] == ["open"]


def test_the_fold_of_a_repricing_the_old_owner_never_finished_does_not_place_a_second_order() -> None:
    intent = _aggressive()
    cid1 = f"{intent.intent_id}-1"
    history = _history(
        intent,
        lambda r: PlaceOrder(**r, client_order_id=cid1, attempt=1, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), deadline_ns=5 * NS),
        lambda r: OrderPlaced(**r, client_order_id=cid1, order_id="9", attempt=1, side="buy", order_type="limit",
                              qty=intent.qty, price=D(100)),
        lambda r: PriceRequested(**r, attempt=2, side="buy", mode="inside", qty=intent.qty, request=2),
    )

    state = _fold(history)

    assert state is not None and state.phase == "repricing"  # decided by keep-or-cancel, never "place"


def test_the_fold_ignores_what_an_owner_sent_after_a_newer_owner_had_taken_over() -> None:
    """Chaos run, seed 26: owner 869 placed attempt 2 and canceled it; owner 839, not yet aware it had lost
    the intent, then asked for attempt 2's price again. Folded as a fact, that request put the state back
    in `pricing`, and its quote made the next owner place with nothing left to buy."""
    intent = _aggressive()
    cid2 = f"{intent.intent_id}-2"
    history = _history(
        intent,
        lambda r: PriceRequested(**r, attempt=2, side="buy", mode="inside", qty=intent.qty, request=2, epoch=839),
        lambda r: PlaceOrder(**r, client_order_id=cid2, attempt=2, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), epoch=869),
        lambda r: CancelOrder(**r, client_order_id=cid2, epoch=869),
        lambda r: PriceRequested(**r, attempt=2, side="buy", mode="inside", qty=intent.qty, request=3, epoch=839),
        lambda r: PriceQuoted(**r, attempt=2, side="buy", mode="inside", price=D(99), bid=D(99), ask=D("99.01"),
                              tick_size=D("0.01"), request=3),
        lambda r: OrderFinalized(**r, client_order_id=cid2, order_id="207", attempt=2, status="filled",
                                 filled_qty=intent.qty),
    )

    state = _fold(history)

    assert state is not None and state.phase == "canceling" and state.quote is None, state
    assert state.price_request == 3 and state.remaining == 0


async def test_nothing_left_to_buy_never_becomes_a_zero_quantity_order() -> None:
    intent = _aggressive()
    state = SupervisorState(
        intent=intent, accepted_ns=0, deadline_ns=60 * NS, phase="pricing", attempt=2, price_request=3,
        orders=[OrderRecord(client_order_id=f"{intent.intent_id}-2", attempt=2, origin="supervisor", qty=intent.qty,
                            status="final", filled=intent.qty)],
    )
    ctx = _ctx(intent.intent_id, state)
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}
    quote = PriceQuoted(**r, attempt=2, side="buy", mode="inside", price=D(99), bid=D(99), ask=D("99.01"),
                        tick_size=D("0.01"), request=2)

    await Supervisor(None).handle(quote, ctx)  # raised ValueError (qty 0) before

    assert not any(isinstance(m, PlaceOrder) for m in ctx.published)  # type: ignore[attr-defined]
    (finished,) = [m for m in ctx.published if isinstance(m, StrategyFinished)]  # type: ignore[attr-defined]
    assert finished.reason == "filled"


def test_the_fold_of_a_repricing_that_canceled_returns_to_the_orders_attempt() -> None:
    """Recovery run: attempt 2 priced elsewhere, so attempt 1's order was canceled, and the owner died. The
    rebuilt owner must still give attempt 2 its own order, not count it as used and go to the fallback."""
    intent = _aggressive()
    cid1 = f"{intent.intent_id}-1"
    history = _history(
        intent,
        lambda r: PlaceOrder(**r, client_order_id=cid1, attempt=1, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), deadline_ns=5 * NS),
        lambda r: OrderPlaced(**r, client_order_id=cid1, order_id="9", attempt=1, side="buy", order_type="limit",
                              qty=intent.qty, price=D(100)),
        lambda r: PriceRequested(**r, attempt=2, side="buy", mode="inside", qty=intent.qty, request=2),
        lambda r: PriceQuoted(**r, attempt=2, side="buy", mode="inside", price=D("100.01"), bid=D(100),
                              ask=D("100.02"), tick_size=D("0.01"), request=2),
        lambda r: CancelOrder(**r, client_order_id=cid1, order_id="9"),
        lambda r: OrderFinalized(**r, client_order_id=cid1, order_id="9", attempt=1, status="canceled",
                                 filled_qty=D(0)),
    )

    state = _fold(history)

    assert state is not None and (state.phase, state.attempt, state.quote) == ("canceling", 1, None), state


def test_the_fold_counts_an_order_a_fenced_owner_placed() -> None:
    """Review: the old owner's PlaceOrder reached the venue before the placer had seen the new epoch (the
    new owner's identical command was then deduplicated away). Skipping it left its fills unaccounted."""
    intent = _aggressive()
    cid2 = f"{intent.intent_id}-2"
    history = _history(
        intent,
        lambda r: PriceRequested(**r, attempt=2, side="buy", mode="inside", qty=intent.qty, request=2, epoch=2),
        lambda r: PlaceOrder(**r, client_order_id=cid2, attempt=2, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), epoch=1),
        lambda r: OrderPlaced(**r, client_order_id=cid2, order_id="8", attempt=2, side="buy", order_type="limit",
                              qty=intent.qty, price=D(100)),
        lambda r: OrderFinalized(**r, client_order_id=cid2, order_id="8", attempt=2, status="filled",
                                 filled_qty=intent.qty),
    )

    state = _fold(history)

    assert state is not None and state.remaining == 0 and state.early == []
    assert [(o.client_order_id, o.status) for o in state.orders] == [(cid2, "final")]


async def test_a_stale_owners_refused_command_does_not_poison_our_order_of_the_same_id() -> None:
    from messages import OrderRejected

    intent = _aggressive()
    state = SupervisorState(intent=intent, accepted_ns=0, deadline_ns=60 * NS, phase="pricing", attempt=3)
    ctx = _ctx(intent.intent_id, state)
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}

    await Supervisor(None).handle(
        OrderRejected(**r, client_order_id=f"{intent.intent_id}-4", attempt=4, reason="old epoch", error="StaleEpoch",
                      retryable=True),
        ctx,
    )

    assert state.early == []


async def test_an_order_that_ends_while_the_next_attempt_is_priced_does_not_skip_that_attempt() -> None:
    intent = _aggressive()
    state = _working(intent, D(100))
    ctx = _ctx(intent.intent_id, state, now_ns=6 * NS)
    supervisor = Supervisor(None)
    await supervisor.on_timer(ctx)  # attempt 1 expired: attempt 2 is priced first (keep or cancel)
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}

    await supervisor.handle(
        OrderFinalized(**r, client_order_id=f"{intent.intent_id}-1", order_id="9", attempt=1, status="expired",
                       filled_qty=D("0.004")),
        ctx,
    )

    asked = [m.attempt for m in ctx.published if isinstance(m, PriceRequested)]  # type: ignore[attr-defined]
    assert asked == [2, 2], asked  # attempt 2 asked again for the remainder, never 3


async def test_a_new_owner_waits_for_the_price_request_the_old_one_sent() -> None:
    intent = _aggressive()
    state = SupervisorState(
        intent=intent, accepted_ns=0, deadline_ns=60 * NS, phase="pricing", attempt=2,
        attempt_price_requests=MAX_PRICE_REQUESTS, price_requested_ns=10 * NS,
    )
    ctx = _ctx(intent.intent_id, state, now_ns=10 * NS + 1)

    await Supervisor(None).on_resume(ctx)

    assert ctx.published == [] and ctx.wake_at_ns == 12 * NS  # type: ignore[attr-defined]


async def test_a_failed_keep_after_a_kept_attempt_goes_back_to_the_attempt_the_order_works_for() -> None:
    """Attempt 2 kept attempt 1's order; at attempt 2's deadline attempt 3 prices elsewhere. The cancel is
    attempt 2's, and once the order is terminal attempt 3 comes next — not attempt 2 again."""
    intent = _aggressive()
    state = _working(intent, D(100))
    state.attempt, state.kept = 2, 1  # attempt 2 working with order -1
    ctx = _ctx(intent.intent_id, state, now_ns=6 * NS)
    supervisor = Supervisor(None)
    r = {"intent_id": intent.intent_id, "venue": "paper", "symbol": "BTC/USDT"}
    await supervisor.on_timer(ctx)
    await supervisor.handle(
        PriceQuoted(**r, attempt=3, side="buy", mode="cross", price=D("100.01"), bid=D(100), ask=D("100.01"),
                    tick_size=D("0.01"), request=2),
        ctx,
    )
    assert state.phase == "canceling" and state.attempt == 2

    await supervisor.handle(
        OrderFinalized(**r, client_order_id=f"{intent.intent_id}-1", order_id="9", attempt=1, status="canceled",
                       filled_qty=D(0)),
        ctx,
    )

    asked = [m.attempt for m in ctx.published if isinstance(m, PriceRequested)]  # type: ignore[attr-defined]
    assert asked == [3, 3], asked


def test_a_fenced_owners_order_the_placer_refused_is_closed_by_that_refusal() -> None:
    """Chaos run, seed 1: owner 794 (its lease lapsed) sent PlaceOrder -2 after owner 881 had spoken; the
    placer refused it as stale. The rebuilt owner counts that order until the refusal, then not at all —
    before, it waited for it for ever and canceled it every few seconds."""
    from messages import OrderRejected

    intent = _aggressive()
    cid1, cid2 = f"{intent.intent_id}-1", f"{intent.intent_id}-2"
    history = _history(
        intent,
        lambda r: PlaceOrder(**r, client_order_id=cid1, attempt=1, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), epoch=881),
        lambda r: OrderFinalized(**r, client_order_id=cid1, order_id="124", attempt=1, status="canceled",
                                 filled_qty=D(0)),
        lambda r: PlaceOrder(**r, client_order_id=cid2, attempt=2, side="buy", order_type="limit", qty=intent.qty,
                             price=D(100), epoch=794),
        lambda r: OrderRejected(**r, client_order_id=cid2, attempt=2, reason="stale", error="StaleEpoch",
                                retryable=True),
    )

    state = _fold(history)

    assert state is not None and state.all_final, state.orders
    assert [(o.client_order_id, o.fenced, o.status) for o in state.orders] == [(cid1, False, "final"), (cid2, True, "final")]
