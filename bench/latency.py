"""`execbus bench latency`: intent -> OrderPlaced / ExecutionCompleted, sequentially, next to its baselines.

Set-up (`--layout system`, the default, is what `execbus up` runs): one nats-server; one worker process
with all six actors and the paper venue step-driven at zero simulated latency (the market moves only when
the benchmark advances it); the benchmark client in its own process. `--layout procs` puts each actor and
the venue in its own process (the docker-compose layout).

In blocks of `--block` samples, taking turns so machine noise hits every series alike:

* execbus market: publish `SubmitIntent` -> first `OrderPlaced` and -> `ExecutionCompleted` seen live;
* execbus aggressive_limit: -> first `OrderPlaced`; the benchmark then cancels the resting order at the
  venue (untimed, as a user could on the exchange), the reconciler sees it canceled and the market
  fallback completes the execution, so each one finishes before the next starts;
* monolith: the same strategy code (market rules, pricer's `price_for_mode` / `sweep_average`, rounding)
  calling the same venue directly over NATS from one process — the layered design execbus replaced;
* floor: the bare nats-py chains of `bench.floor` (core NATS, and JetStream + KV with the same durable
  operations), hosted in the same processes as the actors they stand for, plus raw request/reply and
  one-way publish -> subscribe between the benchmark and that process.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import ccxt

from bench.cluster import Cluster, Watch, intent_log
from bench.common import VENUE_HISTORY, BenchResult, Table, Target, progress, summarize
from bench.floor import FloorClient
from bench.worker import _settle as settle
from messages import ExecutionCompleted, AggressiveLimitParams, SubmitIntent, subjects

__all__ = ["run"]

SYMBOL = "BTC/USDT"
QTY = Decimal("0.001")
ACTOR_OPTIONS = {"pricer": {"max_age_s": 3600.0}}  # a step-driven market is frozen, not stale
AGGRESSIVE = AggressiveLimitParams(max_retries=1, attempt_timeout_seconds=Decimal("60"),
                             total_timeout_seconds=Decimal("60"), fallback="market")
FLOOR_HOPS = {"one_way_hops": 5, "venue_round_trips": 1, "jetstream_publishes": 6, "kv_writes": 4, "kv_writes_on_path": 1}
PROCS_FLOOR = {"supervisor": "S,echo", "pricer": "P", "placer": "PL"}


def _ms(t0: int, t1: int) -> float:
    return (t1 - t0) / 1e6


class Monolith:
    """The strategy code called directly: one process, one venue client, a book kept from the venue's
    stream exactly as the pricer keeps it. No bus between the steps."""

    def __init__(self, exchange: Any) -> None:
        self.ex = exchange
        self.book: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Monolith:
        from actors.pricer import BookView

        first = await self.ex.watch_order_book(SYMBOL)
        self.book = BookView.from_ccxt(first, 100)

        async def follow() -> None:
            while True:
                self.book = BookView.from_ccxt(await self.ex.watch_order_book(SYMBOL), 100)

        self._task = asyncio.create_task(follow())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _checked_rules(self, qty: Decimal) -> dict[str, Any]:
        from venues.gateway import market_rules

        rules = market_rules(self.ex, SYMBOL)
        if rules["min_amount"] is not None and qty < rules["min_amount"]:
            raise ValueError("below minimum")
        if rules["amount_step"] is not None and qty % rules["amount_step"] != 0:
            raise ValueError("finer than the amount step")
        return rules

    async def market(self, cid: str, side: str) -> tuple[float, float]:
        """(ms to the venue's answer = placed, ms to a checked fill report = completed)."""
        from actors.pricer import sweep_average

        t0 = time.monotonic_ns()
        self._checked_rules(QTY)
        book = self.book
        sweep_average(book.asks if side == "buy" else book.bids, QTY)
        order = await self.ex.create_order(SYMBOL, "market", side, float(QTY), None, {"clientOrderId": cid})
        t1 = time.monotonic_ns()
        filled = sum((Decimal(t["info"]["qty"]) for t in order["trades"]), Decimal(0))
        if order["status"] != "closed" or filled != QTY:
            raise RuntimeError(f"monolith market order not filled: {order['status']} {filled}")
        return _ms(t0, t1), _ms(t0, time.monotonic_ns())

    async def aggressive(self, cid: str, side: str) -> tuple[float, str]:
        """(ms to the venue's answer for attempt 1, a limit at the touch; the order id)."""
        from actors.pricer import price_for_mode

        t0 = time.monotonic_ns()
        rules = self._checked_rules(QTY)
        bid, ask = self.book.bids[0][0], self.book.asks[0][0]
        tick = rules["tick_size"] or Decimal("0.01")
        price = price_for_mode("touch", side, bid, ask, tick)
        price = (price / tick).to_integral_value(rounding=ROUND_FLOOR if side == "buy" else ROUND_CEILING) * tick
        order = await self.ex.create_order(SYMBOL, "limit", side, float(QTY), float(price), {"clientOrderId": cid})
        return _ms(t0, time.monotonic_ns()), str(order["id"])


def _args(quick: bool, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="execbus bench latency")
    p.add_argument("--n", type=int, default=300 if quick else 10_000, help="samples per series")
    p.add_argument("--block", type=int, default=50 if quick else 100)
    p.add_argument("--warmup", type=int, default=20 if quick else 200)
    p.add_argument("--aggressive-every", type=int, default=1 if quick else 4,
                   help="one aggressive-limit sample per this many market samples (each also costs a cancel "
                        "and a fallback to finish)")
    p.add_argument("--breakdown", type=int, default=30 if quick else 300,
                   help="market intents traced stage by stage (profiled) after the measurement")
    p.add_argument("--layout", choices=["system", "procs"], default="system")
    p.add_argument("--venue-history", type=int, default=VENUE_HISTORY,
                   help="trades/closed orders the paper venue keeps per account (its own default: 100000)")
    p.add_argument("--shape", choices=list(subjects.SHAPES), default=subjects.CURRENT_SHAPE,
                   help="where the EXEC stream stores the partition token (messages/subjects.py): "
                        "partition_last is the shape streams had before, to measure the file-store stalls it had")
    p.add_argument("--stall-watch", action="store_true",
                   help="also time-stamp the EXEC stream's block rollovers (a new N.blk in its store) and every "
                        "market sample, and report how many slow samples start within 1 s of a rollover "
                        "(bench/stall.py has the cause)")
    return p.parse_args(argv)


class _StallWatch:
    """EXEC block rollovers and market sample times, for `--stall-watch` (additive: changes nothing else)."""

    def __init__(self, cluster: Cluster) -> None:
        from bench.stall import StoreWatch

        self.store = StoreWatch(cluster.server.store_dir / "jetstream", "EXEC")
        self.samples: list[tuple[float, float]] = []  # (send time, ms to OrderPlaced)

    def wrap(self, runner: Runner) -> None:
        inner = runner.execbus_market

        async def timed(i: int) -> tuple[float, float] | None:
            t = time.monotonic()
            out = await inner(i)
            if out is not None and i >= 0:
                self.samples.append((t, out[0]))
            return out

        runner.execbus_market = timed  # type: ignore[method-assign]

    def report(self, slow_ms: float = 10.0, near_s: float = 1.0) -> dict[str, Any]:
        self.store.stop()
        rolls = [t for t, _ in self.store.blocks]
        gaps = sorted(b - a for a, b in zip(rolls, rolls[1:]))
        slow = [(t, ms) for t, ms in self.samples if ms >= slow_ms]
        near = [(t, ms) for t, ms in slow if any(-0.2 <= t - r <= near_s for r in rolls)]
        span = (self.samples[-1][0] - self.samples[0][0]) if len(self.samples) > 1 else 0.0
        share = min(1.0, len(rolls) * (near_s + 0.2) / span) if span else None
        return {"block_rollovers": len(rolls), "rollover_gap_s_median": round(gaps[len(gaps) // 2], 2) if gaps else None,
                f"market_samples_over_{slow_ms:g}ms": len(slow),
                f"of_them_within_-0.2..{near_s:g}s_of_a_rollover": len(near),
                "share_of_time_within_that_window": round(share, 3) if share is not None else None,
                "slowest": sorted((round(ms, 1) for _, ms in slow), reverse=True)[:10]}


async def _start(cluster: Cluster, layout: str, history: int) -> None:
    from bus.ops.system import ACTORS

    if layout == "system":
        await cluster.spawn("sys", actors="all", venue="stepped", options=ACTOR_OPTIONS, floor="S,P,PL,V,echo",
                            history=history)
    else:
        await cluster.spawn("venue", venue="stepped", floor="V", history=history)
        for name in ACTORS:
            await cluster.spawn(name, actors=name, options=ACTOR_OPTIONS, floor=PROCS_FLOOR.get(name, ""))
    await cluster.wait_partitions()


class Runner:
    def __init__(self, cluster: Cluster, watch: Watch, control: Any, mono: Monolith, floor: FloorClient) -> None:
        self.c, self.watch, self.control, self.mono, self.floor = cluster, watch, control, mono, floor
        self.failures: list[str] = []
        self.failed_ids: list[str] = []
        self.aggressive_every = 1

    def _check(self, iid: str, report: Any) -> None:
        if not isinstance(report, ExecutionCompleted) or report.status != "filled":
            self.failures.append(f"{iid}: {getattr(report, 'status', report)!r}"[:400])
            self.failed_ids.append(iid)

    async def execbus_market(self, i: int) -> tuple[float, float] | None:
        """(ms to OrderPlaced, ms to ExecutionCompleted); None (and a failure) if it did not complete."""
        assert self.c.bus is not None
        iid = f"m{i}"
        intent = SubmitIntent(intent_id=iid, venue="paper", symbol=SYMBOL, side="buy" if i % 2 else "sell", qty=QTY)
        placed, done = self.watch.expect("order_placed", iid), self.watch.expect("execution_completed", iid)
        t0 = time.monotonic_ns()
        await self.c.bus.publish(intent)
        try:
            t_placed, _ = await asyncio.wait_for(placed, 60)
            t_done, report = await asyncio.wait_for(done, 60)
        except asyncio.TimeoutError:
            self._check(iid, "no OrderPlaced/ExecutionCompleted within 60 s")
            return None
        finally:
            self.watch.forget(iid)
        self._check(iid, report)
        return _ms(t0, t_placed), _ms(t0, t_done)

    async def execbus_aggressive(self, i: int) -> float | None:
        assert self.c.bus is not None
        iid = f"a{i}"
        intent = SubmitIntent(intent_id=iid, venue="paper", symbol=SYMBOL, side="buy" if i % 2 else "sell",
                              qty=QTY, strategy="aggressive_limit", params=AGGRESSIVE)
        placed, done = self.watch.expect("order_placed", iid), self.watch.expect("execution_completed", iid)
        t0 = time.monotonic_ns()
        await self.c.bus.publish(intent)
        try:
            t_placed, msg = await asyncio.wait_for(placed, 60)
            await self._cancel_at_venue(self.control, msg.order_id)
            _, report = await asyncio.wait_for(done, 120)
        except asyncio.TimeoutError:
            self._check(iid, "no OrderPlaced/ExecutionCompleted in time")
            return None
        finally:
            self.watch.forget(iid)
        self._check(iid, report)
        return _ms(t0, t_placed)

    async def mono_aggressive(self, i: int) -> float:
        ms, order_id = await self.mono.aggressive(f"ma{i}", "buy" if i % 2 else "sell")
        await self._cancel_at_venue(self.mono.ex, order_id)
        return ms

    @staticmethod
    async def _cancel_at_venue(exchange: Any, order_id: str) -> None:
        """Cancel a resting order at the venue itself, as a user would on the exchange's own screen (untimed)."""
        try:
            await exchange.cancel_order(order_id, SYMBOL)
        except ccxt.OrderNotFound:
            pass  # it filled or was already canceled: the execution ends either way

    async def block(self, start: int, size: int, s: dict[str, list[float]]) -> None:
        # Market orders take from a frozen book; moving the market on between blocks (untimed) lets the
        # recorded depth refill the levels they took. Two seconds of recorded market arrive at once, which
        # a live feed never does: every process digests that burst (untimed) before the block is measured,
        # or the first samples of whichever series runs first would carry it.
        await self.control.paper_control("advance", {"seconds": 2})
        await asyncio.gather(*(self.c.call(wid, "settle") for wid in self.c.workers), settle())
        for i in range(start, start + size):
            market = await self.execbus_market(i)
            if market is not None:
                s["execbus_market_placed"].append(market[0])
                s["execbus_market_completed"].append(market[1])
            if i % self.aggressive_every == 0:
                aggressive = await self.execbus_aggressive(i)
                if aggressive is not None:
                    s["execbus_aggressive_placed"].append(aggressive)
        for i in range(start, start + size):
            placed, done = await self.mono.market(f"mm{i}", "buy" if i % 2 else "sell")
            s["monolith_market_placed"].append(placed)
            s["monolith_market_completed"].append(done)
            if i % self.aggressive_every == 0:
                s["monolith_aggressive_placed"].append(await self.mono_aggressive(i))
        for _ in range(size):
            s["floor_core_chain"].append(await self.floor.chain("core"))
        for _ in range(size):
            s["floor_js_chain"].append(await self.floor.chain("js"))
        for _ in range(size):
            s["nats_request_reply_rtt"].append(await self.floor.rtt())
        for _ in range(size):
            await self.floor.one_way()


STAGES = [
    ("submit_intent", "intent_accepted", "supervisor: delivery, validation, intent-id KV guard, IntentAccepted"),
    ("intent_accepted", "price_requested", "supervisor: IntentAccepted publish ack, PriceRequested"),
    ("price_requested", "price_quoted", "pricer: delivery, quote, PriceQuoted"),
    ("price_quoted", "place_order", "supervisor: delivery (after its own state save), PlaceOrder"),
    ("place_order", "order_placed", "placer: delivery, venue create_order round trip, OrderPlaced"),
    ("order_placed", "order_filled", "reconciler: venue fill events -> OrderFilled"),
    ("order_filled", "order_finalized", "reconciler: OrderFinalized"),
    ("order_finalized", "strategy_finished", "supervisor: delivery, StrategyFinished"),
    ("strategy_finished", "execution_completed", "tracker: delivery, ExecutionCompleted"),
]


async def breakdown(cluster: Cluster, n: int) -> dict[str, Any]:
    """Where the time of a market intent goes: gaps between the `ts_init` (wall clock, stamped just before
    each publish) of consecutive messages of the choreography, over `n` sequential intents, with the
    actors' process under cProfile (so the gaps here are inflated; the measured series are not)."""
    from bench.profiling import summarize_profile

    assert cluster.bus is not None
    kinds = sorted({k for a, b, _ in STAGES for k in (a, b)})
    watch = await Watch(cluster.bus, kinds).start()
    wid = next(w.wid for w in cluster.workers.values() if "supervisor" in w.actors)
    await cluster.call(wid, "profile_start")
    gaps: dict[str, list[float]] = {label: [] for _, _, label in STAGES}
    seen_ms: list[float] = []
    for i in range(n):
        iid = f"b{i}"
        done = watch.expect("execution_completed", iid)
        placed = watch.expect("order_placed", iid)
        await cluster.bus.publish(SubmitIntent(intent_id=iid, venue="paper", symbol=SYMBOL,
                                               side="buy" if i % 2 else "sell", qty=QTY))
        t_seen, placed_msg = await asyncio.wait_for(placed, 60)
        await asyncio.wait_for(done, 60)
        stamps = {k: watch.first[(k, iid)][1].ts_init for k in kinds if (k, iid) in watch.first}
        for a, b, label in STAGES:
            if a in stamps and b in stamps:
                gaps[label].append((stamps[b] - stamps[a]) / 1e6)
        seen_ms.append((time.time_ns() - placed_msg.ts_init) / 1e6 - (time.monotonic_ns() - t_seen) / 1e6)
        watch.forget(iid)
    path = str(cluster.dir / "latency-breakdown.pstats")
    await cluster.call(wid, "profile_stop", {"path": path})
    profile = summarize_profile(path, top=15)
    profile["cpu_ms_per_intent_under_profiler"] = round(profile["busy_s"] * 1000 / n, 3)
    stages = {label: summarize(v) for label, v in gaps.items()}
    stages["OrderPlaced published -> seen by the benchmark"] = summarize(seen_ms)
    return {"n": n, "worker": wid, "stages_ms": stages, "profile": profile}


SERIES = [
    "execbus_market_placed", "execbus_market_completed", "execbus_aggressive_placed",
    "monolith_market_placed", "monolith_market_completed", "monolith_aggressive_placed",
    "floor_core_chain", "floor_js_chain", "nats_request_reply_rtt", "nats_one_way",
]


async def run(quick: bool, argv: list[str]) -> BenchResult:
    args = _args(quick, argv)
    samples: dict[str, list[float]] = {k: [] for k in SERIES}
    async with Cluster(shape=args.shape) as cluster:
        await _start(cluster, args.layout, args.venue_history)
        assert cluster.bus is not None
        watch = await Watch(cluster.bus, ["order_placed", "execution_completed"]).start()
        control = await cluster.exchange("main")
        mono = await Monolith(await cluster.exchange("mono")).start()
        floor = await FloorClient(cluster.nc).start()
        runner = Runner(cluster, watch, control, mono, floor)
        runner.aggressive_every = args.aggressive_every
        stall_watch = _StallWatch(cluster) if args.stall_watch else None
        if stall_watch is not None:
            stall_watch.store.start()
            stall_watch.wrap(runner)
        await runner.block(-args.warmup, args.warmup, {k: [] for k in SERIES})  # warm-up, discarded
        await floor.one_way_samples()
        cpu0 = cluster.stats()
        t0 = time.monotonic()
        done = 0
        while done < args.n:
            size = min(args.block, args.n - done)
            await runner.block(done, size, samples)
            samples["nats_one_way"] += await floor.one_way_samples()
            done += size
            progress(f"latency: {done}/{args.n} samples per series ({time.monotonic() - t0:.0f} s)")
        wall = time.monotonic() - t0
        cpu1 = cluster.stats()
        await mono.stop()
        logs = {iid: await intent_log(cluster, iid) for iid in runner.failed_ids[:5]}
        progress("latency: breakdown of the market path (profiled)")
        where = await breakdown(cluster, args.breakdown)
        status = {w.wid: (await cluster.call(w.wid, "status"))["actors"] for w in cluster.workers.values()
                  if w.actors}
    result = _result(args, samples, runner.failures, logs, wall, cpu0, cpu1)
    if stall_watch is not None:
        result.results["stall_watch"] = stall_watch.report()
        result.tables.append(Table("EXEC block rollovers vs slow market samples (--stall-watch)", ["measure", "value"],
                                   [[k, v] for k, v in result.results["stall_watch"].items()]))
    result.results["worker_log_warnings"] = cluster.log_summary
    result.results["worker_log_errors"] = cluster.log_examples[:6]
    result.results["breakdown"] = where
    result.results["actor_counters_at_end"] = {
        wid: {name: {k: v for k, v in st.items() if isinstance(v, int) and not isinstance(v, bool)}
              for name, st in actors.items()} for wid, actors in status.items()}
    result.tables.insert(1, Table(
        f"where a market intent's time goes (p50 over {where['n']}, ms; worker under cProfile, so inflated)",
        ["stage", "p50", "p90", "p99"],
        [[label, s.get("p50"), s.get("p90"), s.get("p99")] for label, s in where["stages_ms"].items()]))
    result.tables.insert(2, Table(
        f"CPU of worker '{where['worker']}' by area (cProfile, {where['profile']['cpu_ms_per_intent_under_profiler']} "
        "ms per intent under the profiler)", ["area", "own s", "share"],
        [[a["area"], a["own_s"], a["share_of_busy"]] for a in where["profile"]["by_area"][:10]]))
    return result


def _result(args: argparse.Namespace, samples: dict[str, list[float]], failures: list[str],
            logs: dict[str, list[str]], wall: float,
            cpu0: dict[str, Any], cpu1: dict[str, Any]) -> BenchResult:
    stats = {k: summarize(v) for k, v in samples.items()}
    placed, completed = stats["execbus_market_placed"], stats["execbus_market_completed"]
    core, js = stats["floor_core_chain"], stats["floor_js_chain"]
    mono_p, mono_c = stats["monolith_market_placed"], stats["monolith_market_completed"]
    hops = FLOOR_HOPS["one_way_hops"] + 2 * FLOOR_HOPS["venue_round_trips"]
    ratios = {
        "execbus_over_floor_js_p50": round(placed["p50"] / js["p50"], 2),
        "execbus_over_floor_js_p99": round(placed["p99"] / js["p99"], 2),
        "execbus_over_floor_core_p50": round(placed["p50"] / core["p50"], 2),
        "execbus_over_floor_core_p99": round(placed["p99"] / core["p99"], 2),
        "floor_js_over_floor_core_p50": round(js["p50"] / core["p50"], 2),
        "floor_core_per_hop_p50_ms": round(core["p50"] / hops, 3),
        "execbus_per_hop_p50_ms": round(placed["p50"] / hops, 3),
        "execbus_minus_monolith_placed_p50_ms": round(placed["p50"] - mono_p["p50"], 3),
        "execbus_minus_monolith_completed_p50_ms": round(completed["p50"] - mono_c["p50"], 3),
        "execbus_minus_monolith_aggressive_placed_p50_ms": round(
            stats["execbus_aggressive_placed"]["p50"] - stats["monolith_aggressive_placed"]["p50"], 3),
    }
    cpu = {k: round(cpu1[k].cpu_s - cpu0[k].cpu_s, 2) for k in cpu1 if k in cpu0}
    rows = [[k] + [stats[k].get(q) for q in ("n", "p50", "p90", "p99", "p99.9", "max")] for k in SERIES]
    tables = [
        Table(f"latency, ms (layout: {args.layout}; sequential; every series interleaved in blocks of {args.block})",
              ["series", "n", "p50", "p90", "p99", "p99.9", "max"], rows),
        Table("ratios and differences (intent -> OrderPlaced, market)", ["measure", "value"],
              [[k, v] for k, v in ratios.items()]),
    ]
    targets = [
        Target("intent->OrderPlaced p50 vs bare chain, same hops and round trips (JetStream+KV)",
               "<= 1.5x", f"{ratios['execbus_over_floor_js_p50']}x ({placed['p50']} vs {js['p50']} ms)",
               ratios["execbus_over_floor_js_p50"] <= 1.5),
        Target("intent->OrderPlaced p50 vs bare core-NATS chain (same hops, no durability)",
               "<= 2.0x", f"{ratios['execbus_over_floor_core_p50']}x ({placed['p50']} vs {core['p50']} ms)",
               ratios["execbus_over_floor_core_p50"] <= 2.0),
        Target("intent->OrderPlaced p99 (EXEC on file storage)", "< 5 ms", f"{placed['p99']} ms", placed["p99"] < 5.0),
        Target("intent->OrderPlaced p99.9 (EXEC on file storage)", "< 10 ms", f"{placed['p99.9']} ms",
               placed["p99.9"] < 10.0),
        Target("every execution completed filled", "all", f"{len(failures)} failures", not failures),
    ]
    notes = [
        "Floor chains mirror the market critical path to OrderPlaced: 5 one-way hops + 1 venue request/reply; "
        "the JetStream chain awaits an ack for every publish (the supervisor's two first ones together, as execbus "
        "sends them), the intent-id KV guard on the path, and a KV state write after each relay step "
        "(bench/floor.py).",
        "Monolith: same strategy functions, same venue over NATS, no bus between the steps; its 'completed' is "
        "the create_order answer checked for a full fill (the paper venue reports fills in that answer).",
        "Aggressive limit: attempt 1 rests at the touch; after OrderPlaced the benchmark cancels it at the venue "
        "(untimed) and the market fallback completes the execution before the next one starts.",
        "One-way latency: publish stamped with CLOCK_MONOTONIC in the benchmark, read in the relay process.",
    ]
    return BenchResult(
        params={"n": args.n, "aggressive_every": args.aggressive_every, "block": args.block, "warmup": args.warmup, "layout": args.layout, "shape": args.shape, "qty": str(QTY),
                "venue": "paper, step-driven, zero simulated latency", "actor_options": ACTOR_OPTIONS,
                "floor_hops": FLOOR_HOPS, "log_level": "info (EXECBUS_LOG_LEVEL)",
                "venue_history_limit": args.venue_history},
        results={"latency_ms": stats, "ratios": ratios, "failures": failures[:20], "failure_count": len(failures),
                 "failure_logs": logs, "measure_wall_s": round(wall, 1),
                 "cpu_s_during_measure": cpu},
        tables=tables, targets=targets, notes=notes, variant="-".join(v for v in ("" if args.layout == "system" else args.layout,
                                      "" if args.shape == subjects.CURRENT_SHAPE else args.shape) if v) or "",
    )


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(asyncio.run(run("--quick" in sys.argv, [a for a in sys.argv[1:] if a != "--quick"])))
