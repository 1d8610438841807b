"""The placer: the only actor that calls `create_order` and `cancel_order`, and the last check before
money moves.

Before any create, whoever asked for it:
- the intent must be accepted and not finished, and the command must not come from an owner whose lease
  has moved on (its epoch is older than one already seen from the same origin);
- its quantity must fit: the intent's quantity minus what every other order of the intent has filled or
  still has open, from the placer's own durable record (and the venue's, for an attempt it has no record
  of) — `OrderRejected(error="ExposureExceeded")` otherwise;
- a `PlaceOrder` delivered before (an earlier delivery may have created it and died before recording it)
  is first looked up at the venue by client order id, open and closed: only an order proven absent is
  created. Venues such as Binance accept a reused client order id once the first order has closed, so the
  venue's refusal of a duplicate is no protection;
- a market order needs a fresh, uncrossed price: the command's reference price, or the venue's book.

A timeout or network error on create is *unknown*, not failed: `OrderOutcomeUnknown` is published and the
order is looked up by client order id on a timer until it is found, or until it has been absent long enough
that creating it again is safe. A rate-limited create executed nothing and is retried after the venue's
back-off. A cancel answered "not found" (a venue that has not indexed the order yet) is retried through a
lookup by client order id until the order is terminal.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from decimal import Decimal
from typing import Any

import ccxt
import msgspec

from actors import risk
from bus.actor import Actor, IntentContext, Services
from messages import (
    CancelIntent,
    IntentAccepted,
    StrategyFinished,
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
from messages.controls import DENY_ORDER_RATE, Reservation
from venues.gateway import cancel_order, create_order, fetch_balance, fetch_order_book, fetch_order_by_client_id

__all__ = ["Placer", "PlacerState"]

NS = 1_000_000_000
FRESH_PRICE_NS = 2 * NS
"""A reference price older than this is not fresh: the placer reads the venue's book instead."""
_RETRY_AFTER = re.compile(r"retry_after_ms=(\d+)")


class Pending(msgspec.Struct, kw_only=True):
    """An order whose create outcome is unknown, or whose cancel still has to go through."""

    command: PlaceOrder
    since_ns: int
    checks: int = 0
    cancel_wanted: bool = False
    holder: str = ""
    """The placer replica holding the right to create this id, when it is not us: its create may have landed."""
    reason: str = ""
    """Why a create waits in `backoff`: the venue's rate limit (`RateLimitExceeded`) or our own order-rate
    budget (`risk.order_rate`). Either way nothing of it reached the venue — as far as this record knows: a
    placer that took the create out of `backoff` and died before its state was written leaves it here."""
    unsent_if_absent: bool = False
    """Canceled while it waited in `backoff` under a claim this process cannot vouch for: if the venue does
    not have it, it ends unsent instead of being created (`_resolve`)."""


class PlacerState(msgspec.Struct, kw_only=True):
    venue: str = ""
    symbol: str = ""
    intent_qty: Decimal | None = None
    """From `IntentAccepted`: the most the intent's orders may ever fill together."""
    finished: bool = False
    """`StrategyFinished` seen: nothing more may be created for the intent."""
    canceled: bool = False
    """`CancelIntent` seen: nothing more may be created for the intent (cancels still go through)."""
    accepted_seq: int = 0
    """Where `IntentAccepted` is in the log: only a cancel after it counts (the supervisor's rule too)."""
    qty: dict[str, Decimal] = msgspec.field(default_factory=dict)
    """client order id -> quantity asked for, for every order we created or may have created"""
    filled: dict[str, Decimal] = msgspec.field(default_factory=dict)
    """client order id -> final filled quantity, from `OrderFinalized`"""
    owners: dict[str, list[list[int]]] = msgspec.field(default_factory=dict)
    """origin -> [[epoch, stream sequence of its first message], ...]: when each owner began to speak"""
    backoff: dict[str, Pending] = msgspec.field(default_factory=dict)
    """Creates refused by the venue's rate limit (nothing executed), due again at `since_ns`."""
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
    consumes = (IntentAccepted, PlaceOrder, CancelOrder, OrderFinalized, StrategyFinished, CancelIntent)
    produces = (OrderPlaced, OrderRejected, OrderOutcomeUnknown, OrderCanceled, CancelRejected)
    claims = {"intents": ("create",), "controls": ("rate",)}  # one create per client order id; the order budget
    moves_money = True
    begins_intent = (IntentAccepted,)
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
        self._services: Services | None = None
        self._resolve_ns = int(resolve_interval_s * NS)
        self._absent_grace_ns = int(absent_grace_s * NS)
        self._cancel_retry_ns = int(cancel_retry_s * NS)
        self.stats = {
            "created": 0, "rejected": 0, "unknown": 0, "recovered": 0, "canceled": 0, "cancel_failed": 0,
            "refused": 0, "rate_limited": 0, "risk_denied": 0, "budget_waits": 0,
        }
        self._creates_sent: set[str] = set()
        """Client order ids this process has sent a create for (in any step, failed ones too): a create
        waiting in `backoff` under our own claim and not in here was certainly never sent."""

    def status(self) -> dict[str, Any]:
        return dict(self.stats)

    async def start(self, services: Services) -> None:
        self._services = services

    async def _claim(self, cid: str, *, replacing: str = "") -> tuple[str, bool]:
        """Claim the right to create `cid` (a durable first-wins claim per client order id): (holder's
        token, taken now). Every create is preceded by one, so a claim taken now proves no placer ever sent
        this id to the venue, or that the claim taken over (`replacing`: exactly the token we saw) was
        proven idle; one held already — by another placer, or by us in a step that failed after its create
        — means a create may have landed: look before creating. Every take writes a new token, so of two
        placers replacing the same token only one can win, even if the holder re-takes its own claim."""
        if self._services is None or self._services.claim is None:
            return "", True  # no runtime (a handler called directly): nothing to claim against
        token = f"{self._services.replica}#{uuid.uuid4().hex[:12]}"
        holder, taken = await self._services.claim(f"create.{cid}", token, replacing=replacing or None)
        return holder, taken and holder == token


    async def handle(self, msg: Message, ctx: IntentContext[PlacerState]) -> None:
        state = ctx.state or PlacerState(venue=msg.venue, symbol=msg.symbol)
        _apply_fact(state, msg, ctx.message_seq)
        match msg:
            case PlaceOrder():
                await self._place(msg, state, ctx)
            case CancelOrder():
                if self._never_seen(msg.client_order_id, state) and msg.order_id is None:
                    await self._cancel_before_place(msg, state, ctx)
                else:
                    await self._cancel(msg.client_order_id, msg.order_id, msg.venue, msg.symbol, state, ctx)
            case StrategyFinished():
                # The strategy is over: whatever of it still rests at the venue is canceled (a safety net;
                # the supervisor finishes only once every order it knows of is terminal).
                for cid, order_id in list(state.placed.items()):
                    if cid not in state.final:
                        await self._cancel(cid, order_id, msg.venue, msg.symbol, state, ctx)
            case OrderFinalized():
                state.cancels.pop(msg.client_order_id, None)
                pending = state.unknown.pop(msg.client_order_id, None)
                state.backoff.pop(msg.client_order_id, None)
                if pending is not None and msg.order_id is not None:
                    # The reconciler saw the order at the venue before our lookup did: that resolves it.
                    state.placed[msg.client_order_id] = msg.order_id
                    await self._published_placed(pending.command, msg.order_id, ctx, recovered=True)
        self._keep(state, ctx)

    def _keep(self, state: PlacerState, ctx: IntentContext[PlacerState]) -> None:
        if self._done(state):
            # Kept (for a day) rather than forgotten: a `PlaceOrder` coming back after this must find its
            # order recorded, not create it again under a client order id the venue would accept anew.
            ctx.retire(state)
            ctx.wake_at(0)
            return
        self._arm(state, ctx)
        ctx.save(state)

    @staticmethod
    def _done(state: PlacerState) -> bool:
        """Every order we placed is final and nothing is pending: nothing left to do."""
        if state.unknown or state.cancels or state.early_cancels or state.backoff:
            return False
        return (bool(state.placed) or state.finished) and all(cid in state.final for cid in state.placed)

    @staticmethod
    def _never_seen(cid: str, state: PlacerState) -> bool:
        return cid not in state.placed and cid not in state.unknown and cid not in state.final and cid not in state.backoff

    async def rebuild(
        self, history: list[tuple[int, Message]], stored: PlacerState | None, ctx: IntentContext[PlacerState]
    ) -> PlacerState | None:
        """The record of the intent's orders as the log has it, over the snapshot: what the snapshot
        missed (a create recorded only in the log) is learned, what it has (pending lookups) is kept, and a
        `PlaceOrder` with no outcome in the log is an unknown outcome to resolve (its placer may have sent
        it to the venue and died, or lost the partition, before saying so)."""
        state = stored
        commands: dict[str, PlaceOrder] = {}
        answered: set[str] = set()
        for seq, msg in history:
            if state is None:
                state = PlacerState(venue=msg.venue, symbol=msg.symbol)
            _apply_fact(state, msg, seq)
            match msg:
                case PlaceOrder():
                    state.qty.setdefault(msg.client_order_id, msg.qty)  # may have reached the venue
                    known = commands.get(msg.client_order_id)
                    if known is None or msg.epoch > known.epoch:
                        commands[msg.client_order_id] = msg  # the newest owner's copy
                case OrderRejected():
                    if msg.error != "StaleEpoch":  # (a refused old copy; the newer copy may stand)
                        answered.add(msg.client_order_id)
                    if msg.client_order_id not in state.placed:
                        state.qty.pop(msg.client_order_id, None)  # refused: no exposure (as live)
                        if msg.error != "StaleEpoch" and msg.client_order_id not in state.final:
                            state.final.append(msg.client_order_id)  # terminal: never created later
                case OrderPlaced():
                    state.placed.setdefault(msg.client_order_id, msg.order_id)
                    state.unknown.pop(msg.client_order_id, None)
                case OrderFinalized():
                    state.unknown.pop(msg.client_order_id, None)
                    state.cancels.pop(msg.client_order_id, None)
                    state.backoff.pop(msg.client_order_id, None)
                    if msg.order_id is not None:
                        state.placed.setdefault(msg.client_order_id, msg.order_id)
        if state is not None:
            now = ctx.clock.now_ns()
            for cid, cmd in commands.items():
                settled = cid in state.placed or cid in state.final or cid in answered
                if not settled and cid not in state.unknown and cid not in state.backoff:
                    state.qty[cid] = cmd.qty
                    state.unknown[cid] = Pending(command=cmd, since_ns=now)
        return state

    async def on_timer(self, ctx: IntentContext[PlacerState]) -> None:
        state = ctx.state
        if state is None:
            return
        now = ctx.clock.now_ns()
        for cid, pending in list(state.backoff.items()):
            if pending.since_ns <= now:
                state.backoff.pop(cid, None)
                await self._place(
                    pending.command, state, ctx, again=True, cancel_wanted=pending.cancel_wanted, holder=pending.holder
                )
        for cid, pending in list(state.unknown.items()):
            await self._resolve(cid, pending, state, ctx)
        for cid, tries in list(state.cancels.items()):
            if cid in state.final:
                state.cancels.pop(cid, None)
                continue
            await self._cancel(cid, state.placed.get(cid), state.venue, state.symbol, state, ctx, tries=tries)
        self._keep(state, ctx)

    async def on_resume(self, ctx: IntentContext[PlacerState]) -> None:
        if ctx.state is not None:
            self._arm(ctx.state, ctx)

    def _arm(self, state: PlacerState, ctx: IntentContext[PlacerState]) -> None:
        now = ctx.clock.now_ns()
        due = []
        if state.unknown:
            due.append(now + self._resolve_ns)
        if state.cancels:
            due.append(now + self._cancel_retry_ns)
        due.extend(p.since_ns for p in state.backoff.values())
        ctx.wake_at(min(due) if due else 0)

    # -- the last check ---------------------------------------------------------------------------------

    def _refusal(self, cmd: PlaceOrder, state: PlacerState, seq: int) -> tuple[str, str] | None:
        """Why this create must not go out (error class, reason), from what the placer knows; or None.
        `seq`: the command's place in the log (0 for a retry, which keeps its first verdict on the epoch)."""
        if state.canceled:
            return "IntentCanceled", "the intent is being canceled: nothing more is placed for it"
        if state.finished:
            return "IntentFinished", "the intent's strategy has finished: nothing more is placed for it"
        if state.intent_qty is None:
            return "IntentUnknown", "no accepted intent for this order: its exposure cannot be checked"
        newer = _newer_owner(state, cmd, seq)
        if newer:
            return "StaleEpoch", f"sent by an owner that had lost the intent (epoch {cmd.epoch} after {newer} spoke)"
        room = state.intent_qty - _exposure(state, exclude=cmd.client_order_id)
        if cmd.qty > room:
            return "ExposureExceeded", (
                f"qty {cmd.qty} exceeds what the intent still needs: {state.intent_qty} minus "
                f"{_exposure(state, exclude=cmd.client_order_id)} filled or open = {room}"
            )
        return None

    async def _unrecorded_attempts(self, cmd: PlaceOrder, state: PlacerState, ctx: IntentContext[PlacerState]) -> None:
        """Earlier attempts of the intent with no record here (their placer died before recording them, and
        no `OrderFinalized` came yet): ask the venue, so the exposure counts what is really there."""
        if cmd.origin != "supervisor":
            return
        exchange = await self._venues.get(cmd.venue)
        for attempt in range(1, cmd.attempt):
            cid = f"{cmd.intent_id}-{attempt}"
            if cid in state.qty:
                continue
            found = await fetch_order_by_client_id(exchange, cid, cmd.symbol)  # NetworkError: try again later
            if found is not None:
                state.qty[cid] = found.amount or Decimal(0)
                state.placed[cid] = str(found.id)
                if found.status != "open":
                    state.filled[cid] = found.filled or Decimal(0)
                    if cid not in state.final:
                        state.final.append(cid)

    # -- create -----------------------------------------------------------------------------------------

    async def _place(
        self,
        cmd: PlaceOrder,
        state: PlacerState,
        ctx: IntentContext[PlacerState],
        *,
        again: bool = False,
        cancel_wanted: bool = False,
        holder: str = "",
    ) -> None:
        """`again`: the retry of a create the venue refused for its rate limit (nothing executed), under the
        claim `holder` we took for it."""
        cid = cmd.client_order_id
        cancel_after = cid in state.early_cancels or cancel_wanted
        if cid in state.early_cancels:
            state.early_cancels.remove(cid)
        if cid in state.placed:
            # Known (the same command again, or sent by another owner too): say so again, never create.
            await self._published_placed(cmd, state.placed[cid], ctx, recovered=cancel_after)
            return
        if cid in state.final:
            return  # terminal already without ever being placed by us (rejected): nothing left to say
        pending = state.unknown.get(cid) or (state.backoff.get(cid) if not again else None)
        if pending is not None:
            # Being resolved already. A newer owner's copy of the command replaces the older one, so that
            # what is finally created is never refused as coming from an owner that lost the intent.
            if cmd.epoch > pending.command.epoch:
                pending.command = cmd
            return
        if ctx.delivered > 1 and not again:
            # An earlier delivery may have created it and died before recording it. Never create twice:
            # find it first (open or closed); only an order proven absent is created.
            exchange = await self._venues.get(cmd.venue)
            try:
                found = await fetch_order_by_client_id(exchange, cid, cmd.symbol)
            except ccxt.NetworkError as exc:
                await self._unknown(cmd, state, ctx, f"lookup before re-create failed: {type(exc).__name__}")
                return
            if found is not None:
                self.stats["recovered"] += 1
                state.qty[cid] = cmd.qty
                state.placed[cid] = str(found.id)
                await self._published_placed(cmd, state.placed[cid], ctx, recovered=True)
                if cancel_after:
                    await self._cancel(cid, state.placed[cid], cmd.venue, cmd.symbol, state, ctx)
                return
            # Not found (yet: the venue may lag). Whether it was ever sent, the create claim says (`_create`).
        # Canceled before it came back: still create it and cancel it at once.
        await self._create(cmd, state, ctx, cancel_after=cancel_after, replacing=holder if again else "", retrying=again)

    async def _reject(
        self,
        cmd: PlaceOrder,
        ctx: IntentContext[PlacerState],
        error: str,
        reason: str,
        *,
        retryable: bool = False,
        state: PlacerState | None = None,
    ) -> None:
        """Refuse the create for good (with `state`, the id is recorded terminal: the same command coming
        back is never created later). A StaleEpoch refusal is not terminal: the newer owner's copy stands."""
        ctx.ensure_owner()  # a refusal is a decision on what we know: only the partition's owner knows it all
        if state is not None and error != "StaleEpoch" and cmd.client_order_id not in state.placed:
            state.qty.pop(cmd.client_order_id, None)
            if cmd.client_order_id not in state.final:
                state.final.append(cmd.client_order_id)
        self.stats["rejected"] += 1
        ctx.log.info("order_rejected", client_order_id=cmd.client_order_id, error=error, reason=reason)
        await ctx.publish(
            OrderRejected(
                **routing(cmd),
                client_order_id=cmd.client_order_id,
                attempt=cmd.attempt,
                reason=reason[:500],
                error=error,
                retryable=retryable,
            )
        )

    async def _create(
        self,
        cmd: PlaceOrder,
        state: PlacerState,
        ctx: IntentContext[PlacerState],
        *,
        cancel_after: bool = False,
        replacing: str = "",
        retrying: bool = False,
    ) -> None:
        """`replacing`: the claim token to take over (ours from a rate-limited try, or one proven idle);
        `retrying`: a retry, which keeps the first handling's verdict on the command's epoch."""
        cid = cmd.client_order_id
        try:
            await self._unrecorded_attempts(cmd, state, ctx)
        except ccxt.NetworkError as exc:
            await self._unknown(cmd, state, ctx, f"exposure lookup failed: {type(exc).__name__}")
            return
        refusal = self._refusal(cmd, state, 0 if retrying else ctx.message_seq)
        if refusal is not None:
            self.stats["refused"] += 1
            error, reason = refusal
            if cid not in state.placed and cid not in state.unknown:
                state.qty.pop(cid, None)  # nothing of it went out (a rate-limited try executed nothing)
            ctx.log.warning("create_refused", client_order_id=cid, error=error, reason=reason)
            await self._reject(cmd, ctx, error, reason, retryable=error == "StaleEpoch", state=state)
            return
        halted, reservation = await self._halted(cmd)
        if halted is not None:  # (before any venue call: a halted venue may be the one that is down)
            self.stats["risk_denied"] += 1
            ctx.log.warning("create_denied", client_order_id=cid, error=halted.code, reason=halted.reason)
            await self._reject(cmd, ctx, halted.code, halted.reason, state=state)
            return
        exchange = await self._venues.get(cmd.venue)
        try:
            amount, price, params, check_price = await self._order_args(exchange, cmd, ctx)
        except _NoPrice as exc:
            await self._reject(cmd, ctx, "NoFreshPrice", str(exc), state=state)
            return
        except ccxt.NetworkError as exc:
            await self._unknown(cmd, state, ctx, f"book read failed: {type(exc).__name__}", created=False)
            return
        try:
            denial = await self._risk_denial(exchange, cmd, check_price, reservation)
        except ccxt.NetworkError as exc:
            await self._unknown(cmd, state, ctx, f"balance read failed: {type(exc).__name__}", created=False)
            return
        if denial is not None:
            self.stats["risk_denied"] += 1
            ctx.log.warning("create_denied", client_order_id=cid, error=denial.code, reason=denial.reason)
            await self._reject(cmd, ctx, denial.code, denial.reason, state=state)
            return
        # The exposure check above is only as good as our view: after the awaits since the step began, make
        # sure no newer owner has been taking this intent's messages (a claim taken and then abandoned would
        # hold the next owner back for `absent_grace_s`).
        ctx.ensure_owner()
        holder, taken_now = await self._claim(cid, replacing=replacing)
        if not taken_now:
            # A create may have landed (another placer's, an earlier life's, or ours in a step that failed
            # afterwards): find out first, and create only once the order has stayed absent for longer than
            # the venue's lag (`_resolve` then comes back here with `replacing=holder`).
            ctx.log.warning("create_claimed_already", client_order_id=cid, holder=holder)
            await self._unknown(cmd, state, ctx, f"create claimed by {holder}", cancel_wanted=cancel_after, holder=holder)
            return
        state.qty[cid] = cmd.qty  # counted as open from now on: the create may land even if we die
        wait_s = await self._order_slot(cmd)
        if wait_s > 0:
            # The venue's order budget for this second is spent (by any placer): wait for the next second,
            # holding the claim as after a venue's rate limit. A cancel meanwhile (the attempt's deadline)
            # ends it unsent (`_cancel`).
            self.stats["budget_waits"] += 1
            ctx.log.info("create_waits_for_order_budget", client_order_id=cid, wait_ms=round(wait_s * 1000))
            state.backoff[cid] = Pending(
                command=cmd, since_ns=ctx.clock.now_ns() + int(wait_s * NS), cancel_wanted=cancel_after,
                holder=holder, reason=DENY_ORDER_RATE,
            )
            return
        # The last moment before money moves: still the owner, and no halt written since the check above
        # (the watched copy: no round trip between here and the venue).
        ctx.ensure_owner()
        halted_now = self._halted_cached(cmd)
        if halted_now is not None:
            self.stats["risk_denied"] += 1
            await self._reject(cmd, ctx, halted_now.code, halted_now.reason, state=state)
            return
        self._creates_sent.add(cid)
        try:
            order = await create_order(exchange, cmd.symbol, cmd.order_type, cmd.side, amount, price, params)
        except ccxt.DuplicateOrderId:
            # Open under this id already (a crash between create and our record of it): find it.
            await self._unknown(cmd, state, ctx, "DuplicateOrderId", cancel_wanted=cancel_after, holder=holder)
            await self._resolve(cid, state.unknown[cid], state, ctx)
            return
        except ccxt.RateLimitExceeded as exc:
            # Refused before it executed: nothing to look up. Try again once the venue has room.
            self.stats["rate_limited"] += 1
            wait_ns = _retry_after_ns(exc, exchange)
            ctx.log.info("create_rate_limited", client_order_id=cid, retry_in_ms=wait_ns // 1_000_000)
            pending = Pending(
                command=cmd, since_ns=ctx.clock.now_ns() + wait_ns, cancel_wanted=cancel_after, holder=holder,
                reason="RateLimitExceeded",
            )
            state.backoff[cid] = pending
            return
        except ccxt.NetworkError as exc:
            await self._unknown(cmd, state, ctx, type(exc).__name__, cancel_wanted=cancel_after, holder=holder)
            return
        except ccxt.BaseError as exc:
            if _is_duplicate(exc):
                # Binance's "Duplicate order sent." (ccxt: InvalidOrder): open under this id already. Find it.
                await self._unknown(cmd, state, ctx, type(exc).__name__, cancel_wanted=cancel_after, holder=holder)
                await self._resolve(cid, state.unknown[cid], state, ctx)
                return
            state.qty.pop(cid, None)
            await self._reject(
                cmd, ctx, type(exc).__name__, str(exc), retryable=isinstance(exc, ccxt.OrderImmediatelyFillable),
                state=state,
            )
            return
        self.stats["created"] += 1
        state.placed[cid] = str(order.id)
        state.unknown.pop(cid, None)
        await self._published_placed(cmd, state.placed[cid], ctx, recovered=False)
        if cancel_after:
            await self._cancel(cid, state.placed[cid], cmd.venue, cmd.symbol, state, ctx)

    async def _halted(self, cmd: PlaceOrder) -> tuple[risk.Denial | None, Reservation | None]:
        """The trading state as stored now: a halt holds even if the supervisor that sent this is behind.
        Also returns the intent's reservation (for `_risk_denial`), read in the same round trip."""
        controls = self._services.controls if self._services is not None else None
        if controls is None:
            return None, None
        states, reservation = await asyncio.gather(controls.trading(), controls.reservation(cmd.venue, cmd.intent_id))
        scope = states.effective(cmd.venue, cmd.symbol)
        if scope is None or scope.state != "HALTED":
            return None, reservation
        return risk.trading_denial(states, cmd.venue, cmd.symbol, cmd.side, cmd.qty, None), reservation

    def _halted_cached(self, cmd: PlaceOrder) -> risk.Denial | None:
        controls = self._services.controls if self._services is not None else None
        if controls is None:
            return None
        states = controls.trading_cached
        scope = states.effective(cmd.venue, cmd.symbol)
        if scope is None or scope.state != "HALTED":
            return None
        return risk.trading_denial(states, cmd.venue, cmd.symbol, cmd.side, cmd.qty, None)

    async def _risk_denial(
        self, exchange: Any, cmd: PlaceOrder, price: Decimal | None, reservation: Reservation | None
    ) -> risk.Denial | None:
        """The risk gate on this order: the trading state (read just before, in `_halted`), the notional
        bound and the intent's reservation."""
        controls = self._services.controls if self._services is not None else None
        if controls is None:
            return None
        states = controls.trading_cached
        limits = await controls.limits()
        scope = states.effective(cmd.venue, cmd.symbol)
        position = None
        if scope is not None and scope.state == "REDUCING" and cmd.side == "sell":
            base, _quote = risk.base_and_quote(cmd.symbol)
            position = (await fetch_balance(exchange)).total.get(base)
        return risk.order_denial(
            limits, states, venue=cmd.venue, symbol=cmd.symbol, side=cmd.side, qty=cmd.qty, price=price,
            reservation=reservation if limits.balance_check else None, position=position,
        )

    async def _order_slot(self, cmd: PlaceOrder) -> float:
        """0 when the venue's shared order budget has room now, else the seconds until it has."""
        controls = self._services.controls if self._services is not None else None
        if controls is None:
            return 0.0
        limits = await controls.limits()
        return float(await controls.take_order_slot(cmd.venue, limits.max_orders_per_second))

    async def _order_args(
        self, exchange: Any, cmd: PlaceOrder, ctx: IntentContext[PlacerState]
    ) -> tuple[Any, Any, dict[str, Any], Decimal | None]:
        """Amount and price as strings at the venue's precision (never a float that is one ulp off the
        venue's step), the venue-specific parameters, and the price the order is checked at (its limit, or
        the touch a market order takes from). A market order gets a fresh, uncrossed price first; venues
        whose market buys need one get it."""
        params: dict[str, Any] = {"clientOrderId": cmd.client_order_id}
        if cmd.post_only:
            params["postOnly"] = True
        if cmd.time_in_force != "GTC":
            params["timeInForce"] = cmd.time_in_force
        amount = exchange.amount_to_precision(cmd.symbol, str(cmd.qty))
        price: str | None = None
        if cmd.price is not None:
            price = exchange.price_to_precision(cmd.symbol, str(cmd.price))
        check_price = cmd.price
        if cmd.order_type == "market":
            touch = await self._fresh_touch(exchange, cmd, ctx)
            check_price = touch
            if cmd.side == "buy" and (exchange.options or {}).get("createMarketBuyOrderRequiresPrice"):
                # The venue spends amount x price of quote: at the touch it buys at most `amount`.
                price = exchange.price_to_precision(cmd.symbol, str(touch))
        return amount, price, params, check_price

    async def _fresh_touch(self, exchange: Any, cmd: PlaceOrder, ctx: IntentContext[PlacerState]) -> Decimal:
        """The price a market order would take from: the command's if it is fresh, else the venue's book.
        An empty or crossed book means no market order (it would go into a book nobody can price)."""
        if cmd.ref_price is not None and ctx.clock.now_ns() - cmd.ref_ts_ns <= FRESH_PRICE_NS:
            return cmd.ref_price
        book = await fetch_order_book(exchange, cmd.symbol, 5)
        if not book.bids or not book.asks:
            raise _NoPrice(f"no fresh price for a market order: the {cmd.symbol} book is empty")
        bid, ask = book.bids[0][0], book.asks[0][0]
        if bid >= ask:
            raise _NoPrice(f"no fresh price for a market order: the {cmd.symbol} book is crossed ({bid} >= {ask})")
        return ask if cmd.side == "buy" else bid

    async def _unknown(
        self,
        cmd: PlaceOrder,
        state: PlacerState,
        ctx: IntentContext[PlacerState],
        error: str,
        *,
        cancel_wanted: bool = False,
        created: bool = True,
        holder: str = "",
    ) -> None:
        cid = cmd.client_order_id
        self.stats["unknown"] += 1
        ctx.log.warning("order_outcome_unknown", client_order_id=cid, error=error)
        if created:
            state.qty[cid] = cmd.qty
        pending = state.unknown.setdefault(cid, Pending(command=cmd, since_ns=ctx.clock.now_ns()))
        pending.cancel_wanted = pending.cancel_wanted or cancel_wanted
        pending.holder = holder or pending.holder
        await ctx.publish(
            OrderOutcomeUnknown(
                **routing(cmd),
                client_order_id=cid,
                attempt=cmd.attempt,
                error=error,
            )
        )

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
            if found is not None and found.status != "open":
                await ctx.publish(
                    CancelRejected(
                        intent_id=ctx.intent_id, venue=msg.venue, symbol=msg.symbol, client_order_id=cid,
                        order_id=str(found.id), reason=f"order is {found.status}", error="OrderNotFound",
                    )
                )
                return
        ctx.log.warning("cancel_before_place", client_order_id=cid, at_venue=found is not None)
        if cid not in state.early_cancels:
            state.early_cancels.append(cid)
        if found is not None:
            state.placed[cid] = str(found.id)
            await self._cancel(cid, state.placed[cid], msg.venue, msg.symbol, state, ctx)

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
            state.placed[cid] = str(found.id)
            await self._published_placed(cmd, state.placed[cid], ctx, recovered=True)
            if pending.cancel_wanted:
                await self._cancel(cid, state.placed[cid], cmd.venue, cmd.symbol, state, ctx)
            return
        if ctx.clock.now_ns() - pending.since_ns >= self._absent_grace_ns and pending.unsent_if_absent:
            # Canceled while it waited for a rate limit, and absent for longer than the venue's lag: never
            # sent. It ends here, unsent (retryable: nothing of it traded).
            state.unknown.pop(cid, None)
            state.qty.pop(cid, None)
            await self._reject(
                cmd, ctx, pending.reason or "RateLimitExceeded",
                f"canceled while it waited out {cmd.venue}'s rate limit or order budget: not at the venue, never sent",
                retryable=True, state=state,
            )
            return
        if ctx.clock.now_ns() - pending.since_ns >= self._absent_grace_ns:
            # Absent for longer than the venue's lag: it was never placed. Create it, taking the claim over
            # from the placer that held it (of several replicas doing so, only one wins the claim).
            ctx.log.info("order_absent_recreating", client_order_id=cid, checks=pending.checks, holder=pending.holder)
            state.unknown.pop(cid, None)
            state.qty.pop(cid, None)
            # A cancel asked for meanwhile still applies to whatever this places.
            await self._create(
                cmd, state, ctx, cancel_after=pending.cancel_wanted, replacing=pending.holder, retrying=True
            )

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

    def _vouch_unsent(self, cid: str, state: PlacerState) -> bool:
        """The create waiting in `backoff` was certainly never sent: the claim is this process's own and
        this process never sent a create for the id."""
        waiting = state.backoff.get(cid)
        replica = self._services.replica if self._services is not None else ""
        if waiting is None:
            return False
        if self._services is None or self._services.claim is None:
            return cid not in self._creates_sent  # (no runtime: a handler called directly holds no claims)
        return waiting.holder.startswith(f"{replica}#") and cid not in self._creates_sent

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
            await ctx.publish(
                CancelRejected(
                    intent_id=ctx.intent_id, venue=venue, symbol=symbol, client_order_id=cid,
                    order_id=order_id or state.placed.get(cid), reason="order is terminal already", error="OrderNotFound",
                )
            )
            return
        order_id = order_id or state.placed.get(cid)
        if order_id is None and cid in state.backoff and cid not in state.unknown and not self._vouch_unsent(cid, state):
            # Waiting in `backoff` as this state says, but under a claim this process cannot vouch for: an
            # owner before us may have taken it out, sent the create and died before writing that down. Look
            # at the venue: cancel it if it is there; if it stays absent it ends unsent.
            waiting = state.backoff.pop(cid)
            waiting.cancel_wanted = waiting.unsent_if_absent = True
            waiting.since_ns = ctx.clock.now_ns()
            state.unknown[cid] = waiting
            ctx.log.info("backoff_create_canceled_looking_it_up", client_order_id=cid, holder=waiting.holder)
            await self._resolve(cid, waiting, state, ctx)
            return
        if order_id is None and cid in state.backoff and cid not in state.unknown:
            # Waiting for a rate limit, so never sent: it ends here, unsent. Retryable: nothing of it traded,
            # so the strategy goes on as after any attempt that ended unfilled.
            waiting = state.backoff.pop(cid)
            if waiting.reason == DENY_ORDER_RATE and self._services is not None and self._services.controls is not None:
                limit = self._services.controls.limits_cached.max_orders_per_second
                why = f"canceled while it waited for {venue}'s order budget ({limit} new orders per second, spent): never sent"
            else:
                why = f"canceled while it waited out {venue}'s rate limit: never sent"
            await self._reject(
                waiting.command, ctx, waiting.reason or "RateLimitExceeded", why, retryable=True, state=state,
            )
            return
        if order_id is None:
            pending = state.unknown.get(cid) or state.backoff.get(cid)
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
            await cancel_order(exchange, order_id, symbol)
        except ccxt.OrderNotFound as exc:
            # Either it is closed already (filled first), or the venue has not indexed it yet (Binance's
            # "Unknown order sent" for a new order). Only a lookup tells: an order that is not there or still
            # open is retried until the reconciler says it is terminal; one found closed needs no cancel.
            try:
                found = await fetch_order_by_client_id(exchange, cid, symbol)
            except ccxt.NetworkError:
                found = None
            if found is not None and found.status not in ("open", None):
                state.cancels.pop(cid, None)
                await ctx.publish(
                    CancelRejected(
                        intent_id=ctx.intent_id, venue=venue, symbol=symbol, client_order_id=cid,
                        order_id=order_id, reason=f"order is {found.status}: {str(exc)[:200]}",
                        error="OrderNotFound",
                    )
                )
                return
            self.stats["cancel_failed"] += 1
            state.cancels[cid] = tries + 1
            ctx.log.info("cancel_not_found_will_retry", client_order_id=cid, tries=tries + 1, at_venue=found is not None)
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



class _NoPrice(Exception):
    """No fresh, uncrossed price to send a market order into."""


def _apply_fact(state: PlacerState, msg: Message, seq: int) -> None:
    """What a message tells the placer about the intent's exposure, whoever handles it (live or rebuilt)."""
    if msg.epoch and isinstance(msg, PlaceOrder | CancelOrder | StrategyFinished):
        # Every command of an owner tells its epoch, and where in the log that owner began to speak.
        owners = state.owners.setdefault(msg.origin if isinstance(msg, PlaceOrder) else "supervisor", [])
        known = next((o for o in owners if o[0] == msg.epoch), None)
        if known is None:
            owners.append([msg.epoch, seq])
        elif seq and (not known[1] or seq < known[1]):
            known[1] = seq
    match msg:
        case IntentAccepted():
            state.intent_qty = msg.qty
            state.accepted_seq = seq or state.accepted_seq
        case StrategyFinished():
            state.finished = True
        case CancelIntent():
            # A cancel from before the acceptance, in the log's order (however late it is delivered), was
            # answered "unknown" by the supervisor: it stops nothing.
            if state.intent_qty is not None and (not seq or seq > state.accepted_seq):
                state.canceled = True
        case OrderFinalized():
            state.filled[msg.client_order_id] = msg.filled_qty
            if msg.order_id is not None:
                state.placed.setdefault(msg.client_order_id, msg.order_id)
            if msg.client_order_id not in state.final:
                state.final.append(msg.client_order_id)


def _newer_owner(state: PlacerState, cmd: PlaceOrder, seq: int) -> int:
    """The epoch of an owner of the command's origin that spoke *before* it in the log, if newer than the
    command's own: the command is then an old owner's, sent after it had lost the intent (fenced, as the
    supervisor's rebuild ignores it too). A command already in the log when a new owner took over is that
    owner's to adopt, and is not fenced, however late it is retried. 0: not stale."""
    if not cmd.epoch or not seq:
        return 0
    return max((e for e, first in state.owners.get(cmd.origin, []) if e > cmd.epoch and first and first < seq), default=0)


def _exposure(state: PlacerState, *, exclude: str) -> Decimal:
    """What the intent's other orders have filled (final ones) or may still fill (the rest)."""
    total = Decimal(0)
    for cid, qty in state.qty.items():
        if cid != exclude:
            total += state.filled.get(cid, qty) if cid in state.final else qty
    for cid, filled in state.filled.items():
        if cid != exclude and cid not in state.qty:
            total += filled  # finalized orders we never recorded ourselves (another replica created them)
    return total


def _is_duplicate(exc: Exception) -> bool:
    """The venue refused the create because an order with this client order id is open, however the venue
    and ccxt spell it (`DuplicateOrderId`; Binance's code -2010 arrives as `InvalidOrder`)."""
    return isinstance(exc, ccxt.DuplicateOrderId) or (
        isinstance(exc, ccxt.InvalidOrder) and "duplicate order" in str(exc).lower()
    )


def _retry_after_ns(exc: Exception, exchange: Any) -> int:
    """The venue's back-off if it said one (`retry_after_ms=`), else its rate limit interval, at least 50 ms."""
    found = _RETRY_AFTER.search(str(exc))
    if found:
        return max(int(found.group(1)), 1) * 1_000_000
    return max(int(getattr(exchange, "rateLimit", 50) or 50), 50) * 1_000_000
