"""The replayed L2 book: price levels per side and the Binance snapshot + diff-depth sync procedure.

Sync follows Binance's documented spot procedure: buffer diff updates until a snapshot arrives, drop
updates with `u <= lastUpdateId`, the first applied update must satisfy `U <= lastUpdateId + 1 <= u`,
and every later one `U == previous u + 1`. A gap marks the book unsynced until the next snapshot —
which is also how a looped recording restarts cleanly.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterator
from decimal import Decimal

import structlog

from venues.marketdata import BookSnapshot, DepthUpdate, Level

__all__ = ["BookSide", "L2Book", "LevelChange"]

log = structlog.get_logger("execbus.venues.book")

_D0 = Decimal(0)
LevelChange = tuple[Decimal, Decimal, Decimal]
"""(price, old quantity, new quantity)"""


class BookSide:
    """One side: price -> quantity, plus a sorted price list for best-first walks."""

    __slots__ = ("is_bid", "qty", "_prices")

    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.qty: dict[Decimal, Decimal] = {}
        self._prices: list[Decimal] = []  # ascending

    def __len__(self) -> int:
        return len(self._prices)

    def set(self, price: Decimal, qty: Decimal) -> Decimal:
        """Set a level's absolute quantity (0 removes it); returns the previous quantity."""
        old = self.qty.get(price, _D0)
        if qty > 0:
            if not old:
                insort(self._prices, price)
            self.qty[price] = qty
        elif old:
            del self.qty[price]
            i = bisect_left(self._prices, price)
            del self._prices[i]
        return old

    def load(self, levels: list[Level]) -> None:
        self.qty = {p: q for p, q in levels if q > 0}
        self._prices = sorted(self.qty)

    def best(self) -> Decimal | None:
        if not self._prices:
            return None
        return self._prices[-1] if self.is_bid else self._prices[0]

    def prices_from_best(self) -> Iterator[Decimal]:
        """Prices from the touch outwards (descending for bids, ascending for asks)."""
        return reversed(self._prices) if self.is_bid else iter(self._prices)


class L2Book:
    """A synced-or-not L2 book for one market."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.synced = False
        self.last_update_id = 0
        self.ts = 0
        self.resyncs = 0
        self._buffer: deque[DepthUpdate] = deque(maxlen=200)

    def side(self, is_bid: bool) -> BookSide:
        return self.bids if is_bid else self.asks

    def on_snapshot(self, snap: BookSnapshot) -> tuple[list[LevelChange], list[LevelChange]]:
        """Load a snapshot, replay buffered updates after it; returns the net level changes."""
        before_b, before_a = dict(self.bids.qty), dict(self.asks.qty)
        self.bids.load(snap.bids)
        self.asks.load(snap.asks)
        self.last_update_id = snap.last_update_id
        self.ts = max(self.ts, snap.ts)
        self.synced = True
        self.resyncs += 1
        first = True
        for upd in self._buffer:
            if upd.last_id <= self.last_update_id:
                continue
            if first and not (upd.first_id <= self.last_update_id + 1 <= upd.last_id):
                log.warning("book_buffer_gap", symbol=self.symbol, U=upd.first_id, snapshot=snap.last_update_id)
                self.synced = False
                break
            first = False
            self._apply(upd)
        self._buffer.clear()
        return _diff(before_b, self.bids.qty), _diff(before_a, self.asks.qty)

    def on_depth(self, upd: DepthUpdate) -> tuple[list[LevelChange], list[LevelChange]] | None:
        """Apply one diff batch; None if the book is not synced (the update is buffered)."""
        if self.synced:
            if upd.first_id == self.last_update_id + 1:
                return self._apply(upd)
            if upd.last_id > self.last_update_id:
                log.warning("book_gap", symbol=self.symbol, expected=self.last_update_id + 1, got=upd.first_id)
                self.synced = False
                self._buffer.clear()
            # else: ids from the past — a looped recording restarting; keep them for its snapshot
        self._buffer_append(upd)
        if not self.synced and self.resyncs == 0 and len(self._buffer) >= self.DIFF_ONLY_AFTER:
            # a recording without any snapshot (e.g. a day file other than the first): build the
            # book from the diffs alone; levels near the touch fill in quickly, the far book stays partial
            log.warning("book_diff_only", symbol=self.symbol)
            self.synced = True
            self.resyncs += 1
            for buffered in self._buffer:
                changes = self._apply(buffered)
            self._buffer.clear()
            return changes
        return None

    DIFF_ONLY_AFTER = 50

    def _buffer_append(self, upd: DepthUpdate) -> None:
        """Keep the buffer one contiguous run of ids: the only kind a snapshot can continue."""
        if self._buffer and upd.first_id != self._buffer[-1].last_id + 1:
            self._buffer.clear()
        self._buffer.append(upd)

    def _apply(self, upd: DepthUpdate) -> tuple[list[LevelChange], list[LevelChange]]:
        bid_changes = [(p, self.bids.set(p, q), q) for p, q in upd.bids]
        ask_changes = [(p, self.asks.set(p, q), q) for p, q in upd.asks]
        self.last_update_id = upd.last_id
        self.ts = upd.ts
        return bid_changes, ask_changes


def _diff(before: dict[Decimal, Decimal], after: dict[Decimal, Decimal]) -> list[LevelChange]:
    changes = [(p, q, after.get(p, _D0)) for p, q in before.items() if after.get(p, _D0) != q]
    changes += [(p, _D0, q) for p, q in after.items() if p not in before]
    return changes
