"""An actor test kit: drive any actor's handlers on virtual time, without NATS.

`ActorKit` plays the runtime for one actor: one log (every message published, in order, each with a
sequence number; a message id already in the log is dropped as JetStream's duplicate window would), the
intents' states between steps (`ctx.save` / `ctx.retire` / `ctx.forget`), one armed timer per intent
(`ctx.wake_at`, fired when the virtual clock passes it), and `restart()` / `failover()`: the intent's state
rebuilt from the log (`rebuild`, then `on_resume`). Peers (here `ScriptedMarket`, which plays the pricer,
placer, reconciler and market-fallback actor for the supervisor) see the log too and answer into it.

Each log entry is delivered, in log order, to the actor (if it consumes the kind) and then to each peer.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import structlog

from actors.pricer import price_for_mode
from actors.strategies.base import View, floor_to_step
from bus.actor import Actor, IntentContext, Services
from messages import (
    CancelIntent,
    CancelOrder,
    ExecutionTimedOut,
    Message,
    OrderFinalized,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
    PriceQuoted,
    PriceRequested,
    PriceUnavailable,
    StrategyFinished,
)
from messages.base import routing

__all__ = [
    "NS", "START_NS", "D", "VirtualClock", "Ack", "ActorKit", "Book", "ScriptedMarket", "FakeVenues", "FakeExchange",
    "supervised", "view", "quote", "order_violations",
]

D = Decimal
NS = 1_000_000_000
START_NS = 1_700_000_000 * NS
T = TypeVar("T", bound=Message)


class VirtualClock:
    """Time that moves only when told to."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, seconds: float | Decimal | str) -> None:
        self._now += int(Decimal(str(seconds)) * NS)

    def set(self, at_ns: int) -> None:
        self._now = max(self._now, at_ns)

    async def sleep_until(self, at_ns: int | None, wakeup: Any) -> None:  # (the Clock protocol; never waited on)
        return None


@dataclass(frozen=True)
class Ack:
    """What `await ctx.sent[-1]` gives: the message's place in the log."""

    seq: int
    duplicate: bool = False
    stream: str = "EXEC"


@dataclass
class _Delivery:
    seq: int
    to_actor: bool = True
    to_peers: bool = True
    delivered: int = 1


class ActorKit:
    """The runtime, for one actor and its scripted peers, on a `VirtualClock`."""

    def __init__(self, actor: Actor[Any], *peers: Any, clock: VirtualClock | None = None, epoch: int = 1) -> None:
        self.actor = actor
        self.peers = list(peers)
        self.clock = clock or VirtualClock()
        self.epoch = epoch
        self.log: list[tuple[int, Message]] = []
        self.states: dict[str, Any] = {}
        self.retired: set[str] = set()
        self.timers: dict[str, int] = {}
        self.steps = 0
        """Actor steps taken (messages, timers, resumes)."""
        self.on_step: Callable[[ActorKit], Awaitable[None]] | None = None
        """Called after every actor step (a test's hook, e.g. to fail over at step k)."""
        self._ids: dict[str, int] = {}
        self._pending: deque[_Delivery] = deque()
        self._scheduled: list[tuple[int, int, Callable[[], Awaitable[None] | None]]] = []
        self._order = itertools.count()
        self._claims: dict[str, str] = {}
        self._crash_next: str | bool = False
        self._redeliver_late: list[_Delivery] = []
        for peer in self.peers:
            peer.attach(self)

    async def start(self) -> ActorKit:
        async def claim_once(key: str, token: str) -> bool:
            return self._claims.setdefault(key, token) == token

        async def find_state(intent_id: str) -> Any:
            return self.states.get(intent_id)

        async def publish(msg: Message) -> None:
            self.append(msg)

        def run_for_intent(intent_id: str, partition: int, fn: Callable[[IntentContext[Any]], Awaitable[None]]) -> None:
            raise NotImplementedError("the kit runs no venue events")

        await self.actor.start(Services(self.clock, run_for_intent, publish, "kit", claim_once, find_state))
        return self

    # -- the log --------------------------------------------------------------------------------------------

    def append(self, msg: Message, epoch: int = 0) -> Ack:
        """Into the log, stamped as the runtime stamps (the clock's time, the sender's epoch); delivered by
        `run()`. A message id the log has already is dropped (JetStream's duplicate window)."""
        if epoch and not msg.epoch:
            rederive = {"msg_id": ""} if type(msg).epoch_in_id else {}
            msg = msgspec.structs.replace(msg, ts_event=msg.ts_event or self.clock.now_ns(), epoch=epoch, **rederive)
        elif not msg.ts_event:
            msg = msgspec.structs.replace(msg, ts_event=self.clock.now_ns())
        if msg.msg_id in self._ids:
            return Ack(self._ids[msg.msg_id], duplicate=True)
        seq = len(self.log) + 1
        self.log.append((seq, msg))
        self._ids[msg.msg_id] = seq
        self._pending.append(_Delivery(seq))
        return Ack(seq)

    async def send(self, *msgs: Message) -> None:
        """Messages from outside (a client's submission or cancel), then everything they cause."""
        for msg in msgs:
            self.append(msg)
        await self.run()

    def of(self, kind: type[T], intent_id: str | None = None) -> list[T]:
        return [m for _, m in self.log if isinstance(m, kind) and (intent_id is None or m.intent_id == intent_id)]

    def kinds(self, intent_id: str | None = None) -> list[str]:
        return [type(m).__name__ for _, m in self.log if intent_id is None or m.intent_id == intent_id]

    def history(self, intent_id: str) -> list[tuple[int, Message]]:
        return [(seq, m) for seq, m in self.log if m.intent_id == intent_id]

    def finished(self, intent_id: str) -> StrategyFinished | None:
        done = self.of(StrategyFinished, intent_id)
        return done[-1] if done else None

    # -- steps ----------------------------------------------------------------------------------------------

    def context(self, intent_id: str, *, seq: int = 0, delivered: int = 1) -> IntentContext[Any]:
        """An intent context as the runtime builds one: the stored state, publishing into the log."""

        async def send(msg: Message, epoch: int = 0) -> Any:
            import asyncio

            done: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            done.set_result(self.append(msg, epoch))
            return done

        ctx: IntentContext[Any] = IntentContext(intent_id, 0, self.states.get(intent_id), send, self.clock,
                                                structlog.get_logger().bind(intent_id=intent_id))
        ctx.message_seq, ctx.delivered, ctx.epoch = seq, delivered, self.epoch
        return ctx

    def _commit(self, ctx: IntentContext[Any]) -> None:
        intent_id = ctx.intent_id
        if ctx.deleted:
            self.states.pop(intent_id, None)
            self.retired.discard(intent_id)
        elif ctx.dirty and ctx.state is not None:
            self.states[intent_id] = ctx.state
            if ctx.retired:
                self.retired.add(intent_id)
        if ctx.wake_at_ns is not None:
            if ctx.wake_at_ns <= 0:
                self.timers.pop(intent_id, None)
            else:
                self.timers[intent_id] = ctx.wake_at_ns

    async def _step(self, ctx: IntentContext[Any], call: Callable[[IntentContext[Any]], Awaitable[None]], redo: _Delivery | None = None) -> None:
        # The handler works on a copy, as the runtime's step works on a state it drops if the step fails.
        if ctx.state is not None:
            ctx.state = msgspec.json.decode(msgspec.json.encode(ctx.state), type=type(ctx.state))
        await call(ctx)
        self.steps += 1
        if self._crash_next:
            # Died after publishing, before saving: what it sent is in the log, its state is not, and the
            # message comes back (to the new owner) after the failover.
            late, self._crash_next = self._crash_next == "late", False
            if redo is not None:
                again = replace(redo, to_peers=False, delivered=redo.delivered + 1)
                if late:
                    self._redeliver_late.append(again)
                else:
                    self._pending.appendleft(again)
            await self.failover()
            return
        self._commit(ctx)
        if self.on_step is not None:
            await self.on_step(self)

    def crash_in_next_step(self, *, late: bool = False) -> None:
        """The actor's next step publishes, then its process dies before the state is saved: its input is
        delivered again after a `failover()` (which follows at once) — first, or with `late` only once
        everything else pending is (as JetStream does when the message's ack wait expires)."""
        self._crash_next = "late" if late else "first"

    async def _deliver(self, item: _Delivery) -> None:
        _, msg = self.log[item.seq - 1]
        if item.to_actor and isinstance(msg, self.actor.consumes):
            ctx = self.context(msg.intent_id, seq=item.seq, delivered=item.delivered)
            await self._step(ctx, lambda c: self.actor.handle(msg, c), item)
        if item.to_peers:
            for peer in self.peers:
                if isinstance(msg, peer.consumes):
                    await peer.on_message(msg)

    async def run(self, max_deliveries: int = 100_000) -> None:
        """Deliver everything in the log not yet delivered, and what that causes, until nothing is left."""
        for _ in range(max_deliveries):
            if not self._pending and self._redeliver_late:
                self._pending.extend(self._redeliver_late)
                self._redeliver_late.clear()
            if not self._pending:
                return
            await self._deliver(self._pending.popleft())
        raise AssertionError(f"no quiescence after {max_deliveries} deliveries: {self.kinds()[-20:]}")

    async def fire(self, intent_id: str) -> None:
        """The intent's timer, now (whether or not it is due)."""
        self.timers.pop(intent_id, None)
        await self._step(self.context(intent_id), self.actor.on_timer)
        await self.run()

    # -- time -----------------------------------------------------------------------------------------------

    def at(self, seconds: float | Decimal | str, fn: Callable[[], Awaitable[None] | None]) -> None:
        """Run `fn` (a scripted change: the book moves, an order fills) `seconds` from now on the virtual clock."""
        at_ns = self.clock.now_ns() + int(Decimal(str(seconds)) * NS)
        heapq.heappush(self._scheduled, (at_ns, next(self._order), fn))

    def next_due(self) -> int | None:
        due = [*self.timers.values(), *(s[0] for s in self._scheduled[:1])]
        return min(due) if due else None

    async def _due(self, now: int) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, fn = heapq.heappop(self._scheduled)
            result = fn()
            if inspect.isawaitable(result):
                await result
            await self.run()
        for intent_id, at_ns in sorted(self.timers.items(), key=lambda t: t[1]):
            if at_ns <= now and self.timers.get(intent_id) == at_ns:
                await self.fire(intent_id)

    async def advance(self, seconds: float | Decimal | str) -> None:
        """Move the clock on, firing timers and scheduled changes in time order as it passes them."""
        target = self.clock.now_ns() + int(Decimal(str(seconds)) * NS)
        await self.run()
        while (due := self.next_due()) is not None and due <= target:
            self.clock.set(due)
            await self._due(due)
        self.clock.set(target)
        await self.run()

    async def run_until_finished(self, intent_id: str, within: float = 600) -> StrategyFinished:
        """Move the clock from event to event until the intent's strategy reports (at most `within` seconds)."""
        limit = self.clock.now_ns() + int(within * NS)
        await self.run()
        while self.finished(intent_id) is None:
            due = self.next_due()
            if due is None or due > limit:
                raise AssertionError(f"{intent_id} not finished within {within}s; log: {self.kinds(intent_id)}")
            self.clock.set(due)
            await self._due(due)
        return self.finished(intent_id)  # type: ignore[return-value]

    # -- recovery -------------------------------------------------------------------------------------------

    async def restart(self, intent_ids: Iterable[str] | None = None, *, snapshot: bool = True) -> None:
        """The owner's process goes away and a new owner (the next lease epoch) takes the intents over:
        timers are lost, each intent is rebuilt from the log (`rebuild(history, stored, ctx)`) and resumed
        (`on_resume`). `snapshot=False`: the stored state is not offered (rebuilt from the log alone)."""
        self.epoch += 1
        ids = list(intent_ids) if intent_ids is not None else list(dict.fromkeys(m.intent_id for _, m in self.log))
        for intent_id in ids:
            self.timers.pop(intent_id, None)
            stored = self.states.get(intent_id) if snapshot else None
            if stored is not None and self.actor.settled(stored):
                continue
            ctx = self.context(intent_id)
            ctx.state = stored
            state = await self.actor.rebuild(self.history(intent_id), stored, ctx)
            if state is None:
                if intent_id in self.states:
                    ctx.forget()
                self._commit(ctx)
                continue
            ctx.save(state)
            await self.actor.on_resume(ctx)
            self.steps += 1
            self._commit(ctx)
        # (no run(): what is pending is delivered to the new owner by the caller's next run or advance)

    async def failover(self, intent_ids: Iterable[str] | None = None) -> None:
        """Another replica takes over with nothing but the log."""
        await self.restart(intent_ids, snapshot=False)


# -- a scripted venue for the supervisor ------------------------------------------------------------------


@dataclass
class FakeExchange:
    """What `venues.gateway.market_rules` and the supervisor's intake read of a ccxt exchange."""

    markets: dict[str, dict[str, Any]]
    id: str = "paper"
    precisionMode: int = 4  # ccxt.TICK_SIZE

    def market(self, symbol: str) -> dict[str, Any]:
        return self.markets[symbol]


@dataclass
class FakeVenues:
    """The venue pool `Supervisor(venues)` needs: `known(venue)` and `await get(venue)`."""

    exchanges: dict[str, FakeExchange]

    def known(self, venue: str) -> bool:
        return venue in self.exchanges

    async def get(self, venue: str) -> FakeExchange:
        return self.exchanges[venue]


@dataclass
class Book:
    bid: Decimal
    ask: Decimal
    tick: Decimal = D("0.01")
    sweep: Decimal | None | str = "touch"
    """The pricer's sweep estimate: "touch" (a deep book), a price, or None (the visible book is too thin)."""
    unavailable: str = ""
    """Set: the pricer answers `PriceUnavailable` with this reason."""


@dataclass
class _Order:
    cmd: PlaceOrder
    order_id: str
    filled: Decimal = D(0)
    final: bool = False


@dataclass
class ScriptedMarket:
    """The pricer, placer, reconciler and market-fallback actor, by messages, from a script.

    Fill rule for the strategy's orders (`rule`): "marketable" (a limit buy at or above the ask, a sell at or
    below the bid, fills at once; others rest), "nothing" (nothing fills but market orders), "all".
    `script(...)` overrides it for the next orders one by one: a fraction filled at once (the rest rests), or
    "reject" / "reject-retryable". Market orders (the fallback's too) fill at once. Resting orders fill when
    the book moves through them (`move`), or by `fill_working`. A cancel ends an order with what it filled.
    """

    bid: str = "100.00"
    ask: str = "100.02"
    tick: str = "0.01"
    amount_step: str | None = "0.0001"
    min_amount: str | None = "0.0001"
    min_cost: str | None = None
    rule: str = "marketable"
    venue: str = "paper"
    symbol: str = "BTC/USDT"
    book: Book = field(init=False)
    orders: dict[str, _Order] = field(init=False, default_factory=dict)
    placed: list[PlaceOrder] = field(init=False, default_factory=list)
    """The commands acted on (each client order id once), in order."""
    _scripts: deque[Decimal | str] = field(init=False, default_factory=deque)
    _stopped: dict[str, str] = field(init=False, default_factory=dict)
    _kit: ActorKit | None = field(init=False, default=None)
    _ids: itertools.count = field(init=False, default_factory=lambda: itertools.count(1))

    consumes = (PriceRequested, PlaceOrder, CancelOrder, ExecutionTimedOut, CancelIntent, StrategyFinished)

    def __post_init__(self) -> None:
        self.book = Book(D(self.bid), D(self.ask), D(self.tick))

    def attach(self, kit: ActorKit) -> None:
        self._kit = kit

    @property
    def venues(self) -> FakeVenues:
        market = {
            "precision": {"price": float(self.tick), "amount": None if self.amount_step is None else float(self.amount_step)},
            "limits": {"amount": {"min": None if self.min_amount is None else float(self.min_amount)},
                       "cost": {"min": None if self.min_cost is None else float(self.min_cost)}},
        }
        return FakeVenues({self.venue: FakeExchange({self.symbol: market})})

    # -- the script -----------------------------------------------------------------------------------------

    def script(self, *steps: Decimal | str | float) -> ScriptedMarket:
        """The next strategy orders, one step each: a fraction filled at once, "reject" or "reject-retryable"."""
        self._scripts.extend(s if isinstance(s, str) else D(str(s)) for s in steps)
        return self

    def set_book(self, **changes: Any) -> None:
        """Change the book now (bid, ask, tick, sweep, unavailable); resting orders it crosses fill."""
        for name, value in changes.items():
            setattr(self.book, name, D(str(value)) if name in ("bid", "ask", "tick") else value)
        for order in self.working():
            if self._marketable(order.cmd):
                self._fill(order, order.cmd.qty - order.filled)

    async def move(self, **changes: Any) -> None:
        self.set_book(**changes)
        assert self._kit is not None
        await self._kit.run()

    def at(self, seconds: float | str, **changes: Any) -> None:
        """The book changes `seconds` from now on the kit's clock."""
        assert self._kit is not None
        self._kit.at(seconds, lambda: self.set_book(**changes))

    def working(self) -> list[_Order]:
        return [o for o in self.orders.values() if not o.final]

    async def fill_working(self, fraction: float | str = 1) -> None:
        """Fill `fraction` of what each working order has left (all of it: the order ends filled)."""
        for order in self.working():
            self._fill(order, self._step(order.cmd.qty - order.filled, D(str(fraction))))
        assert self._kit is not None
        await self._kit.run()

    # -- the peers' answers ---------------------------------------------------------------------------------

    async def on_message(self, msg: Message) -> None:
        match msg:
            case PriceRequested():
                self._quote(msg)
            case PlaceOrder():
                self._place(msg)
            case CancelOrder():
                order = self.orders.get(msg.client_order_id)
                if order is not None and not order.final:
                    self._end(order, "filled" if order.filled >= order.cmd.qty else "canceled")
            case ExecutionTimedOut():
                now = self._now()
                if msg.fallback == "market" and not (msg.act_by_ns and now > msg.act_by_ns):
                    self._send(PlaceOrder(**routing(msg), client_order_id=f"{msg.intent_id}-F", attempt=0, side=msg.side,
                                          order_type="market", qty=msg.remaining_qty, origin="market_fallback"))
            case CancelIntent():
                self._stopped.setdefault(msg.intent_id, "IntentCanceled")
            case StrategyFinished():
                self._stopped.setdefault(msg.intent_id, "IntentFinished")

    def _quote(self, msg: PriceRequested) -> None:
        book = self.book
        if book.unavailable:
            self._send(PriceUnavailable(**routing(msg), attempt=msg.attempt, reason=book.unavailable, request=msg.request))
            return
        touch = book.ask if msg.side == "buy" else book.bid
        sweep = touch if book.sweep == "touch" else book.sweep
        self._send(PriceQuoted(
            **routing(msg), attempt=msg.attempt, side=msg.side, mode=msg.mode,
            price=price_for_mode(msg.mode, msg.side, book.bid, book.ask, book.tick), bid=book.bid, ask=book.ask,
            tick_size=book.tick, sweep_avg_price=sweep, book_ts_ns=self._now(), request=msg.request,  # type: ignore[arg-type]
        ))

    def _place(self, cmd: PlaceOrder) -> None:
        if cmd.client_order_id in self.orders:
            return  # (the placer places an id once: a new owner's copy of the command changes nothing)
        stopped = self._stopped.get(cmd.intent_id)
        step = self._scripts.popleft() if self._scripts and cmd.origin == "supervisor" else None
        if stopped or (isinstance(step, str) and step.startswith("reject")):
            error = stopped or "InsufficientFunds"
            self._send(OrderRejected(**routing(cmd), client_order_id=cmd.client_order_id, attempt=cmd.attempt,
                                     reason=f"scripted: {error}", error=error, retryable=step == "reject-retryable"))
            return
        order = _Order(cmd, order_id=str(next(self._ids)))
        self.orders[cmd.client_order_id] = order
        self.placed.append(cmd)
        self._send(OrderPlaced(**routing(cmd), client_order_id=cmd.client_order_id, order_id=order.order_id,
                               attempt=cmd.attempt, side=cmd.side, order_type=cmd.order_type, qty=cmd.qty, price=cmd.price))
        if cmd.order_type == "market" and not isinstance(step, Decimal):
            fraction = D(1)
        elif isinstance(step, Decimal):
            fraction = step
        elif self.rule == "all" or (self.rule == "marketable" and self._marketable(cmd)):
            fraction = D(1)
        else:
            fraction = D(0)
        self._fill(order, self._step(cmd.qty, fraction))

    def _marketable(self, cmd: PlaceOrder) -> bool:
        if cmd.order_type == "market":
            return True
        assert cmd.price is not None
        return cmd.price >= self.book.ask if cmd.side == "buy" else cmd.price <= self.book.bid

    def _step(self, qty: Decimal, fraction: Decimal) -> Decimal:
        return floor_to_step(qty * fraction, None if self.amount_step is None else D(self.amount_step))

    def _fill(self, order: _Order, qty: Decimal) -> None:
        if qty <= 0 or order.final:
            return
        order.filled = min(order.cmd.qty, order.filled + qty)
        if order.filled >= order.cmd.qty:
            self._end(order, "filled")

    def _end(self, order: _Order, status: str) -> None:
        order.final = True
        cmd = order.cmd
        price = cmd.price or (self.book.ask if cmd.side == "buy" else self.book.bid)
        self._send(OrderFinalized(**routing(cmd), client_order_id=cmd.client_order_id, order_id=order.order_id,
                                  attempt=cmd.attempt, status=status,  # type: ignore[arg-type]
                                  filled_qty=order.filled, avg_price=price if order.filled else None))

    def _send(self, msg: Message) -> None:
        assert self._kit is not None, "attach the market to an ActorKit"
        self._kit.append(msg)

    def _now(self) -> int:
        return self._kit.clock.now_ns() if self._kit is not None else 0


async def supervised(market: ScriptedMarket | None = None, **market_args: Any) -> tuple[ActorKit, ScriptedMarket]:
    """A supervisor on a kit with a scripted market: `kit, market = await supervised(rule="nothing")`."""
    from actors.supervisor import Supervisor

    market = market or ScriptedMarket(**market_args)
    kit = await ActorKit(Supervisor(market.venues), market).start()
    return kit, market


# -- for the pure decision cores ----------------------------------------------------------------------------


def view(**overrides: Any) -> View:
    """A `View` of a 1 BTC buy accepted at t=0 with a 10 s budget, at t=0, before any attempt."""
    values: dict[str, Any] = {
        "side": "buy", "qty": D(1), "filled": D(0), "now_ns": 0, "accepted_ns": 0, "deadline_ns": 10 * NS,
        "attempt": 0, "arrival_bid": D("100.00"), "arrival_ask": D("100.02"), "tick_size": D("0.01"),
        "amount_step": D("0.0001"), "min_amount": D("0.0001"),
    }
    values.update(overrides)
    return View(**values)


def quote(price: str | Decimal = "100.00", *, bid: str = "100.00", ask: str = "100.02", mode: str = "touch",
          side: str = "buy", attempt: int = 1, sweep: str | Decimal | None = "touch", tick: str = "0.01") -> PriceQuoted:
    touch = D(ask) if side == "buy" else D(bid)
    return PriceQuoted(
        intent_id="v", venue="paper", symbol="BTC/USDT", attempt=attempt, side=side, mode=mode,  # type: ignore[arg-type]
        price=D(str(price)), bid=D(bid), ask=D(ask), tick_size=D(tick),
        sweep_avg_price=touch if sweep == "touch" else (None if sweep is None else D(str(sweep))),
    )


def order_violations(kit: ActorKit, intent: Any) -> list[str]:
    """What the log says against the invariants every strategy shares: an order (the fallback's too) placed
    while another of the intent is working; an order for more than the intent's quantity minus what filled;
    more filled than the quantity."""
    working: dict[str, Decimal] = {}
    filled: dict[str, Decimal] = {}
    seen: set[str] = set()
    found: list[str] = []
    for seq, msg in kit.history(intent.intent_id):
        match msg:
            case PlaceOrder() if msg.client_order_id not in seen:
                seen.add(msg.client_order_id)
                if working:
                    found.append(f"#{seq} {msg.client_order_id} placed while {sorted(working)} working")
                room = intent.qty - sum(filled.values(), D(0))
                if msg.qty > room:
                    found.append(f"#{seq} {msg.client_order_id} for {msg.qty} with only {room} left")
                working[msg.client_order_id] = msg.qty
            case OrderFinalized():
                working.pop(msg.client_order_id, None)
                filled[msg.client_order_id] = msg.filled_qty
            case OrderRejected() if msg.error != "StaleEpoch":
                working.pop(msg.client_order_id, None)
    total = sum(filled.values(), D(0))
    if total > intent.qty:
        found.append(f"filled {total} of {intent.qty}")
    return found
