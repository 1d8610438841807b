"""The supervisor: the generic driver of every strategy, one state machine per intent, by messages.

It validates and accepts (or rejects) an intent, asks the intent's strategy (a pure decision core from
`actors/strategies/`) what to do at each event, and turns the answer into messages: price requests to the
pricer, orders and cancels to the placer, `ExecutionTimedOut` for the market-fallback actor. It keeps the
attempt and total deadlines as absolute times in its state, and owns what every strategy shares: cancel,
halt, the fallback hand-off, the report. It never talks to a venue except to read market rules and gate.

Invariant it keeps for every strategy: the next order (or the fallback) is only started once every earlier
order is confirmed terminal by the reconciler (`OrderFinalized`), and its quantity is at most the intent's
quantity minus everything filled so far.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from decimal import Decimal
from typing import Any

import msgspec

from actors import risk
from actors.strategies import strategy_for
from actors.strategies.base import (
    AllFinal, AskPrice, Arrived, AttemptExpired, CancelWorking, Decision, Event, Finish, HandOff, Place, Quoted,
    Reprice, View, WaitUntil, Woke, Working,
)
from bus.actor import Actor, IntentContext, Publisher, Services
from messages import (
    AttemptTimedOut,
    CancelIntent,
    CancelIntentAccepted,
    CancelIntentRejected,
    CancelOrder,
    CancelRejected,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    InvalidMessage,
    OrderKept,
    OrderFinalized,
    OrderOutcomeUnknown,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
    PriceQuoted,
    PriceRequested,
    PriceUnavailable,
    StrategyFinished,
    SubmitIntent,
    subjects,
)
from messages.base import Message, routing
from messages.controls import DENY_IN_FLIGHT, DENY_NO_PRICE, RiskLimits, ScopeState, TradingStates
from messages.strategies import FALLBACK_TO_MARKET
from venues import gateway
from venues.types import Balance

__all__ = ["Supervisor", "SupervisorState", "OrderRecord"]

NS = 1_000_000_000
PRICE_RETRY_NS = 200_000_000
PRICE_WAIT_NS = 2 * NS
"""How long a price request is given before it is asked again."""
MAX_PRICE_REQUESTS = 10
"""Per attempt: an attempt whose price is refused this often ends the limit attempts (no blind fallback)."""
FALLBACK_GRACE_NS = 30 * NS
FALLBACK_MARGIN_NS = 5 * NS
"""After the fallback's own deadline (`act_by_ns`), how long a `PlaceOrder` it sent just in time may take to
reach us before we stop waiting for it."""
CANCEL_CHECK_NS = 2 * NS
"""The canceling phase's deadline: a cancel not confirmed terminal by then is sent again."""
INTAKE_RETRY_NS = 500_000_000
"""A venue that cannot be reached at intake is asked again this often, within the intent's budget."""
RESERVATION_SLACK_NS = 60 * NS
"""A reservation outlives its intent's whole budget by this much before it stops counting on its own (its
intent normally gives it back when it finishes)."""


class OrderRecord(msgspec.Struct, kw_only=True):
    client_order_id: str
    attempt: int
    origin: str
    qty: Decimal
    price: Decimal | None = None
    order_id: str | None = None
    status: str = "pending"
    """pending -> open | unknown -> final; `cancel` is set once a cancel was asked for."""
    cancel: bool = False
    filled: Decimal = Decimal(0)
    rejected: str = ""
    """"" | "retryable" | "final": how the venue or placer refused it."""
    fenced: bool = False
    """Sent by an owner that had lost the intent (not by us): it counts until the placer refuses or places it."""
    refused_stale: bool = False
    """Ended by the placer's refusal of that owner's copy (`StaleEpoch`): nothing was created, so our own
    command for the same client order id may still be (`_adopt_record`)."""


class SupervisorState(msgspec.Struct, kw_only=True):
    intent: SubmitIntent
    accepted_ns: int
    deadline_ns: int
    """End of the strategy's budget (`Strategy.budget_ns` after acceptance); the fallback comes after it."""
    phase: str = "arrival"
    """(intake ->) arrival -> pricing -> working -> (repricing -> working | canceling) -> (waiting ->) ... ->
    fallback -> finished. `repricing`: an attempt expired with its order working, and the next attempt's
    price decides whether that order is kept (`OrderKept`) or canceled. `waiting`: every order is terminal
    and the strategy has nothing to do before `wake_ns`."""
    epoch: int = 0
    """Lease epoch of the owner that last rebuilt this state from the log."""
    attempt: int = 0
    attempt_price_requests: int = 0
    """Price requests sent for the current attempt (the cap is per attempt)."""
    price_requested_ns: int = 0
    """When the last price request went out: a new owner waits for its answer as the old one would have."""
    quote: PriceQuoted | None = None
    """The quote for the current attempt not yet acted on (set by a rebuild from the log)."""
    kept: int = 0
    """Attempts that kept the working order instead of placing their own (`OrderKept`)."""
    cancel_round: int = 0
    """How often the working orders' cancels were sent (the canceling phase's deadline sends them again)."""
    fallback_act_by_ns: int = 0
    intake_error: str = ""
    """Why the venue could not be asked at intake (phase intake), retried within the budget."""
    claim_token: str = ""
    """The submission's stream sequence, the intent-id claim's token (a retry from a timer has no message)."""
    cancel_requested: str = ""
    """Why the intent is being canceled (`CancelIntent`): no new attempt, no fallback; it finishes
    `canceled` once every order is terminal."""
    accepted_ts_ns: int = 0
    """The `ts_event` of our `IntentAccepted` (0 in a snapshot from before the field): `StrategyFinished`
    carries it as `accepted_ns`, the report's start, whether or not the tracker saw `IntentAccepted`."""
    accepted_seq: int = 0
    """Where `IntentAccepted` is in the log: a cancel from before it cancels nothing (the placer and a
    rebuilt owner read the log in that order too)."""
    reserved: bool = False
    """It holds a reservation of the venue's balance and open notional (given back when it finishes)."""
    attempt_deadline_ns: int = 0
    price_request: int = 0
    price_mode: str = "arrival"
    """The mode of the last price request: asked again as it was when the pricer does not answer."""
    leg: int = 0
    """The strategy's own step counter (see `PriceRequested.leg`), from the last price request or order."""
    leg_first_attempt: int = 0
    """The attempt that began the current leg."""
    wake_ns: int = 0
    """Phase `waiting`: when the strategy is asked again."""
    closing: str = ""
    """The strategy is over (this is why) but an order was still working: finish once every order is terminal."""
    arrival_bid: Decimal | None = None
    arrival_ask: Decimal | None = None
    tick_size: Decimal | None = None
    min_amount: Decimal | None = None
    min_cost: Decimal | None = None
    amount_step: Decimal | None = None
    orders: list[OrderRecord] = msgspec.field(default_factory=list)
    fallback_used: bool = False
    reason: str = ""
    early: list[OrderPlaced | OrderOutcomeUnknown | OrderRejected | OrderFinalized] = msgspec.field(default_factory=list)
    """Order events that came before the order they are about. After a failover the log's order is not the
    delivery order: a command the dead replica had taken (the fallback's `PlaceOrder`, or the `PriceQuoted` that
    made us place) is redelivered only when its ack wait expires, while the events that followed it are
    delivered at once. Kept until the order's record exists, then applied in order."""

    def order(self, client_order_id: str) -> OrderRecord | None:
        return next((o for o in self.orders if o.client_order_id == client_order_id), None)

    @property
    def filled(self) -> Decimal:
        return sum((o.filled for o in self.orders), Decimal(0))

    @property
    def remaining(self) -> Decimal:
        return self.intent.qty - self.filled

    @property
    def all_final(self) -> bool:
        return all(o.status == "final" for o in self.orders)


class Supervisor(Actor[SupervisorState]):
    name = "supervisor"
    consumes = (
        SubmitIntent,
        PriceQuoted,
        PriceUnavailable,
        OrderPlaced,
        OrderRejected,
        OrderOutcomeUnknown,
        CancelRejected,
        OrderFinalized,
        PlaceOrder,
        CancelIntent,
    )
    produces = (
        IntentAccepted,
        IntentRejected,
        PriceRequested,
        PlaceOrder,
        CancelOrder,
        AttemptTimedOut,
        ExecutionTimedOut,
        StrategyFinished,
        CancelIntentAccepted,
        CancelIntentRejected,
        CancelIntent,  # one per working intent when a halt cancels them
        OrderKept,
    )
    claims = {"intents": ("intent",), "controls": ("reserve",)}  # the intent-id guard; balance reservations
    begins_intent = (SubmitIntent,)
    State = SupervisorState

    def __init__(self, venues: Any) -> None:
        self._venues = venues
        self._services: Services | None = None
        self.accepted = 0
        self.rejected = 0

    async def start(self, services: Services) -> None:
        self._services = services
        if services.controls is not None:
            services.controls.on_trading_change(self._trading_changed)

    def _trading_changed(self, states: TradingStates) -> None:
        """A halt that cancels working intents: tell each of ours in its scope, through the log (a
        `CancelIntent` each, so the cancel is a fact a rebuilt owner knows of too)."""
        halts = [s for s in states.scopes if s.state == "HALTED" and s.cancel_working]
        if not halts or self._services is None or self._services.each_intent is None:
            return

        async def cancel_if_halted(ctx: IntentContext[SupervisorState]) -> None:
            await self._cancel_for_halt(ctx, halts)

        self._services.each_intent(cancel_if_halted)

    async def _cancel_for_halt(self, ctx: IntentContext[SupervisorState], halts: list[ScopeState]) -> bool:
        """Cancel the intent if a halt with `--cancel-working` covers it; True if it did."""
        state = ctx.state
        if state is None or state.phase == "finished" or state.cancel_requested:
            return False
        intent = state.intent
        for scope in halts:
            if scope.covers(intent.venue, intent.symbol) and state.accepted_ns < scope.changed_ns:
                reason = f"trading halted for {scope.label} with --cancel-working" + (f": {scope.reason}" if scope.reason else "")
                # In the log first (a rebuilt owner knows of it from there), then acted on at once.
                await ctx.publish(
                    CancelIntent(**routing(intent), request=f"halt-{scope.changed_ns}", reason=reason,
                                 requested_by=scope.by or "halt")
                )
                state.cancel_requested = reason
                await self._stop_for_cancel(state, ctx)
                if not ctx.deleted:
                    ctx.save(state)
                return True
        return False

    def status(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected}

    # -- cancel -----------------------------------------------------------------------------------------

    async def _cancel_intent(self, msg: CancelIntent, ctx: IntentContext[SupervisorState]) -> None:
        """Stop the strategy: no new attempt, no fallback, every working order canceled; the report follows
        once every order is terminal. Cancelling twice is harmless; an unknown or finished intent is told so."""
        state = ctx.state
        answer = {**routing(msg), "request": msg.request}
        if state is None:
            await ctx.publish(
                CancelIntentRejected(**answer, status="unknown", reason=f"intent {msg.intent_id!r} is unknown here")
            )
            return
        if state.accepted_seq and ctx.message_seq and ctx.message_seq < state.accepted_seq:
            # Before the intent was accepted, in the log's order (it reached us late, redelivered): it was
            # about an intent nobody knew yet, and the placer and any rebuilt owner read it so.
            await ctx.publish(
                CancelIntentRejected(
                    **answer, status="unknown",
                    reason=f"the cancel came before intent {msg.intent_id!r} was accepted: send it again to cancel it",
                )
            )
            return
        if state.phase == "finished":
            await ctx.publish(
                CancelIntentRejected(
                    **answer, status="finished", reason=f"intent {msg.intent_id!r} finished already ({state.reason})"
                )
            )
            return
        already = bool(state.cancel_requested)
        await ctx.publish(CancelIntentAccepted(**answer, phase=state.phase, already=already))
        if already:
            return
        ctx.log.info("intent_cancel_requested", phase=state.phase, reason=msg.reason, by=msg.requested_by)
        state.cancel_requested = msg.reason or f"canceled by {msg.requested_by or 'request'}"
        if state.phase == "intake":
            # Never accepted (the venue was unreachable): nothing was placed, and nothing will be.
            self.rejected += 1
            await ctx.publish(_reject(state.intent, "canceled", f"canceled before it was accepted: {state.cancel_requested}"))
            state.phase = "finished"
            ctx.retire(state)
            return
        await self._stop_for_cancel(state, ctx)
        if not ctx.deleted:
            ctx.save(state)

    async def _stop_for_cancel(self, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        """Cancel whatever works; finish at once when nothing does. A fallback order not yet in the log is
        refused by the placer, which sees this intent's cancel before it."""
        state.quote = None
        if state.all_final:
            await self._finish(state, ctx, f"canceled: {state.cancel_requested}")
            return
        for record in state.orders:
            if record.status != "final" and not record.cancel:
                record.cancel = True
                await self._send_cancel(state, record, ctx, f"intent canceled: {state.cancel_requested}")
        state.phase = "canceling"
        ctx.wake_at(ctx.clock.now_ns() + CANCEL_CHECK_NS)

    # -- intake -----------------------------------------------------------------------------------------

    async def on_invalid(self, subject: str, raw: bytes, error: InvalidMessage, publish: Publisher) -> None:
        """A submission or cancel that does not decode still gets an answer on its intent's subjects."""
        parts = subjects.parse(subject)
        if parts is None or parts.kind not in (SubmitIntent.kind, CancelIntent.kind):
            return
        try:
            rejection: Message
            if parts.kind == CancelIntent.kind:
                # (the request id is in the bytes that did not decode: the answer can only name the intent)
                rejection = CancelIntentRejected(
                    **routing(parts), request=f"invalid-{hashlib.blake2b(raw, digest_size=8).hexdigest()}", status="invalid",
                    reason=f"{error.field}: {error.reason}" if error.field else error.reason,
                )
            else:
                rejection = IntentRejected(**routing(parts), field=error.field, reason=error.reason)
        except (ValueError, msgspec.ValidationError):
            return  # the subject itself is unusable: the dead letter is all we can do
        await publish(rejection)

    async def handle(self, msg: Message, ctx: IntentContext[SupervisorState]) -> None:
        if isinstance(msg, SubmitIntent):
            await self._submit(msg, ctx)
            return
        if isinstance(msg, CancelIntent):
            await self._cancel_intent(msg, ctx)
            return
        state = ctx.state
        if state is None or state.phase == "finished":
            ctx.log.debug("message_for_unknown_intent", kind=msg.kind)
            return
        await self._apply(msg, state, ctx)
        await self._apply_early(state, ctx)
        if ctx.state is not None and not ctx.deleted:
            ctx.save(state)

    async def _apply(self, msg: Message, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        if _refused_as_stale(msg) and not _fenced_record(state, msg):
            return  # the copy an owner that had lost the intent sent: it says nothing about ours
        if isinstance(msg, OrderPlaced | OrderOutcomeUnknown | OrderRejected | OrderFinalized):
            if state.order(msg.client_order_id) is None:
                if all(e.msg_id != msg.msg_id for e in state.early):
                    ctx.log.info("order_event_before_its_order", kind=msg.kind, client_order_id=msg.client_order_id)
                    state.early.append(msg)
                return
        match msg:
            case PlaceOrder(origin="market_fallback"):
                if state.order(msg.client_order_id) is None:
                    state.orders.append(
                        OrderRecord(
                            client_order_id=msg.client_order_id, attempt=msg.attempt, origin=msg.origin, qty=msg.qty
                        )
                    )
            case PlaceOrder():
                # Our own command coming back from the log; one we have no record of was sent by an owner
                # that had lost the intent, and may still have reached the venue: it counts as an order.
                if state.order(msg.client_order_id) is None:
                    state.orders.append(_record_of(msg, fenced=True))
            case PriceQuoted():
                await self._quoted(msg, state, ctx)
            case PriceUnavailable():
                await self._price_unavailable(msg, state, ctx)
            case OrderPlaced():
                await self._placed(msg, state, ctx)
            case OrderOutcomeUnknown():
                record = state.order(msg.client_order_id)
                if record is not None and record.status == "pending":
                    record.status = "unknown"
            case OrderRejected():
                await self._order_rejected(msg, state, ctx)
            case CancelRejected():
                ctx.log.info("cancel_rejected", client_order_id=msg.client_order_id, reason=msg.reason)
            case OrderFinalized():
                await self._finalized(msg, state, ctx)

    async def _apply_early(self, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        """Apply the kept events whose order now has a record, in the order they came."""
        while not ctx.deleted and state.phase != "finished":
            ready = next((e for e in state.early if state.order(e.client_order_id) is not None), None)
            if ready is None:
                return
            state.early.remove(ready)
            await self._apply(ready, state, ctx)

    async def _submit(self, intent: SubmitIntent, ctx: IntentContext[SupervisorState]) -> None:
        if ctx.state is not None:
            if ctx.message_seq and ctx.state.claim_token and str(ctx.message_seq) != ctx.state.claim_token:
                # Another submission of an id we have (not this one delivered again): a duplicate.
                self.rejected += 1
                await ctx.publish(_reject(intent, "intent_id", "duplicate: this intent id was already submitted", dup=True))
            return  # the same submission redelivered after we accepted it (or finished it: kept a day)
        now = ctx.clock.now_ns()
        await self._intake(intent, ctx, arrived_ns=now, token=str(ctx.message_seq), state=None)

    async def _intake(
        self,
        intent: SubmitIntent,
        ctx: IntentContext[SupervisorState],
        *,
        arrived_ns: int,
        token: str,
        state: SupervisorState | None,
    ) -> None:
        """Validate, claim the intent id, accept. A venue that cannot be reached is not the intent's fault:
        it is asked again within the intent's budget (phase `intake`), and only a wrong intent is rejected."""
        budget_end = arrived_ns + _budget_ns(intent)
        gate: _Gate | None = None
        controls = self._services.controls if self._services is not None else None
        # The trading state first, and as stored: an intent submitted after `execbus halt` returned is refused
        # at once, with no venue call (a halted venue may be the one that is down).
        states = await controls.trading() if controls is not None else None
        halted = _halt_denial(states, intent)
        try:
            problem = halted or await self._validate(intent)
            if problem is None and states is not None:
                gate = await self._gate(intent, ctx, states)
                problem = gate.denied
        except _VenueUnavailable as exc:
            now = ctx.clock.now_ns()
            if now + INTAKE_RETRY_NS < budget_end:
                ctx.log.warning("venue_unavailable_at_intake_will_retry", error=str(exc))
                state = state or SupervisorState(
                    intent=intent, accepted_ns=arrived_ns, deadline_ns=budget_end, phase="intake"
                )
                state.intake_error = str(exc)
                state.claim_token = token
                ctx.wake_at(now + INTAKE_RETRY_NS)
                ctx.save(state)
                return
            problem = None
            unavailable = str(exc)
        else:
            unavailable = ""
        # The venue calls above may have taken seconds (a venue timing out): before the acts that cannot be
        # taken back — reserving, claiming the intent id, accepting or finishing it — make sure no newer owner
        # has been running the intent meanwhile.
        ctx.ensure_owner()
        if problem is not None:
            await self._deny(intent, problem, state, ctx)
            return
        assert self._services is not None
        if gate is not None and gate.reservation is not None:
            # Taken under compare-and-set: of two intents on two replicas reading the same balance, one wins.
            # Before the intent id is claimed, so a denied id may be submitted again later. (A second
            # submission of a running intent's id never gets here: it finds that intent's state first.)
            # A first delivery with no state of it here reserves without reading the intent's key first (no
            # earlier delivery can have reserved; a round trip less on the path to the order).
            problem = await self._reserve(intent, gate, fresh=ctx.delivered == 1 and state is None)
            if problem is not None:
                await self._deny(intent, problem, state, ctx)
                return
        if not await self._services.claim_once(f"intent.{intent.intent_id}", token):
            self.rejected += 1
            if gate is not None and gate.reservation is not None:
                await self._release(intent)  # (an id from long ago: the intent that had it is long over)
            await ctx.publish(_reject(intent, "intent_id", "duplicate: this intent id was already submitted", dup=True))
            if state is not None:
                ctx.forget()
            return
        rules = {} if unavailable else await self._rules(intent)
        state = SupervisorState(
            intent=intent,
            accepted_ns=arrived_ns,
            deadline_ns=budget_end,
            claim_token=token,
            tick_size=rules.get("tick_size"),
            min_amount=rules.get("min_amount"),
            min_cost=rules.get("min_cost"),
            amount_step=rules.get("amount_step"),
            reserved=gate is not None and gate.reservation is not None,
        )
        self.accepted += 1
        state.accepted_ts_ns = ctx.clock.now_ns()
        await ctx.publish(
            IntentAccepted(
                **routing(intent),
                side=intent.side,
                qty=intent.qty,
                strategy=intent.strategy,
                deadline_ns=state.deadline_ns,
                ts_event=state.accepted_ts_ns,  # (stamped here so that `StrategyFinished` can repeat it)
            )
        )
        accepted = ctx.sent[-1]
        if unavailable:
            state.accepted_seq = _seq_of(await accepted)
            # Accepted so the upstream gets a true report, which says the venue never answered.
            await self._finish(state, ctx, f"venue {intent.venue!r} unavailable for the whole budget: {unavailable}")
            return
        await self._request_price(state, ctx, attempt=0, mode="arrival", qty=intent.qty)
        # Its place in the log (for `_cancel_intent`), awaited once the price request is out too: the two
        # publishes' acks come back together instead of one round trip after the other.
        state.accepted_seq = _seq_of(await accepted)
        ctx.save(state)

    async def _validate(self, intent: SubmitIntent) -> tuple[str, str] | None:
        """Semantic checks against the venue's market: the types were checked by the decoder. A venue that
        cannot be reached raises `_VenueUnavailable`: that says nothing about the intent."""
        if not self._venues.known(intent.venue):
            return "venue", f"unknown venue {intent.venue!r}"
        try:
            exchange = await self._venues.get(intent.venue)
        except Exception as exc:
            raise _VenueUnavailable(f"venue {intent.venue!r} unavailable: {type(exc).__name__}: {exc}") from exc
        if intent.symbol not in (exchange.markets or {}):
            return "symbol", f"{intent.venue} has no market {intent.symbol!r}"
        rules = await self._rules(intent)
        step, minimum = rules.get("amount_step"), rules.get("min_amount")
        if minimum is not None and intent.qty < minimum:
            return "qty", f"{intent.qty} is below the market minimum amount {minimum}"
        if step is not None and intent.qty % step != 0:
            return "qty", f"{intent.qty} is finer than the market amount step {step}"
        return strategy_for(intent.strategy).check(intent.params, intent.qty, minimum, step)

    async def _deny(
        self, intent: SubmitIntent, denial: tuple[str, str], state: SupervisorState | None, ctx: IntentContext[SupervisorState]
    ) -> None:
        """Reject the intent for the trading state or a risk limit (or a wrong field), giving back whatever
        an earlier delivery of it may have reserved."""
        code, reason = denial
        self.rejected += 1
        field = _field_of(code)
        gated = field in ("trading_state", "risk")
        if gated and self._services is not None and self._services.controls is not None:
            await self._release(intent)
        await ctx.publish(_reject(intent, field, reason, code=code if gated else ""))
        if state is not None:
            state.phase = "finished"
            ctx.retire(state)

    async def _gate(self, intent: SubmitIntent, ctx: IntentContext[SupervisorState], states: TradingStates) -> _Gate:
        """The trading state and the per-intent limits, read-only: a denial here costs the intent id nothing
        (the same id may come again once trading resumes). The reservation follows (`_reserve`)."""
        controls = self._services.controls if self._services is not None else None
        if controls is None:
            return _Gate()
        scope = states.effective(intent.venue, intent.symbol)
        limits = await controls.limits()
        base, quote = risk.base_and_quote(intent.symbol)
        balance: Balance | None = None
        try:
            exchange = await self._venues.get(intent.venue)
            if limits.balance_check or scope is not None:
                balance, book = await asyncio.gather(
                    gateway.fetch_balance(exchange), gateway.fetch_order_book(exchange, intent.symbol, 5)
                )
            else:
                book = await gateway.fetch_order_book(exchange, intent.symbol, 5)
        except Exception as exc:  # (ccxt's network errors and a venue that is not there)
            raise _VenueUnavailable(f"venue {intent.venue!r} unavailable: {type(exc).__name__}: {exc}") from exc
        position = balance.total.get(base) if balance is not None else None
        denial = risk.trading_denial(states, intent.venue, intent.symbol, intent.side, intent.qty, position)
        if denial is not None:
            return _Gate(denied=(denial.code, denial.reason))
        levels = book.asks if intent.side == "buy" else book.bids
        if not levels:
            side = "asks" if intent.side == "buy" else "bids"
            return _Gate(denied=(DENY_NO_PRICE, f"no reference price for the limits: the {intent.symbol} book has no {side}"))
        ref_price = levels[0][0]
        currency = quote if intent.side == "buy" else base
        gate = _Gate(
            limits=limits,
            ref_price=ref_price,
            # What the account holds, not what is free: the venue's free balance already leaves out what our
            # own resting orders lock, which their intents' reservations count as well.
            free=balance.total.get(currency) if balance is not None else None,
            reservation=risk.reservation_for(
                limits, intent_id=intent.intent_id, symbol=intent.symbol, side=intent.side, qty=intent.qty,
                ref_price=ref_price,
                # Wall time, not the intent's clock: the reservation lives in KV with every other process's.
                expires_ns=time.time_ns() + _budget_ns(intent) + FALLBACK_GRACE_NS + FALLBACK_MARGIN_NS + RESERVATION_SLACK_NS,
            ),
        )
        return gate  # (the limits that count the intents in flight are checked as it reserves)

    async def _reserve(self, intent: SubmitIntent, gate: _Gate, *, fresh: bool = False) -> tuple[str, str] | None:
        assert self._services is not None and gate.reservation is not None
        found: list[risk.Denial] = []

        def decide(current: Any) -> str | None:
            found.clear()
            denial = gate.decide(current, intent, time.time_ns())
            if denial is not None:
                found.append(denial)
            return None if denial is None else denial.reason

        refused = await self._services.controls.reserve(intent.venue, gate.reservation, decide, fresh=fresh)
        if found:
            return found[0].code, found[0].reason
        # Not a limit: the venue's reservation totals are full (`ReservationsFull`); the intent is rejected with
        # that reason rather than failing its handler until it is dead-lettered with no answer upstream.
        return (DENY_IN_FLIGHT, refused) if refused else None

    async def _release(self, intent: SubmitIntent) -> None:
        controls = self._services.controls if self._services is not None else None
        if controls is not None:
            await controls.release(intent.venue, intent.intent_id)

    async def _rules(self, intent: SubmitIntent) -> dict[str, Decimal | None]:
        return gateway.market_rules(await self._venues.get(intent.venue), intent.symbol)

    # -- pricing ----------------------------------------------------------------------------------------

    async def _request_price(
        self, state: SupervisorState, ctx: IntentContext[SupervisorState], *, attempt: int, mode: str, qty: Decimal,
        leg: int | None = None,
    ) -> None:
        if qty <= 0:
            await self._nothing_left(state, ctx)
            return
        if attempt != state.attempt:
            state.attempt_price_requests = 0
        state.attempt = attempt
        state.attempt_price_requests += 1
        state.quote = None
        state.phase = "arrival" if attempt == 0 else "pricing"
        state.price_mode = mode
        leg = state.leg if leg is None else leg
        _note_leg(state, leg, attempt)
        intent = state.intent
        await ctx.publish(
            PriceRequested(
                **routing(intent),
                attempt=attempt,
                side=intent.side,
                mode=mode,  # type: ignore[arg-type]
                qty=qty,
                request=state.price_request,
                leg=leg,
            )
        )
        state.price_request += 1
        state.price_requested_ns = ctx.clock.now_ns()
        ctx.wake_at(state.price_requested_ns + PRICE_WAIT_NS)  # a pricer that never answers must not stall it

    async def _price_unavailable(
        self, msg: PriceUnavailable, state: SupervisorState, ctx: IntentContext[SupervisorState]
    ) -> None:
        if msg.attempt != state.attempt or state.phase not in ("arrival", "pricing", "repricing"):
            return
        if state.phase == "repricing":
            await self._give_up_keeping(state, ctx)
            return
        ctx.log.warning("price_unavailable", attempt=msg.attempt, reason=msg.reason)
        if state.attempt_price_requests >= MAX_PRICE_REQUESTS or ctx.clock.now_ns() >= state.deadline_ns:
            # No fallback: a market order would go into the very book the pricer refused.
            await self._no_more_attempts(state, ctx, f"no price: {msg.reason}", fallback=False)
            return
        ctx.wake_at(ctx.clock.now_ns() + PRICE_RETRY_NS)

    async def on_timer(self, ctx: IntentContext[SupervisorState]) -> None:
        state = ctx.state
        if state is None or state.phase == "finished":
            return
        now = ctx.clock.now_ns()
        if state.phase == "intake":
            await self._intake(state.intent, ctx, arrived_ns=state.accepted_ns, token=state.claim_token, state=state)
            return
        if state.phase in ("arrival", "pricing"):
            if state.attempt_price_requests >= MAX_PRICE_REQUESTS:
                await self._no_more_attempts(state, ctx, "no price from the pricer", fallback=False)
            else:
                mode = "arrival" if state.attempt == 0 else state.price_mode
                await self._request_price(state, ctx, attempt=state.attempt, mode=mode, qty=state.remaining)
        elif state.phase == "working" and now >= state.attempt_deadline_ns:
            await self._decide(state, ctx, AttemptExpired())
        elif state.phase == "waiting":
            if now >= state.wake_ns:
                await self._next_step(state, ctx, Woke())
            else:
                ctx.wake_at(state.wake_ns)
        elif state.phase == "repricing":
            await self._give_up_keeping(state, ctx)  # the pricer did not answer in time
        elif state.phase == "canceling":
            await self._cancel_again(state, ctx)
        elif state.phase == "fallback" and now >= state.fallback_act_by_ns + FALLBACK_MARGIN_NS:
            fallback = [o for o in state.orders if o.origin == "market_fallback"]
            if not fallback:
                await self._finish(state, ctx, f"{state.reason}; the fallback did not act in time")
            elif not state.all_final:
                ctx.wake_at(now + CANCEL_CHECK_NS)  # its order is real: wait for it to be terminal
        await self._apply_early(state, ctx)
        if not ctx.deleted:
            ctx.save(state)

    async def on_resume(self, ctx: IntentContext[SupervisorState]) -> None:
        """After a takeover (the state rebuilt from the log) or a restart: act on what is due — a reaction
        the previous owner never sent — and arm the next deadline."""
        state = ctx.state
        if state is None:
            return
        if state.phase == "finished":
            if state.reserved:
                # Finished in the log, but its owner may have died before giving its reservation back.
                await self._release(state.intent)
                state.reserved = False
            ctx.retire(state)
            return
        now = ctx.clock.now_ns()
        controls = self._services.controls if self._services is not None else None
        if not state.cancel_requested and controls is not None:
            # A halt that cancels working intents may have come while no replica of ours was running.
            halts = [s for s in controls.trading_cached.scopes if s.state == "HALTED" and s.cancel_working]
            if await self._cancel_for_halt(ctx, halts):
                return
        if state.cancel_requested:
            await self._stop_for_cancel(state, ctx)
        elif state.phase in ("arrival", "pricing", "repricing") and state.quote is not None:
            quote, state.quote = state.quote, None
            await self._quoted(quote, state, ctx)
        elif state.orders and state.all_final and (
            state.phase in ("working", "canceling")
            or (state.phase == "fallback" and any(o.origin == "market_fallback" for o in state.orders))
        ):
            await self._react_to_final(state, ctx)
        elif state.phase == "working":
            ctx.wake_at(state.attempt_deadline_ns)
        elif state.phase == "waiting":
            ctx.wake_at(state.wake_ns)
        elif state.phase == "fallback":
            ctx.wake_at(state.fallback_act_by_ns + FALLBACK_MARGIN_NS)
        elif state.phase in ("arrival", "pricing", "repricing"):
            ctx.wake_at(max(now, state.price_requested_ns + PRICE_WAIT_NS))  # its answer may still come
        else:  # intake, canceling (cancel again)
            ctx.wake_at(now)
        await self._apply_early(state, ctx)
        if not ctx.deleted:
            ctx.save(state)

    def settled(self, stored: SupervisorState) -> bool:
        return stored.phase == "finished"

    async def rebuild(
        self,
        history: list[tuple[int, Message]],
        stored: SupervisorState | None,
        ctx: IntentContext[SupervisorState],
    ) -> SupervisorState | None:
        """The intent's state as its messages in the log imply, whatever the snapshot says."""
        state = _fold(history)
        if state is None:
            # Not accepted in the log: a submission still at intake (waiting for the venue) stays there; any
            # other snapshot is not backed by the log, and the submission's redelivery starts it afresh.
            return stored if stored is not None and stored.phase == "intake" else None
        if stored is not None:
            state.tick_size, state.min_amount = stored.tick_size, stored.min_amount
            state.min_cost, state.amount_step = stored.min_cost, stored.amount_step
        elif state.phase != "finished":
            rules = await self._rules(state.intent)
            state.tick_size = state.tick_size or rules.get("tick_size")
            state.min_amount, state.min_cost = rules.get("min_amount"), rules.get("min_cost")
            state.amount_step = rules.get("amount_step")
        state.epoch = ctx.epoch
        return state

    async def _quoted(self, msg: PriceQuoted, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        if msg.attempt != state.attempt or state.phase not in ("arrival", "pricing", "repricing"):
            return
        if state.phase == "repricing":
            await self._keep_or_cancel(msg, state, ctx)
            return
        if msg.attempt == 0:
            state.arrival_bid, state.arrival_ask = msg.bid, msg.ask
            state.tick_size = state.tick_size or msg.tick_size
            await self._decide(state, ctx, Arrived(msg), quote=msg)
            return
        await self._decide(state, ctx, Quoted(msg), quote=msg)

    # -- the strategy's decisions -------------------------------------------------------------------------

    def _view(self, state: SupervisorState, now_ns: int) -> View:
        live = [o for o in state.orders if o.status != "final" and not o.cancel and o.origin == "supervisor"]
        working = (
            Working(client_order_id=live[0].client_order_id, attempt=live[0].attempt, price=live[0].price, qty=live[0].qty)
            if len(live) == 1 else None
        )
        return View(
            side=state.intent.side, qty=state.intent.qty, filled=state.filled, now_ns=now_ns,
            accepted_ns=state.accepted_ns, deadline_ns=state.deadline_ns, attempt=state.attempt, leg=state.leg,
            leg_first_attempt=state.leg_first_attempt, arrival_bid=state.arrival_bid, arrival_ask=state.arrival_ask,
            tick_size=state.tick_size, amount_step=state.amount_step, min_amount=state.min_amount,
            min_cost=state.min_cost, working=working,
            last_filled=max((o for o in state.orders if o.origin == "supervisor"), key=lambda o: o.attempt).filled
            if any(o.origin == "supervisor" for o in state.orders) else None,
            reason=state.reason,
        )

    def _ask(self, state: SupervisorState, ctx: IntentContext[SupervisorState], event: Event) -> Decision:
        strategy = strategy_for(state.intent.strategy)
        return strategy.decide(state.intent.params, self._view(state, ctx.clock.now_ns()), event)

    async def _decide(
        self, state: SupervisorState, ctx: IntentContext[SupervisorState], event: Event, *, quote: PriceQuoted | None = None
    ) -> None:
        """Ask the strategy what `event` means and do it, within the invariants every strategy shares."""
        decision = self._ask(state, ctx, event)
        ctx.log.debug("strategy_decided", on=type(event).__name__, decision=type(decision).__name__)
        match decision:
            case AskPrice():
                qty = state.remaining if decision.qty is None else min(decision.qty, state.remaining)
                await self._request_price(state, ctx, attempt=decision.attempt, mode=decision.mode, qty=qty, leg=decision.leg)
            case Place():
                if await self._defer_for_working(state, ctx, keep=f"{state.intent.intent_id}-{decision.attempt}"):
                    return
                if decision.reason:
                    ctx.log.info("strategy_places_with_a_reason", attempt=decision.attempt, reason=decision.reason)
                    state.reason = decision.reason
                state.attempt = decision.attempt
                await self._place(
                    state, ctx, order_type=decision.order_type, price=decision.price,
                    attempt_deadline_ns=decision.deadline_ns, qty=decision.qty, leg=decision.leg,
                    ref=quote if decision.with_reference else None,
                )
            case Reprice():
                if self._keepable(state) is None:
                    await self._cancel_working(state, ctx, announce=True)
                else:
                    await self._reprice(state, ctx, decision)
            case CancelWorking():
                await self._cancel_working(state, ctx, announce=decision.announce)
            case WaitUntil():
                if await self._defer_for_working(state, ctx, keep=""):
                    return
                state.phase = "waiting"
                state.wake_ns = decision.at_ns
                ctx.wake_at(decision.at_ns)
            case HandOff():
                await self._no_more_attempts(state, ctx, decision.reason, fallback=decision.fallback)
            case Finish():
                if state.all_final:
                    await self._finish(state, ctx, decision.reason)
                else:
                    state.reason = decision.reason
                    await self._cancel_working(state, ctx, announce=False)

    async def _defer_for_working(self, state: SupervisorState, ctx: IntentContext[SupervisorState], *, keep: str) -> bool:
        """Never two orders at once: an order other than `keep` still working (sent by an owner that had lost
        the intent, a step ahead of us) is canceled first, and the strategy is asked again once every order is
        terminal. `keep` is the very order the strategy wants placed: an old owner's copy of it is ours to
        work (the placer placed it once; our command is the same client order id). True if it deferred."""
        others = [o for o in state.orders if o.status != "final" and o.client_order_id != keep]
        if not others:
            return False
        ctx.log.warning("next_order_waits_for_orders_still_working", orders=[o.client_order_id for o in others])
        state.quote = None
        # Past the attempts those orders were sent for: the next attempt has a client order id of its own.
        state.attempt = max([state.attempt, *(o.attempt for o in state.orders if o.origin == "supervisor")])
        await self._cancel_all(state, ctx, "an order sent by an owner that had lost the intent: canceled before the next")
        return True

    async def _cancel_all(self, state: SupervisorState, ctx: IntentContext[SupervisorState], reason: str) -> None:
        """Cancel every order not yet terminal (the fallback's too) and wait for them in phase `canceling`."""
        for record in state.orders:
            if record.status != "final" and not record.cancel:
                record.cancel = True
                await self._send_cancel(state, record, ctx, reason)
        state.phase = "canceling"
        state.cancel_round = 0
        ctx.wake_at(ctx.clock.now_ns() + CANCEL_CHECK_NS)

    # -- placing ----------------------------------------------------------------------------------------

    async def _place(
        self,
        state: SupervisorState,
        ctx: IntentContext[SupervisorState],
        *,
        order_type: str,
        price: Decimal | None,
        attempt_deadline_ns: int,
        qty: Decimal | None = None,
        leg: int | None = None,
        ref: PriceQuoted | None = None,
    ) -> None:
        intent = state.intent
        qty = state.remaining if qty is None else min(qty, state.remaining)
        if qty <= 0:
            await self._nothing_left(state, ctx)
            return
        if state.cancel_requested:
            return  # (never reached: a canceled intent asks for no price)
        cid = f"{intent.intent_id}-{state.attempt}"
        existing = state.order(cid)
        if existing is not None and existing.status == "final" and not existing.refused_stale:
            # That attempt's order exists and is over: a client order id is never sent twice, so the next free one.
            while state.order(f"{intent.intent_id}-{state.attempt}") is not None:
                state.attempt += 1
            ctx.log.warning("attempt_taken_places_the_next", taken=cid, attempt=state.attempt)
            cid = f"{intent.intent_id}-{state.attempt}"
        command_record = OrderRecord(client_order_id=cid, attempt=state.attempt, origin="supervisor", qty=qty, price=price)
        _adopt_record(state, command_record)  # (an owner that lost the intent may have sent this very command)
        state.phase = "working"
        state.attempt_deadline_ns = attempt_deadline_ns
        leg = state.leg if leg is None else leg
        _note_leg(state, leg, state.attempt)
        await ctx.publish(
            PlaceOrder(
                **routing(intent),
                client_order_id=cid,
                attempt=state.attempt,
                side=intent.side,
                order_type=order_type,  # type: ignore[arg-type]
                qty=qty,
                price=price,
                deadline_ns=attempt_deadline_ns,
                ref_price=None if ref is None else (ref.ask if intent.side == "buy" else ref.bid),
                ref_ts_ns=0 if ref is None else ref.ts_event,
                leg=leg,
            )
        )
        ctx.wake_at(attempt_deadline_ns)

    # -- keeping the working order -----------------------------------------------------------------------

    def _keepable(self, state: SupervisorState) -> OrderRecord | None:
        """The one working order the next attempt could keep, if it prices the same."""
        live = [o for o in state.orders if o.status != "final"]
        if len(live) != 1:
            return None
        order = live[0]
        if order.origin != "supervisor" or order.status != "open" or order.cancel or order.price is None:
            return None
        return order

    async def _reprice(self, state: SupervisorState, ctx: IntentContext[SupervisorState], decision: Reprice) -> None:
        """An attempt's deadline passed with its order working: price the next attempt before canceling,
        so an order that would be placed again at the same price keeps its place in the queue."""
        order = self._keepable(state)
        assert order is not None
        await ctx.publish(
            AttemptTimedOut(**routing(state.intent), attempt=state.attempt, client_order_id=order.client_order_id)
        )
        await self._request_price(state, ctx, attempt=decision.attempt, mode=decision.mode, qty=min(order.qty, state.remaining))
        state.phase = "repricing"

    async def _keep_or_cancel(self, quote: PriceQuoted, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        live = [o for o in state.orders if o.status != "final"]
        order = live[0] if len(live) == 1 and not live[0].cancel else None
        if order is None:
            await self._give_up_keeping(state, ctx)
            return
        decision = self._ask(state, ctx, Quoted(quote))
        if not isinstance(decision, Place) or decision.order_type != "limit" or decision.price != order.price:
            await self._give_up_keeping(state, ctx)
            return
        price, deadline = decision.price, decision.deadline_ns
        ctx.log.info("order_kept", attempt=state.attempt, client_order_id=order.client_order_id, price=str(price))
        await ctx.publish(
            OrderKept(
                **routing(state.intent), attempt=state.attempt, client_order_id=order.client_order_id,
                price=price, deadline_ns=deadline,
            )
        )
        state.phase = "working"
        state.attempt_deadline_ns = deadline
        state.kept += 1
        ctx.wake_at(deadline)

    async def _give_up_keeping(self, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        """Back to the working order's own attempt, and cancel it as an expired attempt always was."""
        state.attempt -= 1  # `_reprice` stepped one attempt forward; the order works for the one before
        state.phase = "working"
        state.quote = None
        if all(o.status == "final" for o in state.orders):
            await self._react_to_final(state, ctx)  # it ended meanwhile: go on from there
            return
        await self._cancel_working(state, ctx, announce=False)  # (`_reprice` announced it)

    async def _placed(self, msg: OrderPlaced, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        record = state.order(msg.client_order_id)
        if record is None:
            return
        record.order_id = msg.order_id
        if record.status in ("pending", "unknown"):
            record.status = "open"
        # A cancel sent before this arrived needs no repeat: the placer handles an intent's commands in log
        # order, so it saw this order's PlaceOrder before the CancelOrder.

    async def _order_rejected(self, msg: OrderRejected, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        record = state.order(msg.client_order_id)
        if record is None or record.status == "final":
            return
        _learn_cancel(state, msg)
        record.status = "final"
        record.rejected = "retryable" if msg.retryable else "final"
        record.refused_stale = _refused_as_stale(msg)
        state.reason = f"order {msg.client_order_id} rejected: {msg.error}: {msg.reason}"
        _ended_while_repricing(state, record)
        await self._react_to_final(state, ctx)

    async def _nothing_left(self, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        """Asked to price or place with nothing left to buy: never send a zero quantity; finish once every
        order is terminal (the fills say the intent is done), else wait for them."""
        ctx.log.warning("nothing_left_to_trade", phase=state.phase, filled=str(state.filled))
        if state.all_final:
            await self._finish(state, ctx, "filled")
            return
        for record in state.orders:
            if record.status != "final" and not record.cancel:
                record.cancel = True  # anything still working would trade more than the intent
                await self._send_cancel(state, record, ctx, "intent already filled")
        state.phase = "canceling"
        ctx.wake_at(ctx.clock.now_ns() + CANCEL_CHECK_NS)

    async def _react_to_final(self, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        """Every order is terminal: a refused order (not retryable) ends the strategy; otherwise go on."""
        if not state.all_final:
            return
        if state.cancel_requested or state.closing:
            await self._next_step(state, ctx)  # (finishes: filled, canceled, or why the strategy was over)
            return
        if any(o.rejected == "final" for o in state.orders) and state.remaining > 0:
            if state.phase == "fallback":
                await self._finish(state, ctx, state.reason)
            else:
                await self._no_more_attempts(state, ctx, state.reason, fallback=False)
            return
        await self._next_step(state, ctx)

    # -- attempts ---------------------------------------------------------------------------------------

    async def _cancel_working(
        self, state: SupervisorState, ctx: IntentContext[SupervisorState], *, announce: bool
    ) -> None:
        """`announce`: say in the log that the attempt timed out (`AttemptTimedOut`), for strategies whose
        attempts the report counts."""
        for record in state.orders:
            if record.status != "final" and not record.cancel and record.origin == "supervisor":
                if announce:
                    await ctx.publish(
                        AttemptTimedOut(
                            **routing(state.intent),
                            attempt=state.attempt,  # (a kept order works for a later attempt than its own)
                            client_order_id=record.client_order_id,
                        )
                    )
                record.cancel = True
                await self._send_cancel(state, record, ctx, "attempt deadline passed")
        state.phase = "canceling"
        state.cancel_round = 0
        ctx.wake_at(ctx.clock.now_ns() + CANCEL_CHECK_NS)

    async def _cancel_again(self, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        """The canceling phase's deadline: an order not confirmed terminal by now is canceled again (a
        cancel can be lost with a placer, or answered "not found" by a venue that had not indexed it)."""
        if state.all_final:
            await self._react_to_final(state, ctx)
            return
        state.cancel_round += 1
        for record in state.orders:
            if record.status != "final" and record.cancel:
                ctx.log.info("cancel_again", client_order_id=record.client_order_id, round=state.cancel_round)
                await self._send_cancel(state, record, ctx, "not terminal after cancel", retry=state.cancel_round)
        # Backing off: the placer retries on its own too; this only covers a cancel lost with a placer.
        ctx.wake_at(ctx.clock.now_ns() + min(CANCEL_CHECK_NS << min(state.cancel_round, 4), 30 * NS))

    async def _send_cancel(
        self,
        state: SupervisorState,
        record: OrderRecord,
        ctx: IntentContext[SupervisorState],
        reason: str,
        *,
        retry: int = 0,
    ) -> None:
        intent = state.intent
        await ctx.publish(
            CancelOrder(
                **routing(intent),
                client_order_id=record.client_order_id,
                order_id=record.order_id,
                reason=reason,
                retry=retry,
            )
        )

    async def _finalized(self, msg: OrderFinalized, state: SupervisorState, ctx: IntentContext[SupervisorState]) -> None:
        record = state.order(msg.client_order_id)
        if record is None or record.status == "final":
            return
        record.status = "final"
        record.filled = msg.filled_qty
        record.order_id = record.order_id or msg.order_id
        _ended_while_repricing(state, record)
        if not state.all_final:
            return
        await self._next_step(state, ctx)

    async def _next_step(
        self, state: SupervisorState, ctx: IntentContext[SupervisorState], event: Event | None = None
    ) -> None:
        """Every order is terminal: done, or whatever the strategy says next (another attempt, a wait, the
        fallback)."""
        if not state.all_final:
            return
        remaining = state.remaining
        if remaining <= 0:
            await self._finish(state, ctx, "filled")
            return
        if state.cancel_requested:
            await self._finish(state, ctx, f"canceled: {state.cancel_requested}")
            return
        if state.closing:
            await self._finish(state, ctx, state.closing)
            return
        if state.phase == "fallback":
            await self._finish(state, ctx, state.reason or "fallback finished with quantity left")
            return
        dust = _dust(state, remaining)
        if dust:
            await self._finish(state, ctx, dust)
            return
        await self._decide(state, ctx, event or AllFinal())

    async def _no_more_attempts(
        self, state: SupervisorState, ctx: IntentContext[SupervisorState], reason: str, *, fallback: bool
    ) -> None:
        """The strategy is done with quantity left: the market fallback takes it when `fallback` (and the
        intent is not canceled, and what is left can be placed), else the strategy finishes."""
        intent = state.intent
        remaining = state.remaining
        dust = _dust(state, remaining) if remaining > 0 else ""
        if dust:
            reason = f"{reason}; {dust}"
        if state.cancel_requested:
            fallback = False
        if fallback and remaining > 0 and state.all_final and not dust:
            state.phase = "fallback"
            state.fallback_used = True
            state.reason = reason
            state.fallback_act_by_ns = max(state.deadline_ns, ctx.clock.now_ns()) + FALLBACK_GRACE_NS
            await ctx.publish(
                ExecutionTimedOut(
                    **routing(intent),
                    side=intent.side,
                    remaining_qty=remaining,
                    filled_qty=state.filled,
                    fallback=FALLBACK_TO_MARKET,
                    act_by_ns=state.fallback_act_by_ns,
                    reason=reason,
                )
            )
            ctx.wake_at(state.fallback_act_by_ns + FALLBACK_MARGIN_NS)
            return
        await self._finish(state, ctx, reason)

    async def _finish(self, state: SupervisorState, ctx: IntentContext[SupervisorState], reason: str) -> None:
        intent = state.intent
        if not state.all_final:
            # Never report with an order still working (one an owner that had lost the intent sent, say): it
            # is canceled, and the intent finishes with this reason once every order is terminal.
            ctx.log.warning("finish_waits_for_orders_still_working", reason=reason)
            state.closing = reason
            await self._cancel_all(state, ctx, f"the strategy is over: {reason}")
            return
        if state.cancel_requested and not reason.startswith("canceled") and state.remaining > 0:
            reason = f"canceled: {state.cancel_requested} ({reason})"
        await ctx.publish(
            StrategyFinished(
                **routing(intent),
                client_order_ids=tuple(o.client_order_id for o in state.orders),
                reason=reason,
                attempts=sum(1 for o in state.orders if o.origin == "supervisor") + state.kept,
                fallback_used=state.fallback_used,
                arrival_bid=state.arrival_bid,
                arrival_ask=state.arrival_ask,
                side=intent.side,
                qty=intent.qty,
                strategy=intent.strategy,
                canceled=bool(state.cancel_requested),
                accepted_ns=state.accepted_ts_ns or state.accepted_ns,
            )
        )
        state.phase = "finished"
        if state.reserved:
            await self._release(intent)
            state.reserved = False
        # Kept (a day), not forgotten: the durable "finished" marker a redelivered submission meets.
        ctx.retire(state)


class _VenueUnavailable(Exception):
    """The venue could not be asked (not reachable, markets not loaded): nothing is wrong with the intent."""


class _Gate(msgspec.Struct, kw_only=True):
    """What the intake's risk check found: a denial, or the reservation to take."""

    denied: tuple[str, str] | None = None
    limits: RiskLimits | None = None
    ref_price: Decimal | None = None
    free: Decimal | None = None
    reservation: Any = None

    def decide(self, current: Any, intent: SubmitIntent, now_ns: int) -> risk.Denial | None:
        assert self.limits is not None and self.ref_price is not None and self.reservation is not None
        return risk.intake_denial(
            self.limits, symbol=intent.symbol, qty=intent.qty, ref_price=self.ref_price, reservations=current,
            now_ns=now_ns,
        ) or risk.reservation_denial(self.limits, self.reservation, self.free, current, now_ns)


def _budget_ns(intent: SubmitIntent) -> int:
    return strategy_for(intent.strategy).budget_ns(intent.params)


def _fold(history: list[tuple[int, Message]]) -> SupervisorState | None:
    """What the intent's messages, oldest first, say its state is: facts only, no decisions (those are
    `on_resume`'s). None when the log holds no acceptance of it."""
    intent: SubmitIntent | None = None
    state: SupervisorState | None = None
    newest_owner = 0
    submitted_seq = 0
    for seq, msg in history:
        if _ours(msg) and msg.epoch:
            if msg.epoch < newest_owner:
                # Sent by an owner that had lost the intent: it steers nothing. Its order may still have
                # reached the venue (the placer had not yet seen the newer epoch), so it counts as an order.
                if state is not None and isinstance(msg, PlaceOrder) and state.order(msg.client_order_id) is None:
                    state.orders.append(_record_of(msg, fenced=True))
                    _fold_early(state)
                continue
            newest_owner = msg.epoch
        if isinstance(msg, SubmitIntent):
            if intent is None:
                intent, submitted_seq = msg, seq
            continue
        if isinstance(msg, IntentRejected):
            if not msg.duplicate and state is None:
                return None
            continue
        if isinstance(msg, IntentAccepted):
            if state is None and intent is not None:
                state = SupervisorState(
                    intent=intent, accepted_ns=msg.ts_event, deadline_ns=msg.deadline_ns, claim_token=str(submitted_seq),
                    accepted_seq=seq, accepted_ts_ns=msg.ts_event,
                    reserved=True,  # (whether it did is in KV, not the log: giving back nothing costs a read)
                )
            continue
        if state is None:
            continue
        _fold_one(state, msg)
    return state


def _fold_one(state: SupervisorState, msg: Message) -> None:
    if _refused_as_stale(msg) and not _fenced_record(state, msg):
        return  # the refused copy of a fenced owner: the same id's command of the newer owner stands
    if isinstance(msg, OrderPlaced | OrderOutcomeUnknown | OrderRejected | OrderFinalized) and state.order(msg.client_order_id) is None:
        state.early.append(msg)  # (the log has an order's command before its events; kept like live)
        return
    match msg:
        case PriceRequested():
            if msg.attempt != state.attempt:
                state.attempt_price_requests = 0
            state.attempt = msg.attempt
            state.attempt_price_requests += 1
            state.price_mode = msg.mode
            _note_leg(state, msg.leg, msg.attempt)
            state.price_request = max(state.price_request, msg.request + 1)
            state.price_requested_ns = msg.ts_event
            working = any(o.status != "final" and not o.cancel and o.origin == "supervisor" for o in state.orders)
            state.phase = "repricing" if working else "arrival" if msg.attempt == 0 else "pricing"
            state.quote = None
        case PriceQuoted():
            if msg.attempt == 0:
                state.arrival_bid, state.arrival_ask = msg.bid, msg.ask
                state.tick_size = state.tick_size or msg.tick_size
            current = msg.request == state.price_request - 1  # an answer to a fenced request is not ours
            if current and msg.attempt == state.attempt and state.phase in ("arrival", "pricing", "repricing"):
                state.quote = msg  # not acted on yet, unless a PlaceOrder follows
        case PlaceOrder():
            if msg.origin == "market_fallback":
                if state.order(msg.client_order_id) is None:
                    state.orders.append(_record_of(msg))
            else:
                _adopt_record(state, _record_of(msg))
            if msg.origin != "market_fallback":
                state.attempt = msg.attempt
                _note_leg(state, msg.leg, msg.attempt)
                state.phase = "working"
                state.attempt_deadline_ns = msg.deadline_ns or state.deadline_ns
                state.quote = None
        case OrderPlaced():
            record = state.order(msg.client_order_id)
            assert record is not None
            record.order_id = msg.order_id
            if record.status in ("pending", "unknown"):
                record.status = "open"
        case OrderOutcomeUnknown():
            record = state.order(msg.client_order_id)
            if record is not None and record.status == "pending":
                record.status = "unknown"
        case OrderRejected():
            record = state.order(msg.client_order_id)
            if record is not None and record.status != "final":
                _learn_cancel(state, msg)
                record.status = "final"
                record.rejected = "retryable" if msg.retryable else "final"
                record.refused_stale = _refused_as_stale(msg)
                state.reason = f"order {msg.client_order_id} rejected: {msg.error}: {msg.reason}"
                _ended_while_repricing(state, record)
        case OrderFinalized():
            record = state.order(msg.client_order_id)
            if record is not None and record.status != "final":
                record.status = "final"
                record.filled = msg.filled_qty
                record.order_id = record.order_id or msg.order_id
                _ended_while_repricing(state, record)
        case CancelOrder():
            record = state.order(msg.client_order_id)
            if record is not None:
                record.cancel = True
                if state.phase == "repricing":
                    # The next attempt's price was not the order's own: back to the attempt the order works
                    # for, as `_give_up_keeping` does live; the next one is priced again once it is terminal.
                    state.attempt -= 1
                    state.quote = None
                if state.phase in ("working", "repricing"):
                    state.phase = "canceling"
                    state.cancel_round = msg.retry
                else:
                    state.cancel_round = max(state.cancel_round, msg.retry)
        case OrderKept():
            state.kept += 1
            state.attempt = msg.attempt
            state.phase = "working"
            state.attempt_deadline_ns = msg.deadline_ns
            state.quote = None
        case ExecutionTimedOut():
            state.phase = "fallback"
            state.fallback_used = True
            state.fallback_act_by_ns = msg.act_by_ns or state.deadline_ns + FALLBACK_GRACE_NS
            state.reason = msg.reason or state.reason
        case CancelIntent():
            if state.phase != "finished" and not state.cancel_requested:
                state.cancel_requested = msg.reason or f"canceled by {msg.requested_by or 'request'}"
        case StrategyFinished():
            state.phase = "finished"
            state.reason = msg.reason
    _fold_early(state)


def _fold_early(state: SupervisorState) -> None:
    """Apply the events kept for an order whose command came later in the log."""
    ready = [e for e in state.early if state.order(e.client_order_id) is not None]
    for event in ready:
        state.early.remove(event)
        _fold_one(state, event)


def _record_of(cmd: PlaceOrder, *, fenced: bool = False) -> OrderRecord:
    return OrderRecord(
        client_order_id=cmd.client_order_id, attempt=cmd.attempt, origin=cmd.origin, qty=cmd.qty, price=cmd.price,
        fenced=fenced,
    )


def _seq_of(ack: object) -> int:
    """The stream sequence of a publish's ack (0 if it has none)."""
    return int(getattr(ack, "seq", 0) or 0)


def _adopt_record(state: SupervisorState, record: OrderRecord) -> None:
    """Our own command for `record`'s client order id (live, or the newest owner's in the log): a record an
    owner that had lost the intent made for the same id becomes ours (its refusal as stale no longer closes it),
    and one that ended only by that refusal is open again — nothing was created for it."""
    existing = state.order(record.client_order_id)
    if existing is None:
        state.orders.append(record)
        return
    if existing.fenced:
        existing.fenced = False
        if existing.refused_stale:
            existing.status, existing.rejected, existing.refused_stale = "pending", "", False


def _note_leg(state: SupervisorState, leg: int, attempt: int) -> None:
    """A price request or order of `attempt` in `leg`: the leg begins here if it is new. The same rule live
    and when folding the log, so a rebuilt owner counts a leg's attempts as the live one did."""
    if attempt >= 1 and (leg != state.leg or state.leg_first_attempt == 0):
        state.leg, state.leg_first_attempt = leg, attempt


def _fenced_record(state: SupervisorState, msg: Message) -> bool:
    """The event is about an order only a fenced owner sent: the placer's refusal of it closes it."""
    record = state.order(getattr(msg, "client_order_id", ""))
    return record is not None and record.fenced


def _learn_cancel(state: SupervisorState, msg: OrderRejected) -> None:
    """The placer refused an order because the intent is being canceled: so it is, whether or not its
    `CancelIntent` reached us first (after a failover, redeliveries need not come in log order)."""
    if msg.error == "IntentCanceled" and not state.cancel_requested:
        state.cancel_requested = "canceled (the placer had the intent's cancel first)"


def _refused_as_stale(msg: Message) -> bool:
    """The placer refused this order's command as coming from an owner that had lost the intent."""
    return isinstance(msg, OrderRejected) and msg.error == "StaleEpoch"


def _ended_while_repricing(state: SupervisorState, record: OrderRecord) -> None:
    """The working order ended while the next attempt's price was being asked for (to decide whether to keep
    it): that attempt has not begun. Back to the attempt the order worked for; the next step prices the next."""
    if state.phase == "repricing" and record.origin == "supervisor":
        state.attempt -= 1  # (`_reprice` stepped one forward; the order worked for the attempt before)
        state.phase = "working"
        state.quote = None


def _ours(msg: Message) -> bool:
    """Sent by the supervisor (as the intent's owner at the time)."""
    if isinstance(msg, PlaceOrder):
        return msg.origin != "market_fallback"
    return isinstance(
        msg,
        IntentAccepted | IntentRejected | PriceRequested | AttemptTimedOut | OrderKept | CancelOrder
        | ExecutionTimedOut | StrategyFinished | CancelIntentAccepted | CancelIntentRejected,
    )


def _reject(intent: SubmitIntent, field: str, reason: str, *, dup: bool = False, code: str = "") -> IntentRejected:
    return IntentRejected(
        **routing(intent),
        field=field,
        reason=reason,
        duplicate=dup,
        code=code,
    )


def _field_of(code: str) -> str:
    """The rejection's field for a denial code: `trading_state` or `risk` for the gate's, else the field."""
    head = code.split(".", 1)[0]
    return head if head in ("trading_state", "risk") else code


def _halt_denial(states: TradingStates | None, intent: SubmitIntent) -> tuple[str, str] | None:
    if states is None:
        return None
    scope = states.effective(intent.venue, intent.symbol)
    if scope is None or scope.state != "HALTED":
        return None
    denial = risk.trading_denial(states, intent.venue, intent.symbol, intent.side, intent.qty, None)
    assert denial is not None
    return denial.code, denial.reason


def _dust(state: SupervisorState, remaining: Decimal) -> str:
    """Why `remaining` cannot be placed at all (below the venue's minimum amount or order value), or "".
    Placing it anyway only earns a rejection; the report says what was left and why."""
    if state.min_amount is not None and remaining < state.min_amount:
        return f"remainder {remaining} is below the venue minimum amount {state.min_amount}"
    if state.min_cost is not None and state.arrival_bid and state.arrival_ask:
        value = remaining * (state.arrival_bid + state.arrival_ask) / 2
        if value < state.min_cost:
            return f"remainder {remaining} (about {value:.2f}) is below the venue minimum order value {state.min_cost}"
    return ""
