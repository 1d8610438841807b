"""The reconciler's polling schedule: a safety net that backs off while the venue's streams carry the news."""

from __future__ import annotations

import asyncio
import time

import structlog

from actors.reconciler import NS, Reconciler, ReconcilerState, Watched
from bus.actor import IntentContext
from bus.clock import SimClock


async def _no_send(msg: object) -> asyncio.Future[None]:
    raise AssertionError("nothing is published while scheduling")


def _next_poll_s(reconciler: Reconciler, *orders: tuple[Watched, int]) -> float:
    clock = SimClock(1_000 * NS)
    reconciler._quiet = {w.client_order_id: quiet for w, quiet in orders}
    orders = tuple(w for w, _ in orders)  # type: ignore[assignment]
    state = ReconcilerState(venue="paper", symbol="BTC/USDT", orders={w.client_order_id: w for w in orders})  # type: ignore[union-attr]
    ctx: IntentContext[ReconcilerState] = IntentContext("i-1", 0, state, _no_send, clock, structlog.get_logger())
    reconciler._commit(state, ctx)
    assert ctx.wake_at_ns is not None
    return (ctx.wake_at_ns - clock.now_ns()) / NS


def _order(cid: str, quiet: int, **kw: object) -> tuple[Watched, int]:
    return Watched(client_order_id=cid, attempt=1, side="buy", order_id=cid, **kw), quiet  # type: ignore[arg-type]


async def test_quiet_polls_double_the_interval_up_to_the_cap_while_streams_are_healthy() -> None:
    reconciler = Reconciler(None, poll_interval_s=2.0, max_poll_interval_s=30.0)
    alive = asyncio.get_running_loop().create_future()
    reconciler._streams["paper"] = [asyncio.ensure_future(alive)]
    reconciler._stream_seen["paper"] = time.monotonic()  # events flowing
    try:
        assert [_next_poll_s(reconciler, _order("a", q)) for q in range(6)] == [2, 4, 8, 16, 30, 30]
        # the least quiet order sets the pace, and a cancel in progress is confirmed quickly whatever the rest
        assert _next_poll_s(reconciler, _order("a", 5), _order("b", 1)) == 4
        assert _next_poll_s(reconciler, _order("a", 5), _order("b", 5, canceling=True)) == 0.2
    finally:
        alive.cancel()


async def test_without_healthy_streams_every_order_is_polled_at_the_base_interval() -> None:
    reconciler = Reconciler(None, poll_interval_s=2.0, max_poll_interval_s=30.0)
    assert _next_poll_s(reconciler, _order("a", 5)) == 2  # no streams at all

    alive = asyncio.get_running_loop().create_future()
    reconciler._streams["paper"] = [asyncio.ensure_future(alive)]
    reconciler._stream_broken["paper"] = time.monotonic()  # it failed a moment ago
    try:
        assert _next_poll_s(reconciler, _order("a", 5)) == 2
    finally:
        alive.cancel()


async def test_a_stream_silent_for_the_silence_window_is_not_trusted_while_orders_are_open() -> None:
    """A stream can die without an error; trusted, it would leave a fill unseen for up to the 30 s cap."""
    reconciler = Reconciler(None, poll_interval_s=2.0, max_poll_interval_s=30.0, stream_silence_s=3.0)
    alive = asyncio.get_running_loop().create_future()
    reconciler._streams["paper"] = [asyncio.ensure_future(alive)]
    try:
        reconciler._stream_seen["paper"] = time.monotonic() - 1.0  # delivered a second ago: healthy
        assert _next_poll_s(reconciler, _order("a", 5)) == 30
        reconciler._stream_seen["paper"] = time.monotonic() - 3.5  # nothing for longer than the window
        assert _next_poll_s(reconciler, _order("a", 5)) == 2
        reconciler._stream_seen["paper"] = time.monotonic()  # events flow again: the back-off resumes
        assert _next_poll_s(reconciler, _order("a", 5)) == 30
    finally:
        alive.cancel()


async def test_the_silence_clock_is_the_streams_own_deliveries() -> None:
    """`_stream` stamps every delivery; a watcher that never returns leaves the stamp to age."""
    delivered = asyncio.Event()

    class Venue:
        has = {"watchOrders": True}
        calls = 0

        async def watch_orders(self) -> list[dict[str, object]]:
            Venue.calls += 1
            if Venue.calls == 1:
                return []
            delivered.set()
            await asyncio.Event().wait()  # silent from now on, without an error
            return []

    reconciler = Reconciler(None, stream_silence_s=3.0)
    before = time.monotonic()
    task = asyncio.create_task(reconciler._stream(Venue(), "paper", "order"))
    try:
        await asyncio.wait_for(delivered.wait(), 5)
        assert reconciler._stream_seen["paper"] >= before
    finally:
        task.cancel()
