"""What every benchmark shares: percentiles, the machine description, process CPU/RSS readings, the result
structure, table printing and writing the JSON result file.

A bench module exposes `async def run(quick: bool, args: list[str]) -> BenchResult`; `bench.cli` adds the
machine description and timing, prints the tables and writes `bench/results/<name>[-quick].json`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchResult",
    "WindowedLoad",
    "Table",
    "Target",
    "ProcStat",
    "RESULTS_DIR",
    "machine",
    "percentile",
    "summarize",
    "proc_stat",
    "format_table",
    "write_result",
    "fmt",
    "progress",
    "VENUE_HISTORY",
    "VENUE_PROFILE",
]

VENUE_HISTORY = 1000
"""Closed orders and trades the paper venue keeps per account in the benchmarks (its default is 100,000).
Binance's `myTrades` answers at most 1,000; more matters because the reconciler fetches the whole trade
history when an order event overtakes its trade event, so with the default every such fetch costs
O(trades so far) and a 10,000-intent run slows down quadratically (see bench/README.md)."""

VENUE_PROFILE: dict[str, Any] = {"profile": "strict"}
"""The paper venue's behaviour profile in the benchmarks (sent as `paper_control("profile", ...)` when a
venue worker starts). The default `binance` profile refuses more than 100 orders per 10 s per account and
hides a fresh order from lookups and cancels for up to 300 ms; the benchmarks push ~1000 orders/s through
one account to measure execbus itself, so a rate limit would measure only its back-off. `strict` is the
venue every published figure was measured on."""

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class Table:
    """One printed table (also kept in the JSON, so the file reads like the terminal)."""

    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Target:
    """A target of the issue a benchmark measures and whether this run met it. `met` is None when it cannot be judged."""

    name: str
    target: str
    measured: str
    met: bool | None
    note: str = ""


@dataclass
class BenchResult:
    params: dict[str, Any]
    results: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    variant: str = ""
    """Appended to the result file name (e.g. a non-default process layout)."""


def progress(message: str) -> None:
    """One line on stderr, so a long run shows it is alive (stdout carries the tables)."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `q` in [0, 100]."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def summarize(values: Iterable[float], *, digits: int = 3) -> dict[str, float]:
    """n, mean, min, p50, p90, p99, p99.9, max of `values` (same unit as the input)."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    out = {
        "n": len(data),
        "mean": sum(data) / len(data),
        "min": data[0],
        "p50": percentile(data, 50),
        "p90": percentile(data, 90),
        "p99": percentile(data, 99),
        "p99.9": percentile(data, 99.9),
        "max": data[-1],
    }
    return {k: (v if k == "n" else round(v, digits)) for k, v in out.items()}


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- processes ---------------------------------------------------------------------------------------------


@dataclass
class ProcStat:
    """CPU seconds (user+system) and resident memory of one process, read from /proc."""

    pid: int
    cpu_s: float
    rss_mb: float


def proc_stat(pid: int) -> ProcStat:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15 of stat)
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE / 1e6
    except (OSError, IndexError, ValueError):
        return ProcStat(pid, math.nan, math.nan)
    return ProcStat(pid, cpu, rss)


# -- machine -----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _nats_server_version() -> str:
    try:
        from bus.server import find_nats_server

        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or out.stderr.strip()
    except Exception as exc:  # a missing binary must not stop the description
        return f"unknown ({exc!r})"


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        # The results a benchmark run rewrites do not make the code dirty.
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)bench/results"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on: they mean little without it."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nats_server": _nats_server_version(),
        "nats_py": _version("nats-py"),
        "msgspec": _version("msgspec"),
        "ccxt": _version("ccxt"),
        "event_loop": _loop_name(),
        "execbus_commit": _git_commit(),
    }


# -- output ------------------------------------------------------------------------------------------------


def format_table(table: Table) -> str:
    cells = [[fmt(c) for c in row] for row in table.rows]
    widths = [len(h) for h in table.headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))
    out = [table.title, line(table.headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(value.__dict__)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_result(name: str, result: BenchResult, *, quick: bool, out_dir: str | None, started: float,
                 machine_desc: dict[str, Any]) -> Path:
    """`<out_dir>/<name>[-<variant>][-quick].json` with the machine description, parameters and numbers."""
    directory = Path(out_dir) if out_dir else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stem = name + (f"-{result.variant}" if result.variant else "") + ("-quick" if quick else "")
    path = directory / f"{stem}.json"
    doc = {
        "bench": name,
        "variant": result.variant or None,
        "quick": quick,
        "started_at": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "command": "execbus bench " + name + (" --quick" if quick else ""),
        "machine": machine_desc,
        "params": result.params,
        "targets": [t.__dict__ for t in result.targets],
        "results": result.results,
        "tables": [t.__dict__ for t in result.tables],
        "notes": result.notes,
    }
    path.write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    return path


def _loop_name() -> str:
    from bus.loop import loop_name

    return loop_name()


class WindowedLoad:
    """What a closed-loop load generator shares: when each id was sent and done (monotonic ns), a callback
    per completion, a window kept in flight, waiting for ids to finish. Subclasses `submit` and record ends
    with `_done`."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self._on_done: Any = None

    def submit(self, prefix: str) -> str:
        raise NotImplementedError

    def _done(self, key: str, now_ns: int) -> bool:
        """Record an end; False if it was seen already."""
        if key in self.done:
            return False
        self.done[key] = now_ns
        if self._on_done is not None:
            self._on_done(key)
        return True

    async def closed(self, prefix: str, window: int, seconds: float) -> list[str]:
        """Keep `window` in flight for `seconds`; returns the ids submitted in that time."""
        ids: list[str] = []
        end = time.monotonic() + seconds

        def refill(_key: str) -> None:
            if time.monotonic() < end:
                ids.append(self.submit(prefix))

        self._on_done = refill
        for _ in range(window):
            ids.append(self.submit(prefix))
        await asyncio.sleep(seconds)
        self._on_done = None
        return ids

    async def drain(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(i not in self.done for i in ids):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def latencies(self, ids: list[str]) -> list[float]:
        return [(self.done[i] - self.sent[i]) / 1e6 for i in ids if i in self.done]
