"""The benchmark side of a run: an embedded nats-server, `bench.worker` processes, and a live view of the
messages the benchmark waits for.

    async with Cluster() as cluster:
        await cluster.spawn("sys", actors="all", venue="stepped", options={...})
        watch = await Watch(cluster.bus, ["order_placed", "execution_completed"]).start()
        ...

Every worker is its own OS process (`python -m bench.worker`), so "one process per actor" and "all actors
in one process" are both just spawn calls. CPU and RSS of every process come from /proc.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench.common import VENUE_PROFILE, ProcStat, proc_stat
from bus.bus import Bus
from bus.server import EmbeddedNats
from bus.settings import BusSettings
from decimal import Decimal

from messages import InvalidMessage, Message, RiskLimits, decode, encode, subjects

__all__ = ["Cluster", "Undecodable", "Watch", "Worker", "intent_log"]

ROOT = Path(__file__).resolve().parents[1]
BENCH_LIMITS = RiskLimits(
    max_intent_notional=Decimal("1000000000"), max_open_notional=Decimal("1000000000000"),
    max_orders_per_second=1_000_000, balance_check=True,
)
"""Every check on, no limit in reach: the gate's cost is measured, its refusals are not."""


class Worker:
    def __init__(self, wid: str, proc: asyncio.subprocess.Process, log_path: Path, actors: list[str]) -> None:
        self.wid = wid
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.actors = actors


class Cluster:
    """One nats-server (fresh store), the benchmark's own bus connection, and the worker processes."""

    def __init__(self, settings: BusSettings | None = None, shape: subjects.Shape = subjects.CURRENT_SHAPE) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="execbus-bench-")
        self.dir = Path(self._tmp.name)
        self.settings = settings or BusSettings.from_env()
        self.shape = shape
        """The EXEC stream's shape (messages/subjects.py); an older one is made before anything connects, the
        way a store from before would be found."""
        self.server = EmbeddedNats(store_dir=self.dir / "nats")
        self.bus: Bus | None = None
        self.workers: dict[str, Worker] = {}
        self.url = ""
        self._exchanges: list[Any] = []
        self.log_summary: dict[str, dict[str, int]] = {}
        self.log_examples: list[str] = []
        """The first error lines of each kind, verbatim (also filled when the cluster stops)."""
        """Warning and error events per worker, counted from the worker logs when the cluster stops."""

    async def start(self) -> Cluster:
        from bench.floor import ensure_layout

        await self.server.start()
        self.url = self.server.url
        if self.shape != subjects.CURRENT_SHAPE:
            import nats

            from bus.streams import stream_config

            nc = await nats.connect(self.url)
            try:
                await nc.jetstream().add_stream(stream_config(self.settings, self.shape))
            finally:
                await nc.close()
        self.bus = await Bus.connect(self.url, self.settings, name="bench-client")
        await ensure_layout(self.bus.nc)
        # The benchmarks measure the engine, not the operator's limits: the gate still runs on every intent
        # and order (its reads and writes are part of the cost), but nothing it checks is near a limit.
        await self.bus.buckets.controls.put("risk", encode(BENCH_LIMITS))
        return self

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def nc(self) -> Any:
        assert self.bus is not None
        return self.bus.nc

    async def spawn(self, wid: str, *, actors: str | list[str] = "", options: dict[str, Any] | None = None,
                    venue: str = "none", speed: float = 1.0, floor: str = "", history: int | None = None,
                    ready_s: float = 60.0) -> Worker:
        from bus.ops.system import ACTORS

        names = ",".join(actors) if isinstance(actors, list) else actors
        cmd = [sys.executable, "-m", "bench.worker", "--nats", self.url, "--id", wid, "--actors", names,
               "--options", json.dumps(options or {}), "--venue", venue, "--speed", str(speed), "--floor", floor]
        if history is not None:
            cmd += ["--history-limit", str(history)]
        log_path = self.dir / f"worker-{wid}.log"
        env = dict(os.environ)
        env.setdefault("EXECBUS_LOG_LEVEL", "info")
        with open(log_path, "ab") as log:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=log,
                                                        cwd=str(ROOT), env=env)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), ready_s)
        except asyncio.TimeoutError:
            line = b""
        if not line.startswith(b"{"):
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"worker {wid} did not start: {self.tail(log_path)}")
        listed = list(ACTORS) if names == "all" else [a for a in names.split(",") if a]
        worker = Worker(wid, proc, log_path, listed)
        self.workers[wid] = worker
        if venue != "none":
            await self.set_venue_profile(VENUE_PROFILE)
        return worker

    async def set_venue_profile(self, profile: dict[str, Any], venue: str = "paper") -> Any:
        """Switch the paper venue's behaviour profile. The benchmarks run at ~1000 orders/s, far over the
        default (binance) profile's order budget, so every venue worker is switched to `VENUE_PROFILE`
        before the benchmark sends its first order."""
        from venues.subjects import Subjects

        reply = await self.nc.request(Subjects(venue).ctl("profile"), json.dumps(profile).encode(), timeout=30)
        body = json.loads(reply.data)
        if "ok" not in body:
            raise RuntimeError(f"paper venue refused profile {profile}: {body}")
        return body["ok"]

    @staticmethod
    def tail(path: Path, n: int = 3000) -> str:
        try:
            return path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    async def call(self, wid: str, cmd: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        reply = await self.nc.request(f"bench.w.{wid}.{cmd}", json.dumps(body or {}).encode(), timeout=timeout)
        return json.loads(reply.data)

    async def wait_partitions(self, timeout: float = 60.0) -> dict[str, dict[str, list[int]]]:
        """Until, for every actor, its replicas together hold each partition exactly once."""
        deadline = time.monotonic() + timeout
        want = list(range(self.settings.partitions))
        while True:
            held: dict[str, dict[str, list[int]]] = collections.defaultdict(dict)
            for w in self.workers.values():
                if w.actors:
                    status = await self.call(w.wid, "status")
                    for name, s in status["actors"].items():
                        held[name][w.wid] = s["partitions"]
            if all(sorted(p for parts in by.values() for p in parts) == want for by in held.values()):
                return dict(held)
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions not settled after {timeout}s: {dict(held)}")
            await asyncio.sleep(0.2)

    def server_pid(self) -> int:
        proc = getattr(self.server, "_proc", None)  # EmbeddedNats keeps its child process private
        return proc.pid if proc is not None else -1

    def stats(self) -> dict[str, ProcStat]:
        """CPU and RSS of every process of the run, by role."""
        out = {"nats-server": proc_stat(self.server_pid()), "bench-client": proc_stat(os.getpid())}
        for w in self.workers.values():
            out[f"worker:{w.wid}"] = proc_stat(w.pid)
        return out

    def _summarize_logs(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for w in self.workers.values():
            counts: collections.Counter[str] = collections.Counter()
            try:
                lines = w.log_path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    counts["(non-JSON output)"] += 1
                    continue
                if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                    key = f"{entry['level']}:{entry.get('event')}"
                    counts[key] += 1
                    if entry["level"] != "warning" and counts[key] <= 2:  # keep the first errors verbatim
                        self.log_examples.append(line[:1500])
            out[w.wid] = dict(counts)
        return out

    async def exchange(self, account: str = "main") -> Any:
        """A `PaperExchange` client over NATS (closed with the cluster)."""
        ex = await open_paper(self.url, account)
        self._exchanges.append(ex)
        return ex

    async def stop(self) -> None:
        for ex in self._exchanges:
            try:
                await ex.close()
            except Exception:
                pass
        for w in list(self.workers.values()):
            try:
                await self.call(w.wid, "stop", timeout=5)
            except Exception:
                w.proc.terminate()
        for w in list(self.workers.values()):
            try:
                await asyncio.wait_for(w.proc.wait(), 30)
            except asyncio.TimeoutError:
                w.proc.kill()
                await w.proc.wait()
        self.log_summary = self._summarize_logs()
        self.workers.clear()
        if self.bus is not None:
            await self.bus.close()
        await self.server.stop()
        self._tmp.cleanup()


class Undecodable:
    """A message seen on the bus that does not decode (a bug somewhere upstream): kept for the report."""

    def __init__(self, subject: str, data: bytes, error: str) -> None:
        self.subject = subject
        self.data = data
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({self.subject}: {self.error}: {self.data[:300]!r})"


async def open_paper(url: str, account: str | None = None, tries: int = 100) -> Any:
    """A `PaperExchange` client with its markets loaded, once the venue service answers (it may still be
    starting: a worker process or a task just launched)."""
    from venues.paper import PaperExchange

    options: dict[str, Any] = {"natsUrl": url}
    if account is not None:
        options["account"] = account
    ex = PaperExchange({"options": options})
    for attempt in range(tries):
        try:
            await ex.load_markets()
            return ex
        except Exception:
            if attempt + 1 == tries:
                raise
            ex.markets_loading = None  # ccxt caches the failed load otherwise
            await asyncio.sleep(0.05)
    return ex


async def intent_log(cluster: Cluster, intent_id: str, limit: int = 60) -> list[str]:
    """Every message of one intent as stored in the EXEC stream, in order, briefly (for failure reports)."""
    import msgspec
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    js = cluster.nc.jetstream()
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=10.0)
    sub = await js.pull_subscribe(subjects.intent_filter(intent_id, cluster.shape), stream=cluster.settings.stream,
                                  config=config)
    out: list[str] = []
    try:
        for msg in await sub.fetch(limit, timeout=1.0):
            body = msgspec.json.decode(msg.data)
            keep = {k: body[k] for k in ("client_order_id", "attempt", "side", "status", "qty", "filled_qty",
                                         "trade_id", "reason") if k in body}
            out.append(f"{body.get('type')} {keep}")
    except Exception:  # fewer than `limit`: nats-py times out after delivering what there was
        pass
    finally:
        await sub.unsubscribe()
    return out


class Watch:
    """A live (core NATS) view of some message kinds: arrival time (CLOCK_MONOTONIC ns) and copies per
    intent, and futures to wait on. Taken in the benchmark process, so a time here is "seen on the bus"."""

    def __init__(self, bus: Bus, kinds: list[str]) -> None:
        self.bus = bus
        self.kinds = kinds
        self.first: dict[tuple[str, str], tuple[int, Message]] = {}
        self.count: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in kinds}
        self._futures: dict[tuple[str, str], asyncio.Future[tuple[int, Message]]] = {}

    async def start(self) -> Watch:
        for kind in self.kinds:
            await self.bus.nc.subscribe(subjects.kind_filter(kind), cb=self._on)
        await self.bus.nc.flush()
        return self

    async def _on(self, raw: Msg) -> None:
        now = time.monotonic_ns()
        parts = subjects.parse(raw.subject)
        if parts is None:
            return
        key = (parts.kind, parts.intent_id)
        self.count[parts.kind][parts.intent_id] += 1
        if key in self.first:
            return
        try:
            message: Any = decode(raw.data)
        except InvalidMessage as exc:  # a benchmark must report a broken message, not hang on it
            message = Undecodable(raw.subject, raw.data, str(exc))
        entry = (now, message)
        self.first[key] = entry
        fut = self._futures.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(entry)

    def expect(self, kind: str, intent_id: str) -> asyncio.Future[tuple[int, Message]]:
        """Resolves with (arrival ns, message) of the first `kind` message of the intent."""
        fut: asyncio.Future[tuple[int, Message]] = asyncio.get_running_loop().create_future()
        seen = self.first.get((kind, intent_id))
        if seen is not None:
            fut.set_result(seen)
        else:
            self._futures[(kind, intent_id)] = fut
        return fut

    def forget(self, intent_id: str) -> None:
        for kind in self.kinds:
            self.first.pop((kind, intent_id), None)
            self._futures.pop((kind, intent_id), None)
