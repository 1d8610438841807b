"""`PaperVenue`: the whole simulated venue in one object — markets, clock, engine, faults, events.

It is transport-agnostic: `handle(method, payload)` is the ccxt-facing request API (JSON-able dicts
in, Binance-shaped dicts out, ccxt exceptions raised), `control(command, payload)` is the test and
benchmark API, and events go to listeners as `(subject, payload)`. `venues.service` puts it on NATS;
`PaperExchange({'options': {'engine': venue}})` calls it in-process for pure unit tests — the same
code path either way, faults included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from typing import Any

import ccxt
import msgspec
import structlog

from venues.config import FaultRule, MarketConfig, PaperVenueConfig
from venues.faults import FaultInjector, LatencySampler, Scope
from venues.marketdata import MarketEvent, RecordingSource, inspect_recording, split_symbol_id
from venues.matching import MatchingEngine
from venues.orders import Fill, MarketSpec, SimOrder, dec_str, fill_to_wire, order_to_wire
from venues.replay import MarketReplay
from venues.subjects import Subjects
from venues.synthetic import synthetic_events

__all__ = ["PaperVenue", "build_market", "RPC_METHODS", "CONTROL_COMMANDS"]

log = structlog.get_logger("execbus.venues.simulator")

Listener = Callable[[str, dict[str, Any]], None]
RPC_METHODS = ("markets", "order_book", "ticker", "balance", "create_order", "cancel_order", "fetch_order",
               "open_orders", "closed_orders", "my_trades", "order_trades", "time")
CONTROL_COMMANDS = ("advance", "advance_until", "advance_to", "faults_set", "faults_clear", "stats", "set_balances", "ping")
_NS = 1_000_000_000


def build_market(mc: MarketConfig, cfg: PaperVenueConfig, seed: int) -> tuple[MarketSpec, Any]:
    """Market metadata (configured, else inferred from the recording) and its event source."""
    if mc.synthetic is not None:
        syn = mc.synthetic
        symbol = mc.symbol or syn.symbol
        base, quote = (mc.base, mc.quote) if mc.base and mc.quote else symbol.split("/")
        market_id, tick, step = base + quote, mc.tick_size or syn.tick_size, mc.amount_step or syn.amount_step
        source: Any = synthetic_events(syn, seed)
    else:
        info = inspect_recording(mc.files)
        base, quote = (mc.base, mc.quote) if mc.base and mc.quote else split_symbol_id(info.symbol_id)
        symbol = mc.symbol or f"{base}/{quote}"
        market_id, tick, step = info.symbol_id, mc.tick_size or info.tick_size, mc.amount_step or info.amount_step
        source = RecordingSource(mc.files, loop=cfg.loop)
    spec = MarketSpec(
        symbol=symbol, id=market_id, base=base, quote=quote, tick_size=tick, amount_step=step,
        min_amount=mc.min_amount if mc.min_amount is not None else step,
        min_cost=mc.min_cost if mc.min_cost is not None else Decimal(0),
        maker_fee=mc.maker_fee if mc.maker_fee is not None else cfg.maker_fee,
        taker_fee=mc.taker_fee if mc.taker_fee is not None else cfg.taker_fee,
    )
    return spec, source


def _dec(value: Any, what: str) -> Decimal | None:
    if value is None:
        return None
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        raise ccxt.InvalidOrder(f"paper {what} {value!r} is not a number") from None
    if not d.is_finite():
        raise ccxt.InvalidOrder(f"paper {what} {value!r} is not finite")
    return d


class PaperVenue:
    """One simulated venue: shared by every client, whatever the transport."""

    def __init__(self, config: PaperVenueConfig | None = None) -> None:
        self.config = cfg = config or PaperVenueConfig()
        self.subjects = Subjects(cfg.venue)
        specs, sources = [], {}
        for i, mc in enumerate(cfg.markets):
            spec, source = build_market(mc, cfg, cfg.seed + i)
            specs.append(spec)
            sources[spec.symbol] = source
        self.engine = MatchingEngine(specs, balances=dict(cfg.balances),
                                     queue_cancel_model=cfg.queue_cancel_model, history_limit=cfg.history_limit)
        self.engine.listeners.append(self._on_engine_event)
        self.replay = MarketReplay(sources, self._on_market_event, self.engine.set_time)
        self.replay.after_batch = self.publish_books
        self.faults = FaultInjector(list(cfg.faults), cfg.seed)
        self.latency = LatencySampler(cfg.latency, cfg.seed)
        self.listeners: list[Listener] = []
        self.requests = 0
        self._hidden: dict[tuple[str, str], int] = {}
        self._event_delay: dict[str, float] = {}
        self._books_dirty: set[str] = set()
        self._last_books = 0.0
        synced = self.replay.step_until(
            lambda: all(ms.book.synced for ms in self.engine.markets.values()), max_seconds=120)
        if not synced:
            log.warning("paper_books_not_synced", symbols=list(self.engine.markets))
        self.publish_books(force=True)

    # ----------------------------------------------------------------- events
    def _on_market_event(self, symbol: str, ev: MarketEvent) -> None:
        self.engine.on_market_event(symbol, ev)
        self._books_dirty.add(symbol)

    def _on_engine_event(self, kind: str, item: SimOrder | Fill) -> None:
        self._books_dirty.add(item.symbol)
        if isinstance(item, SimOrder):
            subject, payload = self.subjects.orders(item.account, item.symbol), order_to_wire(item)
            method, order_id = "watch_orders", item.id
        else:
            subject, payload = self.subjects.trades(item.account, item.symbol), fill_to_wire(item)
            method, order_id = "watch_my_trades", item.order_id
        scope = Scope(method, item.account, item.symbol, item.client_order_id)
        delay = self._event_delay.get(order_id, 0.0)
        if self.faults.rules:
            if self.faults.fire("drop_order_event", scope):
                return
            rule = self.faults.fire("delay_order_event", scope)
            if rule is not None:
                delay = max(delay, rule.delay_s)
        self._deliver(subject, payload, delay)

    def _deliver(self, subject: str, payload: dict[str, Any], delay: float = 0.0) -> None:
        if delay > 0:
            try:
                asyncio.get_running_loop().call_later(delay, self._publish, subject, payload)
                return
            except RuntimeError:
                pass  # no loop (pure synchronous use): deliver now
        self._publish(subject, payload)

    def _publish(self, subject: str, payload: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(subject, payload)

    def publish_books(self, force: bool = False) -> None:
        """Book events for markets that changed, throttled in wall time unless `force`."""
        if not self._books_dirty:
            return
        now = time.monotonic()
        if not force and (now - self._last_books) * 1000 < self.config.book_publish_interval_ms:
            return
        self._last_books = now
        dirty, self._books_dirty = self._books_dirty, set()
        for symbol in sorted(dirty):
            self._publish(self.subjects.book(symbol), self.engine.order_book(symbol, self.config.book_depth))

    # ----------------------------------------------------------------- requests
    async def handle(self, method: str, p: dict[str, Any]) -> Any:
        """One ccxt-facing request, with latency and faults; raises ccxt exceptions."""
        self.requests += 1
        lat = self.latency.sample()
        if lat:
            lat = lat / self.config.speed if self.config.speed > 0 else lat
            await asyncio.sleep(lat / 2)
        scope = self._scope(method, p)
        if self.faults.rules:
            self.faults.before(scope)
        result = self.dispatch(method, p)
        if method in ("create_order", "cancel_order"):
            self.publish_books()  # our order changed the visible book (throttled)
        if self.faults.rules:
            if isinstance(result, dict) and "clientOrderId" in result:  # scope by the order it acted on
                scope = Scope(method, result["account"], result["symbol"], result["clientOrderId"])
            self.faults.after(scope)
        if lat:
            await asyncio.sleep(lat / 2)
        return result

    def _scope(self, method: str, p: dict[str, Any]) -> Scope:
        """Who a request is about; an order addressed by id is resolved to its clientOrderId."""
        account, coid = p.get("account") or "main", p.get("clientOrderId")
        if coid is None and p.get("id") is not None:
            o = self.engine.accounts.get(account)
            found = o.orders.get(str(p["id"])) if o is not None else None
            coid = found.client_order_id if found is not None else None
        return Scope(method, account, p.get("symbol"), coid)

    def dispatch(self, method: str, p: dict[str, Any]) -> Any:
        """The request without latency or before/after faults (synchronous)."""
        eng = self.engine
        account = p.get("account") or "main"
        symbol = p.get("symbol")
        if method == "markets":
            return [ms.spec.to_wire() for ms in eng.markets.values()]
        if method == "order_book":
            return eng.order_book(symbol, p.get("limit"))
        if method == "ticker":
            return eng.ticker(symbol)
        if method == "balance":
            return eng.balance(account)
        if method == "time":
            return eng.now_ns // 1_000_000
        if method == "create_order":
            amount = _dec(p.get("amount"), "amount")
            if amount is None:
                raise ccxt.ArgumentsRequired("paper create_order needs an amount")
            o = eng.create_order(
                account, symbol, p.get("type", ""), p.get("side", ""), amount,
                _dec(p.get("price"), "price"), client_order_id=p.get("clientOrderId"),
                time_in_force=p.get("timeInForce"), post_only=bool(p.get("postOnly")))
            self._maybe_hide(o)
            return order_to_wire(o)
        if method == "fetch_order":
            return order_to_wire(self._visible(account, p))
        if method == "cancel_order":
            return order_to_wire(self._cancel(self._visible(account, p)))
        if method == "open_orders":
            now = eng.now_ns
            return [order_to_wire(o) for o in eng.open_orders(account, symbol)
                    if self._hidden.get((account, o.id), 0) <= now]
        if method == "closed_orders":
            return [order_to_wire(o) for o in eng.closed_orders(account, symbol)]
        if method == "my_trades":
            return [fill_to_wire(f) for f in eng.my_trades(account, symbol)]
        if method == "order_trades":
            # From the order record, not the account's bounded trade history: an order that is still
            # known has all its trades, however many later fills pushed them out of `my_trades`.
            return [fill_to_wire(f) for f in self._visible(account, p).trades]
        raise ccxt.NotSupported(f"paper does not support {method}")

    def _maybe_hide(self, o: SimOrder) -> None:
        if self.faults.rules:
            rule = self.faults.fire("order_not_found", Scope("create_order", o.account, o.symbol, o.client_order_id))
            if rule is not None:
                self._hidden[(o.account, o.id)] = self.engine.now_ns + int(rule.duration_s * _NS)

    def _visible(self, account: str, p: dict[str, Any]) -> SimOrder:
        o = self.engine.find_order(account, p.get("id"), p.get("clientOrderId"), p.get("symbol"))
        until = self._hidden.get((account, o.id))
        if until is not None:
            if self.engine.now_ns < until:
                raise ccxt.OrderNotFound(f"paper order {p.get('id') or p.get('clientOrderId')} does not exist")
            del self._hidden[(account, o.id)]
        return o

    def _cancel(self, o: SimOrder) -> SimOrder:
        scope = Scope("cancel_order", o.account, o.symbol, o.client_order_id)
        if o.status == "open" and self.faults.rules:
            if self.faults.fire("cancel_loses_race", scope):
                self.engine.force_fill(o, o.remaining)
                raise ccxt.OrderNotFound(f"paper order {o.id} is filled: unknown order sent")
            rule = self.faults.fire("fill_after_cancel", scope)
            if rule is not None:
                step = self.engine.markets[o.symbol].spec.amount_step
                qty = (o.remaining * Decimal(repr(rule.fill_fraction))).quantize(step, rounding=ROUND_DOWN)
                self._event_delay[o.id] = rule.delay_s
                try:
                    self.engine.force_fill(o, max(qty, step))
                    if o.status == "open":
                        return self.engine.cancel_order(o.account, o.id)
                finally:
                    del self._event_delay[o.id]
                raise ccxt.OrderNotFound(f"paper order {o.id} is filled: unknown order sent")
        return self.engine.cancel_order(o.account, o.id)

    # ----------------------------------------------------------------- control
    def control(self, command: str, p: dict[str, Any]) -> Any:
        """Test/benchmark API: step the clock, set faults, read stats, set balances."""
        if command == "ping":
            return {"venue": self.config.venue, "now": self.engine.now_ns // 1_000_000}
        if command == "advance":
            n = self.replay.advance(float(p.get("seconds", 0.0)))
            self.publish_books(force=True)
            return {"events": n, "now": self.engine.now_ns // 1_000_000}
        if command == "advance_until":
            return self._advance_until(p)
        if command == "advance_to":
            return self._advance_to(p)
        if command == "faults_set":
            if p.get("replace"):
                self.faults.clear()
            rules = msgspec.convert(p.get("rules", []), list[FaultRule])
            for rule in rules:
                self.faults.add(rule)
            return {"rules": len(self.faults.rules)}
        if command == "faults_clear":
            return {"removed": self.faults.clear(p.get("name"))}
        if command == "set_balances":
            balances = {k: Decimal(str(v)) for k, v in p["balances"].items()}
            self.engine.set_balances(p.get("account") or "main", balances)
            return self.engine.balance(p.get("account") or "main")
        if command == "stats":
            return self.stats()
        raise ccxt.NotSupported(f"paper control has no command {command}")

    def _advance_until(self, p: dict[str, Any]) -> dict[str, Any]:
        """Step the market until an order is done (`until='done'`) or has any fill (`'fill'`)."""
        account = p.get("account") or "main"
        o = self.engine.find_order(account, p.get("id"), p.get("clientOrderId"))
        until = p.get("until", "done")

        def reached() -> bool:
            return o.status != "open" if until == "done" else o.filled > 0

        ok = self.replay.step_until(reached, max_seconds=float(p.get("max_seconds", 60.0)))
        self.publish_books(force=True)
        return {"reached": ok, "now": self.engine.now_ns // 1_000_000, "order": order_to_wire(o)}

    def _advance_to(self, p: dict[str, Any]) -> dict[str, Any]:
        """Step the market to exchange time `until_ns`; with `stop_on_fill`, stop right after the first
        event that fills one of our orders, so a simulation driver can react at the fill's own time."""
        until = int(p["until_ns"])
        stop_on_fill = bool(p.get("stop_on_fill"))
        trades_before = self.engine._trade_seq
        filled = False
        while True:
            nxt = self.replay.peek_ts()
            if nxt is None or nxt > until:
                self.replay.advance_to(until)
                break
            self.replay.step()
            if stop_on_fill and self.engine._trade_seq != trades_before:
                filled = True
                break
        self.publish_books(force=True)
        return {"now_ns": self.engine.now_ns, "filled": filled, "exhausted": self.replay.exhausted}

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.replay.stats())
        out.update({
            "speed": self.config.speed,
            "requests": self.requests,
            "accounts": len(self.engine.accounts),
            "faults_fired": dict(self.faults.fired),
            "markets": {s: {"synced": ms.book.synced, "resyncs": ms.book.resyncs, "prints": ms.prints,
                            "best_bid": dec_str(ms.best(True)), "best_ask": dec_str(ms.best(False))}
                        for s, ms in self.engine.markets.items()},
        })
        return out

    async def run(self, stop: asyncio.Event) -> None:
        """Real-time replay until `stop` (step-driven venues just wait)."""
        if self.config.speed > 0:
            await self.replay.run(self.config.speed, stop)
        else:
            await stop.wait()
