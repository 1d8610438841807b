"""The tracker: authoritative per-order and per-intent totals, and the final report.

It publishes `ExecutionCompleted` once the supervisor has said it will place nothing more
(`StrategyFinished`) and every order of the intent is terminal with exactly its final filled quantity in
fills, so the report's totals are the sum of its fills by construction. A fill that arrives after the
report is recorded and announced (`LateFillRecorded`), never dropped. Status queries are answered over
request/reply at `execbus.ctl.tracker.intent`.

It is delivered only what it uses: `IntentAccepted` (the intent's side, quantity, strategy and start, so a
status query knows them while it works), the fills, the orders' terminal declarations (`OrderFinalized`,
and `OrderRejected` for an order refused before it existed), `StrategyFinished`, and `IntentRejected` (an
intent that never runs has no other message). Everything else the report needs comes with those: the
arrival bid/ask with `StrategyFinished` (which repeats the intent too, so the report never depends on
having seen `IntentAccepted` first), every order's id and attempt with its fills and its
`OrderFinalized`/`OrderRejected`. So while an intent works its status knows only the orders that have filled
or ended. Arrival order does not matter: fills before or after `StrategyFinished`, an `OrderFinalized`
before the last of its fills — the report waits until every order `StrategyFinished` lists has exactly its
final filled quantity in fills.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from bus.actor import Actor, IntentContext, Services
from messages import (
    ExecutionCompleted,
    IntentAccepted,
    IntentRejected,
    IntentStatus,
    LateFillRecorded,
    OrderFilled,
    OrderFinalized,
    OrderRejected,
    OrderStatus,
    StatusQuery,
    StrategyFinished,
    encode,
)
from messages.base import Message, routing

__all__ = ["Tracker", "TrackerState", "build_report"]

BPS = Decimal(10_000)


class Fill(msgspec.Struct, kw_only=True, array_like=True):
    trade_id: str
    qty: Decimal
    price: Decimal
    fee_quote: Decimal
    """The fee if charged in base (valued at the fill's price) or quote; 0 for a fee in another currency."""
    fee_other: Decimal = Decimal(0)
    """A fee charged in a third currency (e.g. BNB), in that currency, unconverted."""
    fee_other_currency: str = ""


class TrackedOrder(msgspec.Struct, kw_only=True):
    client_order_id: str
    attempt: int
    order_id: str | None = None
    state: str = "placed"
    """placed (a fill of it seen) -> final | rejected. ("requested" in a snapshot from before the tracker
    stopped reading `PlaceOrder`.)"""
    final_filled: Decimal | None = None
    fills: list[Fill] = msgspec.field(default_factory=list)
    final_reason: str = ""
    """What the reconciler said about how it finalized the order (e.g. trades the venue never showed)."""

    @property
    def filled(self) -> Decimal:
        return sum((f.qty for f in self.fills), Decimal(0))

    @property
    def settled(self) -> bool:
        """Terminal, and every fill the venue reported for it is here."""
        if self.state == "rejected":
            return True
        return self.state == "final" and self.final_filled == self.filled


class TrackerState(msgspec.Struct, kw_only=True):
    venue: str
    symbol: str
    side: str = ""
    """The intent's, from `StrategyFinished` ("" until then)."""
    qty: Decimal = Decimal(0)
    """The intent's, from `StrategyFinished` (0 until then)."""
    strategy: str = ""
    accepted_ns: int = 0
    """When the supervisor accepted the intent (`StrategyFinished.accepted_ns`): the report's start."""
    arrival_bid: Decimal | None = None
    arrival_ask: Decimal | None = None
    orders: dict[str, TrackedOrder] = msgspec.field(default_factory=dict)
    finished: StrategyFinished | None = None
    rejected: str | None = None
    report: ExecutionCompleted | None = None
    late_fills: int = 0

    @property
    def fills(self) -> list[Fill]:
        return [f for o in self.orders.values() for f in o.fills]

    @property
    def filled(self) -> Decimal:
        return sum((o.filled for o in self.orders.values()), Decimal(0))


class Tracker(Actor[TrackerState]):
    name = "tracker"
    consumes = (
        IntentAccepted,  # the intent's side, quantity and start, so a status query knows them while it works
        OrderFilled,
        OrderFinalized,
        StrategyFinished,
        OrderRejected,  # (rare) an order refused before it existed: no OrderFinalized will come for it
        IntentRejected,  # (rare) an intent that never runs: no StrategyFinished will come for it
    )
    produces = (ExecutionCompleted, LateFillRecorded)
    State = TrackerState

    def __init__(self) -> None:
        self._services: Services | None = None
        self.completed = 0
        self.late = 0

    async def start(self, services: Services) -> None:
        self._services = services

    def status(self) -> dict[str, Any]:
        return {"completed": self.completed, "late_fills": self.late}

    def endpoints(self) -> dict[str, Any]:
        return {"intent": self._intent_status}

    async def handle(self, msg: Message, ctx: IntentContext[TrackerState]) -> None:
        state = ctx.state or TrackerState(venue=msg.venue, symbol=msg.symbol)
        match msg:
            case IntentAccepted():
                state.side, state.qty, state.strategy = msg.side, msg.qty, msg.strategy
                state.accepted_ns = msg.ts_event
            case IntentRejected(duplicate=False):
                # (Also sent for a garbled resubmission of a running intent's id: `_phase` says "rejected"
                # only while nothing shows the intent ran.)
                state.rejected = f"{msg.field}: {msg.reason}"
            case OrderRejected():
                order = _order(state, msg.client_order_id, msg.attempt)
                # A refused stale copy says nothing about an order of that id that has filled or ended.
                if msg.error != "StaleEpoch" or (order.state != "final" and not order.fills):
                    order.state = "rejected"
            case OrderFilled():
                await self._fill(msg, state, ctx)
            case OrderFinalized():
                order = _order(state, msg.client_order_id, msg.attempt)
                order.state = "final"
                order.final_filled = msg.filled_qty
                order.order_id = order.order_id or msg.order_id
                order.final_reason = msg.reason
            case StrategyFinished():
                state.finished = msg
                # (A snapshot from before may know them from `IntentAccepted`/`PriceQuoted`: the same values.)
                if not state.side and msg.side is not None and msg.qty is not None:
                    state.side, state.qty, state.strategy = msg.side, msg.qty, msg.strategy
                state.arrival_bid = state.arrival_bid or msg.arrival_bid
                state.arrival_ask = state.arrival_ask or msg.arrival_ask
                state.accepted_ns = state.accepted_ns or msg.accepted_ns
                if state.filled > state.qty > 0:
                    ctx.log.error("overfill_detected", filled=str(state.filled), qty=str(state.qty))
        await self._maybe_complete(state, ctx)
        if state.report is not None:
            ctx.retire(state)  # reported: kept in KV for late fills, no longer in memory
        else:
            ctx.save(state)

    async def _fill(self, msg: OrderFilled, state: TrackerState, ctx: IntentContext[TrackerState]) -> None:
        order = _order(state, msg.client_order_id, msg.attempt)
        order.order_id = order.order_id or msg.order_id
        if order.state in ("requested", "rejected"):
            # (requested: a snapshot's order from before; rejected: only a refused stale copy of it, since an
            # order that fills exists)
            order.state = "placed"
        if any(f.trade_id == msg.trade_id for f in order.fills):
            return  # the same venue trade seen twice
        order.fills.append(_fill_of(msg, state.symbol))
        if state.filled > state.qty > 0:
            ctx.log.error("overfill_detected", filled=str(state.filled), qty=str(state.qty))
        if state.report is not None:
            self.late += 1
            state.late_fills += 1
            ctx.log.warning(
                "late_fill", trade_id=msg.trade_id, client_order_id=msg.client_order_id,
                fee=str(msg.fee), fee_currency=msg.fee_currency,
            )
            await ctx.publish(
                LateFillRecorded(
                    **routing(msg),
                    client_order_id=msg.client_order_id,
                    trade_id=msg.trade_id,
                    qty=msg.qty,
                    price=msg.price,
                    filled_qty_now=state.filled,
                )
            )

    async def _maybe_complete(self, state: TrackerState, ctx: IntentContext[TrackerState]) -> None:
        finished = state.finished
        if state.report is not None or finished is None or not state.side:
            return  # without the intent's side and quantity a report would be wrong, so wait for them
        for cid in finished.client_order_ids:
            order = state.orders.get(cid)
            if order is None or not order.settled:
                return
        report = build_report(state, finished, ctx.intent_id, ctx.clock.now_ns())
        state.report = report
        self.completed += 1
        ctx.log.info("execution_completed", status=report.status, filled=str(report.filled_qty))
        await ctx.publish(report)

    async def _intent_status(self, payload: bytes) -> bytes:
        query = msgspec.json.decode(payload, type=StatusQuery)
        assert self._services is not None
        state: TrackerState | None = await self._services.find_state(query.intent_id)
        if state is None:
            return encode(IntentStatus(intent_id=query.intent_id, known=False))
        return encode(
            IntentStatus(
                intent_id=query.intent_id,
                known=True,
                state=_phase(state),
                qty=state.qty if state.side else None,  # known from `StrategyFinished` on
                filled_qty=state.filled,
                completed=state.report is not None,
                orders=tuple(
                    OrderStatus(
                        client_order_id=o.client_order_id,
                        order_id=o.order_id,
                        attempt=o.attempt,
                        state=o.state,
                        filled_qty=o.filled,
                        fills=len(o.fills),
                    )
                    for o in state.orders.values()
                ),
            )
        )


def _phase(state: TrackerState) -> str:
    """completed, rejected, finishing (the strategy is over, orders or fills still to come) or working."""
    if state.report is not None:
        return "completed"
    ran = state.finished is not None or bool(state.orders) or bool(state.accepted_ns)
    if state.rejected and not ran:
        return "rejected"
    return "finishing" if state.finished is not None else "working"


def _order(state: TrackerState, cid: str, attempt: int) -> TrackedOrder:
    order = state.orders.get(cid)
    if order is None:
        order = state.orders[cid] = TrackedOrder(client_order_id=cid, attempt=attempt)
    return order


def _fill_of(msg: OrderFilled, symbol: str) -> Fill:
    """A fill with its fee kept: base is valued at the fill's price, quote (or unnamed) as is, and any
    other currency is kept in that currency (never converted at a guessed rate, never dropped)."""
    base, _, quote = symbol.partition("/")
    quote = quote.split(":")[0]
    if msg.fee_currency == base:
        return Fill(trade_id=msg.trade_id, qty=msg.qty, price=msg.price, fee_quote=msg.fee * msg.price)
    if msg.fee_currency in (quote, ""):
        return Fill(trade_id=msg.trade_id, qty=msg.qty, price=msg.price, fee_quote=msg.fee)
    return Fill(
        trade_id=msg.trade_id, qty=msg.qty, price=msg.price, fee_quote=Decimal(0),
        fee_other=msg.fee, fee_other_currency=msg.fee_currency,
    )


def other_fees(fills: list[Fill]) -> dict[str, Decimal]:
    """Fees in currencies other than base and quote, summed per currency."""
    out: dict[str, Decimal] = {}
    for f in fills:
        if f.fee_other_currency:
            out[f.fee_other_currency] = out.get(f.fee_other_currency, Decimal(0)) + f.fee_other
    return out


def slippage_bps(side: str, avg_price: Decimal | None, arrival_mid: Decimal | None) -> Decimal | None:
    """Cost of fills at `avg_price` versus the arrival mid, in bps, signed so that positive is worse (paid more
    on a buy, received less on a sell). The report's figure; live views show the same of the fills so far."""
    if avg_price is None or not arrival_mid:
        return None
    signed = (avg_price - arrival_mid) if side == "buy" else (arrival_mid - avg_price)
    return (signed / arrival_mid * BPS).quantize(Decimal("0.0001"))


def build_report(state: TrackerState, finished: StrategyFinished, intent_id: str, now_ns: int) -> ExecutionCompleted:
    """Totals from the fills alone; slippage signed so that positive is a cost."""
    fills = state.fills
    filled = sum((f.qty for f in fills), Decimal(0))
    notional = sum((f.qty * f.price for f in fills), Decimal(0))
    fees = sum((f.fee_quote for f in fills), Decimal(0))
    avg = notional / filled if filled else None
    mid = (state.arrival_bid + state.arrival_ask) / 2 if state.arrival_bid and state.arrival_ask else None
    slippage = slippage_bps(state.side, avg, mid)
    all_rejected = bool(state.orders) and all(o.state == "rejected" for o in state.orders.values())
    if filled >= state.qty:
        status = "filled"  # (a cancel that lost the race to the fills)
    elif finished.canceled:
        status = "canceled"
    elif filled > 0:
        status = "partially_filled"
    elif all_rejected or not finished.client_order_ids:
        status = "failed"
    else:
        status = "unfilled"
    return ExecutionCompleted(
        intent_id=intent_id,
        venue=state.venue,
        symbol=state.symbol,
        status=status,  # type: ignore[arg-type]
        side=state.side,  # type: ignore[arg-type]
        strategy=state.strategy,
        qty=state.qty,
        filled_qty=filled,
        avg_price=avg,
        notional=notional,
        fees=fees,
        fee_currency=state.symbol.partition("/")[2].split(":")[0],
        other_fees=other_fees(fills),
        arrival_mid=mid,
        slippage_bps=slippage,
        attempts=finished.attempts,
        fallback_used=finished.fallback_used,
        fills=len(fills),
        orders=finished.client_order_ids,
        reason="; ".join(r for r in [finished.reason] + [f"{o.client_order_id}: {o.final_reason}" for o in state.orders.values() if o.final_reason] if r),
        started_ns=state.accepted_ns,
        completed_ns=now_ns,
        duration_ms=Decimal(now_ns - state.accepted_ns) / Decimal(1_000_000) if state.accepted_ns else Decimal(0),
        ts_event=now_ns,
    )
