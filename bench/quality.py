"""Benchmark: execution quality on recorded market data (issue 6, item 5).

`execbus bench quality [--quick] [--data PATH...] [--n N] [--seed S] [--maker-bps B] [--taker-bps B] ...`

Each strategy executes N intents per size at seeded random arrival times over a recorded market (the real
actors on the real bus, driven in virtual market time by `bus.ops.sim.Simulation` against the paper exchange),
and each execution is scored by its implementation shortfall against the mid at arrival, fees included.

Design decisions (and why):

* **No contamination between executions.** Executions share one simulated market, so two that overlap
  could trade against each other's orders or the liquidity the other just took. Each strategy x size runs
  in its own `Simulation`, and inside one the arrivals are at least `budget + 2 s` apart (15 s by default),
  with a uniform random extra gap of up to 10 s: every execution is over (orders terminal, the taken-
  liquidity overlay long refreshed by the depth stream) before the next arrives. A 650 s recording holds
  about 32 such arrivals, so N is reached with several passes over the data, each its own Simulation with
  its own random arrival offsets ("passes").
* **Common arrivals.** The arrival schedule (times and sides) depends only on `--seed` and the recording:
  every strategy at every size sees exactly the same arrivals. Strategy differences are therefore
  *paired* (same market moments), and the table reports the paired mean difference to the market
  baseline with its 95 % confidence interval, not just two means with overlapping noise.
* **Sides** are balanced in each pass (half buys, half sells, shuffled), so a trend in the recording does
  not read as a cost or a gain of one strategy.
* **Sizes.** small = 0.01 BTC; at-touch = the median quantity displayed at the best bid and at the best ask
  over the recording (sampled at every depth update, i.e. every 100 ms; both sides pooled; rounded to two
  significant figures); deep = 10 BTC, which walks a median of dozens of price levels in this recording
  (the profile table prints how many). All three are overridable (`--sizes 0.01,auto,10`).
* **Fees.** Default maker 2 bps, taker 4 bps (0.02 % / 0.04 %): a Binance-like tiered schedule, the shape
  of Binance's USD-M futures regular tier and of its upper spot VIP tiers, where resting saves half the
  taker fee. Binance spot at VIP 0 charges the same 10 bps for maker and taker, which removes the whole fee
  advantage of resting orders; run with `--maker-bps 10 --taker-bps 10` to see that case (or read it off
  the "ex-fee" column: with equal rates every strategy pays the same fee). The fee paid in base on buys is
  valued at the fill price (as the tracker reports it).
* **Implementation shortfall** (positive = cost, in bps of the intended notional at the arrival mid):
  `side * (notional - filled * mid0) + fees + side * unfilled * (mid_end - mid0)`, divided by
  `qty * mid0`. The last term is the opportunity cost of quantity a strategy did not execute, marked at the
  recorded mid when the execution ended (Perold's definition) — without it a limit order that never fills
  would look free. `mid0` is the report's `arrival_mid` (the book the pricer quoted at arrival); the bench
  checks it against its own replay of the recorded book. "ex-fee" columns drop the fee term.
* **Baselines in the same table:** the `market` strategy (one market order at arrival), and the *oracle
  bound*: the whole quantity filled passively at our own touch at arrival with the maker fee
  (`maker fee - half spread`), the best any limit strategy could do; it assumes the fill, so its
  completion is by construction and its time is 0.
* **Strategies:** `market`; `aggressive_limit` with its defaults (3 attempts touch -> inside -> cross in a
  13 s budget, then a market fallback); `aggressive_limit r=1` (`max_retries=1`: rest at the touch for the
  whole budget, then the market fallback — the simplest passive-then-market policy, to show what the
  escalation buys); `simple_limit` at the touch with the same 13 s budget and no fallback (it may not
  complete: reported as such). Other settings of the aggressive knobs (total 8 s or 20 s, `max_retries=2`,
  `attempt_timeout_seconds=5.5`) were tried on this recording: none differed from the defaults by more than
  the noise (about ±0.4 bps), so no "tuned" row is claimed; `--variant` runs any such setting.
* **Time to complete** is market time from acceptance to the final report, over completed executions.
  "in budget" counts executions that filled completely no later than the strategy's budget (13 s) plus
  1 s for the fallback market order to report.
* **What the simulation does not model:** latency (the venue answers at the instant of the request, in
  market time), our market impact (the recorded prices move the same with or without our orders, so a
  resting order fills whenever the recorded book moves through it, whatever its size), and hidden
  liquidity. Queue position at the touch is a model (see `venues/matching.py`). Most of this flatters
  passive orders, large ones most: the diagnostics table shows how much maker quantity came from the
  book moving through our price rather than from recorded trades.

One sample aggressive-limit execution (one that needed retries and, if any did, the fallback) is drawn into
a PNG (`bench/plot.py`): the recorded bid/ask from a separate replay of the recording (the book *without*
our orders), the market's trades, our order per attempt from `PlaceOrder`/`OrderPlaced`/`OrderFinalized`,
our fills from `OrderFilled`, the attempt timeouts (`AttemptTimedOut`) and the fallback (`ExecutionTimedOut`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, BenchResult, Table, Target, percentile

__all__ = [
    "run",
    "MarketProfile",
    "profile_market",
    "make_schedule",
    "shortfall_bps",
    "touch_size",
    "default_files",
    "balances_for",
    "fmt_price",
    "sample_title",
    "VARIANTS",
]

NS = 1_000_000_000
BPS = Decimal(10_000)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"
"""`<repo>/../shared/data/market/`: the full recording, when this checkout has it beside it."""
FULL_FILES = ("binance_spot_btcusdt_20240808.gz", "binance_spot_btcusdt_20240809.gz")
DEFAULT_N, QUICK_N = 200, 10
DEFAULT_BUDGET_S = 13.0
MARGIN_S = 2.0
"""Arrivals are at least budget + this apart."""
JITTER_S = 10.0
"""Uniform random extra gap between arrivals."""
TAIL_S = 5.0
"""No arrival in the last budget + this of the recording (every execution must end before the data)."""
FALLBACK_GRACE_S = 1.0
STOP_CHECK_S = 5.0
"""How long a Simulation may take to stop before stuck tasks are cancelled again (see `_stop`)."""
BASE_BALANCE, QUOTE_BALANCE = Decimal(10_000_000), Decimal(10) ** 13
"""Starting balances of the recorded market's base and quote (whatever the symbol: the recording says which):
large enough that no intent is ever refused for funds, whatever the sizes."""


# -- strategies ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    label: str
    tag: str
    """Short token for intent ids."""
    strategy: str
    params: dict[str, Any]
    budget_s: float | None
    """Time budget it is judged against; None: none (market)."""
    note: str = ""


def variant_params(variant: Variant, budget_s: float, qty: Decimal) -> dict[str, Any]:
    """The variant's params at one size: the strategy's benchmark settings for the budget, then its own."""
    from actors.strategies import STRATEGIES

    return {**STRATEGIES[variant.strategy].benchmark_params(str(budget_s), qty), **variant.params}


def _budget_of(strategy: str, overrides: dict[str, Any], budget_s: float) -> float | None:
    """The variant's own time budget, as the strategy computes it from its params (None: market, which
    has no budget to judge it by)."""
    from actors.strategies import STRATEGIES
    from messages import params_for

    settings = {**STRATEGIES[strategy].benchmark_params(str(budget_s), Decimal(1)), **overrides}
    if not settings:
        return None
    return STRATEGIES[strategy].budget_ns(params_for(strategy, settings, strict=False)) / 1e9


def _variants(budget_s: float) -> dict[str, Variant]:
    """One variant per registered strategy, at its benchmark settings for the budget (the registry in
    `actors/strategies/` is the one list), plus `aggressive_limit r=1`, to show what the escalation buys."""
    from actors.strategies import STRATEGIES

    found: dict[str, Variant] = {}
    for name, strategy in STRATEGIES.items():
        found[name] = Variant(name, name.replace("_", "")[:4], name, {}, _budget_of(name, {}, budget_s), strategy.summary)
        if name == "aggressive_limit":
            found["aggressive_limit_1"] = Variant(
                "aggressive_limit r=1", "ag1", name, {"max_retries": 1},
                budget_s, "max_retries=1: rest at the touch for the whole budget, then market fallback")
    return found


DEFAULT_VARIANTS = ("market", "aggressive_limit", "aggressive_limit_1", "simple_limit", "twap")
"""Run unless `--strategies` says otherwise (iceberg's row is one flag away: it adds a minute at full size)."""
VARIANTS = tuple(_variants(DEFAULT_BUDGET_S))
"""Every variant `--strategies` may name."""


def _custom_variant(spec: str, budget_s: float) -> Variant:
    """`LABEL=STRATEGY[:param=value,...]`, e.g. `agg2=aggressive_limit:max_retries=2`: over the strategy's
    benchmark settings."""
    from actors.strategies import STRATEGIES

    label, _, rest = spec.partition("=")
    strategy, _, raw = rest.partition(":")
    if not label or strategy not in STRATEGIES:
        raise SystemExit(f"--variant {spec!r}: expected LABEL={'|'.join(STRATEGIES)}[:k=v,...]")
    params: dict[str, Any] = {}
    for item in filter(None, raw.split(",")):
        key, _, value = item.partition("=")
        params[key] = value
    own = _budget_of(strategy, params, budget_s)
    tag = "".join(c for c in label if c.isalnum())[:8] or "var"
    return Variant(label, tag, strategy, params, own, f"custom: {raw or 'defaults'}")


# -- the recorded market --------------------------------------------------------------------------------------


def default_files() -> list[str]:
    """Both files of the full recording if present beside the repo, else the shipped sample."""
    from venues.config import SAMPLE_FILE

    full = [SHARED / name for name in FULL_FILES]
    return [str(p) for p in full] if all(p.is_file() for p in full) else [SAMPLE_FILE]


def balances_for(symbol: str) -> dict[str, Decimal]:
    """Funding of the bench account for `symbol` (`BASE/QUOTE`, as the venue names the recorded market)."""
    base, _, quote = symbol.partition("/")
    if not base or not quote:
        raise ValueError(f"cannot tell base and quote of {symbol!r}")
    return {base: BASE_BALANCE, quote: QUOTE_BALANCE}


def _venue_config(files: list[str], maker_bps: float, taker_bps: float, symbol: str) -> Any:
    from venues.config import MarketConfig, PaperVenueConfig

    return PaperVenueConfig(
        markets=[MarketConfig(files=list(files))],
        maker_fee=Decimal(str(maker_bps)) / BPS,
        taker_fee=Decimal(str(taker_bps)) / BPS,
        balances=balances_for(symbol),
        speed=0.0,
        loop=False,
    )


def price_places(tick: Decimal) -> int:
    """Decimal places of the market's prices (0.01 -> 2, 0.0005 -> 4, 1 -> 0)."""
    exponent = tick.normalize().as_tuple().exponent
    return max(-exponent, 0) if isinstance(exponent, int) else 0


def fmt_price(value: Decimal | None, tick: Decimal, extra: int = 0) -> str | None:
    """A price at the market's precision (plus `extra` places, e.g. 1 for a mid between two ticks): an average
    of fills is an exact quotient with up to 28 digits, which says nothing more and reads as noise."""
    if value is None:
        return None
    return format(value.quantize(Decimal(1).scaleb(-(price_places(tick) + extra)), rounding=ROUND_HALF_UP), "f")


@dataclass
class MarketProfile:
    """The recorded book's top after every depth update, from a replay of the recording with no orders."""

    files: list[str]
    symbol: str
    tick: Decimal
    amount_step: Decimal
    start_ns: int
    """First instant with a synced book (where a Simulation's clock starts)."""
    end_ns: int
    """Time of the last event of the recording."""
    ts: list[int] = field(default_factory=list)
    bid: list[Decimal] = field(default_factory=list)
    ask: list[Decimal] = field(default_factory=list)
    bid_qty: list[Decimal] = field(default_factory=list)
    ask_qty: list[Decimal] = field(default_factory=list)
    grid: list[tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]] = field(default_factory=list)
    """(bids, asks) best first, the first SWEEP_LEVELS levels, once a second of market time."""

    def touch_at(self, t_ns: int) -> tuple[Decimal, Decimal]:
        """Best bid and ask after every event at or before `t_ns` (what a client sees at that instant)."""
        i = max(bisect_right(self.ts, t_ns) - 1, 0)
        return self.bid[i], self.ask[i]

    def mid_at(self, t_ns: int) -> Decimal:
        bid, ask = self.touch_at(t_ns)
        return (bid + ask) / 2


def _walk(levels: list[tuple[Decimal, Decimal]], qty: Decimal) -> tuple[int, Decimal | None]:
    left, cost, n = qty, Decimal(0), 0
    for price, size in levels:
        take = min(left, size)
        cost += take * price
        left -= take
        n += 1
        if left <= 0:
            return n, cost / qty
    return n, None


SWEEP_LEVELS = 300
"""Levels per side kept on the 1 s grid for the sweep statistics (a deeper walk reports this many)."""


def profile_market(files: list[str]) -> MarketProfile:
    """Replay the recording once (no orders): the top of book after every change of it, and the first
    `SWEEP_LEVELS` levels of each side once a second (for `sweep_stats`)."""
    from venues.config import MarketConfig, PaperVenueConfig
    from venues.marketdata import BookSnapshot, DepthUpdate
    from venues.simulator import PaperVenue

    venue = PaperVenue(PaperVenueConfig(markets=[MarketConfig(files=list(files))], speed=0.0, loop=False))
    (ms,) = venue.engine.markets.values()
    prof = MarketProfile(list(files), ms.spec.symbol, ms.spec.tick_size, ms.spec.amount_step,
                         venue.engine.now_ns, venue.engine.now_ns)
    next_grid = prof.start_ns
    book = ms.book

    def record() -> None:
        bid, ask = book.bids.best(), book.asks.best()
        if bid is None or ask is None:
            return
        prof.ts.append(venue.engine.now_ns)
        prof.bid.append(bid)
        prof.ask.append(ask)
        prof.bid_qty.append(book.bids.qty[bid])
        prof.ask_qty.append(book.asks.qty[ask])

    def levels(side: Any) -> list[tuple[Decimal, Decimal]]:
        out = []
        for p in side.prices_from_best():
            out.append((p, side.qty[p]))
            if len(out) >= SWEEP_LEVELS:
                break
        return out

    record()
    replay = venue.replay
    while True:
        ev = replay.step()
        if ev is None:
            break
        if isinstance(ev, (DepthUpdate, BookSnapshot)) and book.synced:
            record()
        if venue.engine.now_ns >= next_grid and prof.ts:
            next_grid += NS
            prof.grid.append((levels(book.bids), levels(book.asks)))
    prof.end_ns = venue.engine.now_ns
    return prof


def sweep_stats(prof: MarketProfile, qty: Decimal) -> dict[str, float]:
    """How a market order of `qty` would walk the recorded book, once a second, buys and sells pooled:
    price levels touched and average price versus mid in bps (ex fees), median and p95."""
    walked: list[float] = []
    cost: list[float] = []
    for bids, asks in prof.grid:
        if not bids or not asks:
            continue
        mid = (bids[0][0] + asks[0][0]) / 2
        for sign, side in ((1, asks), (-1, bids)):
            n, avg = _walk(side, qty)
            walked.append(float(n))
            if avg is not None:
                cost.append(float(sign * (avg - mid) / mid * BPS))
    walked.sort()
    cost.sort()
    return {"levels_p50": percentile(walked, 50), "levels_p95": percentile(walked, 95),
            "cost_bps_p50": percentile(cost, 50), "cost_bps_p95": percentile(cost, 95)}


def touch_size(prof: MarketProfile) -> tuple[Decimal, Decimal]:
    """(the at-touch size, the raw median it was rounded from): the median quantity displayed at the best
    bid and the best ask after each depth update, both sides pooled, to two significant figures."""
    pooled = sorted(prof.bid_qty + prof.ask_qty)
    raw = pooled[len(pooled) // 2]
    exponent = raw.adjusted() - 1
    rounded = raw.scaleb(-exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP).scaleb(exponent)
    step = prof.amount_step
    rounded = max(step, (rounded / step).quantize(Decimal(1)) * step)
    return rounded.normalize(), raw


# -- arrivals ---------------------------------------------------------------------------------------------------


def make_schedule(start_ns: int, end_ns: int, n: int, seed: int, *, budget_s: float,
                  margin_s: float = MARGIN_S, jitter_s: float = JITTER_S, tail_s: float = TAIL_S
                  ) -> list[list[tuple[int, str]]]:
    """Passes of (arrival ns, side), N arrivals in all. In a pass arrivals are >= budget + margin apart; each
    pass starts at a random offset; sides are half buys, half sells in each pass, shuffled."""
    rng = random.Random(seed)
    gap = budget_s + margin_s
    first = start_ns + NS
    last = end_ns - int((budget_s + tail_s) * NS)
    if last <= first:
        raise ValueError(f"the recording is too short for a {budget_s:g} s budget ({(end_ns - start_ns) / NS:.0f} s)")
    passes: list[list[tuple[int, str]]] = []
    total = 0
    while total < n:
        t = first + int(rng.uniform(0, gap + jitter_s) * NS)
        times: list[int] = []
        while t <= last and total + len(times) < n:
            times.append(t - t % 1_000_000)  # whole milliseconds, for readable logs
            t += int((gap + rng.uniform(0, jitter_s)) * NS)
        if not times:
            t = first
            times.append(t - t % 1_000_000)
        sides = (["buy", "sell"] * (len(times) // 2 + 1))[: len(times)]
        rng.shuffle(sides)
        passes.append(list(zip(times, sides)))
        total += len(times)
    return passes


# -- scoring ----------------------------------------------------------------------------------------------------


def shortfall_bps(side: str, qty: Decimal, filled: Decimal, notional: Decimal, fees: Decimal, mid0: Decimal,
                  mid_end: Decimal) -> tuple[float, float, float, float]:
    """(total, price part, fee part, opportunity part), in bps of qty * mid0; positive is a cost."""
    sign = 1 if side == "buy" else -1
    base = qty * mid0
    price = sign * (notional - filled * mid0) / base * BPS
    fee = fees / base * BPS
    opp = sign * (qty - filled) * (mid_end - mid0) / base * BPS
    return float(price + fee + opp), float(price), float(fee), float(opp)


@dataclass
class Row:
    """One execution, scored."""

    variant: str
    size: str
    qty: str
    pass_no: int
    index: int
    intent_id: str
    side: str
    at_ns: int
    status: str
    filled_qty: str
    avg_price: str | None
    fees: str
    arrival_mid: str | None
    attempts: int
    fallback_used: bool
    duration_s: float
    maker_share: float
    is_bps: float
    price_bps: float
    fee_bps: float
    opp_bps: float
    complete: bool
    in_budget: bool
    mid_check: bool
    reason: str


def _score(variant: Variant, size_label: str, qty: Decimal, pass_no: int, index: int, side: str, at_ns: int,
           report: Any, maker_qty: Decimal, prof: MarketProfile) -> Row:
    from messages import ExecutionCompleted

    if not isinstance(report, ExecutionCompleted):  # rejected: nothing executed, scored as unfilled
        mid0 = prof.mid_at(at_ns)
        total, price, fee, opp = shortfall_bps(side, qty, Decimal(0), Decimal(0), Decimal(0), mid0, mid0)
        return Row(variant.label, size_label, str(qty), pass_no, index, report.intent_id, side, at_ns, "rejected",
                   "0", None, "0", str(mid0), 0, False, math.nan, math.nan, total, price, fee, opp, False, False,
                   True, f"rejected: {report.field}: {report.reason}")
    mid0 = report.arrival_mid if report.arrival_mid is not None else prof.mid_at(at_ns)
    mid_end = prof.mid_at(report.completed_ns)
    total, price, fee, opp = shortfall_bps(side, qty, report.filled_qty, report.notional, report.fees, mid0, mid_end)
    duration = (report.completed_ns - report.started_ns) / NS
    complete = report.filled_qty >= qty
    budget = variant.budget_s
    in_budget = complete and (budget is None or duration <= budget + FALLBACK_GRACE_S)
    maker_share = float(maker_qty / report.filled_qty) if report.filled_qty else math.nan
    return Row(variant.label, size_label, str(qty), pass_no, index, report.intent_id, side, at_ns, report.status,
               str(report.filled_qty), fmt_price(report.avg_price, prof.tick), str(report.fees),
               str(mid0), report.attempts, report.fallback_used, duration, maker_share, total, price, fee, opp,
               complete, in_budget, prof.mid_at(at_ns) == mid0, report.reason)


# -- running ----------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """The execution drawn in the PNG, and why it was picked."""

    score: tuple[int, ...]
    row: Row
    messages: list[Any]


SIZE_PREFERENCE = {"touch": 2, "deep": 1, "small": 0}
"""The sample plot prefers the at-touch size: typical, and its fallback is a handful of fills, not dozens."""


def _sample_score(row: Row, messages: list[Any]) -> tuple[int, ...]:
    from messages import OrderFilled

    limit_fills = [m for m in messages if isinstance(m, OrderFilled) and m.attempt > 0]
    fallback_fill = any(isinstance(m, OrderFilled) and m.attempt == 0 for m in messages)
    # Prefer: the fallback took a remainder, a limit attempt filled part passively before it, any limit fill,
    # more attempts, the at-touch size, then the earliest arrival (deterministic).
    return (int(row.fallback_used and fallback_fill), int(any(m.liquidity == "maker" for m in limit_fills)),
            int(bool(limit_fills)), row.attempts, SIZE_PREFERENCE.get(row.size, 0), -row.pass_no * 1000 - row.index)


async def _run_pass(config: Any, variant: Variant, size_label: str, qty: Decimal, pass_no: int,
                    arrivals: list[tuple[int, str]], prof: MarketProfile, sample: list[Sample | None],
                    diag: dict[str, Any]) -> list[Row]:
    from bus.ops.sim import Arrival, Simulation
    from messages import OrderFilled, OrderRejected, SubmitIntent, params_for

    settings = variant_params(variant, variant.budget_s or DEFAULT_BUDGET_S, qty)
    params = params_for(variant.strategy, {k: str(v) for k, v in settings.items()}, strict=False)
    intents = []
    for i, (at_ns, side) in enumerate(arrivals):
        intent = SubmitIntent(
            intent_id=f"q-{variant.tag}-{size_label}-p{pass_no:02d}-{i:03d}", venue="paper", symbol=prof.symbol,
            side=side, qty=qty, strategy=variant.strategy, params=params)  # type: ignore[arg-type]
        intents.append((at_ns, side, intent))
    sim = Simulation(config)
    await sim.__aenter__()
    try:
        outcomes = await sim.run([Arrival(at, intent) for at, _, intent in intents])
        messages = list(sim.messages)
    finally:
        diag["stuck_stops"] = diag.get("stuck_stops", 0) + await _stop(sim)
    # `sim.messages` is what core NATS delivered; JetStream drops a re-publication with the same Nats-Msg-Id,
    # so the actors (and this bench) see each message id once.
    by_intent: dict[str, list[Any]] = {}
    seen: set[str] = set()
    for m in messages:
        if m.msg_id and m.msg_id in seen:
            diag["republished"] = diag.get("republished", 0) + 1
            continue
        seen.add(m.msg_id)
        by_intent.setdefault(m.intent_id, []).append(m)
    rows = []
    for i, (at_ns, side, intent) in enumerate(intents):
        mine = by_intent.get(intent.intent_id, [])
        fills = [m for m in mine if isinstance(m, OrderFilled)]
        for m in mine:
            if isinstance(m, OrderRejected):
                rejected = diag.setdefault("order_rejections", {})
                rejected[m.error] = rejected.get(m.error, 0) + 1
        maker = sum((m.qty for m in fills if m.liquidity == "maker"), Decimal(0))
        row = _score(variant, size_label, qty, pass_no, i, side, at_ns, outcomes[intent.intent_id], maker, prof)
        rows.append(row)
        for m in fills:
            diag["fills"] = diag.get("fills", 0) + 1
            if m.qty % prof.amount_step:
                diag["off_lot_fills"] = diag.get("off_lot_fills", 0) + 1
            if m.liquidity == "maker":
                bid, ask = prof.touch_at(m.ts_event)
                through = ask <= m.price if m.side == "buy" else bid >= m.price
                key = "maker_qty_book_through" if through else "maker_qty_other"
                diag[key] = diag.get(key, Decimal(0)) + m.qty
        if not row.complete and row.status != "rejected" and Decimal(row.qty) - Decimal(row.filled_qty) < prof.amount_step:
            diag["sub_lot_remainders"] = diag.get("sub_lot_remainders", 0) + 1
        if variant.label == "aggressive_limit" and row.attempts >= 2:
            score = _sample_score(row, mine)
            current = sample[0]
            if current is None or score > current.score:
                sample[0] = Sample(score, row, mine)
    return rows


async def _stop(sim: Any) -> int:
    """`sim.__aexit__`, unblocked if it hangs; returns how many times it had to be.

    nats-py swallows `CancelledError` in places (`Client._flush_pending` catches it and passes), so an actor's
    background task cancelled at that moment — seen with the partition-lease loop — carries on, and the
    system's stop awaits it forever. Such a task has `cancelling() > 0` and is not done: cancel it again.
    """
    import asyncio

    stop = asyncio.ensure_future(sim.__aexit__(None, None, None))
    unblocked = 0
    while True:
        done, _ = await asyncio.wait({stop}, timeout=STOP_CHECK_S)
        if done:
            stop.result()
            return unblocked
        stuck = [t for t in asyncio.all_tasks() if t is not stop and not t.done() and t.cancelling()]
        for task in stuck:
            task.cancel()
        unblocked += 1 if stuck else 0
        if unblocked > 50:
            raise RuntimeError(f"the simulation did not stop; stuck tasks: {[t.get_name() for t in stuck]}")


# -- statistics -------------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return {"n": 0, "mean": math.nan, "p50": math.nan, "p95": math.nan}
    return {"n": len(data), "mean": sum(data) / len(data), "p50": percentile(data, 50), "p95": percentile(data, 95)}


def _mean(values: list[float]) -> float:
    data = [v for v in values if not math.isnan(v)]
    return sum(data) / len(data) if data else math.nan


def _paired(rows: list[Row], base: list[Row]) -> dict[str, float]:
    """Mean of (this - baseline) over the same arrivals, its 95 % CI half-width, and how often this was cheaper."""
    ref = {(r.pass_no, r.index): r.is_bps for r in base}
    diffs = [r.is_bps - ref[(r.pass_no, r.index)] for r in rows if (r.pass_no, r.index) in ref]
    if not diffs:
        return {"n": 0, "mean": math.nan, "ci95": math.nan, "cheaper": math.nan}
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else math.nan
    return {"n": len(diffs), "mean": mean, "ci95": 1.96 * sd / math.sqrt(len(diffs)),
            "cheaper": sum(1 for d in diffs if d < 0) / len(diffs)}


def _summary(rows: list[Row]) -> dict[str, Any]:
    done = [r for r in rows if r.complete]
    n = len(rows)
    return {
        "n": n,
        "is_bps": _stats([r.is_bps for r in rows]),
        "price_bps_mean": _mean([r.price_bps for r in rows]),
        "fee_bps_mean": _mean([r.fee_bps for r in rows]),
        "opp_bps_mean": _mean([r.opp_bps for r in rows]),
        "maker_share": _mean([r.maker_share for r in rows]),
        "completion": len(done) / n if n else math.nan,
        "in_budget": sum(1 for r in rows if r.in_budget) / n if n else math.nan,
        "filled_share": _mean([float(Decimal(r.filled_qty) / Decimal(r.qty)) for r in rows]),
        "time_s": _stats([r.duration_s for r in done]),
        "time_s_max": max((r.duration_s for r in done), default=math.nan),
        "attempts_mean": _mean([float(r.attempts) for r in rows]),
        "fallback_rate": sum(1 for r in rows if r.fallback_used) / n if n else math.nan,
        "statuses": {s: sum(1 for r in rows if r.status == s) for s in sorted({r.status for r in rows})},
        "incomplete_reasons": _count(r.reason for r in rows if not r.complete),
        "mid_check_failures": sum(1 for r in rows if not r.mid_check),
    }


def _count(items: Any) -> dict[str, int]:
    """Reasons grouped with their numbers and ids blanked ("remainder 2.7E-7 is below ..." -> "remainder # is ...")."""
    out: dict[str, int] = {}
    for item in items:
        key = re.sub(r"\bq-[A-Za-z0-9-]+", "<order>", item)
        key = re.sub(r"\d+(\.\d+)?(E-?\d+)?", "#", key)
        key = key if len(key) < 100 else key[:97] + "..."
        out[key] = out.get(key, 0) + 1
    return out


def _oracle(arrivals: list[tuple[int, int, int, str]], prof: MarketProfile, maker_bps: float) -> list[float]:
    """Whole quantity filled passively at our own touch at arrival, maker fee: maker - half spread."""
    out = []
    for _, _, at_ns, side in arrivals:
        bid, ask = prof.touch_at(at_ns)
        mid = (bid + ask) / 2
        price = bid if side == "buy" else ask
        sign = 1 if side == "buy" else -1
        out.append(float(sign * (price - mid) / mid * BPS) + maker_bps)
    return out


# -- the sample plot ---------------------------------------------------------------------------------------------


def sample_title(row: Row, prof: MarketProfile) -> str:
    """The sample plot's title: the execution, on the recorded market's own symbol."""
    return (f"aggressive_limit {row.side} {row.qty} {prof.symbol} ({row.intent_id}): shortfall {row.is_bps:+.2f} bps "
            f"incl. fees, {row.attempts} attempts" + (", market fallback" if row.fallback_used else ""))


def _plot_sample(sample: Sample, prof: MarketProfile, path: Path, fees: tuple[float, float]) -> dict[str, Any]:
    from bench.plot import EventMark, ExecutionPlot, FillMark, OrderSpan, plot_execution
    from messages import (AttemptTimedOut, ExecutionCompleted, ExecutionTimedOut, OrderFilled, OrderFinalized,
                          OrderPlaced, PlaceOrder)

    row, msgs = sample.row, sample.messages
    t0 = row.at_ns
    report = next((m for m in msgs if isinstance(m, ExecutionCompleted)), None)
    end_ns = report.completed_ns if report is not None else max(m.ts_event for m in msgs)
    sec = lambda ns: (ns - t0) / NS  # noqa: E731
    quotes, trades = _window(prof, t0 - 2 * NS, end_ns + 2 * NS)
    placed = {m.client_order_id: m for m in msgs if isinstance(m, OrderPlaced)}
    final = {m.client_order_id: m for m in msgs if isinstance(m, OrderFinalized)}
    modes = ["touch", "inside", "cross"]
    orders, timeline = [], []
    for m in msgs:
        if isinstance(m, PlaceOrder):
            start = placed[m.client_order_id].ts_event if m.client_order_id in placed else m.ts_event
            stop = final[m.client_order_id].ts_event if m.client_order_id in final else end_ns
            if m.origin == "market_fallback":
                label = f"fallback: market {m.side} {m.qty}"
            else:
                mode = modes[min(m.attempt - 1, 2)]
                label = f"attempt {m.attempt} ({mode}): limit {m.side} {m.qty} @ {m.price}"
            orders.append(OrderSpan(label, sec(start), sec(stop), None if m.price is None else float(m.price),
                                    m.order_type))
    fill_msgs = [m for m in msgs if isinstance(m, OrderFilled)]
    fills = [FillMark(sec(m.ts_event), float(m.price), float(m.qty), m.liquidity) for m in fill_msgs]
    for cid in dict.fromkeys(m.client_order_id for m in fill_msgs):  # one label per order, at its last fill
        own = [m for m in fill_msgs if m.client_order_id == cid]
        qty = sum((m.qty for m in own), Decimal(0))
        avg = sum((m.qty * m.price for m in own), Decimal(0)) / qty
        who = "fallback" if own[0].attempt == 0 else f"attempt {own[0].attempt}"
        kinds = "/".join(sorted({m.liquidity for m in own}))
        text = (f"{who}: {_num(qty)} @ {fmt_price(avg, prof.tick)} ({kinds})" if len(own) == 1 else
                f"{who}: {_num(qty)} in {len(own)} fills, avg {fmt_price(avg, prof.tick)} ({kinds})")
        last = max(own, key=lambda m: m.ts_event)
        fills.append(FillMark(sec(last.ts_event), float(avg), 0.0, "label", text))
    events = [EventMark(sec(m.ts_event), f"attempt {m.attempt} timed out", "timeout")
              for m in msgs if isinstance(m, AttemptTimedOut)]
    events += [EventMark(sec(m.ts_event), f"budget out: {m.remaining_qty} left -> market", "fallback")
               for m in msgs if isinstance(m, ExecutionTimedOut)]
    for m in msgs:
        timeline.append({"t_s": round(sec(m.ts_event), 6), "type": type(m).__name__,
                         **{k: str(getattr(m, k)) for k in ("client_order_id", "attempt", "price", "qty", "liquidity")
                            if hasattr(m, k) and getattr(m, k) is not None}})
    data = ExecutionPlot(
        title=sample_title(row, prof),
        subtitle=(f"arrival mid {fmt_price(Decimal(row.arrival_mid or 0), prof.tick, 1)}; avg fill "
                  f"{fmt_price(None if row.avg_price is None else Decimal(row.avg_price), prof.tick)}; fees maker "
                  f"{fees[0]:g} / taker {fees[1]:g} bps; maker share {row.maker_share:.0%}; "
                  f"market time, 0 = arrival"),
        quotes=[(sec(t), float(b), float(a)) for t, b, a in quotes],
        trades=[(sec(t), float(p), float(q), buy) for t, p, q, buy in trades],
        orders=orders, fills=fills, events=events,
        arrival_mid=float(row.arrival_mid) if row.arrival_mid else None,
        footnote=("Bid/ask: the recorded Binance book (depth stream) replayed without our orders, at every change; "
                  "dots: the recorded market trades (size ~ qty). Our orders, fills, timeouts and the fallback: the "
                  "execbus messages of this execution (PlaceOrder/OrderPlaced/OrderFinalized, OrderFilled, "
                  "AttemptTimedOut, ExecutionTimedOut) in simulated market time."),
    )
    plot_execution(data, path)
    return {"intent_id": row.intent_id, "path": str(path), "title": data.title, "row": asdict(row),
            "timeline": timeline}


def _num(value: Decimal, places: int | None = None) -> str:
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = format(value.normalize(), "f") if places is None else format(value, "f")
    return text


def _window(prof: MarketProfile, start_ns: int, end_ns: int
            ) -> tuple[list[tuple[int, Decimal, Decimal]], list[tuple[int, Decimal, Decimal, bool]]]:
    """Recorded top of book (at every change) and trades between two market times, from the profile and a
    second replay of the recording for the trades."""
    from venues.marketdata import RecordingSource, TradePrint

    i = max(bisect_right(prof.ts, start_ns) - 1, 0)
    quotes: list[tuple[int, Decimal, Decimal]] = []
    while i < len(prof.ts) and prof.ts[i] <= end_ns:
        if not quotes or (prof.bid[i], prof.ask[i]) != quotes[-1][1:]:
            quotes.append((max(prof.ts[i], start_ns), prof.bid[i], prof.ask[i]))
        i += 1
    trades = []
    for ev in RecordingSource(prof.files):
        if ev.ts > end_ns:
            break
        if isinstance(ev, TradePrint) and ev.ts >= start_ns:
            trades.append((ev.ts, ev.price, ev.qty, not ev.buyer_maker))
    return quotes, trades


# -- entry point ------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="execbus bench quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", metavar="PATH",
                   help="recording files (Binance `<ns> <json>` gzip lines), played in order as one stream; "
                        "default: the full BTC/USDT recording in <repo>/../shared/data/market/ if present, "
                        "else the shipped sample")
    p.add_argument("--n", type=int, help=f"intents per strategy and size (default {DEFAULT_N}; quick {QUICK_N})")
    p.add_argument("--seed", type=int, default=1, help="arrival times and sides (default 1)")
    p.add_argument("--maker-bps", type=float, default=2.0, help="maker fee in bps (default 2 = 0.02%%)")
    p.add_argument("--taker-bps", type=float, default=4.0, help="taker fee in bps (default 4 = 0.04%%)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help="aggressive total_timeout_seconds and simple_limit timeout_seconds (default 13)")
    p.add_argument("--sizes", default="0.01,auto,10",
                   help="small,touch,deep in base units; 'auto' = median best-level quantity (default 0.01,auto,10)")
    p.add_argument("--strategies", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: {', '.join(DEFAULT_VARIANTS)}); "
                        "market is always run")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=STRATEGY[:k=v,...]",
                   help="an extra strategy variant, e.g. agg2=aggressive_limit:max_retries=2 (repeatable)")
    p.add_argument("--plot", metavar="PNG", help="where to draw the sample execution "
                   "(default bench/results/quality_sample.png; quick: quality_sample-quick.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--rows", metavar="JSONL", help="also write every scored execution as one JSON line")
    return p


async def run(quick: bool, args: list[str]) -> BenchResult:
    from bench import plot as plotting
    from bus.logging import configure_logging

    configure_logging("warning")  # a no-op if the CLI configured logging already
    opts = _parser().parse_args(args)
    wall0 = time.perf_counter()
    n = opts.n or (QUICK_N if quick else DEFAULT_N)
    files = [str(Path(f)) for f in opts.data] if opts.data else default_files()
    do_plot = not opts.no_plot
    plot_path = Path(opts.plot) if opts.plot else RESULTS_DIR / ("quality_sample-quick.png" if quick else "quality_sample.png")
    notes: list[str] = []
    if do_plot and not plotting.available():
        if not quick:
            raise plotting.MatplotlibMissing(
                f"bench quality draws a PNG and needs matplotlib: {plotting.INSTALL_HINT} (or pass --no-plot)")
        do_plot = False
        notes.append("matplotlib is not installed: the sample plot was skipped (quick mode)")

    budget = opts.budget
    catalogue = _variants(budget)
    wanted = [s.strip() for s in opts.strategies.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in catalogue]
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; known: {', '.join(catalogue)}")
    variants = [catalogue["market"]] + [catalogue[s] for s in wanted if s != "market"]
    variants += [_custom_variant(spec, budget) for spec in opts.variant]

    raw_sizes = [s.strip() for s in opts.sizes.split(",")]
    if len(raw_sizes) != 3:
        raise SystemExit("--sizes takes three values: small,touch,deep")
    t = time.perf_counter()
    prof = profile_market(files)
    touch, touch_raw = touch_size(prof)
    sizes = {label: touch if raw == "auto" else Decimal(raw) for label, raw in zip(("small", "touch", "deep"), raw_sizes)}
    sweeps = {str(qty): sweep_stats(prof, qty) for qty in sizes.values()}
    profile_s = time.perf_counter() - t
    max_budget = max([v.budget_s or 0.0 for v in variants] + [budget])
    schedule = make_schedule(prof.start_ns, prof.end_ns, n, opts.seed, budget_s=max_budget)
    arrivals = [(p, i, at, side) for p, one in enumerate(schedule) for i, (at, side) in enumerate(one)]
    config = _venue_config(files, opts.maker_bps, opts.taker_bps, prof.symbol)

    rows: dict[tuple[str, str], list[Row]] = {}
    diags: dict[tuple[str, str], dict[str, Any]] = {}
    sample: list[Sample | None] = [None]
    sims = 0
    t = time.perf_counter()
    for size_label, qty in sizes.items():
        for variant in variants:
            cell: list[Row] = []
            diag: dict[str, Any] = {}
            for pass_no, one in enumerate(schedule):
                cell += await _run_pass(config, variant, size_label, qty, pass_no, one, prof, sample, diag)
                sims += 1
            rows[(size_label, variant.label)] = cell
            diags[(size_label, variant.label)] = diag
    sim_s = time.perf_counter() - t

    # -- tables and targets
    summaries: dict[str, dict[str, Any]] = {}
    table_rows: list[list[Any]] = []
    diag_rows: list[list[Any]] = []
    oracle = _stats(_oracle(arrivals, prof, opts.maker_bps))
    for size_label, qty in sizes.items():
        base = rows[(size_label, "market")]
        summaries[size_label] = {"qty": str(qty)}
        for variant in variants:
            cell = rows[(size_label, variant.label)]
            s = _summary(cell)
            s["vs_market"] = _paired(cell, base) if variant.label != "market" else None
            d = diags[(size_label, variant.label)]
            maker_qty = d.get("maker_qty_book_through", Decimal(0)) + d.get("maker_qty_other", Decimal(0))
            s["sim"] = {
                "fills": d.get("fills", 0),
                "off_lot_fills": d.get("off_lot_fills", 0),
                "sub_lot_remainders": d.get("sub_lot_remainders", 0),
                "republished_msgs": d.get("republished", 0),
                "stuck_stops_unblocked": d.get("stuck_stops", 0),
                "order_rejections": dict(sorted(d.get("order_rejections", {}).items())),
                "maker_share_book_through": float(d.get("maker_qty_book_through", 0) / maker_qty) if maker_qty else None,
            }
            diag_rows.append([size_label, variant.label, _pct(s["maker_share"]),
                              _pct(s["sim"]["maker_share_book_through"]) if maker_qty else "-",
                              s["sim"]["fills"], s["sim"]["off_lot_fills"], s["sim"]["sub_lot_remainders"],
                              s["sim"]["republished_msgs"]])
            summaries[size_label][variant.label] = s
            vs = s["vs_market"]
            table_rows.append([
                size_label, str(qty), variant.label, s["n"], s["is_bps"]["mean"], s["is_bps"]["p50"],
                s["is_bps"]["p95"], s["price_bps_mean"], s["fee_bps_mean"], s["opp_bps_mean"],
                f"{vs['mean']:+.2f} ±{vs['ci95']:.2f}" if vs else "(baseline)",
                _pct(s["completion"]), _pct(s["in_budget"]), s["time_s"]["mean"], s["time_s"]["p95"],
                s["attempts_mean"], _pct(s["fallback_rate"]), _pct(s["maker_share"]),
            ])
        summaries[size_label]["oracle"] = oracle
        table_rows.append([size_label, str(qty), "oracle bound", oracle["n"], oracle["mean"], oracle["p50"],
                           oracle["p95"], oracle["mean"] - opts.maker_bps, opts.maker_bps, 0.0,
                           _oracle_vs(arrivals, prof, opts.maker_bps, rows[(size_label, "market")]),
                           "(assumed)", "-", 0.0, 0.0, 1.0, "-", "100%"])
    main = Table(
        title=(f"Execution quality: implementation shortfall vs arrival mid in bps, positive = cost, fees included "
               f"(maker {opts.maker_bps:g} / taker {opts.taker_bps:g} bps); N={n} per row; budget {budget:g} s"),
        headers=["size", "qty", "strategy", "n", "IS mean", "IS p50", "IS p95", "ex-fee mean", "fees",
                 "opp. cost", "vs market (95% CI)", "completed", "in budget", "t mean s", "t p95 s", "attempts",
                 "fallback", "maker fill"],
        rows=table_rows,
    )
    sweep_rows = [[label, str(qty), sweeps[str(qty)]["levels_p50"], sweeps[str(qty)]["levels_p95"],
                   sweeps[str(qty)]["cost_bps_p50"], sweeps[str(qty)]["cost_bps_p95"]] for label, qty in sizes.items()]
    data_table = Table(
        title=(f"The recording: {(prof.end_ns - prof.start_ns) / NS:.0f} s of {prof.symbol}; median best-level "
               f"quantity {touch_raw.normalize()} -> at-touch size {touch}; a market order of each size walks "
               f"(1 s grid, both sides):"),
        headers=["size", "qty", "levels p50", "levels p95", "sweep cost p50 bps", "sweep cost p95 bps"],
        rows=sweep_rows,
    )

    diag_table = Table(
        title=("Simulation diagnostics: maker fills, and the share of maker quantity filled while the recorded book "
               "stood through our price (the venue's crossed-book rule); fills whose quantity is off the "
               f"{prof.amount_step} lot; executions left with less than one lot; messages re-published "
               "(same message id, dropped by JetStream)"),
        headers=["size", "strategy", "maker fill", "of it book-through", "fills", "off-lot fills",
                 "sub-lot remainders", "re-published"],
        rows=diag_rows,
    )

    agg = "aggressive_limit"
    targets: list[Target] = []
    if agg in [v.label for v in variants]:
        parts, beats, complete, misses = [], True, True, []
        for size_label, qty in sizes.items():
            s, m = summaries[size_label][agg], summaries[size_label]["market"]
            vs = s["vs_market"]
            beats &= s["is_bps"]["mean"] < m["is_bps"]["mean"]
            complete &= s["in_budget"] >= 1.0
            parts.append(f"{size_label} {qty}: {s['is_bps']['mean']:.2f} vs {m['is_bps']['mean']:.2f} bps "
                         f"(paired {vs['mean']:+.2f} ±{vs['ci95']:.2f}), {_pct(s['in_budget'])} in budget")
            missed = [r for r in rows[(size_label, agg)] if not r.in_budget]
            sub_lot = sum(1 for r in missed if Decimal(r.qty) - Decimal(r.filled_qty) < prof.amount_step)
            if missed:
                others = _count(r.reason for r in missed if Decimal(r.qty) - Decimal(r.filled_qty) >= prof.amount_step)
                misses.append(f"{size_label}: {len(missed)} missed"
                              + (f", {sub_lot} left with less than one lot ({prof.amount_step})" if sub_lot else "")
                              + (f": {others}" if others else ""))
        targets.append(Target(
            name="quality",
            target="Aggressive limit beats the market baseline on mean shortfall (fees included) at every size, "
                   "with 100% completion within its time budget thanks to fallback",
            measured="; ".join(parts),
            met=beats and complete,
            note=("beats market at every size: " + ("yes" if beats else "NO")
                  + "; 100% complete in budget: " + ("yes" if complete else "NO")
                  + ("" if not misses else " (" + "; ".join(misses) + ")")),
        ))

    notes += [f"target {t.name}: {t.note}" for t in targets]
    sample_info: dict[str, Any] | None = None
    if sample[0] is not None and do_plot:
        sample_info = _plot_sample(sample[0], prof, plot_path, (opts.maker_bps, opts.taker_bps))
        notes.append(f"sample execution plotted: {sample_info['intent_id']} -> {plot_path}")
    elif sample[0] is not None:
        sample_info = {"intent_id": sample[0].row.intent_id, "path": None, "title": sample_title(sample[0].row, prof),
                       "row": asdict(sample[0].row)}
    if opts.rows:
        with open(opts.rows, "w") as fh:
            for cell in rows.values():
                for r in cell:
                    fh.write(json.dumps(asdict(r)) + "\n")

    mismatched = sum(s[v.label]["mid_check_failures"] for s in summaries.values() for v in variants)
    notes.append(f"arrival mid cross-check: {mismatched} report(s) whose arrival mid differs from the replayed "
                 "recorded book at the arrival instant")
    notes += _findings(summaries, sizes, variants)
    stuck = sum(d.get("stuck_stops", 0) for d in diags.values())
    if stuck:
        notes.append(f"{stuck} simulation stop(s) hung on a task that ignored its cancellation (nats-py swallows "
                     "CancelledError in Client._flush_pending) and were unblocked by cancelling it again")
    notes += [
        "no latency is simulated: orders reach the venue at the market instant they are decided (favours every "
        "strategy, the chasing ones most)",
        "our orders do not move the recorded market: a resting order fills when the recorded book moves through "
        "its price, whatever its size (the diagnostics table shows how much maker quantity came that way); this "
        "flatters large passive orders",
    ]
    return BenchResult(
        params={
            "data": [Path(f).name for f in files],
            "n": n,
            "seed": opts.seed,
            "maker_bps": opts.maker_bps,
            "taker_bps": opts.taker_bps,
            "budget_s": budget,
            "sizes": {k: str(v) for k, v in sizes.items()},
            "touch_size_rule": "median displayed quantity at best bid and best ask after each depth update, "
                               "both sides pooled, 2 significant figures",
            "arrival_spacing_s": f">= {max_budget + MARGIN_S:g} + U(0, {JITTER_S:g})",
            "passes": len(schedule),
            "strategies": {v.label: {"strategy": v.strategy, "params": v.params, "budget_s": v.budget_s,
                                     "note": v.note} for v in variants},
        },
        results={
            "recording": {"symbol": prof.symbol, "tick_size": str(prof.tick), "amount_step": str(prof.amount_step),
                          "start_ns": prof.start_ns, "end_ns": prof.end_ns,
                          "seconds": round((prof.end_ns - prof.start_ns) / NS, 1),
                          "touch_qty_median": str(touch_raw.normalize()), "sweeps": sweeps},
            "cells": summaries,
            "sample": sample_info,
            "runtime": {"profile_s": round(profile_s, 2), "simulations": sims, "simulate_s": round(sim_s, 1),
                        "executions": sum(len(c) for c in rows.values()),
                        "total_s": round(time.perf_counter() - wall0, 1)},
        },
        tables=[main, data_table, diag_table],
        targets=targets,
        notes=notes,
    )


def _oracle_vs(arrivals: list[tuple[int, int, int, str]], prof: MarketProfile, maker_bps: float,
               base: list[Row]) -> str:
    ref = {(r.pass_no, r.index): r.is_bps for r in base}
    vals = _oracle(arrivals, prof, maker_bps)
    diffs = [v - ref[(p, i)] for v, (p, i, _, _) in zip(vals, arrivals) if (p, i) in ref]
    if not diffs:
        return "-"
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1))
    return f"{mean:+.2f} ±{1.96 * sd / math.sqrt(len(diffs)):.2f}"


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}" if x in (0, 1) else f"{x:.1%}"


def _findings(summaries: dict[str, Any], sizes: dict[str, Decimal], variants: list[Variant]) -> list[str]:
    out = []
    for size_label in sizes:
        for v in variants:
            s = summaries[size_label][v.label]
            if s["incomplete_reasons"]:
                reasons = ", ".join(f"{k!r} x{c}" for k, c in s["incomplete_reasons"].items())
                out.append(f"{size_label}/{v.label}: {s['n'] - round(s['completion'] * s['n'])} not fully filled "
                           f"({reasons})")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.quality [--quick] [options]`: the same as `execbus bench quality`."""
    import asyncio
    import sys

    from bench.common import format_table, machine, write_result

    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    started = time.time()
    desc = machine()
    result = asyncio.run(run(quick, argv))
    for table in result.tables:
        print(format_table(table), end="\n\n")
    for target in result.targets:
        print(f"target {target.name}: {'MET' if target.met else 'NOT MET'} — {target.target}\n  {target.measured}"
              f"\n  {target.note}")
    for note in result.notes:
        print("note:", note)
    print("wrote", write_result("quality", result, quick=quick, out_dir=None, started=started, machine_desc=desc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
