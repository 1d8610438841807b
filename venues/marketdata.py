"""Market data for the paper venue: the recording reader and its events.

A recording is gzip text, one `<local_receive_ns> <raw Binance JSON>` per line (see
`../shared/data/market/README.md`). This module turns it into typed events on an *exchange-time*
axis, because the matching engine needs causal order: a trade printed at `T` happened before the
100 ms depth batch stamped `E >= T` that shows its effect. File order is arrival order, which is not
causal between streams (late trade publication), so events pass through a small reorder buffer:

    depth update  -> E (ms)                     trade -> T (ms)
    snapshot / bookTicker (no exchange stamp) -> local time + the clock offset measured on the first
                                                 depth/trade line of each pass (about +1.27 s here)

Ties at one timestamp go trade, then depth, then bookTicker. Several files play as one stream, and with
`loop=True` the whole set restarts, shifted in time so the clock keeps moving forward; the book builder
resynchronises on the repeated snapshot like a live client would after a gap.

Prices and sizes are `Decimal`, parsed from the exchange's strings, never floats.
"""

from __future__ import annotations

import functools
import gzip
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import msgspec

__all__ = [
    "BookSnapshot",
    "BookTicker",
    "DepthUpdate",
    "Level",
    "MarketEvent",
    "RecordingInfo",
    "RecordingSource",
    "TradePrint",
    "inspect_recording",
    "iter_lines",
    "split_symbol_id",
]

Level = tuple[Decimal, Decimal]
"""(price, absolute quantity); quantity 0 removes the level."""

_D0 = Decimal(0)
_MS = 1_000_000
_REORDER_HORIZON_NS = 1_000 * _MS  # README: publication lag max ~214 ms
_LOOP_GAP_NS = 100 * _MS


@dataclass(slots=True, frozen=True)
class BookSnapshot:
    """REST depth snapshot: the full book as of `last_update_id`."""

    ts: int
    last_update_id: int
    bids: list[Level]
    asks: list[Level]


@dataclass(slots=True, frozen=True)
class DepthUpdate:
    """A 100 ms diff-depth batch: levels changed between update ids `first_id`..`last_id`."""

    ts: int
    first_id: int
    last_id: int
    bids: list[Level]
    asks: list[Level]


@dataclass(slots=True, frozen=True)
class TradePrint:
    """One public fill. `buyer_maker` True means a sell aggressor hit the bid."""

    ts: int
    trade_id: int
    price: Decimal
    qty: Decimal
    buyer_maker: bool


@dataclass(slots=True, frozen=True)
class BookTicker:
    """Best bid/offer change; informational (the depth stream is the authority for the book)."""

    ts: int
    update_id: int
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal


MarketEvent = BookSnapshot | DepthUpdate | TradePrint | BookTicker

_PRIO = {TradePrint: 0, DepthUpdate: 1, BookTicker: 2, BookSnapshot: 3}
_decode = msgspec.json.Decoder().decode


def iter_lines(paths: Iterable[str | Path]) -> Iterator[tuple[int, bytes]]:
    """(local_ns, raw JSON) for every line of every file, in file order."""
    for path in paths:
        with gzip.open(path, "rb") as fh:
            for line in fh:
                head, _, body = line.partition(b" ")
                if body:
                    yield int(head), body


def _levels(raw: list[list[str]]) -> list[Level]:
    return [(Decimal(p), Decimal(q)) for p, q in raw]


def _parse(local_ns: int, obj: dict, offset_ns: int | None) -> tuple[MarketEvent | None, int | None]:
    """Event for one decoded line, and the exchange-minus-local offset it reveals (if any)."""
    data = obj.get("data")
    if data is None:
        if "lastUpdateId" in obj:
            ts = local_ns + (offset_ns or 0)
            return BookSnapshot(ts, obj["lastUpdateId"], _levels(obj["bids"]), _levels(obj["asks"])), None
        return None, None
    etype = data.get("e")
    if etype == "depthUpdate":
        ts = data["E"] * _MS
        ev = DepthUpdate(ts, data["U"], data["u"], _levels(data["b"]), _levels(data["a"]))
        return ev, ts - local_ns
    if etype == "trade":
        ts = data["T"] * _MS
        ev = TradePrint(ts, data["t"], Decimal(data["p"]), Decimal(data["q"]), bool(data["m"]))
        return ev, data["E"] * _MS - local_ns
    if "b" in data and "a" in data and "u" in data:  # bookTicker has no "e"
        ts = local_ns + (offset_ns or 0)
        bt = BookTicker(ts, data["u"], Decimal(data["b"]), Decimal(data["B"]), Decimal(data["a"]), Decimal(data["A"]))
        return bt, None
    return None, None


class RecordingSource:
    """Iterator of `MarketEvent`s in exchange-time order over one or more recording files.

    `loop=True` replays the files forever, each pass shifted so it starts 100 ms after the previous
    pass ended. `passes` counts completed passes (the replay reports it in its stats).
    """

    def __init__(self, paths: Iterable[str | Path], *, loop: bool = False) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("a recording needs at least one file")
        for p in self.paths:
            if not p.is_file():
                raise FileNotFoundError(p)
        self.loop = loop
        self.passes = 0
        self._it = self._events()

    def __iter__(self) -> Iterator[MarketEvent]:
        return self

    def __next__(self) -> MarketEvent:
        return next(self._it)

    def _events(self) -> Iterator[MarketEvent]:
        first_raw: int | None = None
        last_emitted = 0
        while True:
            shift = 0 if first_raw is None else last_emitted + _LOOP_GAP_NS - first_raw
            emitted = False
            for ev in self._one_pass():
                if first_raw is None:
                    first_raw = ev.ts
                if shift:
                    ev = _shifted(ev, shift)
                last_emitted = ev.ts
                emitted = True
                yield ev
            self.passes += 1
            if not self.loop or not emitted:
                return

    def _one_pass(self) -> Iterator[MarketEvent]:
        heap: list[tuple[int, int, int, MarketEvent]] = []
        pending: list[tuple[int, dict]] = []
        offset: int | None = None
        seq = 0
        high = 0
        for local_ns, raw in iter_lines(self.paths):
            obj = _decode(raw)
            if offset is None:
                ev, found = _parse(local_ns, obj, None)
                if found is None:
                    pending.append((local_ns, obj))
                    continue
                offset = found
                items = [_parse(ln, o, offset)[0] for ln, o in pending] + [ev]
                pending.clear()
            else:
                items = [_parse(local_ns, obj, offset)[0]]
            for item in items:
                if item is None:
                    continue
                seq += 1
                heapq.heappush(heap, (item.ts, _PRIO[type(item)], seq, item))
                high = max(high, item.ts)
            while heap and heap[0][0] <= high - _REORDER_HORIZON_NS:
                yield heapq.heappop(heap)[3]
        for local_ns, obj in pending:  # a file with no exchange stamps at all
            item = _parse(local_ns, obj, 0)[0]
            if item is not None:
                seq += 1
                heapq.heappush(heap, (item.ts, _PRIO[type(item)], seq, item))
        while heap:
            yield heapq.heappop(heap)[3]


def _shifted(ev: MarketEvent, shift: int) -> MarketEvent:
    if isinstance(ev, TradePrint):
        return TradePrint(ev.ts + shift, ev.trade_id, ev.price, ev.qty, ev.buyer_maker)
    if isinstance(ev, DepthUpdate):
        return DepthUpdate(ev.ts + shift, ev.first_id, ev.last_id, ev.bids, ev.asks)
    if isinstance(ev, BookTicker):
        return BookTicker(ev.ts + shift, ev.update_id, ev.bid, ev.bid_qty, ev.ask, ev.ask_qty)
    return BookSnapshot(ev.ts + shift, ev.last_update_id, ev.bids, ev.asks)


@dataclass(slots=True, frozen=True)
class RecordingInfo:
    """What the recording itself says about its market (it carries no instrument metadata)."""

    symbol_id: str
    tick_size: Decimal
    amount_step: Decimal


_QUOTES = ("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "DAI", "EUR", "TRY", "BRL", "BTC", "ETH", "BNB")


def split_symbol_id(symbol_id: str) -> tuple[str, str]:
    """`BTCUSDT` -> (`BTC`, `USDT`) by the longest known quote suffix; configure base/quote otherwise."""
    upper = symbol_id.upper()
    for quote in sorted(_QUOTES, key=len, reverse=True):
        if upper.endswith(quote) and len(upper) > len(quote):
            return upper[: -len(quote)], quote
    raise ValueError(f"cannot split {symbol_id!r} into base/quote: set base and quote in MarketConfig")


def _step(values: Iterable[Decimal]) -> Decimal:
    """Smallest decimal unit in common use (0.01 for '61837.63000000').

    A unit needs at least 0.1% of the values (and 3) to count: a single odd far-away level such as
    25.426189 BTC at 200000 must not make the amount step 0.000001.
    """
    counts: dict[int, int] = {}
    total = 0
    for v in values:
        if v:
            e = v.normalize().as_tuple().exponent
            if isinstance(e, int):
                counts[e] = counts.get(e, 0) + 1
                total += 1
    need = max(3, total // 1000)
    usable = [e for e, c in counts.items() if c >= need] or list(counts) or [0]
    return Decimal(1).scaleb(min(min(usable), 0))


def inspect_recording(paths: Iterable[str | Path], *, max_lines: int = 5_000) -> RecordingInfo:
    """Infer symbol id, tick size and amount step from the first `max_lines` lines of a recording."""
    return _inspect(tuple(str(p) for p in paths), max_lines)


@functools.lru_cache(maxsize=32)
def _inspect(paths: tuple[str, ...], max_lines: int) -> RecordingInfo:
    symbol_id: str | None = None
    prices: list[Decimal] = []
    qtys: list[Decimal] = []
    for n, (_local, raw) in enumerate(iter_lines(paths)):
        if n >= max_lines:
            break
        obj = _decode(raw)
        data = obj.get("data", obj)
        symbol_id = symbol_id or data.get("s")
        for key in ("bids", "asks", "b", "a"):
            levels = data.get(key)
            if isinstance(levels, list):
                for p, q in levels:
                    prices.append(Decimal(p))
                    qtys.append(Decimal(q))
        if data.get("e") == "trade":
            prices.append(Decimal(data["p"]))
            qtys.append(Decimal(data["q"]))
    if symbol_id is None:
        raise ValueError("recording names no symbol ('s' field)")
    return RecordingInfo(symbol_id, _step(prices), _step(qtys))
