"""Benchmark: how fast the paper venue can replay the recorded market (issue 3: 100x must not fall behind).

Two numbers: the engine's raw throughput when stepped as fast as possible (events/s and the speed-up
that implies), and a real-time replay at a 100x target — in-process for `quick`, otherwise as the NATS
service with a client trading against it — reporting the speed-up actually achieved and the worst lag.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

__all__ = ["run"]

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"
TARGET = 100.0


def _files() -> list[str]:
    from venues.config import SAMPLE_FILE

    full = [SHARED / "binance_spot_btcusdt_20240808.gz", SHARED / "binance_spot_btcusdt_20240809.gz"]
    return [str(p) for p in full] if all(p.is_file() for p in full) else [SAMPLE_FILE]


def _config(files: list[str], speed: float) -> Any:
    from venues.config import MarketConfig, PaperVenueConfig

    return PaperVenueConfig(speed=speed, markets=[MarketConfig(files=files)])


def _stepped_throughput(files: list[str], market_seconds: float) -> dict[str, float]:
    from venues.simulator import PaperVenue

    venue = PaperVenue(_config(files, 0))
    t0 = time.perf_counter()
    events = venue.replay.advance(market_seconds)
    wall = time.perf_counter() - t0
    return {"stepped_events_per_s": events / wall, "stepped_max_speedup": market_seconds / wall}


async def _realtime_in_process(files: list[str], wall_seconds: float) -> dict[str, float]:
    from venues.simulator import PaperVenue

    venue = PaperVenue(_config(files, TARGET))
    stop = asyncio.Event()
    task = asyncio.create_task(venue.run(stop))
    await asyncio.sleep(wall_seconds)
    stop.set()
    await task
    return dict(venue.replay.stats())


async def _realtime_on_nats(files: list[str], wall_seconds: float) -> dict[str, float]:
    from bench.cluster import open_paper
    from bus.server import EmbeddedNats
    from venues.service import run_paper_venue

    async with EmbeddedNats() as server:
        stop = asyncio.Event()
        task = asyncio.create_task(run_paper_venue(server.url, _config(files, TARGET), stop=stop))
        ex = await open_paper(server.url)  # the service task may not answer yet
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + wall_seconds
        n = 0
        while loop.time() < end:  # a client resting and cancelling orders at the touch all along
            t0 = time.perf_counter()
            bid = (await ex.fetch_order_book("BTC/USDT", 1))["bids"][0][0]
            order = await ex.create_order("BTC/USDT", "limit", "buy", 0.001, bid, {"clientOrderId": f"bench-{n}"})
            if order["status"] == "open":
                try:
                    await ex.cancel_order(order["id"], "BTC/USDT")
                except Exception:
                    pass  # filled in between: fine
            latencies.append((time.perf_counter() - t0) * 1000 / 3)
            n += 1
            await asyncio.sleep(0.02)
        stats = await ex.paper_control("stats")
        await ex.close()
        stop.set()
        await task
    stats["rpc_p50_ms"] = statistics.median(latencies)
    stats["rpc_max_ms"] = max(latencies)
    stats["client_orders"] = n
    return stats


def run(quick: bool) -> dict[str, Any]:
    """Measure replay speed; `quick` uses the shipped sample in-process for ~2 s of wall time."""
    from venues.config import SAMPLE_FILE

    files = [SAMPLE_FILE] if quick else _files()
    out: dict[str, Any] = {"target_speed": TARGET, "data": [Path(f).name for f in files]}
    out.update(_stepped_throughput(files, 60 if quick else 600))
    wall = 2.0 if quick else 6.0
    rt = asyncio.run(_realtime_in_process(files, wall) if quick else _realtime_on_nats(files, wall))
    out.update({
        "achieved_speed": round(float(rt["achieved_speed"]), 2),
        "events_per_s": round(float(rt["events"]) / wall, 1),
        "max_lag_exchange_ms": rt["max_lag_ms"],
        "max_lag_wall_ms": rt["max_lag_wall_ms"],
        "kept_up": float(rt["achieved_speed"]) >= 0.95 * TARGET,
        "mode": "in-process" if quick else "nats-service+client",
    })
    for key in ("rpc_p50_ms", "rpc_max_ms", "client_orders"):
        if key in rt:
            out[key] = rt[key]
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
