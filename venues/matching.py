"""The matching engine: our orders against a replayed L2 market, price-time priority, exact decimals.

Model (what a fill means here, and why):

* **Takers walk the book.** A market or marketable limit order consumes the displayed recorded levels
  best-first (partial fills across levels) and any of our own resting orders on the other side, in
  price-time priority: at one price the recorded quantity displayed *before* our order joined is ahead
  of it. Recorded liquidity we take is remembered per level (`taken`) so our next order cannot take the
  same quantity again; the memory of a level is dropped when the recorded depth next updates that level
  (the market has then told us its new state, which never knew about our trade).
* **Resting orders queue.** A resting limit order's `queue_ahead` starts at the level's displayed
  (effective) quantity when it joins. Recorded trades at its price consume the queue first and fill the
  order only with what is left; decreases of the level in the depth stream beyond the trades printed
  there since the previous batch are cancels, and a share of them is ahead of us (`prorata`: in
  proportion to queue_ahead / level; `front`: all; `back`: none). The queue never exceeds the level.
* **Trade-throughs.** A recorded print at a price worse than our resting price (a sell at 99 while we bid
  100) means the aggressor passed our level: our order absorbs that print's volume (no queue — the
  recorded sweep emptied the level), best price first, then time.
* **Crossed book.** If the recorded book moves through a resting order (a new ask at or below our bid),
  the order fills as maker at its own price against that displayed quantity.
* Fees: maker/taker rate on the received currency (base for buys, quote for sells), as Binance charges
  without BNB. Balances reserve price*amount quote (buys) or amount base (sells) while an order is open.

Everything is deterministic: no clock, no randomness; time comes from the replay (`set_time`).
Errors are ccxt's own exception classes so a caller cannot tell the simulator from a live venue.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import ccxt
import structlog

from venues.book import L2Book, LevelChange
from venues.marketdata import BookSnapshot, DepthUpdate, MarketEvent, TradePrint
from venues.orders import Account, Fill, MarketSpec, SimOrder, dec_str

__all__ = ["MarketState", "MatchingEngine"]

log = structlog.get_logger("execbus.venues.matching")

_D0 = Decimal(0)
_QUEUE_Q = Decimal("1e-12")
_ALL = Decimal("1e12")
"""More than any book holds, yet small enough that quantities stay exact in Decimal's 28 digits."""
Listener = Callable[[str, Any], None]
Segment = tuple[SimOrder | None, Decimal]


class MarketState:
    """Per-market state: the recorded book, our overlay on it, and our resting orders."""

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.book = L2Book(spec.symbol)
        self.taken: dict[bool, dict[Decimal, Decimal]] = {True: {}, False: {}}
        self.own: dict[bool, dict[Decimal, list[SimOrder]]] = {True: {}, False: {}}
        self.own_prices: dict[bool, list[Decimal]] = {True: [], False: []}
        self.own_qty: dict[bool, dict[Decimal, Decimal]] = {True: {}, False: {}}
        """What our resting orders at a level have left, kept as they rest, fill and close: a book view must
        not walk every order (ten thousand of ours resting at one price made each view a pass over them)."""
        self.traded: dict[bool, dict[Decimal, Decimal]] = {True: {}, False: {}}
        self.open: Decimal | None = None
        self.high: Decimal | None = None
        self.low: Decimal | None = None
        self.last: Decimal | None = None
        self.base_volume = _D0
        self.quote_volume = _D0
        self.prints = 0

    def eff(self, is_bid: bool, price: Decimal) -> Decimal:
        """Recorded displayed quantity at a level minus what our takers already took from it."""
        q = self.book.side(is_bid).qty.get(price, _D0) - self.taken[is_bid].get(price, _D0)
        return q if q > 0 else _D0

    def prices_from_best(self, is_bid: bool) -> Iterator[Decimal]:
        """Recorded and own prices on one side, best first, without duplicates."""
        own = self.own_prices[is_bid]
        mine = reversed(own) if is_bid else iter(own)
        last = None
        for p in heapq.merge(self.book.side(is_bid).prices_from_best(), mine, reverse=is_bid):
            if p != last:
                last = p
                yield p

    def best(self, is_bid: bool, *, with_own: bool = True) -> Decimal | None:
        for p in self.prices_from_best(is_bid) if with_own else self.book.side(is_bid).prices_from_best():
            if self.eff(is_bid, p) > 0 or (with_own and p in self.own[is_bid]):
                return p
        return None

    def level_qty(self, is_bid: bool, price: Decimal) -> Decimal:
        return self.eff(is_bid, price) + self.own_qty[is_bid].get(price, _D0)

    def own_changed(self, is_bid: bool, price: Decimal, by: Decimal) -> None:
        level = self.own_qty[is_bid]
        left = level.get(price, _D0) + by
        if left > 0 and self.own[is_bid].get(price):
            level[price] = left
        else:
            level.pop(price, None)


def _level_plan(orders: list[SimOrder], market_qty: Decimal, volume: Decimal, queue: bool = True
                ) -> tuple[list[Segment], Decimal, Decimal]:
    """Split `volume` arriving at one level into market and own-order segments in queue order.

    Returns (segments, market quantity consumed, volume left). With `queue=False` our orders are at
    the front (the recorded market at that price is gone).
    """
    segs: list[Segment] = []
    consumed = _D0
    prev = _D0
    for o in orders:
        pos = min(max(o.queue_ahead, prev), market_qty) if queue else _D0
        gap = pos - consumed
        if gap > 0 and volume > 0:
            q = min(gap, volume)
            consumed += q
            volume -= q
            segs.append((None, q))
        if volume <= 0:
            return segs, consumed, volume
        q = min(o.remaining, volume)
        if q > 0:
            segs.append((o, q))
            volume -= q
        if volume <= 0:
            return segs, consumed, volume
        prev = pos
    if volume > 0 and market_qty > consumed:
        q = min(market_qty - consumed, volume)
        consumed += q
        volume -= q
        segs.append((None, q))
    return segs, consumed, volume


def _requeue(orders: list[SimOrder], consumed: Decimal) -> None:
    """Market quantity `consumed` at the front of a level moves every queued order forward."""
    prev = _D0
    for o in orders:
        pos = max(o.queue_ahead, prev)
        o.queue_ahead = pos - consumed if pos > consumed else _D0
        prev = pos


class MatchingEngine:
    """All markets and accounts of one simulated venue. Synchronous and single-threaded by design."""

    def __init__(self, specs: list[MarketSpec], *, balances: dict[str, Decimal] | None = None,
                 queue_cancel_model: str = "prorata", history_limit: int = 100_000) -> None:
        self.markets: dict[str, MarketState] = {s.symbol: MarketState(s) for s in specs}
        self.by_id = {s.id: s.symbol for s in specs}
        self.default_balances = dict(balances or {})
        self.queue_cancel_model = queue_cancel_model
        self.history_limit = history_limit
        self.accounts: dict[str, Account] = {}
        self.reuse_closed_client_ids = False
        """Binance: a clientOrderId is unique among open orders only; strict: among all orders ever."""
        self.fee_currency: str | None = None
        """Charge fees in this third currency (BNB-style) at `fee_currency_price` quote per unit."""
        self.fee_currency_price = Decimal(1)
        self.listeners: list[Listener] = []
        self.now_ns = 0
        self._order_seq = 0
        self._trade_seq = 0
        self._dirty: dict[str, SimOrder] = {}

    # ----------------------------------------------------------------- plumbing
    def set_time(self, ts_ns: int) -> None:
        if ts_ns > self.now_ns:
            self.now_ns = ts_ns

    def _emit(self, kind: str, item: Any) -> None:
        for listener in self.listeners:
            listener(kind, item)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for o in dirty.values():
            self._emit("order", o)

    def market(self, symbol: str) -> MarketState:
        ms = self.markets.get(symbol) or self.markets.get(self.by_id.get(symbol, ""))
        if ms is None:
            raise ccxt.BadSymbol(f"paper does not have market symbol {symbol}")
        return ms

    def account(self, name: str) -> Account:
        acct = self.accounts.get(name)
        if acct is None:
            acct = Account(name, dict(self.default_balances), {}, self.history_limit)
            self.accounts[name] = acct
        return acct

    def set_balances(self, name: str, balances: dict[str, Decimal]) -> None:
        """Replace an account's totals (control API); refused while it has open orders."""
        acct = self.account(name)
        if acct.open_ids:
            raise ccxt.InvalidOrder(f"account {name} has open orders")
        acct.total = dict(balances)
        acct.used = {}

    # ----------------------------------------------------------------- market data
    def on_market_event(self, symbol: str, ev: MarketEvent) -> None:
        ms = self.markets[symbol]
        self.set_time(ev.ts)
        if isinstance(ev, TradePrint):
            if ms.book.synced or ms.book.bids:
                self._on_print(ms, ev)
        elif isinstance(ev, DepthUpdate):
            changes = ms.book.on_depth(ev)
            if changes is not None:
                self._on_depth(ms, changes[0], changes[1], reset=False)
        elif isinstance(ev, BookSnapshot):
            bid_changes, ask_changes = ms.book.on_snapshot(ev)
            ms.taken[True].clear()
            ms.taken[False].clear()
            self._on_depth(ms, bid_changes, ask_changes, reset=True)
        self._flush()

    def _on_depth(self, ms: MarketState, bids: list[LevelChange], asks: list[LevelChange], *, reset: bool) -> None:
        model = self.queue_cancel_model
        for is_bid, changes in ((True, bids), (False, asks)):
            taken, own, traded = ms.taken[is_bid], ms.own[is_bid], ms.traded[is_bid]
            for price, old, new in changes:
                if taken:
                    taken.pop(price, None)
                orders = own.get(price)
                if not orders:
                    continue
                cancels = old - new - traded.get(price, _D0)
                if cancels > 0 and not reset and old > 0:
                    for o in orders:
                        if model == "prorata":
                            o.queue_ahead -= (cancels * o.queue_ahead / old).quantize(_QUEUE_Q)
                        elif model == "front":
                            o.queue_ahead -= cancels
                for o in orders:
                    o.queue_ahead = max(_D0, min(o.queue_ahead, new))
            traded.clear()
        self._cross(ms)

    def _on_print(self, ms: MarketState, tp: TradePrint) -> None:
        ms.prints += 1
        ms.last = tp.price
        ms.open = ms.open if ms.open is not None else tp.price
        ms.high = tp.price if ms.high is None or tp.price > ms.high else ms.high
        ms.low = tp.price if ms.low is None or tp.price < ms.low else ms.low
        ms.base_volume += tp.qty
        ms.quote_volume += tp.qty * tp.price
        hit_bid = tp.buyer_maker  # a sell aggressor hits the bids
        traded = ms.traded[hit_bid]
        traded[tp.price] = traded.get(tp.price, _D0) + tp.qty
        prices = ms.own_prices[hit_bid]
        if not prices:
            return
        volume = tp.qty
        for price in list(reversed(prices) if hit_bid else prices):
            if (price < tp.price) if hit_bid else (price > tp.price):
                break
            orders = list(ms.own[hit_bid][price])
            if price != tp.price:  # traded through: the recorded level is gone, we are at the front
                for o in orders:
                    o.queue_ahead = _D0
                segs, _, volume = _level_plan(orders, _D0, volume, queue=False)
            else:
                mq = max([ms.eff(hit_bid, price)] + [o.queue_ahead for o in orders])
                segs, consumed, volume = _level_plan(orders, mq, volume)
                _requeue(orders, consumed)
            for o, q in segs:
                if o is not None:
                    self._fill(ms, o, price, q, maker=True)
            if volume <= 0:
                break

    def _cross(self, ms: MarketState) -> None:
        """Fill resting orders the recorded book has moved through (as makers, at their own price)."""
        for own_is_bid in (True, False):
            prices = ms.own_prices[own_is_bid]
            while prices:
                price = prices[-1] if own_is_bid else prices[0]
                opp = ms.best(not own_is_bid, with_own=False)
                if opp is None or (price < opp if own_is_bid else price > opp):
                    break
                for o in list(ms.own[own_is_bid][price]):
                    self._take_market(ms, o, price, maker=True)
                if price in ms.own[own_is_bid]:
                    break  # liquidity up to our price exhausted; the order keeps resting

    def _take_market(self, ms: MarketState, o: SimOrder, limit: Decimal, *, maker: bool) -> None:
        opp_is_bid = not o.is_buy
        taken = ms.taken[opp_is_bid]
        for p in list(ms.book.side(opp_is_bid).prices_from_best()):
            if o.remaining <= 0 or ((p > limit) if o.is_buy else (p < limit)):
                break
            q = min(ms.eff(opp_is_bid, p), o.remaining)
            if q > 0:
                taken[p] = taken.get(p, _D0) + q
                self._requeue_level(ms, opp_is_bid, p, q)
                self._fill(ms, o, limit if maker else p, q, maker=maker)

    def _requeue_level(self, ms: MarketState, is_bid: bool, price: Decimal, consumed: Decimal) -> None:
        orders = ms.own[is_bid].get(price)
        if orders:
            _requeue(orders, consumed)

    # ----------------------------------------------------------------- orders
    def plan_take(self, ms: MarketState, is_buy: bool, amount: Decimal, limit: Decimal | None
                  ) -> tuple[list[tuple[Decimal, list[Segment], Decimal, list[SimOrder]]], Decimal, Decimal]:
        """What a taker would get, without changing anything: (levels, quantity, cost)."""
        maker_is_bid = not is_buy
        levels = []
        volume = amount
        qty = cost = _D0
        for price in ms.prices_from_best(maker_is_bid):
            if volume <= 0 or (limit is not None and ((price > limit) if is_buy else (price < limit))):
                break
            orders = list(ms.own[maker_is_bid].get(price, ()))
            segs, consumed, left = _level_plan(orders, ms.eff(maker_is_bid, price), volume)
            got = volume - left
            if got > 0:
                levels.append((price, segs, consumed, orders))
                qty += got
                cost += got * price
            volume = left
        return levels, qty, cost

    def create_order(self, account: str, symbol: str, type: str, side: str, amount: Decimal,
                     price: Decimal | None = None, *, client_order_id: str | None = None,
                     time_in_force: str | None = None, post_only: bool = False,
                     quote_budget: Decimal | None = None) -> SimOrder:
        """Validate, reserve, match; returns the order as it stands after matching.

        `quote_budget` (market buys only): spend this much quote walking the book instead of buying
        `amount` (how Gate/HTX/Coinbase market buys work); the order's amount becomes what it buys.
        """
        ms = self.market(symbol)
        spec = ms.spec
        acct = self.account(account)
        tif = self._validate(ms, type, side, amount, price, time_in_force, post_only)
        self._check_client_id(acct, client_order_id)
        is_buy = side == "buy"
        if not ms.book.bids and not ms.book.asks:
            raise ccxt.ExchangeNotAvailable(f"paper {symbol} has no market data yet")
        if quote_budget is not None and type == "market" and is_buy:
            amount = self._budget_amount(ms, quote_budget)
        limit = price if type == "limit" else None
        levels, can_qty, can_cost = self.plan_take(ms, is_buy, amount, limit)
        if tif == "PO" and can_qty > 0:
            raise ccxt.OrderImmediatelyFillable(f"paper post-only order would immediately match and take at {symbol}")
        if type == "market":
            ref = can_cost / can_qty if can_qty else (ms.best(not is_buy) or _D0)
            if amount * ref < spec.min_cost:
                raise ccxt.InvalidOrder(f"paper order cost {amount * ref} is below the minimum {spec.min_cost}")
        need_ccy = spec.quote if is_buy else spec.base
        need = (can_cost if type == "market" else price * amount) if is_buy else amount  # type: ignore[operator]
        if acct.free(need_ccy) < need:
            raise ccxt.InsufficientFunds(
                f"paper account {account} has {dec_str(acct.free(need_ccy))} {need_ccy} free, needs {dec_str(need)}")
        self._order_seq += 1
        oid = str(self._order_seq)
        coid = client_order_id if client_order_id is not None else f"paper-{oid}"
        o = SimOrder(oid, coid, account, spec.symbol, side, type, tif, price if type == "limit" else None,
                     amount, self.now_ns, self._order_seq, self._fee_currency(spec, is_buy),
                     update_ts=self.now_ns, reserved=need)
        acct.used_client_ids.add(coid)
        acct.orders[oid] = o
        acct.by_client_id[coid] = oid
        acct.open_ids[oid] = None
        acct.add(need_ccy, used=need)
        self._dirty[oid] = o
        if tif == "FOK" and can_qty < amount:
            levels = []  # killed: nothing executes
        self._execute(ms, o, levels)
        if o.status == "open":
            if type == "market" or tif in ("IOC", "FOK"):
                o.expired = True
                self._close(ms, o, "canceled")
            else:
                self._rest(ms, o)
        self._flush()
        return o

    def _fee_currency(self, spec: MarketSpec, is_buy: bool) -> str:
        """The received currency, or the configured third currency (one of the market's own: received)."""
        if self.fee_currency and self.fee_currency not in (spec.base, spec.quote):
            return self.fee_currency
        return spec.base if is_buy else spec.quote

    def _check_client_id(self, acct: Account, client_order_id: str | None) -> None:
        if client_order_id is None:
            return
        if not self.reuse_closed_client_ids:
            if client_order_id in acct.used_client_ids:
                raise ccxt.DuplicateOrderId(f"paper clientOrderId {client_order_id} was already used")
            return
        current = acct.orders.get(acct.by_client_id.get(client_order_id, ""))
        if current is not None and current.status == "open":
            # Binance: code -2010 'Duplicate order sent.', which ccxt's binance maps to InvalidOrder
            raise ccxt.InvalidOrder(f"paper Duplicate order sent. (clientOrderId {client_order_id} is open)")

    def _budget_amount(self, ms: MarketState, budget: Decimal) -> Decimal:
        """Base quantity a market buy spending `budget` quote gets walking the asks, in whole lots."""
        step = ms.spec.amount_step
        levels, _, _ = self.plan_take(ms, True, _ALL, None)
        left, qty = budget, _D0
        for price, segs, _, _ in levels:
            got = sum((q for _, q in segs), _D0)
            q = min(got, (left / price / step).to_integral_value(rounding=ROUND_FLOOR) * step)
            qty += q
            left -= q * price
            if q < got:
                break
        if qty < ms.spec.min_amount:
            raise ccxt.InvalidOrder(f"paper market buy cost {budget} buys less than the minimum {ms.spec.min_amount}")
        return qty

    def _validate(self, ms: MarketState, type: str, side: str, amount: Decimal, price: Decimal | None,
                  tif: str | None, post_only: bool) -> str:
        spec = ms.spec
        if side not in ("buy", "sell"):
            raise ccxt.InvalidOrder(f"paper order side must be buy or sell, not {side}")
        if type not in ("limit", "market"):
            raise ccxt.InvalidOrder(f"paper supports limit and market orders, not {type}")
        tif = (tif or ("IOC" if type == "market" else "GTC")).upper()
        if post_only:
            if tif not in ("GTC", "PO"):
                raise ccxt.InvalidOrder(f"paper postOnly cannot be combined with timeInForce {tif}")
            tif = "PO"
        if tif not in ("GTC", "IOC", "FOK", "PO"):
            raise ccxt.InvalidOrder(f"paper timeInForce must be GTC, IOC, FOK or PO, not {tif}")
        if type == "market" and tif == "PO":
            raise ccxt.InvalidOrder("paper market orders cannot be post-only")
        if not isinstance(amount, Decimal) or not amount.is_finite() or amount <= 0:
            raise ccxt.InvalidOrder(f"paper order amount must be positive, got {amount}")
        if amount % spec.amount_step:
            raise ccxt.InvalidOrder(f"paper {spec.symbol} amount {amount} is not a multiple of {spec.amount_step}")
        if amount < spec.min_amount:
            raise ccxt.InvalidOrder(f"paper {spec.symbol} amount {amount} is below the minimum {spec.min_amount}")
        if type == "limit":
            if price is None or not price.is_finite() or price <= 0:
                raise ccxt.InvalidOrder("paper limit orders need a positive price")
            if price % spec.tick_size:
                raise ccxt.InvalidOrder(f"paper {spec.symbol} price {price} is not a multiple of {spec.tick_size}")
            if price * amount < spec.min_cost:
                raise ccxt.InvalidOrder(f"paper order cost {price * amount} is below the minimum {spec.min_cost}")
        return tif

    def _execute(self, ms: MarketState, o: SimOrder, levels: list) -> None:
        maker_is_bid = not o.is_buy
        for price, segs, consumed, orders in levels:
            for maker, q in segs:
                self._fill(ms, o, price, q, maker=False)
                if maker is not None:
                    self._fill(ms, maker, price, q, maker=True)
            if consumed:
                taken = ms.taken[maker_is_bid]
                taken[price] = taken.get(price, _D0) + consumed
                _requeue(orders, consumed)

    def _fill(self, ms: MarketState, o: SimOrder, price: Decimal, qty: Decimal, *, maker: bool) -> Fill | None:
        spec = ms.spec
        # A venue fills whole lots. The queue model splits traded volume pro rata (and a fault fills a
        # fraction of what remains), which can give a sliver off the lot grid; it is rounded down, and a
        # sliver under one lot does not trade.
        qty = (qty / spec.amount_step).to_integral_value(rounding=ROUND_FLOOR) * spec.amount_step
        if qty <= 0:
            return None
        acct = self.accounts[o.account]
        rate = spec.maker_fee if maker else spec.taker_fee
        quote_amt = price * qty
        third = o.fee_currency not in (spec.base, spec.quote)
        if third:  # BNB-style: the fee is the quote value of the usual fee, charged in another currency
            fee = quote_amt * rate / self.fee_currency_price
            acct.add(o.fee_currency, total=-fee)
        if o.is_buy:
            fee = fee if third else qty * rate
            release = min(o.price * qty if o.price is not None else quote_amt, o.reserved)
            o.reserved -= release
            acct.add(spec.quote, total=-quote_amt, used=-release)
            acct.add(spec.base, total=qty - (_D0 if third else fee))
        else:
            fee = fee if third else quote_amt * rate
            release = min(qty, o.reserved)
            o.reserved -= release
            acct.add(spec.base, total=-qty, used=-release)
            acct.add(spec.quote, total=quote_amt - (_D0 if third else fee))
        o.filled += qty
        if o.resting:
            ms.own_changed(o.is_buy, o.price, -qty)  # type: ignore[arg-type]
        o.cost += quote_amt
        o.fee += fee
        o.last_trade_ts = o.update_ts = self.now_ns
        self._trade_seq += 1
        fill = Fill(str(self._trade_seq), o.id, o.client_order_id, o.account, o.symbol, o.side,
                    price, qty, fee, o.fee_currency, maker, self.now_ns)
        o.trades.append(fill)
        acct.record_trade(fill)
        self._dirty[o.id] = o
        if o.filled >= o.amount:
            self._close(ms, o, "closed")
        self._emit("trade", fill)
        return fill

    def _rest(self, ms: MarketState, o: SimOrder) -> None:
        is_bid = o.is_buy
        assert o.price is not None
        o.queue_ahead = ms.eff(is_bid, o.price)
        o.resting = True
        level = ms.own[is_bid].get(o.price)
        if level is None:
            ms.own[is_bid][o.price] = [o]
            insort(ms.own_prices[is_bid], o.price)
        else:
            level.append(o)
        ms.own_changed(is_bid, o.price, o.remaining)

    def _close(self, ms: MarketState, o: SimOrder, status: str) -> None:
        o.status = status
        o.update_ts = self.now_ns
        if o.resting:
            o.resting = False
            o.queue_ahead = _D0
            side = ms.own[o.is_buy]
            level = side[o.price]  # type: ignore[index]
            level.remove(o)
            ms.own_changed(o.is_buy, o.price, -o.remaining)  # type: ignore[arg-type]
            if not level:
                del side[o.price]  # type: ignore[arg-type]
                prices = ms.own_prices[o.is_buy]
                del prices[bisect_left(prices, o.price)]  # type: ignore[arg-type]
        acct = self.accounts[o.account]
        if o.reserved:
            acct.add(ms.spec.quote if o.is_buy else ms.spec.base, used=-o.reserved)
            o.reserved = _D0
        acct.closed(o)
        self._dirty[o.id] = o

    def find_order(self, account: str, order_id: str | None = None, client_order_id: str | None = None,
                   symbol: str | None = None) -> SimOrder:
        acct = self.account(account)
        oid = order_id if order_id is not None else acct.by_client_id.get(client_order_id or "")
        o = acct.orders.get(oid or "")
        if o is None or (symbol is not None and self.market(symbol).spec.symbol != o.symbol):
            raise ccxt.OrderNotFound(f"paper order {order_id or client_order_id} not found")
        return o

    def cancel_order(self, account: str, order_id: str | None = None, client_order_id: str | None = None,
                     symbol: str | None = None) -> SimOrder:
        o = self.find_order(account, order_id, client_order_id, symbol)
        if o.status != "open":
            raise ccxt.OrderNotFound(f"paper order {o.id} is {o.status}: unknown order sent")
        self._close(self.markets[o.symbol], o, "canceled")
        self._flush()
        return o

    def force_fill(self, o: SimOrder, qty: Decimal) -> Fill | None:
        """Fill a resting order at its own price as maker (fault injection: a fill racing a cancel)."""
        ms = self.markets[o.symbol]
        qty = min(qty, o.remaining)
        if o.status != "open" or qty <= 0:
            return None
        fill = self._fill(ms, o, o.price if o.price is not None else _D0, qty, maker=True)
        self._flush()
        return fill

    def open_orders(self, account: str, symbol: str | None = None) -> list[SimOrder]:
        acct = self.account(account)
        return [acct.orders[i] for i in acct.open_ids if symbol is None or acct.orders[i].symbol == symbol]

    def closed_orders(self, account: str, symbol: str | None = None) -> list[SimOrder]:
        acct = self.account(account)
        out = [acct.orders[i] for i in acct.closed_ids if i in acct.orders]
        return [o for o in out if symbol is None or o.symbol == symbol]

    def my_trades(self, account: str, symbol: str | None = None) -> list[Fill]:
        return [f for f in self.account(account).trades if symbol is None or f.symbol == symbol]

    # ----------------------------------------------------------------- views
    def order_book(self, symbol: str, limit: int | None = None) -> dict[str, Any]:
        """The book a client sees: recorded levels minus what we took, plus our resting orders."""
        ms = self.market(symbol)
        sides = {}
        for is_bid in (True, False):
            out: list[list[str | None]] = []
            for p in ms.prices_from_best(is_bid):
                if limit is not None and len(out) >= limit:
                    break
                q = ms.level_qty(is_bid, p)
                if q > 0:
                    out.append([dec_str(p), dec_str(q)])
            sides[is_bid] = out
        return {"symbol": ms.spec.symbol, "time": self.now_ns // 1_000_000,
                "lastUpdateId": ms.book.last_update_id, "bids": sides[True], "asks": sides[False]}

    def ticker(self, symbol: str) -> dict[str, Any]:
        ms = self.market(symbol)
        bid, ask = ms.best(True), ms.best(False)
        vwap = ms.quote_volume / ms.base_volume if ms.base_volume else None
        return {
            "symbol": ms.spec.symbol, "time": self.now_ns // 1_000_000,
            "bidPrice": dec_str(bid), "bidQty": dec_str(ms.level_qty(True, bid)) if bid else None,
            "askPrice": dec_str(ask), "askQty": dec_str(ms.level_qty(False, ask)) if ask else None,
            "lastPrice": dec_str(ms.last), "openPrice": dec_str(ms.open), "highPrice": dec_str(ms.high),
            "lowPrice": dec_str(ms.low), "volume": dec_str(ms.base_volume),
            "quoteVolume": dec_str(ms.quote_volume), "weightedAvgPrice": dec_str(vwap),
        }

    def balance(self, account: str) -> dict[str, Any]:
        acct = self.account(account)
        codes = list(dict.fromkeys([c for ms in self.markets.values() for c in (ms.spec.base, ms.spec.quote)]
                                   + list(acct.total)))
        rows = [{"asset": c, "free": dec_str(acct.free(c)), "locked": dec_str(acct.used.get(c, _D0)),
                 "total": dec_str(acct.total.get(c, _D0))} for c in codes]
        return {"account": account, "time": self.now_ns // 1_000_000, "balances": rows}
