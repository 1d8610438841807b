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

from venues.config import FaultRule, MarketConfig, PaperVenueConfig, VenueQuirks
from venues.faults import FaultInjector, LatencySampler, Scope
from venues.marketdata import MarketEvent, RecordingSource, inspect_recording, split_symbol_id
from venues.matching import MatchingEngine
from venues.orders import Fill, MarketSpec, SimOrder, dec_str, fill_to_wire, order_to_wire
from venues.profiles import AuditLog, OrderRateLimiter, ProfileSettings, VisibilityLag, funded_balances
from venues.replay import MarketReplay
from venues.subjects import Subjects
from venues.synthetic import synthetic_events

__all__ = ["PaperVenue", "build_market", "RPC_METHODS", "CONTROL_COMMANDS"]

log = structlog.get_logger("execbus.venues.simulator")

Listener = Callable[[str, dict[str, Any]], None]
RPC_METHODS = ("markets", "order_book", "ticker", "balance", "create_order", "cancel_order", "fetch_order",
               "open_orders", "closed_orders", "my_trades", "order_trades", "time", "features")
CONTROL_COMMANDS = ("advance", "advance_until", "advance_to", "faults_set", "faults_clear", "stats", "set_balances",
                    "ping", "quirks", "profile", "audit")
_MARKET_BUY_NEEDS_PRICE = (
    "paper createOrder() requires the price argument for market buy orders to calculate the total cost to spend"
    " (amount * price), or params['cost'] (createMarketBuyOrderRequiresPrice)")
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
        balances = funded_balances(specs, dict(cfg.balances), cfg.quirks.fee_currency)
        self.engine = MatchingEngine(specs, balances=balances,
                                     queue_cancel_model=cfg.queue_cancel_model, history_limit=cfg.history_limit)
        self.engine.listeners.append(self._on_engine_event)
        self.profile = ProfileSettings.from_config(cfg)
        self.quirks = VenueQuirks()
        self.rate = OrderRateLimiter()
        self.lag = VisibilityLag(cfg.seed)
        self.audit = AuditLog(cfg.audit_limit)
        self._apply_profile(self.profile)
        self._apply_quirks(cfg.quirks)
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
        if self.quirks.silent_streams:
            return  # the stream died without telling anyone: no event, no error
        if isinstance(item, SimOrder):
            subject, payload = self.subjects.orders(item.account, item.symbol), self._order_wire(item)
            method, order_id = "watch_orders", item.id
        else:
            subject, payload = self.subjects.trades(item.account, item.symbol), self._fill_wire(item)
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
        try:
            if self.faults.rules:
                self.faults.before(scope)
            if method == "create_order":  # the order budget: a refused request executes nothing
                self.rate.admit(p.get("account") or "main", self.engine.now_ns, self.profile.order_rate_limit,
                                self.profile.order_rate_window_s)
            result = self.dispatch(method, p)
        except Exception as exc:
            if method == "create_order":
                self.audit.refused_by(exc)
            raise
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
        if method == "features":
            return self.features()
        if method == "create_order":
            return self._order_wire(self._create(account, symbol, p))
        if method == "fetch_order":
            return self._order_wire(self._visible(account, p))
        if method == "cancel_order":
            return self._order_wire(self._cancel(self._visible(account, p, "Unknown order sent.")))
        if method == "open_orders":
            return [self._order_wire(o) for o in eng.open_orders(account, symbol) if self._listed(o)]
        if method == "closed_orders":
            return [self._order_wire(o) for o in eng.closed_orders(account, symbol) if self._listed(o, faults=False)]
        if method == "my_trades":
            return [self._fill_wire(f) for f in self._my_trades(account, symbol, p)]
        if method == "order_trades":
            if not self.quirks.fetch_order_trades:
                raise ccxt.NotSupported("paper fetchOrderTrades() is not supported yet")
            # From the order record, not the account's bounded trade history: an order that is still
            # known has all its trades, however many later fills pushed them out of `my_trades`.
            return [self._fill_wire(f) for f in self._visible(account, p).trades]
        raise ccxt.NotSupported(f"paper does not support {method}")

    def _create(self, account: str, symbol: str | None, p: dict[str, Any]) -> SimOrder:
        amount = _dec(p.get("amount"), "amount")
        if amount is None:
            raise ccxt.ArgumentsRequired("paper create_order needs an amount")
        price = _dec(p.get("price"), "price")
        o = self.engine.create_order(
            account, symbol, p.get("type", ""), p.get("side", ""), amount,  # type: ignore[arg-type]
            price, client_order_id=p.get("clientOrderId"), time_in_force=p.get("timeInForce"),
            post_only=bool(p.get("postOnly")), quote_budget=self._quote_budget(p, amount, price))
        self._maybe_hide(o)
        self.lag.hide(o, self.engine.now_ns, self.profile.visibility_lag_ms)
        self.audit.accepted(o)
        return o

    def _quote_budget(self, p: dict[str, Any], amount: Decimal, price: Decimal | None) -> Decimal | None:
        """market_buy_requires_price: what a market buy spends (params cost, else amount * price)."""
        if not (self.quirks.market_buy_requires_price and p.get("type") == "market" and p.get("side") == "buy"):
            return None
        cost = _dec(p.get("cost"), "cost")
        if cost is not None:
            return cost
        if price is None:
            raise ccxt.InvalidOrder(_MARKET_BUY_NEEDS_PRICE)
        return amount * price

    def _my_trades(self, account: str, symbol: str | None, p: dict[str, Any]) -> list[Fill]:
        """All trades; without fetchOrderTrades, one Binance-like page: `limit` (capped) from `since`, else
        the most recent ones — so a client that neither pages nor bounds by time loses trades."""
        trades = self.engine.my_trades(account, symbol)
        if self.quirks.fetch_order_trades:
            return trades
        cap = self.quirks.my_trades_page_limit
        limit = min(int(p["limit"]), cap) if p.get("limit") else cap
        since = p.get("since")
        if since is None:
            return trades[-limit:] if limit else []
        return [f for f in trades if f.ts // 1_000_000 >= int(since)][:limit]

    def _order_wire(self, o: SimOrder) -> dict[str, Any]:
        w = order_to_wire(o)
        if self.quirks.trades_without_ids:
            for f in w["fills"]:
                f["id"] = None
        return w

    def _fill_wire(self, f: Fill) -> dict[str, Any]:
        w = fill_to_wire(f)
        if self.quirks.trades_without_ids:
            w["id"] = None
        return w

    def _listed(self, o: SimOrder, faults: bool = True) -> bool:
        """Whether a list query shows this order yet: not within its visibility lag, nor (open orders only,
        as before profiles existed) while an order_not_found fault hides it."""
        now = self.engine.now_ns
        if faults and self._hidden.get((o.account, o.id), 0) > now:
            return False
        return not self.lag.hidden(o.account, o.id, now)

    def _maybe_hide(self, o: SimOrder) -> None:
        if self.faults.rules:
            rule = self.faults.fire("order_not_found", Scope("create_order", o.account, o.symbol, o.client_order_id))
            if rule is not None:
                self._hidden[(o.account, o.id)] = self.engine.now_ns + int(rule.duration_s * _NS)

    def _visible(self, account: str, p: dict[str, Any], unknown: str = "Order does not exist.") -> SimOrder:
        o = self.engine.find_order(account, p.get("id"), p.get("clientOrderId"), p.get("symbol"))
        if self.lag.hidden(account, o.id, self.engine.now_ns):  # Binance's REST lags its matching engine
            raise ccxt.OrderNotFound(f"paper {unknown} ({p.get('id') or p.get('clientOrderId')})")
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
        """Test/benchmark API: step the clock, set faults, read stats, set balances, switch profile and
        quirks, read the create audit."""
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
        if command == "quirks":
            return self._set_quirks(p)
        if command == "profile":
            return self._set_profile(p)
        if command == "audit":
            return self.audit.report(p.get("client_order_id_prefix"))
        raise ccxt.NotSupported(f"paper control has no command {command}")

    # ----------------------------------------------------------------- profile and quirks
    def features(self) -> dict[str, Any]:
        """What a ccxt client must advertise (`has`, `options`) for the current quirks."""
        return {"profile": self.profile.to_wire(), "quirks": msgspec.to_builtins(self.quirks),
                "has": {"fetchOrderTrades": self.quirks.fetch_order_trades},
                "options": {"createMarketBuyOrderRequiresPrice": self.quirks.market_buy_requires_price}}

    def _set_quirks(self, p: dict[str, Any]) -> dict[str, Any]:
        """Change some quirks at run time; fields not given keep their value."""
        merged = msgspec.to_builtins(self.quirks)
        merged.update({k: v for k, v in p.items() if k != "account"})
        try:
            quirks = msgspec.convert(merged, VenueQuirks, strict=False)
        except msgspec.ValidationError as exc:
            raise ccxt.BadRequest(f"paper quirks: {exc}") from None
        self._apply_quirks(quirks)
        return self.features()

    def _apply_quirks(self, quirks: VenueQuirks) -> None:
        if quirks.fee_currency_price <= 0 or quirks.my_trades_page_limit <= 0:
            raise ccxt.BadRequest("paper quirks: fee_currency_price and my_trades_page_limit must be positive")
        self.quirks = quirks
        eng = self.engine
        eng.fee_currency, eng.fee_currency_price = quirks.fee_currency, quirks.fee_currency_price
        if quirks.fee_currency and quirks.fee_currency not in eng.default_balances:
            # fund the new fee currency everywhere, as if it had been configured from the start
            fund = funded_balances([], {}, quirks.fee_currency)[quirks.fee_currency]
            eng.default_balances[quirks.fee_currency] = fund
            for acct in eng.accounts.values():
                acct.total.setdefault(quirks.fee_currency, fund)

    def _set_profile(self, p: dict[str, Any]) -> dict[str, Any]:
        """Switch profile at run time; a new `profile` resets the overrides not given to its values."""
        cur = self.profile
        keep = "profile" not in p
        self._apply_profile(ProfileSettings.resolve(
            p.get("profile", cur.profile),
            p.get("visibility_lag_ms", cur.visibility_lag_ms if keep else None),
            p.get("order_rate_limit", cur.order_rate_limit if keep else None),
            float(p.get("order_rate_window_s", cur.order_rate_window_s))))
        return self.features()

    def _apply_profile(self, settings: ProfileSettings) -> None:
        self.profile = settings
        self.engine.reuse_closed_client_ids = settings.reuse_closed_client_ids

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
            "profile": self.profile.to_wire(),
            "refused_creates": dict(self.audit.refused),
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
