"""cProfile output summarised for a result file: where the CPU of a process went, by area and by function.

Workers profile themselves on request (`bench.worker`'s `profile_start` / `profile_stop`); this turns the
dumped stats into two short lists — own time (tottime) per area of the code (execbus packages, nats-py,
msgspec, asyncio, structlog, ccxt, ...) and the top functions by own time — which is what "where the
bottleneck is" needs. cProfile slows the process down, so a profiled window is never a measured one.
"""

from __future__ import annotations

import pstats
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["summarize_profile", "AREAS"]

_ROOT = str(Path(__file__).resolve().parents[1])

AREAS = [
    ("/bus/", "execbus bus/ (runtime, consumer, state)"),
    ("/actors/", "execbus actors/"),
    ("/messages/", "execbus messages/ (codec, subjects)"),
    ("/venues/", "execbus venues/ (paper venue, ccxt class)"),
    ("/bench/", "bench harness"),
    ("/nats/js/", "nats-py JetStream/KV"),
    ("/nats/", "nats-py core"),
    ("/ccxt/", "ccxt"),
    ("/structlog/", "structlog"),
    ("/asyncio/", "asyncio event loop"),
    ("/msgspec/", "msgspec"),
    ("/decimal", "decimal"),
    ("/json/", "json"),
]


def _area(filename: str, func: str) -> str:
    for marker, label in AREAS:
        if marker in filename:
            return label
    if filename == "~":
        if "select" in func or "epoll" in func:
            return "waiting for I/O (epoll)"
        if "msgspec" in func:
            return "msgspec"
        if "socket" in func or "send" in func or "recv" in func:
            return "socket calls"
        if "decimal" in func.lower():
            return "decimal"
        return "builtins"
    return "other Python"


def summarize_profile(path: str, top: int = 15) -> dict[str, Any]:
    """Own time by area (seconds and share of the non-idle total) and the `top` functions by own time."""
    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_area: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in raw.items():
        area = _area(filename, func)
        by_area[area] += tt
        rows.append((tt, ct, nc, f"{_short(filename)}:{line}({func})", area))
    idle = by_area.get("waiting for I/O (epoll)", 0.0)
    busy = sum(by_area.values()) - idle
    areas = sorted(((a, t) for a, t in by_area.items()), key=lambda x: -x[1])
    rows.sort(key=lambda r: -r[0])
    return {
        "busy_s": round(busy, 3),
        "idle_epoll_s": round(idle, 3),
        "by_area": [{"area": a, "own_s": round(t, 3), "share_of_busy": round(t / busy, 3) if busy else None}
                    for a, t in areas if a != "waiting for I/O (epoll)"],
        "top_functions": [{"function": f, "own_s": round(tt, 3), "cumulative_s": round(ct, 3), "calls": nc,
                           "area": area} for tt, ct, nc, f, area in rows[:top]],
    }


def _short(filename: str) -> str:
    for marker in ("/site-packages/", _ROOT + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    match = re.search(r"/lib/python3\.\d+/(.*)$", filename)
    return match.group(1) if match else filename
