"""Where nats-server's memory goes: its monitoring endpoints and Go heap profile, read during a benchmark.

    server = MonitoredNats.make(store_dir, env={"GOMEMLIMIT": "64MiB"}, config="jetstream { ... }")
    ...  # (start it, run the load)
    snapshot = await server.snapshot()   # /varz, /jsz per stream and consumer, heap profile by site, smaps

Used by `execbus bench scale --server-memory` (bench/scale.py). No `go tool pprof` is needed: the heap
profile is read in its text form (`/debug/pprof/heap?debug=1`), whose records are samples, scaled here as
pprof does (one allocation in every `MemProfileRate` bytes is recorded; a record of objects of average size
s stands for 1 / (1 - exp(-s / rate)) times its sampled bytes).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

from bus.server import EmbeddedNats

__all__ = ["MonitoredNats", "parse_heap_profile", "free_port"]

_RECORD = re.compile(r"^(\d+): (\d+) \[(\d+): (\d+)\] @")
_FRAME = re.compile(r"^#\s+0x[0-9a-f]+\s+(\S+)\s+(\S+)")
_RATE = re.compile(r"@ heap/(\d+)")
_MEMSTATS = ("HeapAlloc", "HeapInuse", "HeapIdle", "HeapReleased", "HeapSys", "StackInuse", "Sys", "NextGC",
             "NumGC", "MSpanInuse", "MCacheInuse", "BuckHashSys", "GCSys", "OtherSys")
_OURS = ("nats-server", "nats-io/")
"""A frame in the server's own code (not the runtime or the standard library): what an allocation is for."""


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for `prof_port`, which cannot be -1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MonitoredNats(EmbeddedNats):
    """An `EmbeddedNats` with monitoring (`-m`) and a pprof port, an environment of its own (GOMEMLIMIT,
    GOGC...) and extra config text."""

    env: dict[str, str] = {}
    prof_port: int = 0

    @classmethod
    def make(cls, store_dir: Path, *, env: dict[str, str] | None = None, config: str = "",
             profile: bool = True) -> MonitoredNats:
        prof_port = free_port() if profile else 0
        text = (f"prof_port: {prof_port}\n" if profile else "") + config
        server = cls(store_dir=store_dir, http_port=-1, config_text=text)
        server.env = dict(env or {})
        server.prof_port = prof_port
        return server

    async def start(self) -> MonitoredNats:
        # EmbeddedNats starts its child with this process's environment: set ours for that moment only.
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            await super().start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return self

    async def snapshot(self, top: int = 25) -> dict[str, Any]:
        """Memory figures of the server now: RSS split, Go runtime stats, JetStream per stream, heap by site."""
        return await asyncio.to_thread(self._snapshot, top)

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=30) as r:
            return bytes(r.read())

    def _snapshot(self, top: int) -> dict[str, Any]:
        out: dict[str, Any] = {"rss": _smaps(self.pid)}
        if self.prof_port:  # first: the monitoring replies below are megabytes of heap themselves
            text = self._get(f"http://{self.host}:{self.prof_port}/debug/pprof/heap?debug=1").decode(errors="replace")
            out["heap"] = parse_heap_profile(text, top)
        mon = self.monitor_url
        if mon:
            varz = json.loads(self._get(f"{mon}/varz"))
            out["varz"] = {"mem_mb": round(varz.get("mem", 0) / 1e6, 1), "connections": varz.get("connections"),
                           "subscriptions": varz.get("subscriptions")}
            jsz = json.loads(self._get(f"{mon}/jsz?streams=true&consumers=true&config=true"))
            out["streams"] = _streams(jsz)
        return out


def _smaps(pid: int | None) -> dict[str, float]:
    """RSS split into anonymous (the Go heap, stacks) and file-backed pages, MB."""
    fields = {"Rss": 0, "Anonymous": 0, "Private_Dirty": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in fields:
                fields[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return {f"{k.lower()}_mb": round(v / 1000, 1) for k, v in fields.items()}


def _streams(jsz: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for account in jsz.get("account_details") or []:
        for s in account.get("stream_detail") or []:
            state = s.get("state") or {}
            config = s.get("config") or {}
            consumers = s.get("consumer_detail") or []
            out.append({
                "stream": s.get("name"),
                "msgs": state.get("messages"), "bytes_mb": round(state.get("bytes", 0) / 1e6, 2),
                "num_subjects": state.get("num_subjects"), "num_deleted": state.get("num_deleted"),
                "duplicate_window_s": (config.get("duplicate_window") or 0) / 1e9,
                "consumers": len(consumers),
                "num_pending": sum(c.get("num_pending", 0) for c in consumers),
                "num_ack_pending": sum(c.get("num_ack_pending", 0) for c in consumers),
                "num_redelivered": sum(c.get("num_redelivered", 0) for c in consumers),
                "num_waiting": sum(c.get("num_waiting", 0) for c in consumers),
            })
    return out


def parse_heap_profile(text: str, top: int = 15) -> dict[str, Any]:
    """In-use bytes of a Go heap profile (debug=1 text), scaled, grouped by the first frame in nats-server's
    own code (`by_site`, with its source line) and by its function alone (`by_function`); plus the runtime's
    MemStats (MB)."""
    lines = text.splitlines()
    m = _RATE.search(lines[0]) if lines else None
    rate = int(m.group(1)) // 2 if m else 512 * 1024  # the header says 2 * MemProfileRate
    by_site: collections.Counter[str] = collections.Counter()
    by_func: collections.Counter[str] = collections.Counter()
    total = 0.0
    i = 0
    while i < len(lines):
        rec = _RECORD.match(lines[i])
        i += 1
        if not rec:
            continue
        objects, nbytes = int(rec.group(1)), int(rec.group(2))
        frames = []
        while i < len(lines) and lines[i].startswith("#\t"):
            f = _FRAME.match(lines[i])
            if f:
                frames.append((f.group(1), f.group(2)))
            i += 1
        if nbytes == 0 or objects == 0:
            continue
        scaled = nbytes / (1 - math.exp(-(nbytes / objects) / rate)) if rate > 0 else float(nbytes)
        total += scaled
        func, where = next(((fn, loc) for fn, loc in frames if any(o in loc for o in _OURS)),
                           frames[0] if frames else ("?", "?"))
        short = func.rsplit("/", 1)[-1]
        by_site[f"{short} {where.rsplit('/', 1)[-1]}"] += scaled
        by_func[short] += scaled
    stats: dict[str, float] = {}
    for line in lines:
        if line.startswith("# ") and " = " in line:
            name, _, value = line[2:].partition(" = ")
            if name in _MEMSTATS:
                try:
                    stats[name] = round(int(value.split()[0]) / 1e6, 1) if name != "NumGC" else int(value)
                except ValueError:
                    pass
    return {
        "inuse_mb": round(total / 1e6, 1),
        "memstats_mb": stats,
        "by_function": [[k, round(v / 1e6, 2)] for k, v in by_func.most_common(top)],
        "by_site": [[k, round(v / 1e6, 2)] for k, v in by_site.most_common(top)],
    }
