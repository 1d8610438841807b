"""Stall probe for the `EXEC` stream's file store: steady JetStream publishes to a stream shaped like EXEC,
every ack timed, stalls located and matched against what the server does on disk.

    .venv/bin/python -m bench.stall [--variants base,fixed_subjects,...] [--seconds 40] [--rounds 2] [--out FILE]

Each variant runs on its own fresh `nats-server` (own store directory), in turn, `--rounds` times, so machine
noise falls on every variant alike. The load mimics the EXEC log: `--rate` messages/s of `--size` bytes, in
groups of `--per-intent` messages that share one intent id (`exec.<kind>.paper.BTC-USDT.<intent>`, stored as
`....<partition>.<intent>` through the same partition transform as EXEC; the variant `partition_last` is the
shape streams had before, `....<intent>.<partition>`), each with a unique `Nats-Msg-Id`. Every
publish carries its own reply subject; the ack latency is reply time - send time. A stall is a run of acks
slower than `--threshold-ms` (acks within 100 ms of each other are one stall). While the load runs, the
store directory is watched every 10 ms: a new `N.blk` file (a block rollover) and a rewritten `index.db`
(the full stream state snapshot) are time-stamped, and each stall is matched to the nearest such event.

Not registered in `execbus bench` (bench/cli.py is not this module's); results go to
`bench/results/stall.json` unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, SubjectTransform

from bench.common import RESULTS_DIR, machine, proc_stat, progress, summarize
from bus.server import find_nats_server
from messages import subjects

__all__ = ["VARIANTS", "run"]

KINDS = ("submit_intent", "intent_accepted", "price_requested", "price_quoted", "place_order", "order_placed",
         "order_filled", "order_finalized", "strategy_finished", "execution_completed")


def _actor_kinds() -> dict[str, tuple[str, ...]]:
    """The kinds each actor's consumers take (its `consumes`, of KINDS): one durable pull consumer per actor
    and partition, filtered as bus/runtime.py filters them."""
    from bus.ops.actors import ACTORS, actor_class

    out = {name: tuple(t.kind for t in actor_class(name).consumes if t.kind in KINDS) for name in ACTORS}
    return {name: kinds for name, kinds in out.items() if kinds}


# What a variant changes relative to `base` (EXEC as bus/streams.py makes it):
#   stream: StreamConfig fields; server: text for the server's `jetstream {}` block;
#   subjects: "unique" (one per intent, like execbus) or "fixed" (one per kind and partition);
#   msg_id: send Nats-Msg-Id; storage: "file" or "memory".
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "memory": {"storage": "memory"},
    "fixed_subjects": {"subjects": "fixed"},
    "no_msg_id": {"msg_id": False},
    "dup_window_10s": {"stream": {"duplicate_window": 10.0}},
    "dup_window_2s": {"stream": {"duplicate_window": 2.0}},
    "half_size": {"size_factor": 0.5},
    "max_bytes_block": {"stream": {"max_bytes": 4 * 1024 * 1024 * 4}},
    "compression": {"stream": {"compression": "s2"}},
    "prefill_0": {"prefill": 0},
    "prefill_50k": {"prefill": 50_000},
    "prefill_200k": {"prefill": 200_000},
    "no_consumers": {"consumers": False},
    "single_filter": {"filters": "partition"},
    "partition_first": {"layout": "partition_first"},
    "partition_last": {"layout": "partition_last"},
    "no_intent_in_subject": {"layout": "no_intent"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A bare `nats-server -js` on a fresh store; stderr lines (the server's log, and `GODEBUG=gctrace=1`
    lines with `--gctrace`) are time-stamped as they arrive."""

    def __init__(self, jetstream_conf: str = "", gctrace: bool = False) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="execbus-stall-")
        self.dir = Path(self._tmp.name)
        self.port = _free_port()
        self.jetstream_conf = jetstream_conf
        self.gctrace = gctrace
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[tuple[float, str]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Server:
        store = self.dir / "js"
        conf = self.dir / "server.conf"
        conf.write_text(f'jetstream {{\n  store_dir: "{store}"\n  {self.jetstream_conf}\n}}\n')
        env = dict(os.environ)
        if self.gctrace:
            env["GODEBUG"] = "gctrace=1"
        self.proc = await asyncio.create_subprocess_exec(
            find_nats_server(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
        self._reader = asyncio.create_task(self._read())
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1):
                    return self
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("nats-server did not start: " + "".join(line for _, line in self.lines[-20:]))

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.lines.append((time.monotonic(), line.decode(errors="replace")))

    @property
    def store(self) -> Path:
        return self.dir / "js"

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
        self._tmp.cleanup()


def stream_config(variant: dict[str, Any], partitions: int = 8) -> StreamConfig:
    """EXEC as `bus.streams.stream_config` builds it, with the variant's changes."""
    layout = variant.get("layout")
    src, dest = subjects.partition_transform(partitions, layout if layout in subjects.SHAPES else subjects.CURRENT_SHAPE)
    if layout == "no_intent":  # exec.kind.venue.symbol.<partition>: intent id only in the body
        dest = "exec.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{partition(%d,4)}}" % partitions
    fields: dict[str, Any] = dict(
        name="EXEC", subjects=[subjects.STREAM_SUBJECTS], subject_transform=SubjectTransform(src=src, dest=dest),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.MEMORY if variant.get("storage") == "memory" else StorageType.FILE,
        discard=DiscardPolicy.OLD, max_age=7 * 24 * 3600.0, duplicate_window=120.0, num_replicas=1)
    fields.update(variant.get("stream", {}))
    if "compression" in fields:
        from nats.js.api import StoreCompression

        fields["compression"] = StoreCompression(fields["compression"])
    return StreamConfig(**fields)


class StoreWatch:
    """Time-stamps block rollovers (a new `N.blk`) and `index.db` rewrites in the stream's directory."""

    def __init__(self, store: Path, stream: str = "EXEC") -> None:
        self.dir = store / "jetstream" / "$G" / "streams" / stream / "msgs"
        self.blocks: list[tuple[float, str]] = []
        self.index_writes: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> StoreWatch:
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        seen: set[str] = set()
        index_mtime = 0.0
        while True:
            try:
                with os.scandir(self.dir) as it:
                    now = time.monotonic()
                    for entry in it:
                        if entry.name.endswith(".blk") and entry.name not in seen:
                            seen.add(entry.name)
                            self.blocks.append((now, entry.name))
                        elif entry.name == "index.db":
                            m = entry.stat().st_mtime
                            if m != index_mtime:
                                index_mtime = m
                                self.index_writes.append(now)
            except FileNotFoundError:
                pass
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _filter(variant: dict[str, Any], kind: str, partition: int) -> str:
    layout = variant.get("layout")
    if layout == "no_intent":
        return f"exec.{kind}.*.*.{partition}"
    return subjects.partition_filter(kind, partition, layout if layout in subjects.SHAPES else subjects.CURRENT_SHAPE)


async def prefill(nc: Any, n: int, tag: str) -> None:
    """`n` small messages on `n` distinct subjects (earlier intents), published as fast as acks come back."""
    done = asyncio.Event()
    acked = 0

    async def on_ack(msg: Any) -> None:
        nonlocal acked
        acked += 1
        if acked >= n:
            done.set()

    inbox = f"_INBOX.pre{tag}"
    sub = await nc.subscribe(inbox, cb=on_ack)
    for i in range(n):
        await nc.publish(subjects.subject(KINDS[i % len(KINDS)], "paper", "BTC/USDT", f"pre{tag}x{i // len(KINDS)}"),
                         b"{}", reply=inbox, headers={"Nats-Msg-Id": f"pre{tag}-{i}"})
        if i % 2000 == 1999:
            await nc.flush()
            while acked < i - 4000:
                await asyncio.sleep(0.005)
    if n:
        await asyncio.wait_for(done.wait(), 120)
    await sub.unsubscribe()


class Consumers:
    """One durable pull consumer per actor and partition (ack none; the walk the server does to find a
    consumer's next message is the same), each kept with a pull request outstanding."""

    def __init__(self, nc: Any, variant: dict[str, Any], partitions: int = 8) -> None:
        self.nc = nc
        self.variant = variant
        self.partitions = partitions
        self.received = 0
        self._subs: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Consumers:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = self.nc.jetstream()
        self._pulls: list[tuple[str, str]] = []
        for actor, kinds in _actor_kinds().items():
            for p in range(self.partitions):
                durable = f"{actor}-p{p}"
                if self.variant.get("filters") == "partition":
                    filters = [_filter(self.variant, "*", p)]
                else:
                    filters = [_filter(self.variant, k, p) for k in kinds]
                cfg = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.NONE,
                                     deliver_policy=DeliverPolicy.NEW)
                if len(filters) == 1:
                    cfg.filter_subject = filters[0]
                else:
                    cfg.filter_subjects = filters
                await js.add_consumer("EXEC", cfg)
                inbox = f"_INBOX.c.{durable}"
                count = [0]

                async def on_msg(msg: Any, api: str = f"$JS.API.CONSUMER.MSG.NEXT.EXEC.{durable}",
                                 inbox: str = inbox, count: list[int] = count) -> None:
                    self.received += 1
                    count[0] += 1
                    if count[0] >= 200:
                        count[0] = 0
                        await self.nc.publish(api, b'{"batch":400,"expires":30000000000}', reply=inbox)

                self._subs.append(await self.nc.subscribe(inbox, cb=on_msg))
                self._pulls.append((f"$JS.API.CONSUMER.MSG.NEXT.EXEC.{durable}", inbox))
        self._task = asyncio.create_task(self._repull())
        return self

    async def _repull(self) -> None:
        while True:
            for api, inbox in self._pulls:
                await self.nc.publish(api, b'{"batch":400,"expires":30000000000}', reply=inbox)
            await asyncio.sleep(10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for sub in self._subs:
            await sub.unsubscribe()


async def load(nc: Any, variant: dict[str, Any], args: argparse.Namespace, seconds: float,
               tag: str) -> list[tuple[float, float]]:
    """Publish at a steady rate for `seconds`; returns (send time, ack latency ms) for every publish."""
    size = max(16, int(args.size * variant.get("size_factor", 1.0)))
    payload = b"x" * size
    sent: dict[str, float] = {}
    out: list[tuple[float, float]] = []
    inbox = f"_INBOX.stall{tag}"

    async def on_ack(msg: Any) -> None:
        t = time.monotonic()
        t0 = sent.pop(msg.subject, None)
        if t0 is not None:
            out.append((t0, (t - t0) * 1e3))

    sub = await nc.subscribe(inbox + ".*", cb=on_ack)
    unique = variant.get("subjects", "unique") == "unique"
    msg_id = variant.get("msg_id", True)
    interval = 1.0 / args.rate
    start = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) / interval)
        while n < due:
            intent = n // args.per_intent
            kind = KINDS[n % args.per_intent % len(KINDS)]
            ident = f"i{tag}x{intent}" if unique else f"p{intent % 8}"
            subject = subjects.subject(kind, "paper", "BTC/USDT", ident)
            reply = f"{inbox}.{n}"
            sent[reply] = time.monotonic()
            headers = {"Nats-Msg-Id": f"{tag}-{n}"} if msg_id else None
            await nc.publish(subject, payload, reply=reply, headers=headers)
            n += 1
        await asyncio.sleep(0.001)
    await nc.flush()
    deadline = time.monotonic() + 5
    while sent and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await sub.unsubscribe()
    return sorted(out)


def stalls(acks: list[tuple[float, float]], threshold_ms: float, t0: float) -> list[dict[str, float]]:
    """Runs of slow acks: start (s from t0), worst ack latency, how many publishes were slow."""
    events: list[dict[str, float]] = []
    for ts, ms in acks:
        if ms < threshold_ms:
            continue
        if events and ts - (t0 + events[-1]["last_s"]) < 0.1:
            e = events[-1]
            e["max_ms"] = max(e["max_ms"], round(ms, 2))
            e["slow_acks"] += 1
            e["last_s"] = round(ts - t0, 3)
        else:
            events.append({"at_s": round(ts - t0, 3), "last_s": round(ts - t0, 3), "max_ms": round(ms, 2),
                           "slow_acks": 1})
    return events


def _nearest(t: float, times: list[float]) -> float | None:
    return min((round(x - t, 3) for x in times), key=abs, default=None)


async def run_variant(name: str, args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    variant = VARIANTS[name]
    server = await Server(variant.get("server", ""), gctrace=args.gctrace).start()
    nc = await nats.connect(f"nats://127.0.0.1:{server.port}")
    try:
        js = nc.jetstream()
        await js.add_stream(stream_config(variant))
        n_pre = variant.get("prefill", args.prefill)
        t_pre = time.monotonic()
        await prefill(nc, n_pre, f"{rnd}")
        t_pre = time.monotonic() - t_pre
        consumers = await Consumers(nc, variant).start() if variant.get("consumers", args.consumers) else None
        watch = StoreWatch(server.store).start()
        await load(nc, variant, args, args.warmup, f"{rnd}w")
        t0 = time.monotonic()
        assert server.proc is not None
        cpu0, me0 = proc_stat(server.proc.pid).cpu_s, proc_stat(os.getpid()).cpu_s
        acks = await load(nc, variant, args, args.seconds, f"{rnd}m")
        cpu = {"nats_server_cores": round((proc_stat(server.proc.pid).cpu_s - cpu0) / args.seconds, 2),
               "client_cores": round((proc_stat(os.getpid()).cpu_s - me0) / args.seconds, 2)}
        watch.stop()
        delivered = consumers.received if consumers else 0
        if consumers:
            await consumers.stop()
        info = await js.stream_info("EXEC")
    finally:
        await nc.close()
        await server.stop()
    lat = [ms for _, ms in acks]
    ev = stalls(acks, args.threshold_ms, t0)
    blocks = [t - t0 for t, _ in watch.blocks if t >= t0]
    index_writes = [t - t0 for t in watch.index_writes if t >= t0]
    gcs = [t - t0 for t, line in server.lines if line.startswith("gc ") and t >= t0]
    for e in ev:
        e["nearest_block_rollover_s"] = _nearest(e["at_s"], blocks)
        e["nearest_index_write_s"] = _nearest(e["at_s"], index_writes)
        if args.gctrace:
            e["nearest_gc_s"] = _nearest(e["at_s"], gcs)
    starts = [e["at_s"] for e in ev]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    rollover_gaps = [b - a for a, b in zip(blocks, blocks[1:])]
    big = [e for e in ev if e["max_ms"] >= args.big_ms]
    matched = [e for e in big if e["nearest_block_rollover_s"] is not None and abs(e["nearest_block_rollover_s"]) < 0.2]
    return {
        "variant": name, "round": rnd, "change": variant,
        "ack_ms": summarize(lat), "publishes": len(lat),
        "stalls": len(ev), f"stalls_over_{args.big_ms:g}ms": len(big),
        f"stalls_over_{args.big_ms:g}ms_within_0.2s_of_a_block_rollover": len(matched),
        "stall_gap_s_median": round(sorted(gaps)[len(gaps) // 2], 2) if gaps else None,
        "block_rollovers": len(blocks),
        "block_rollover_gap_s_median": round(sorted(rollover_gaps)[len(rollover_gaps) // 2], 2) if rollover_gaps else None,
        "index_db_writes": len(index_writes), "gc_cycles": len(gcs) if args.gctrace else None,
        "cpu_during_measure": cpu, "prefill_subjects": n_pre, "prefill_s": round(t_pre, 1), "consumer_deliveries": delivered,
        "stream_state": {"messages": info.state.messages, "bytes": info.state.bytes,
                         "subjects": getattr(info.state, "num_subjects", None)},
        "stall_events": ev[:60],
    }


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stall")
    p.add_argument("--variants", default="base,fixed_subjects,no_msg_id,memory",
                   help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--seconds", type=float, default=40.0, help="measured seconds per variant and round")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rate", type=float, default=1000.0, help="publishes per second")
    p.add_argument("--size", type=int, default=900,
                   help="payload bytes (an encoded event is 300-600; larger here so ~1 MB/s needs fewer publishes)")
    p.add_argument("--per-intent", type=int, default=10, help="messages sharing one intent id (subject)")
    p.add_argument("--prefill", type=int, default=100_000,
                   help="distinct subjects written before the measurement (earlier intents), unless a variant says")
    p.add_argument("--consumers", type=int, default=1, help="1: the actors' 40 filtered pull consumers; 0: none")
    p.add_argument("--threshold-ms", type=float, default=5.0)
    p.add_argument("--big-ms", type=float, default=10.0)
    p.add_argument("--gctrace", action="store_true", help="run the server with GODEBUG=gctrace=1")
    p.add_argument("--out", default=str(RESULTS_DIR / "stall.json"))
    return p.parse_args(argv)


async def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = _args(argv)
    names = [v for v in args.variants.split(",") if v]
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for name in names:
            progress(f"stall: round {rnd + 1}/{args.rounds}, {name}")
            r = await run_variant(name, args, rnd)
            runs.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "stall_events"}), flush=True)
    result = {"machine": machine(), "params": {k: v for k, v in vars(args).items() if k != "out"}, "runs": runs}
    if args.out and args.out != "-":
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(run())
