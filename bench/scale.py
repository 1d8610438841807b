"""`execbus bench scale`: many concurrent open aggressive-limit executions — memory, accept time, drain time.

Set-up (the `execbus up` layout): one worker process with all six actors and the paper venue, step-driven
(the market moves only when told), and the benchmark process. Each intent is an aggressive-limit buy of
0.001 BTC whose first attempt rests at the best bid with a 600 s attempt budget, so all of them stay open.

1. baseline: a few executions warm every code path; RSS of the worker (actors + venue) and of nats-server;
2. accept: `--n` intents submitted as fast as the system places them (at most `--window` not yet placed);
   time until every one has its `OrderPlaced` (resting at the venue); then, once the actors are idle,
   RSS again: (open - baseline) / n is the memory per open execution;
3. drain: another account sells through the bid level with market orders (the market moving through
   our price); time from that order until every `ExecutionCompleted`, and RSS after.

The reconciler polls every open order as a safety net behind the venue's event streams; its default interval
(2 s) means 5,000 `fetch_order` requests/s at 10,000 open orders, more than this machine does in total, so
this benchmark runs it at `--poll-interval 60` (167/s) by default. `--poll-interval 2` measures the default
(see bench/README.md for what happens). Intents are submitted with at most `--window` not yet placed (as
fast as the system accepts them); `--window 0` publishes all of them at once.

nats-server memory trials (bench/server_memory.py): `--server-memory` records, at each phase, the server's
RSS, Go heap (MemStats and the heap profile by allocation site) and per-stream msgs/subjects/consumers;
`--nats-env GOMEMLIMIT=96MiB`, `--nats-config TEXT` and `--duplicate-window S` change the server or the EXEC
stream for one run; `--label` names the result file so a trial does not overwrite `scale.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from decimal import Decimal
from typing import Any

from bench.cluster import Cluster, Watch
from bench.common import VENUE_HISTORY, BenchResult, Table, Target, progress, summarize
from messages import ExecutionCompleted, AggressiveLimitParams, SubmitIntent

__all__ = ["run"]

SYMBOL = "BTC/USDT"
QTY = Decimal("0.001")
PARAMS = AggressiveLimitParams(max_retries=1, attempt_timeout_seconds=Decimal("600"), total_timeout_seconds=Decimal("600"),
                         fallback="none")
TARGET_MB = 300.0
DEFAULT_POLL_S = 60.0
DRAIN_SLICE = Decimal("1")
"""BTC per market sell while draining: 1,000 of our 0.001 orders."""


def _args(quick: bool, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="execbus bench scale")
    p.add_argument("--n", type=int, default=500 if quick else 10_000)
    p.add_argument("--window", type=int, default=500,
                   help="intents submitted but not yet placed at most (0: publish all at once, a burst)")
    p.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S,
                   help="reconciler poll_interval_s (its own default is 2 s: see the module docstring)")
    p.add_argument("--venue-history", type=int, default=VENUE_HISTORY,
                   help="trades/closed orders the paper venue keeps per account (its own default: 100000)")
    p.add_argument("--timeout", type=float, default=120.0 if quick else 240.0, help="give up accepting/draining")
    p.add_argument("--trace-memory", action="store_true",
                   help="the actors' live objects by type while open (a census once all are open; with "
                        "PYTHONTRACEMALLOC=1 set by hand, allocation sites instead, but that slows the actors "
                        "until their leases lapse)")
    p.add_argument("--venue-apart", action="store_true",
                   help="run the paper venue (the exchange) in a process of its own, so the actors' RSS is "
                        "execbus's alone (default: one process with all actors and the venue, as `execbus up`)")
    # nats-server memory trials (bench/server_memory.py); none of them changes the default run.
    p.add_argument("--server-memory", action="store_true",
                   help="record where nats-server's memory goes (/varz, /jsz, Go heap profile) at each phase")
    p.add_argument("--nats-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the nats-server child only, e.g. GOMEMLIMIT=64MiB or GOGC=50 (repeatable)")
    p.add_argument("--nats-config", action="append", default=[], metavar="TEXT",
                   help="extra nats-server config text, e.g. 'jetstream { max_memory_store: 64MB }' (repeatable)")
    p.add_argument("--duplicate-window", type=float, default=None, metavar="S",
                   help="EXEC stream duplicate_window_s for this run (EXECBUS_DUPLICATE_WINDOW_S, workers too)")
    p.add_argument("--label", default="", help="appended to the result's variant (a trial's name)")
    return p.parse_args(argv)


async def _idle(cluster: Cluster, wid: str, settle: float = 1.0, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until no actor of the worker has work queued; returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = await cluster.call(wid, "status")
        if all(s["intents_in_flight"] == 0 for s in status["actors"].values()) or time.monotonic() > deadline:
            await asyncio.sleep(settle)
            return dict(await cluster.call(wid, "status"))
        await asyncio.sleep(0.25)


def _mem(cluster: Cluster) -> dict[str, float]:
    """RSS by process: `actors_and_venue_mb` (one process), or `actors_mb` and `venue_mb` (`--venue-apart`)."""
    stats = cluster.stats()
    if "worker:venue" in stats:
        return {"actors_mb": round(stats["worker:sys"].rss_mb, 1), "venue_mb": round(stats["worker:venue"].rss_mb, 1),
                "nats_server_mb": round(stats["nats-server"].rss_mb, 1)}
    return {"actors_and_venue_mb": round(stats["worker:sys"].rss_mb, 1),
            "nats_server_mb": round(stats["nats-server"].rss_mb, 1)}


async def _profile_open(cluster: Cluster, seconds: float) -> dict[str, Any]:
    """What keeps the process busy while the executions merely sit open."""
    from bench.profiling import summarize_profile

    path = str(cluster.dir / "scale-open.pstats")
    await cluster.call("sys", "profile_start")
    await asyncio.sleep(seconds)
    await cluster.call("sys", "profile_stop", {"path": path})
    return summarize_profile(path, top=12)


async def _warm(cluster: Cluster, watch: Watch, control: Any) -> None:
    assert cluster.bus is not None
    for i in range(10):
        iid = f"warm{i}"
        done = watch.expect("execution_completed", iid)
        if i % 2:
            await cluster.bus.publish(SubmitIntent(intent_id=iid, venue="paper", symbol=SYMBOL, side="sell", qty=QTY))
        else:
            placed = watch.expect("order_placed", iid)
            await cluster.bus.publish(SubmitIntent(intent_id=iid, venue="paper", symbol=SYMBOL, side="buy", qty=QTY,
                                                   strategy="aggressive_limit", params=PARAMS))
            _, msg = await asyncio.wait_for(placed, 30)
            await control.paper_control("advance_until", {"clientOrderId": msg.client_order_id, "until": "done",
                                                          "max_seconds": 3600})
        await asyncio.wait_for(done, 60)


async def _accept(cluster: Cluster, watch: Watch, n: int, window: int, timeout: float) -> dict[str, Any]:
    assert cluster.bus is not None
    bus = cluster.bus
    gate = asyncio.Semaphore(window or n)
    ids = [f"s{i}" for i in range(n)]
    placed = [watch.expect("order_placed", i) for i in ids]
    deadline = time.monotonic() + timeout

    async def submit(iid: str, fut: asyncio.Future[Any]) -> None:
        await gate.acquire()
        if time.monotonic() > deadline:
            gate.release()
            return
        await bus.publish(SubmitIntent(intent_id=iid, venue="paper", symbol=SYMBOL, side="buy", qty=QTY,
                                       strategy="aggressive_limit", params=PARAMS))
        fut.add_done_callback(lambda _f: gate.release())

    t0 = time.monotonic_ns()
    await asyncio.gather(*(submit(i, f) for i, f in zip(ids, placed)))
    t_published = time.monotonic_ns()
    done, pending = await asyncio.wait(placed, timeout=max(deadline - time.monotonic(), 0.1))
    arrivals = sorted(f.result()[0] for f in done)
    prices = sorted({str(f.result()[1].price) for f in done})
    return {
        "intents": n,
        "placed": len(done),
        "publish_all_s": round((t_published - t0) / 1e9, 2),
        "accept_all_s": round((arrivals[-1] - t0) / 1e9, 2) if arrivals and not pending else None,
        "accepted_per_s": round(len(done) / ((arrivals[-1] - t0) / 1e9), 1) if arrivals else 0.0,
        "time_to_placed_ms": summarize((a - t0) / 1e6 for a in arrivals),
        "resting_prices": prices,
        "ids": ids,
    }


async def _drain(cluster: Cluster, watch: Watch, mover: Any, ids: list[str], prices: list[str],
                 timeout: float) -> dict[str, Any]:
    done_f = [watch.expect("execution_completed", i) for i in ids]
    lowest = min(Decimal(p) for p in prices)
    ours = len(ids) * QTY
    t0 = time.monotonic_ns()
    sells = 0
    deadline = time.monotonic() + timeout
    pending: set[Any] = set(done_f)
    while time.monotonic() < deadline:
        book = await mover.fetch_order_book(SYMBOL, 50)
        level = sum((Decimal(repr(q)) for p, q, *_ in book["bids"] if Decimal(repr(p)) >= lowest), Decimal(0))
        if level <= 0:
            break
        # The market's queue ahead of us, then ours in slices of DRAIN_SLICE: the move comes as a few
        # orders back to back, as a real sell-off does (one order would do too: the paper venue splits a
        # reply listing thousands of fills across several NATS messages).
        qty = min(level, max(level - ours, Decimal(0)) + DRAIN_SLICE) if sells == 0 else min(level, DRAIN_SLICE)
        await mover.create_order(SYMBOL, "market", "sell", float(qty), None, {"clientOrderId": f"mover{sells}"})
        sells += 1
    if pending:
        _, pending = await asyncio.wait(pending, timeout=max(deadline - time.monotonic(), 0.1))
    finished = [f.result() for f in done_f if f.done()]
    arrivals = sorted(t for t, _ in finished)
    filled = sum(1 for _, r in finished if isinstance(r, ExecutionCompleted) and r.status == "filled")
    return {
        "completed": len(finished),
        "filled": filled,
        "market_sells": sells,
        "drain_all_s": round((arrivals[-1] - t0) / 1e9, 2) if arrivals and not pending else None,
        "completed_per_s": round(len(finished) / ((arrivals[-1] - t0) / 1e9), 1) if arrivals else 0.0,
        "time_to_completed_ms": summarize((a - t0) / 1e6 for a in arrivals),
    }


def _cluster(args: argparse.Namespace) -> Cluster:
    """The run's cluster; with a memory trial's options, its nats-server is a `MonitoredNats`."""
    if args.duplicate_window is not None:  # read by BusSettings.from_env here and in the worker processes
        os.environ["EXECBUS_DUPLICATE_WINDOW_S"] = str(args.duplicate_window)
    cluster = Cluster()
    if args.server_memory or args.nats_env or args.nats_config:
        from bench.server_memory import MonitoredNats

        env = dict(kv.split("=", 1) for kv in args.nats_env)
        cluster.server = MonitoredNats.make(cluster.dir / "nats", env=env, config="\n".join(args.nats_config),
                                            profile=args.server_memory)
    return cluster


async def _server_snapshot(cluster: Cluster, args: argparse.Namespace, phase: str,
                           into: dict[str, Any]) -> None:
    if args.server_memory:
        into[phase] = await cluster.server.snapshot()  # type: ignore[attr-defined]


async def run(quick: bool, argv: list[str]) -> BenchResult:
    args = _args(quick, argv)
    options: dict[str, Any] = {"pricer": {"max_age_s": 3600.0}, "reconciler": {"poll_interval_s": args.poll_interval}}
    server_memory: dict[str, Any] = {}
    async with _cluster(args) as cluster:
        if args.venue_apart:
            await cluster.spawn("venue", venue="stepped", history=args.venue_history)
            await cluster.spawn("sys", actors="all", options=options)
        else:
            await cluster.spawn("sys", actors="all", venue="stepped", options=options, history=args.venue_history)
        await cluster.wait_partitions()
        assert cluster.bus is not None
        watch = await Watch(cluster.bus, ["order_placed", "execution_completed"]).start()
        control = await cluster.exchange("main")
        mover = await cluster.exchange("mover")
        await mover.paper_control("set_balances", {"balances": {"BTC": "100000", "USDT": "100000000"}})
        await _warm(cluster, watch, control)
        await _idle(cluster, "sys", settle=2.0)
        base = _mem(cluster)
        await _server_snapshot(cluster, args, "baseline", server_memory)
        progress(f"scale: baseline {base}; accepting {args.n}")
        accept = await _accept(cluster, watch, args.n, args.window, args.timeout)
        progress(f"scale: accepted in {accept['accept_all_s']} s")
        status_open = await _idle(cluster, "sys", settle=2.0, timeout=args.timeout)
        open_mem = _mem(cluster)
        cpu_open = cluster.stats()
        t_idle = time.monotonic()
        await asyncio.sleep(5.0)  # all open, nothing asked of them: what does keeping them open cost?
        cpu_idle = cluster.stats()
        idle_cpu = {k: round((cpu_idle[k].cpu_s - cpu_open[k].cpu_s) / (time.monotonic() - t_idle), 3)
                    for k in cpu_idle if k in cpu_open}
        status_open["idle_reached"] = all(s["intents_in_flight"] == 0 for s in status_open["actors"].values())
        profile = await _profile_open(cluster, 5.0)
        sites = (await cluster.call("sys", "memory", {"top": 30}, timeout=300))["sites"] if args.trace_memory else []
        await _server_snapshot(cluster, args, "open", server_memory)
        # Thousands of open orders make a reply of several MB: the venue splits it (venues/chunks.py).
        venue_open = len(await control.fetch_open_orders(SYMBOL))
        progress(f"scale: open {open_mem}; draining")
        drain = await _drain(cluster, watch, mover, accept.pop("ids"), accept["resting_prices"], args.timeout)
        await _idle(cluster, "sys", settle=2.0, timeout=60)
        after = _mem(cluster)
        await _server_snapshot(cluster, args, "after_drain", server_memory)
    result = _result(args, base, accept, open_mem, status_open, idle_cpu, venue_open, drain, after)
    result.results["worker_log_warnings"] = cluster.log_summary
    result.results["worker_log_errors"] = cluster.log_examples[:6]
    result.results["profile_while_open"] = profile
    if sites:
        result.results["actors_memory_sites_open"] = sites
        result.tables.append(Table(("the actors' process" if args.venue_apart else "the actors + venue process")
                                   + " while open: objects the collector tracks, by type, own sizes only (str, "
                                   "bytes, Decimal are not tracked; or allocation sites under tracemalloc)",
                                   ["type or site", "MB", "count"], sites))
        result.variant = "-".join(v for v in (result.variant, "trace-memory") if v)
    if args.nats_env or args.nats_config or args.duplicate_window is not None:
        result.params["nats_server_trial"] = {"env": args.nats_env, "config": args.nats_config,
                                              "duplicate_window_s": args.duplicate_window}
    if server_memory:
        result.results["nats_server_memory"] = server_memory
        result.tables.append(_server_table(server_memory))
    if args.venue_apart:
        result.variant = "-".join(v for v in (result.variant, "venue-apart") if v)
    if args.label:
        result.variant = "-".join(v for v in (result.variant, args.label) if v)
    result.tables.append(Table("CPU of the actors + venue process while all are open (cProfile, 5 s): own time by "
                               f"area ({profile['busy_s']} s busy)", ["area", "own s", "share"],
                               [[a["area"], a["own_s"], a["share_of_busy"]] for a in profile["by_area"][:8]]))
    return result


def _server_table(snaps: dict[str, Any]) -> Table:
    """nats-server's memory by phase: RSS, Go heap, and the heap's largest allocation sites while open."""
    phases = list(snaps)

    def row(name: str, get: Any) -> list[Any]:
        return [name] + [get(snaps[p]) for p in phases]

    open_heap = snaps.get("open", snaps[phases[-1]]).get("heap", {})
    rows = [
        row("RSS, MB", lambda s: s["rss"].get("rss_mb")),
        row("Go HeapInuse, MB", lambda s: s.get("heap", {}).get("memstats_mb", {}).get("HeapInuse")),
        row("Go HeapIdle - HeapReleased (held, unused), MB", lambda s: round(
            s.get("heap", {}).get("memstats_mb", {}).get("HeapIdle", 0)
            - s.get("heap", {}).get("memstats_mb", {}).get("HeapReleased", 0), 1)),
        row("Go Sys, MB", lambda s: s.get("heap", {}).get("memstats_mb", {}).get("Sys")),
    ]
    for st in snaps[phases[-1]].get("streams", []):
        name = st["stream"]

        def pick(s: dict[str, Any], name: str = name) -> str:
            x = next((t for t in s.get("streams", []) if t["stream"] == name), None)
            return f"{x['msgs']} msgs / {x['num_subjects']} subj / {x['bytes_mb']} MB" if x else ""
        rows.append(row(f"stream {name}", pick))
    rows += [[f"heap (open): {site}", mb] + [""] * (len(phases) - 1) for site, mb in open_heap.get("by_site", [])[:10]]
    return Table("nats-server memory by phase (bench/server_memory.py)", ["measure"] + phases, rows)


def _result(args: argparse.Namespace, base: dict[str, float], accept: dict[str, Any], open_mem: dict[str, float],
            status: dict[str, Any], idle_cpu: dict[str, float], venue_open: int, drain: dict[str, Any],
            after: dict[str, float]) -> BenchResult:
    n = args.n
    per_exec_kb = {k: round((open_mem[k] - base[k]) * 1000 / n, 2) for k in base}
    ours = "actors_mb" if args.venue_apart else "actors_and_venue_mb"
    total_open = open_mem[ours] + open_mem["nats_server_mb"]
    actors = {name: {k: s.get(k) for k in ("cached_states", "timers", "intents_in_flight", "polls", "watched")
                     if k in s} for name, s in status["actors"].items()}
    labels = {"actors_and_venue_mb": "RSS actors+venue process, MB", "actors_mb": "RSS actors process, MB",
              "venue_mb": "RSS paper venue process (the exchange), MB", "nats_server_mb": "RSS nats-server, MB"}
    rows = [[labels[k], base[k], open_mem[k], after.get(k), per_exec_kb[k]] for k in base]
    tables = [
        Table(f"memory with {n:,} open aggressive-limit executions", ["process", "baseline", "all open",
                                                                     "after drain", "KB per open execution"], rows),
        Table("accept and drain", ["measure", "value"], [
            [f"submit all (at most {args.window or n:,} not yet placed), s", accept["publish_all_s"]],
            ["accept all (every OrderPlaced), s", accept["accept_all_s"]],
            ["accepted per s", accept["accepted_per_s"]],
            ["orders open at the venue (its own count)", venue_open],
            ["CPU while all open, nothing asked (the actors' process" + ("" if args.venue_apart else " with the venue")
             + "), cores", idle_cpu.get("worker:sys")],
            ["actors had caught up before that (no intent queued)", status.get("idle_reached")],
            ["drain all after the market move (every ExecutionCompleted), s", drain["drain_all_s"]],
            ["completed per s while draining", drain["completed_per_s"]],
            ["completed / filled", f"{drain['completed']} / {drain['filled']}"],
        ]),
    ]
    judged = n == 10_000
    what = "actors process (the venue apart)" if args.venue_apart else "actors + venue process"
    targets = [
        Target(f"{n:,} open executions: RSS of the {what}", f"< {TARGET_MB:.0f} MB",
               f"{open_mem[ours]} MB", open_mem[ours] < TARGET_MB if judged else None,
               "" if judged else "judged only at n = 10,000"),
        Target(f"{n:,} open executions: RSS of the {what} including nats-server (KV state, log)",
               f"< {TARGET_MB:.0f} MB", f"{total_open:.1f} MB", total_open < TARGET_MB if judged else None,
               "" if judged else "judged only at n = 10,000"),
        Target("all accepted and all drained", "all", f"placed {accept['placed']}, completed {drain['completed']}",
               accept["placed"] == n and drain["filled"] == n),
    ]
    return BenchResult(
        params={"n": n, "window": args.window, "qty": str(QTY), "strategy": "aggressive_limit",
                "params": {"max_retries": 1, "attempt_timeout_seconds": "600", "fallback": "none"},
                "reconciler_poll_interval_s": args.poll_interval, "timeout_s": args.timeout,
                "venue": "paper, step-driven",
                "layout": ("two processes: all actors; the paper venue apart" if args.venue_apart
                           else "one process: all actors + venue (execbus up)"),
                "venue_history_limit": args.venue_history},
        results={"baseline_mb": base, "open_mb": open_mem, "after_drain_mb": after, "kb_per_open_execution": per_exec_kb,
                 "accept": accept, "drain": drain, "venue_open_orders": venue_open,
                 "cpu_cores_while_open_idle": idle_cpu, "actors_while_open": actors},
        tables=tables, targets=targets,
        variant=("" if args.poll_interval == DEFAULT_POLL_S else f"poll{args.poll_interval:g}")
        + ("" if args.window == 500 else f"-window{args.window}"),
        notes=["RSS from /proc/<pid>/statm; baseline after a warm-up of 10 executions and 2 s idle.",
               "Drain: a second account market-sells the whole bid level down to our price, back to back in "
               "orders of at most 1 BTC beyond the queue ahead (1,000 of ours each)."],
    )
