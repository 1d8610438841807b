"""A seeded synthetic market: random-walk mid, a persistent L2 book and trades at the touch.

Why: the recording is ten minutes of one symbol. Long soak runs, other symbols and edge cases (fast
markets, thin books) need a market that never ends and is reproducible from a seed. It emits the same
events as a recording (one snapshot, then 100 ms `DepthUpdate` batches with contiguous update ids and
`TradePrint`s), so the book builder and matching engine cannot tell the difference.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal

from venues.config import SyntheticConfig
from venues.marketdata import BookSnapshot, DepthUpdate, Level, MarketEvent, TradePrint

__all__ = ["synthetic_events"]

_BATCH_NS = 100_000_000
_D0 = Decimal(0)


def _qty(rng: random.Random, mean: Decimal, step: Decimal) -> Decimal:
    q = Decimal(repr(rng.expovariate(1.0) * float(mean))).quantize(step, rounding=ROUND_DOWN)
    return q if q > 0 else step


def synthetic_events(cfg: SyntheticConfig, seed: int) -> Iterator[MarketEvent]:
    """Endless (or `cfg.duration_s`) event stream; identical for identical (cfg, seed)."""
    rng = random.Random(seed)
    tick, step = cfg.tick_size, cfg.amount_step
    mid = int(cfg.start_price / tick)  # in ticks; best bid = mid, best ask = mid + spread
    book: dict[bool, dict[int, Decimal]] = {True: {}, False: {}}

    def target_levels() -> dict[bool, range]:
        return {True: range(mid - cfg.levels + 1, mid + 1),
                False: range(mid + cfg.spread_ticks, mid + cfg.spread_ticks + cfg.levels)}

    for is_bid, prices in target_levels().items():
        for p in prices:
            book[is_bid][p] = _qty(rng, cfg.level_qty, step)
    ts = cfg.start_ms * 1_000_000
    update_id = 1

    def levels(is_bid: bool) -> list[Level]:
        keys = sorted(book[is_bid], reverse=is_bid)
        return [(tick * p, book[is_bid][p]) for p in keys]

    yield BookSnapshot(ts, update_id, levels(True), levels(False))
    trade_id = 0
    end = None if cfg.duration_s is None else ts + int(cfg.duration_s * 1e9)
    while end is None or ts < end:
        before = {s: dict(book[s]) for s in (True, False)}
        # trades against the current touch, spread over the batch
        n = sum(1 for _ in range(8) if rng.random() < cfg.trades_per_batch / 8)
        offsets = sorted(rng.randrange(1, _BATCH_NS // 1_000_000) for _ in range(n))
        for off in offsets:
            sell = rng.random() < 0.5
            side = book[True] if sell else book[False]
            if not side:
                continue
            best = max(side) if sell else min(side)
            q = min(_qty(rng, cfg.trade_qty, step), side[best])
            trade_id += 1
            yield TradePrint(ts + off * 1_000_000, trade_id, tick * best, q, sell)
            side[best] -= q
            if side[best] <= 0:
                del side[best]
        # the mid walks; levels outside the window go, new ones appear, some are re-sized
        mid += round(rng.gauss(0.0, cfg.volatility_ticks))
        want = target_levels()
        for is_bid in (True, False):
            side = book[is_bid]
            for p in [p for p in side if p not in want[is_bid]]:
                del side[p]
            for p in want[is_bid]:
                if p not in side or rng.random() < 0.05:
                    side[p] = _qty(rng, cfg.level_qty, step)
        ts += _BATCH_NS
        changes: dict[bool, list[Level]] = {}
        for is_bid in (True, False):
            old, new = before[is_bid], book[is_bid]
            ch = [(tick * p, new.get(p, _D0)) for p in set(old) | set(new) if old.get(p) != new.get(p)]
            changes[is_bid] = sorted(ch, reverse=is_bid)
        first = update_id + 1
        update_id += max(1, len(changes[True]) + len(changes[False]))
        yield DepthUpdate(ts, first, update_id, changes[True], changes[False])
