"""The placer: the only actor that calls `create_order` and `cancel_order`.

Client order ids are deterministic (`<intent>-<attempt>`), so a repeated `PlaceOrder` can never place
twice: the venue refuses a used id (`DuplicateOrderId`) and the placer then looks the order up. A timeout
or network error on create is *unknown*, not failed: `OrderOutcomeUnknown` is published and the order is
looked up by client order id on a timer until it is found, or until it has been absent long enough that
creating it again (same id, so still at most once) is safe.
"""

from __future__ import annotations

from typing import Any

import ccxt
import msgspec

from bus.actor import Actor, IntentContext
from messages import (
    CancelOrder,
    CancelRejected,
    OrderCanceled,
    OrderFinalized,
    OrderOutcomeUnknown,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
)
from messages.base import Message, routing
from venues.gateway import fetch_order_by_client_id

__all__ = ["Placer", "PlacerState"]

NS = 1_000_000_000


class Pending(msgspec.Struct, kw_only=True):
    """An order whose create outcome is unknown, or whose cancel still has to go through."""

    command: PlaceOrder
    since_ns: int
    checks: int = 0
    cancel_wanted: bool = False


class PlacerState(msgspec.Struct, kw_only=True):
    venue: str = ""
    symbol: str = ""
    placed: dict[str, str] = msgspec.field(default_factory=dict)
    """client order id -> venue order id"""
    unknown: dict[str, Pending] = msgspec.field(default_factory=dict)
    cancels: dict[str, int] = msgspec.field(default_factory=dict)
    """client order id -> failed cancel tries, for cancels to retry until the order is final"""
    final: list[str] = msgspec.field(default_factory=list)
    early_cancels: list[str] = msgspec.field(default_factory=list)
    """Client order ids whose `CancelOrder` reached us before their `PlaceOrder`. That happens after a
    failover: a `PlaceOrder` the dead replica had taken comes back only when its ack wait expires, while the
    supervisor's later `CancelOrder` is delivered to the new replica at once. Kept until the `PlaceOrder`
    arrives, and honoured: whatever gets placed under that id is canceled."""


class Placer(Actor[PlacerState]):
    name = "placer"
    consumes = (PlaceOrder, CancelOrder, OrderFinalized)
    State = PlacerState

    def __init__(
        self,
        venues: Any,
        *,
        resolve_interval_s: float = 0.25,
        absent_grace_s: float = 5.0,
        cancel_retry_s: float = 0.5,
    ) -> None:
        self._venues = venues
        self._resolve_ns = int(resolve_interval_s * NS)
        self._absent_grace_ns = int(absent_grace_s * NS)
        self._cancel_retry_ns = int(cancel_retry_s * NS)
        self.stats = {"created": 0, "rejected": 0, "unknown": 0, "recovered": 0, "canceled": 0, "cancel_failed": 0}

    def status(self) -> dict[str, Any]:
        return dict(self.stats)

    async def handle(self, msg: Message, ctx: IntentContext[PlacerState]) -> None:
        state = ctx.state or PlacerState(venue=msg.venue, symbol=msg.symbol)
        match msg:
            case PlaceOrder():
                await self._place(msg, state, ctx)
            case CancelOrder():
                if self._never_seen(msg.client_order_id, state) and msg.order_id is None:
                    await self._cancel_before_place(msg, state, ctx)
                else:
                    await self._cancel(msg.client_order_id, msg.order_id, msg.venue, msg.symbol, state, ctx)
            case OrderFinalized():
                state.cancels.pop(msg.client_order_id, None)
                pending = state.unknown.pop(msg.client_order_id, None)
                if pending is not None and msg.order_id is not None:
                    # The reconciler saw the order at the venue before our lookup did: that resolves it.
                    state.placed[msg.client_order_id] = msg.order_id
                    await self._published_placed(pending.command, msg.order_id, ctx, recovered=True)
                if msg.client_order_id not in state.final:
                    state.final.append(msg.client_order_id)
        if self._done(state):
            ctx.forget()
            return
        self._arm(state, ctx)
        ctx.save(state)

    @staticmethod
    def _done(state: PlacerState) -> bool:
        """Every order we placed is final and nothing is pending: nothing left to remember."""
        return (
            bool(state.placed)
            and not state.unknown
            and not state.cancels
            and not state.early_cancels
            and all(cid in state.final for cid in state.placed)
        )

    @staticmethod
    def _never_seen(cid: str, state: PlacerState) -> bool:
        return cid not in state.placed and cid not in state.unknown and cid not in state.final

    async def on_timer(self, ctx: IntentContext[PlacerState]) -> None:
        state = ctx.state
        if state is None:
            return
        for cid, pending in list(state.unknown.items()):
            await self._resolve(cid, pending, state, ctx)
        for cid, tries in list(state.cancels.items()):
            if cid in state.final:
                state.cancels.pop(cid, None)
                continue
            await self._cancel(cid, state.placed.get(cid), state.venue, state.symbol, state, ctx, tries=tries)
        self._arm(state, ctx)
        ctx.save(state)

    async def on_resume(self, ctx: IntentContext[PlacerState]) -> None:
        if ctx.state is not None:
            self._arm(ctx.state, ctx)

    def _arm(self, state: PlacerState, ctx: IntentContext[PlacerState]) -> None:
        now = ctx.clock.now_ns()
        if state.unknown:
            ctx.wake_at(now + self._resolve_ns)
        elif state.cancels:
            ctx.wake_at(now + self._cancel_retry_ns)
        else:
            ctx.wake_at(0)

    # -- create -----------------------------------------------------------------------------------------

    async def _place(self, cmd: PlaceOrder, state: PlacerState, ctx: IntentContext[PlacerState]) -> None:
        cid = cmd.client_order_id
        cancel_after = cid in state.early_cancels
        if cancel_after:
            state.early_cancels.remove(cid)
        if cid in state.final:
            return  # terminal already (canceled before this command came back): nothing left to say
        if cid in state.placed:
            await self._published_placed(cmd, state.placed[cid], ctx, recovered=cancel_after)
            return
        if cid in state.unknown:
            return  # being resolved already
        # Canceled before it came back: still create it (same id, so a create the dead replica sent that
        # lands late is refused) and cancel it at once; if it exists already, DuplicateOrderId finds it.
        await self._create(cmd, state, ctx, cancel_after=cancel_after)

    async def _cancel_before_place(self, msg: CancelOrder, state: PlacerState, ctx: IntentContext[PlacerState]) -> None:
        """A cancel for an order we have no record of. Either its `PlaceOrder` is still to come back to us
        (a failover reordered them) and the dead replica may or may not have created it, or the order is long
        final. Ask the venue by client order id: an order that is there and open is canceled now; one that is
        not there is canceled as soon as its `PlaceOrder` places it."""
        cid = msg.client_order_id
        exchange = await self._venues.get(msg.venue)
        try:
            found = await fetch_order_by_client_id(exchange, cid, msg.symbol)
        except ccxt.NetworkError as exc:
            ctx.log.info("order_lookup_failed", client_order_id=cid, error=type(exc).__name__)
            found = None  # could not ask: keep the cancel for when the PlaceOrder comes
        else:
            if found is not None and found.get("status") != "open":
                await ctx.publish(
                    CancelRejected(
                        intent_id=ctx.intent_id, venue=msg.venue, symbol=msg.symbol, client_order_id=cid,
                        order_id=str(found["id"]), reason=f"order is {found.get('status')}", error="OrderNotFound",
                    )
                )
                return
        ctx.log.warning("cancel_before_place", client_order_id=cid, at_venue=found is not None)
        if cid not in state.early_cancels:
            state.early_cancels.append(cid)
        if found is not None:
            state.placed[cid] = str(found["id"])
            await self._cancel(cid, state.placed[cid], msg.venue, msg.symbol, state, ctx)

    async def _create(
        self, cmd: PlaceOrder, state: PlacerState, ctx: IntentContext[PlacerState], *, cancel_after: bool = False
    ) -> None:
        cid = cmd.client_order_id
        exchange = await self._venues.get(cmd.venue)
        params: dict[str, Any] = {"clientOrderId": cid}
        if cmd.post_only:
            params["postOnly"] = True
        if cmd.time_in_force != "GTC":
            params["timeInForce"] = cmd.time_in_force
        try:
            order = await exchange.create_order(
                cmd.symbol,
                cmd.order_type,
                cmd.side,
                float(cmd.qty),
                float(cmd.price) if cmd.price is not None else None,
                params,
            )
        except ccxt.DuplicateOrderId:
            # Placed before (a crash between create and our record of it): find it, never place again.
            await self._unknown(cmd, state, ctx, "DuplicateOrderId", cancel_wanted=cancel_after)
            await self._resolve(cid, state.unknown[cid], state, ctx)
            return
        except ccxt.NetworkError as exc:
            await self._unknown(cmd, state, ctx, type(exc).__name__, cancel_wanted=cancel_after)
            return
        except ccxt.BaseError as exc:
            self.stats["rejected"] += 1
            ctx.log.info("order_rejected", client_order_id=cid, error=type(exc).__name__, reason=str(exc))
            await ctx.publish(
                OrderRejected(
                    **routing(cmd),
                    client_order_id=cid,
                    attempt=cmd.attempt,
                    reason=str(exc)[:500],
                    error=type(exc).__name__,
                    retryable=isinstance(exc, (ccxt.OrderImmediatelyFillable,)),
                )
            )
            return
        self.stats["created"] += 1
        state.placed[cid] = str(order["id"])
        state.unknown.pop(cid, None)
        await self._published_placed(cmd, state.placed[cid], ctx, recovered=False)
        if cancel_after:
            await self._cancel(cid, state.placed[cid], cmd.venue, cmd.symbol, state, ctx)

    async def _unknown(
        self, cmd: PlaceOrder, state: PlacerState, ctx: IntentContext[PlacerState], error: str, *, cancel_wanted: bool = False
    ) -> None:
        cid = cmd.client_order_id
        self.stats["unknown"] += 1
        ctx.log.warning("order_outcome_unknown", client_order_id=cid, error=error)
        pending = state.unknown.setdefault(cid, Pending(command=cmd, since_ns=ctx.clock.now_ns()))
        pending.cancel_wanted = pending.cancel_wanted or cancel_wanted
        await ctx.publish(
            OrderOutcomeUnknown(
                **routing(cmd),
                client_order_id=cid,
                attempt=cmd.attempt,
                error=error,
            )
        )

    async def _resolve(self, cid: str, pending: Pending, state: PlacerState, ctx: IntentContext[PlacerState]) -> None:
        cmd = pending.command
        pending.checks += 1
        exchange = await self._venues.get(cmd.venue)
        try:
            found = await fetch_order_by_client_id(exchange, cid, cmd.symbol)
        except ccxt.NetworkError as exc:
            ctx.log.info("order_lookup_failed", client_order_id=cid, error=type(exc).__name__)
            return  # could not ask: that is not "not found"
        if found is not None:
            self.stats["recovered"] += 1
            state.unknown.pop(cid, None)
            state.placed[cid] = str(found["id"])
            await self._published_placed(cmd, state.placed[cid], ctx, recovered=True)
            if pending.cancel_wanted:
                await self._cancel(cid, state.placed[cid], cmd.venue, cmd.symbol, state, ctx)
            return
        if ctx.clock.now_ns() - pending.since_ns >= self._absent_grace_ns:
            # Absent for longer than the venue's lag: it was never placed. Same id again, so still at most once.
            ctx.log.info("order_absent_recreating", client_order_id=cid, checks=pending.checks)
            state.unknown.pop(cid, None)
            # A cancel asked for meanwhile still applies to whatever this places.
            await self._create(cmd, state, ctx, cancel_after=pending.cancel_wanted)

    async def _published_placed(self, cmd: PlaceOrder, order_id: str, ctx: IntentContext[PlacerState], *, recovered: bool) -> None:
        await ctx.publish(
            OrderPlaced(
                **routing(cmd),
                client_order_id=cmd.client_order_id,
                order_id=order_id,
                attempt=cmd.attempt,
                side=cmd.side,
                order_type=cmd.order_type,
                qty=cmd.qty,
                price=cmd.price,
                recovered=recovered,
            )
        )

    # -- cancel -----------------------------------------------------------------------------------------

    async def _cancel(
        self,
        cid: str,
        order_id: str | None,
        venue: str,
        symbol: str,
        state: PlacerState,
        ctx: IntentContext[PlacerState],
        *,
        tries: int = 0,
    ) -> None:
        if cid in state.final:
            return
        order_id = order_id or state.placed.get(cid)
        if order_id is None:
            pending = state.unknown.get(cid)
            if pending is not None:
                pending.cancel_wanted = True  # cancel as soon as we know whether and where it is
                return
            await ctx.publish(
                CancelRejected(
                    intent_id=ctx.intent_id, venue=venue, symbol=symbol, client_order_id=cid,
                    order_id=None, reason="no such order placed by us", error="OrderNotFound",
                )
            )
            return
        exchange = await self._venues.get(venue)
        try:
            await exchange.cancel_order(order_id, symbol)
        except ccxt.OrderNotFound as exc:
            # Typically it filled completely first. The reconciler confirms the final state either way.
            state.cancels.pop(cid, None)
            await ctx.publish(
                CancelRejected(
                    intent_id=ctx.intent_id, venue=venue, symbol=symbol, client_order_id=cid,
                    order_id=order_id, reason=str(exc)[:300], error="OrderNotFound",
                )
            )
            return
        except ccxt.BaseError as exc:
            self.stats["cancel_failed"] += 1
            state.cancels[cid] = tries + 1
            ctx.log.warning("cancel_failed_will_retry", client_order_id=cid, error=type(exc).__name__, tries=tries + 1)
            return
        self.stats["canceled"] += 1
        state.cancels.pop(cid, None)
        await ctx.publish(
            OrderCanceled(intent_id=ctx.intent_id, venue=venue, symbol=symbol, client_order_id=cid, order_id=order_id)
        )

