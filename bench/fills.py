"""`execbus bench fills`: fill detection — venue fill -> `OrderFilled` on the bus, event-based vs polling.

Set-up (the `execbus up` layout): one worker process with all six actors and the paper venue,
step-driven; the benchmark process. One mode at a time, each on a fresh nats-server:

* `events`: the reconciler's defaults — the venue's `watch_orders` / `watch_my_trades` streams (polling every
  2 s stays on as the safety net);
* `poll:<s>`: `Reconciler(use_streams=False, poll_interval_s=<s>)` — `fetch_order` on a timer only.

Each sample: an aggressive-limit intent whose first attempt rests at the touch; once `OrderPlaced` is seen,
a random pause (uniform over one poll interval, so the fill lands at a random phase of the poll timer),
then the market is stepped until the order fills (`advance_until`), then until done, and the execution
completes before the next sample starts.

The fill time is the venue's own, in wall-clock terms: the worker hosting the venue hangs a listener on
it that the matching engine calls synchronously at the fill, stamping CLOCK_MONOTONIC (shared by every
process on the machine) — the paper venue's own timestamps are replay time, so they cannot be used.
Measured from it: the raw venue trade event reaching a bare subscriber in the benchmark process (the
floor: one NATS hop), and the first `OrderFilled` of the order reaching the benchmark on the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from decimal import Decimal
from typing import Any

from nats.aio.msg import Msg

from bench.cluster import Cluster, Watch
from bench.common import VENUE_HISTORY, BenchResult, Table, Target, progress, summarize
from messages import ExecutionCompleted, AggressiveLimitParams, SubmitIntent

__all__ = ["run"]

SYMBOL = "BTC/USDT"
QTY = Decimal("0.001")
PARAMS = AggressiveLimitParams(max_retries=1, attempt_timeout_seconds=Decimal("300"), total_timeout_seconds=Decimal("300"),
                         fallback="none")


def _args(quick: bool, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="execbus bench fills")
    p.add_argument("--modes", default="events:40,poll0.1:20" if quick else
                   "events:1000,poll0.1:300,poll0.5:120,poll2:50",
                   help="mode:samples,... where mode is `events` or `poll<seconds>`")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--venue-history", type=int, default=VENUE_HISTORY,
                   help="trades/closed orders the paper venue keeps per account (its own default: 100000)")
    return p.parse_args(argv)


class RawTrades:
    """A bare subscriber to the venue's trade events: when each order's first fill event arrived."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}

    async def start(self, nc: Any) -> RawTrades:
        async def on(msg: Msg) -> None:
            now = time.monotonic_ns()
            cid = json.loads(msg.data).get("clientOrderId", "")
            self.first.setdefault(cid, now)

        await nc.subscribe("venue.paper.evt.trades.>", cb=on)
        await nc.flush()
        return self


async def _mode(mode: str, samples: int, rng: random.Random, history: int) -> dict[str, Any]:
    poll = None if mode == "events" else float(mode[4:])
    options: dict[str, Any] = {"pricer": {"max_age_s": 3600.0}}
    if poll is not None:
        options["reconciler"] = {"use_streams": False, "poll_interval_s": poll}
    jitter = poll if poll is not None else 0.005
    t_mode = time.monotonic()
    async with Cluster() as cluster:
        await cluster.spawn("sys", actors="all", venue="stepped", options=options, history=history)
        await cluster.wait_partitions()
        assert cluster.bus is not None
        watch = await Watch(cluster.bus, ["order_placed", "order_filled", "execution_completed"]).start()
        raw = await RawTrades().start(cluster.nc)
        control = await cluster.exchange("main")
        seen: dict[str, tuple[int, int, int]] = {}  # cid -> (OrderFilled seen, its ts_init, advance returned)
        failures: list[str] = []
        t_run = time.monotonic()
        for i in range(-3, samples):  # three warm-up samples
            iid = f"f{i + 3}"
            placed_f, filled_f = watch.expect("order_placed", iid), watch.expect("order_filled", iid)
            done_f = watch.expect("execution_completed", iid)
            await cluster.bus.publish(SubmitIntent(intent_id=iid, venue="paper", symbol=SYMBOL, side="buy" if i % 2
                                                   else "sell", qty=QTY, strategy="aggressive_limit", params=PARAMS))
            _, placed = await asyncio.wait_for(placed_f, 30)
            cid = placed.client_order_id
            await asyncio.sleep(rng.uniform(0, jitter))
            reply = await control.paper_control("advance_until", {"clientOrderId": cid, "until": "fill",
                                                                  "max_seconds": 3600})
            returned = time.monotonic_ns()
            t_seen, fill = await asyncio.wait_for(filled_f, 30 + 3 * (poll or 0))
            if reply["order"]["status"] != "FILLED":
                await control.paper_control("advance_until", {"clientOrderId": cid, "until": "done",
                                                              "max_seconds": 3600})
            _, report = await asyncio.wait_for(done_f, 30 + 3 * (poll or 0))
            if not isinstance(report, ExecutionCompleted) or report.status != "filled":
                failures.append(f"{iid}: {getattr(report, 'status', report)}")
            if i >= 0:
                seen[cid] = (t_seen, fill.ts_init, returned)
            watch.forget(iid)
        stamps = await cluster.call("sys", "fills")
        t_samples = time.monotonic() - t_run
    bus_ms, published_ms, raw_ms, after_reply_ms = [], [], [], []
    for cid, (t_seen, ts_init, returned) in seen.items():
        mono, wall = stamps[cid]
        bus_ms.append((t_seen - mono) / 1e6)
        published_ms.append((ts_init - wall) / 1e6)
        after_reply_ms.append((t_seen - returned) / 1e6)
        if cid in raw.first:
            raw_ms.append((raw.first[cid] - mono) / 1e6)
    return {"mode": mode, "poll_interval_s": poll, "samples": len(seen), "failures": failures,
            "wall_s": {"samples": round(t_samples, 1), "total": round(time.monotonic() - t_mode, 1)},
            "worker_log_warnings": cluster.log_summary, "worker_log_errors": cluster.log_examples[:4],
            "fill_to_orderfilled_on_bus_ms": summarize(bus_ms),
            "fill_to_orderfilled_published_ms": summarize(published_ms),
            "fill_to_raw_venue_event_ms": summarize(raw_ms),
            "advance_reply_to_orderfilled_ms": summarize(after_reply_ms)}


async def run(quick: bool, argv: list[str]) -> BenchResult:
    args = _args(quick, argv)
    rng = random.Random(args.seed)
    modes = []
    for spec in args.modes.split(","):
        mode, _, n = spec.partition(":")
        modes.append(await _mode(mode, int(n or 100), rng, args.venue_history))
        progress(f"fills: {mode} done ({modes[-1]['wall_s']['total']} s)")
    rows = []
    for m in modes:
        for key, label in (("fill_to_raw_venue_event_ms", "floor: raw venue trade event"),
                           ("fill_to_orderfilled_published_ms", "OrderFilled published (its ts_init)"),
                           ("fill_to_orderfilled_on_bus_ms", "OrderFilled seen on the bus")):
            s = m[key]
            rows.append([m["mode"], label, s.get("n"), s.get("p50"), s.get("p90"), s.get("p99"), s.get("max")])
    events = next((m for m in modes if m["mode"] == "events"), None)
    p50 = events["fill_to_orderfilled_on_bus_ms"].get("p50") if events else None
    targets = [
        Target("event-based fill detection p50 after the venue fill", "< 1 ms",
               f"{p50} ms (floor, raw venue event: {events['fill_to_raw_venue_event_ms'].get('p50')} ms)"
               if events else "not run", (p50 < 1.0) if p50 is not None else None),
        Target("every sample completed filled", "all",
               f"{sum(len(m['failures']) for m in modes)} failures", not any(m["failures"] for m in modes)),
    ]
    return BenchResult(
        params={"modes": args.modes, "seed": args.seed, "qty": str(QTY), "strategy": "aggressive_limit",
                "venue_history_limit": args.venue_history,
                "venue": "paper, step-driven", "layout": "one process: all actors + venue (execbus up)"},
        results={"modes": modes},
        tables=[Table("venue fill -> detection, ms", ["mode", "measure", "n", "p50", "p90", "p99", "max"], rows)],
        targets=targets,
        notes=["Fill time: CLOCK_MONOTONIC stamped by a listener the paper venue's matching engine calls at the "
               "fill (venue timestamps are replay time). 'published' compares OrderFilled.ts_init (wall clock, "
               "set just before the reconciler's publish) with the fill's wall-clock stamp.",
               "Polling: the pause before each fill is uniform over one poll interval, so fills land at a random "
               "phase of the reconciler's poll timer (expected detection ~ interval / 2 + one fetch_order)."],
    )
