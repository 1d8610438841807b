"""nats-py against the lean `nats-core` client (nats.py monorepo, `nats.client`, Python 3.13+) on execbus's
hot path: the same workloads, the same server, the same Python 3.13 interpreter, in one run.

    python -m bench.clients [--quick] [--out DIR] [--rounds N]
    execbus bench clients [--quick]            (when registered in bench/cli.py)

Workloads, each run once per client per round, the clients taking turns (the order alternates between
rounds, so machine noise hits every client alike):

* `publish`: core publish of N 200-byte messages, one `flush` at the end (no subscriber);
* `rtt`: sequential request/reply, the responder on its own connection of the same client type;
* `core_chain`: an actor's hot path in core NATS — driver -> hop1 -> hop2 -> hop3 -> hop4 -> driver, each
  hop its own connection that receives on a subscription and publishes the next subject (5 transfers,
  4 relays). Sequential (latency per message through the chain) and pipelined (a window of messages in
  flight; chain messages/s);
* `js_chain`: the same chain over JetStream (one file-storage stream): each hop receives from a durable
  push consumer (explicit ack), publishes the next message with the library's JetStream publish (ack
  awaited), then acks — so a message reaches the next hop only once it is stored. nats-jetstream offers
  pull consumers only, so the push consumers are created through nats-py's API for both clients and
  delivered on a plain subscription; the ack is a plain publish to the reply subject for both.

CPU is `time.process_time` of this process (all connections of the workload run in it) divided by the
messages, plus the nats-server's CPU from /proc (the same for both clients if the wire is the same).

`nats-core` flushes its write buffer from a background task at most every 5 ms (`_min_flush_interval`,
not a connect option): a third series, `nats-core/0ms`, sets that private attribute to 0 to show what the
client costs without the coalescing delay.

Run under a Python without nats-core (the project's 3.11 venv) it re-executes itself with the interpreter
in `EXECBUS_PY313` (a venv with `'nats-core[nkeys]' nats-jetstream nats-py msgspec`; nats-core 0.2.0
imports nkeys unconditionally although it is only an extra), else `.venv313/bin/python`,
else a pyenv 3.13+ that has them; with none it prints why it skipped and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median
from typing import Any, Protocol

from bench.common import BenchResult, Table, format_table, machine, proc_stat, progress, summarize, write_result

__all__ = ["run", "main", "SKIP_MESSAGE"]

SKIP_MESSAGE = "skipped: nats-core needs Python 3.13+ (set EXECBUS_PY313)"
PAYLOAD = b"x" * 200
HOPS = 4
WINDOW = 64
"""Chain messages in flight in the pipelined runs (a handful of actors' worth of concurrent intents)."""
ROOT = Path(__file__).resolve().parents[1]
_PROBE = "import sys, nats.client, nats.aio; assert sys.version_info >= (3, 13)"
_REEXEC_ENV = "EXECBUS_CLIENTS_CHILD"

Handler = Callable[[bytes, "str | None"], Awaitable[None]]


# -- the two clients behind one small port --------------------------------------------------------------------


class Client(Protocol):
    label: str

    async def connect(self, url: str) -> None: ...
    async def publish(self, subject: str, data: bytes) -> None: ...
    async def flush(self) -> None: ...
    async def request(self, subject: str, data: bytes) -> bytes: ...
    async def js_publish(self, subject: str, data: bytes) -> None: ...
    async def serve(self, subject: str, handler: Handler) -> None: ...
    async def close(self) -> None: ...


class PyClient:
    """nats-py as execbus connects it (bus/connect.py: 64 MB pending buffer); callback subscriptions."""

    label = "nats-py"

    async def connect(self, url: str) -> None:
        import nats

        self.nc = await nats.connect(url, pending_size=64 * 1024 * 1024, allow_reconnect=False)
        self.js = self.nc.jetstream()

    async def publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)

    async def flush(self) -> None:
        await self.nc.flush()

    async def request(self, subject: str, data: bytes) -> bytes:
        return (await self.nc.request(subject, data, timeout=5)).data

    async def js_publish(self, subject: str, data: bytes) -> None:
        await self.js.publish(subject, data)

    async def serve(self, subject: str, handler: Handler) -> None:
        async def cb(msg: Any) -> None:
            await handler(msg.data, msg.reply or None)

        await self.nc.subscribe(subject, cb=cb)

    async def close(self) -> None:
        await self.nc.close()


class CoreClient:
    """nats-core (`nats.client`), its JetStream publish from nats-jetstream; a task iterates each
    subscription (its idiom: callbacks are synchronous and the message is queued anyway)."""

    def __init__(self, flush_interval_s: float | None = None) -> None:
        self.flush_interval_s = flush_interval_s
        self.label = "nats-core" if flush_interval_s is None else f"nats-core/{flush_interval_s * 1e3:g}ms"
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, url: str) -> None:
        from nats.client import connect

        self.nc = await connect(url, allow_reconnect=False)
        if self.flush_interval_s is not None:
            self.nc._min_flush_interval = self.flush_interval_s  # private: no public knob
        try:
            from nats.jetstream import new

            self.js: Any = new(self.nc)
        except ImportError:
            self.js = None

    async def publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)

    async def flush(self) -> None:
        await self.nc.flush()

    async def request(self, subject: str, data: bytes) -> bytes:
        return (await self.nc.request(subject, data, timeout=5)).data

    async def js_publish(self, subject: str, data: bytes) -> None:
        await self.js.publish(subject, data)

    async def serve(self, subject: str, handler: Handler) -> None:
        sub = await self.nc.subscribe(subject)

        async def loop() -> None:
            async for msg in sub:
                await handler(msg.data, msg.reply)

        self.tasks.append(asyncio.create_task(loop()))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.nc.close()


Factory = Callable[[], Client]


# -- the server ------------------------------------------------------------------------------------------------


def _nats_server_bin() -> str:
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    for candidate in (ROOT / ".venv" / "bin" / "nats-server", Path(sys.executable).parent / "nats-server"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: set NATS_SERVER_BIN")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`nats-server -js` on a free port with a fresh store; stopped by its own process handle."""

    def __init__(self) -> None:
        self.binary = _nats_server_bin()
        self.store = tempfile.mkdtemp(prefix="execbus-clients-")
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or out.stderr.strip()

    async def __aenter__(self) -> Server:
        self.proc = subprocess.Popen([self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                      "-sd", self.store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return self
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.store, ignore_errors=True)

    def cpu_s(self) -> float:
        assert self.proc is not None
        return proc_stat(self.proc.pid).cpu_s


# -- workloads -------------------------------------------------------------------------------------------------


class Meter:
    """Wall, process CPU and server CPU over one measured section."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> Meter:
        self.t0, self.c0, self.s0 = time.perf_counter(), time.process_time(), self.server.cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        self.server_cpu = self.server.cpu_s() - self.s0

    def per(self, n: int) -> dict[str, float]:
        return {"per_s": n / self.wall, "cpu_us": self.cpu / n * 1e6, "server_cpu_us": self.server_cpu / n * 1e6}


async def _connected(factory: Factory, url: str, n: int) -> list[Client]:
    clients = [factory() for _ in range(n)]
    for c in clients:
        await c.connect(url)
    return clients


async def _close(clients: list[Client]) -> None:
    for c in clients:
        await c.close()


async def w_publish(factory: Factory, server: Server, n: int) -> dict[str, Any]:
    (c,) = await _connected(factory, server.url, 1)
    try:
        for _ in range(min(n, 2000)):
            await c.publish("pub.bench", PAYLOAD)
        await c.flush()
        with Meter(server) as m:
            for _ in range(n):
                await c.publish("pub.bench", PAYLOAD)
            await c.flush()
        return m.per(n)
    finally:
        await _close([c])


async def w_rtt(factory: Factory, server: Server, n: int, tag: str) -> dict[str, Any]:
    responder, requester = await _connected(factory, server.url, 2)
    subject = f"rr.{tag}"

    async def echo(data: bytes, reply: str | None) -> None:
        assert reply is not None
        await responder.publish(reply, data)

    try:
        await responder.serve(subject, echo)
        await responder.flush()
        await _first_request(requester, subject)
        for _ in range(min(n, 100)):
            await requester.request(subject, PAYLOAD)
        samples = []
        with Meter(server) as m:
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await requester.request(subject, PAYLOAD)
                samples.append((time.perf_counter_ns() - t0) / 1e6)
        return {**m.per(n), "ms": samples}
    finally:
        await _close([requester, responder])


async def _first_request(requester: Client, subject: str) -> None:
    """The first request, retried while the server answers "no responders": under load a nats-py
    request right after the responder's subscribe + flush has (rarely) seen no interest yet."""
    deadline = time.monotonic() + 5
    while True:
        try:
            await requester.request(subject, PAYLOAD)
            return
        except Exception as exc:
            if "NoResponders" not in type(exc).__name__ or time.monotonic() > deadline:
                raise
            progress(f"no responders yet on {subject}; retrying")
            await asyncio.sleep(0.05)


class Sink:
    """The driver's end of a chain: a future for the sequential runs, a window for the pipelined ones."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[int] | None = None
        self.window = asyncio.Semaphore(WINDOW)
        self.count = 0
        self.target = 0
        self.all_in = asyncio.Event()

    def arrived(self) -> None:
        now = time.perf_counter_ns()
        if self.waiter is not None:
            if not self.waiter.done():
                self.waiter.set_result(now)
            return
        self.count += 1
        self.window.release()
        if self.count >= self.target:
            self.all_in.set()


async def _drive(inject: Callable[[], Awaitable[None]], sink: Sink, n_seq: int, n_pipe: int,
                 server: Server) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    for _ in range(20):  # warm-up
        sink.waiter = loop.create_future()
        await inject()
        await asyncio.wait_for(sink.waiter, 10)
    samples = []
    with Meter(server) as seq:
        for _ in range(n_seq):
            sink.waiter = fut = loop.create_future()
            t0 = time.perf_counter_ns()
            await inject()
            samples.append((await asyncio.wait_for(fut, 10) - t0) / 1e6)
    sink.waiter, sink.target = None, n_pipe
    with Meter(server) as pipe:
        for _ in range(n_pipe):
            await sink.window.acquire()
            await inject()
        await asyncio.wait_for(sink.all_in.wait(), 120)
    seq_figures = seq.per(n_seq)
    return {"ms": samples, "seq_cpu_us": seq_figures["cpu_us"], "seq_server_cpu_us": seq_figures["server_cpu_us"],
            **pipe.per(n_pipe)}


async def w_core_chain(factory: Factory, server: Server, n_seq: int, n_pipe: int, tag: str) -> dict[str, Any]:
    clients = await _connected(factory, server.url, HOPS + 1)
    driver, hops = clients[0], clients[1:]
    subjects = [f"cc.{tag}.h{i}" for i in range(1, HOPS + 1)] + [f"cc.{tag}.out"]
    sink = Sink()
    try:
        for i, hop in enumerate(hops):
            async def relay(data: bytes, reply: str | None, hop: Client = hop, nxt: str = subjects[i + 1]) -> None:
                await hop.publish(nxt, data)

            await hop.serve(subjects[i], relay)

        async def out(data: bytes, reply: str | None) -> None:
            sink.arrived()

        await driver.serve(subjects[-1], out)
        for c in clients:
            await c.flush()
        return await _drive(lambda: driver.publish(subjects[0], PAYLOAD), sink, n_seq, n_pipe, server)
    finally:
        await _close(clients)


async def w_js_chain(factory: Factory, server: Server, admin: Any, n_seq: int, n_pipe: int,
                     tag: str) -> dict[str, Any]:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

    js = admin.jetstream()
    stream = f"CLIENTS_{tag}"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"cj.{tag}.>"], storage=StorageType.FILE))
    clients = await _connected(factory, server.url, HOPS + 1)
    driver, hops = clients[0], clients[1:]
    names = [f"h{i}" for i in range(1, HOPS + 1)] + ["out"]
    sink = Sink()

    async def consume(client: Client, name: str, handler: Handler) -> None:
        deliver = f"dl.{tag}.{name}"
        await client.serve(deliver, handler)
        await client.flush()  # the subscription exists before the consumer pushes
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=name, deliver_subject=deliver, filter_subject=f"cj.{tag}.{name}",
            ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, max_ack_pending=4 * WINDOW,
            ack_wait=30.0))

    try:
        for i, hop in enumerate(hops):
            async def relay(data: bytes, reply: str | None, hop: Client = hop, nxt: str = f"cj.{tag}.{names[i + 1]}"
                            ) -> None:
                await hop.js_publish(nxt, data)
                assert reply is not None
                await hop.publish(reply, b"")  # the ack, after the next message is stored

            await consume(hop, names[i], relay)

        async def out(data: bytes, reply: str | None) -> None:
            assert reply is not None
            await driver.publish(reply, b"")
            sink.arrived()

        await consume(driver, "out", out)
        return await _drive(lambda: driver.js_publish(f"cj.{tag}.h1", PAYLOAD), sink, n_seq, n_pipe, server)
    finally:
        await _close(clients)
        await js.delete_stream(stream)


# -- the run ---------------------------------------------------------------------------------------------------


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"rounds": 1, "publish": 20_000, "rtt": 200, "chain_seq": 100, "chain_pipe": 1000,
                "js_seq": 50, "js_pipe": 300}
    return {"rounds": 3, "publish": 200_000, "rtt": 1000, "chain_seq": 400, "chain_pipe": 10_000,
            "js_seq": 200, "js_pipe": 2000}


def _factories(has_js: bool) -> dict[str, Factory]:
    return {"nats-py": PyClient, "nats-core": CoreClient, "nats-core/0ms": lambda: CoreClient(0.0)}


async def run(quick: bool, args: list[str]) -> BenchResult:
    """The `bench.cli` entry point: measures in-process under Python 3.13+ with nats-core, else runs this
    module under the 3.13 interpreter found by `_python313` and reads its result back."""
    ap = argparse.ArgumentParser(prog="execbus bench clients")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per client (default 3, --quick 1)")
    opts = ap.parse_args(args)
    if _has_core():
        return await _measure(quick, opts.rounds)
    python, why = _python313()
    if python is None:
        print(f"{SKIP_MESSAGE}{why}", flush=True)
        return BenchResult(params={"skipped": True}, results={"skipped": SKIP_MESSAGE + why}, notes=[SKIP_MESSAGE + why])
    with tempfile.TemporaryDirectory() as out:
        argv = (["--quick"] if quick else []) + ["--out", out] + args
        code = await asyncio.to_thread(subprocess.call, [python, "-m", "bench.clients", *argv], env=_child_env())
        if code != 0:
            raise RuntimeError(f"{python} -m bench.clients exited {code}")
        doc = json.loads(next(Path(out).glob("clients*.json")).read_text())
    doc["results"]["measured_on"] = doc["machine"]
    return BenchResult(params=doc["params"], results=doc["results"],
                       tables=[Table(t["title"], t["headers"], t["rows"]) for t in doc["tables"]],
                       notes=doc["notes"] + [f"measured by {python} (Python {doc['machine']['python']}); "
                                             "results.measured_on describes that process"])


async def _measure(quick: bool, rounds: int | None) -> BenchResult:
    sizes = _sizes(quick)
    if rounds:
        sizes["rounds"] = rounds
    has_js = _has_module("nats.jetstream")
    factories = _factories(has_js)
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {w: {c: [] for c in factories}
                                                       for w in ("publish", "rtt", "core_chain", "js_chain")}
    import nats

    async with Server() as server:
        admin = await nats.connect(server.url, allow_reconnect=False)
        try:
            for r in range(sizes["rounds"]):
                order = list(factories) if r % 2 == 0 else list(reversed(factories))
                for label in order:
                    f, tag = factories[label], f"r{r}_{label.replace('-', '').replace('/', '_')}"
                    progress(f"round {r + 1}/{sizes['rounds']}: {label}")
                    raw["publish"][label].append(await w_publish(f, server, sizes["publish"]))
                    raw["rtt"][label].append(await w_rtt(f, server, sizes["rtt"], tag))
                    raw["core_chain"][label].append(
                        await w_core_chain(f, server, sizes["chain_seq"], sizes["chain_pipe"], tag))
                    if label == "nats-py" or has_js:
                        raw["js_chain"][label].append(
                            await w_js_chain(f, server, admin, sizes["js_seq"], sizes["js_pipe"], tag))
        finally:
            await admin.close()
        server_version = server.version()
    return _result(raw, sizes, has_js, server_version)


def _agg(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput and CPU: the median of the rounds (each round listed); latency: all rounds pooled."""
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key in runs[0]:
        if key == "ms":
            out["latency_ms"] = summarize([x for run in runs for x in run["ms"]])
        else:
            out[key] = round(median(run[key] for run in runs), 2)
            out[key + "_rounds"] = [round(run[key], 2) for run in runs]
    return out


def _result(raw: dict[str, dict[str, list[dict[str, Any]]]], sizes: dict[str, int], has_js: bool,
            server_version: str) -> BenchResult:
    results = {w: {c: _agg(runs) for c, runs in by_client.items()} for w, by_client in raw.items()}
    labels = list(raw["publish"])
    ref = "nats-py"

    def vs(value: float | None, base: float | None) -> str:
        return "-" if not value or not base else f"{value / base:.2f}x"

    def lat(w: str, c: str, q: str) -> float | None:
        return results[w][c].get("latency_ms", {}).get(q)

    rows_tp, rows_lat, rows_cpu = [], [], []
    for c in labels:
        pub, rr, cc, jc = (results[w][c] for w in ("publish", "rtt", "core_chain", "js_chain"))
        rows_tp.append([c, pub.get("per_s"), vs(pub.get("per_s"), results["publish"][ref].get("per_s")),
                        cc.get("per_s"), vs(cc.get("per_s"), results["core_chain"][ref].get("per_s")),
                        jc.get("per_s"), vs(jc.get("per_s"), results["js_chain"][ref].get("per_s"))])
        rows_lat.append([c, lat("rtt", c, "p50"), lat("rtt", c, "p99"), lat("core_chain", c, "p50"),
                         lat("core_chain", c, "p99"), lat("js_chain", c, "p50"), lat("js_chain", c, "p99")])
        rows_cpu.append([c, pub.get("cpu_us"), rr.get("cpu_us"), cc.get("cpu_us"), cc.get("seq_cpu_us"),
                         jc.get("cpu_us"), jc.get("seq_cpu_us"), pub.get("server_cpu_us"), cc.get("server_cpu_us")])
    tables = [
        Table("throughput (median of rounds; x = vs nats-py in the same run)",
              ["client", "publish msg/s", "x", "core chain msg/s", "x", "js chain msg/s", "x"], rows_tp),
        Table("latency, ms (all rounds pooled)",
              ["client", "rtt p50", "rtt p99", "core chain p50", "p99", "js chain p50", "p99"], rows_lat),
        Table("CPU per message, us (this process: every connection of the workload; chain = per chain message, "
              f"{HOPS} relays + driver)",
              ["client", "publish", "rtt", "core chain pipe", "seq", "js chain pipe", "seq", "server publish",
               "server core chain"], rows_cpu),
    ]
    notes = [
        "nats-core coalesces writes in a background task that flushes at most every 5 ms "
        "(_min_flush_interval, no public option); nats-core/0ms sets it to 0 (private attribute)",
        f"chains: driver -> {HOPS} hops -> driver, each hop its own connection in this process; "
        f"pipelined runs keep {WINDOW} chain messages in flight",
        "js chain: durable push consumers (explicit ack) created with nats-py's API for both clients; each hop "
        "publishes with its library's JetStream publish (ack awaited) and then acks",
    ]
    if not has_js:
        notes.append("nats-jetstream is not installed in this interpreter: no JetStream chain for nats-core")
    return BenchResult(
        params={**sizes, "payload_bytes": len(PAYLOAD), "hops": HOPS, "window": WINDOW,
                "nats_py_connect": "pending_size=64 MiB (as bus/connect.py)", "nats_server": server_version,
                "nats_core": _dist_version("nats-core"), "nats_jetstream": _dist_version("nats-jetstream")},
        results=results, tables=tables, notes=notes)


# -- finding Python 3.13 ---------------------------------------------------------------------------------------


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _has_core() -> bool:
    return sys.version_info >= (3, 13) and _has_module("nats.client") and _has_module("nats.aio")


def _dist_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _python313() -> tuple[str | None, str]:
    """An interpreter that can run this benchmark, or None and why not (appended to the skip message)."""
    if os.environ.get(_REEXEC_ENV):
        return None, f" ({sys.executable} was chosen but lacks nats-core)"
    explicit = os.environ.get("EXECBUS_PY313")
    if explicit:
        ok = _probe(explicit)
        return (explicit, "") if ok else (None, f" (EXECBUS_PY313={explicit} cannot import nats.client and nats.aio)")
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [str(ROOT / ".venv313" / "bin" / "python")]
    candidates += sorted(glob.glob(os.path.join(pyenv, "versions", "3.1[3-9]*", "bin", "python3")), reverse=True)
    for candidate in candidates:
        if os.access(candidate, os.X_OK) and _probe(candidate):
            return candidate, ""
    return None, ""


def _probe(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{_REEXEC_ENV: "1"})
    if "NATS_SERVER_BIN" not in env:
        try:
            env["NATS_SERVER_BIN"] = _nats_server_bin()
        except FileNotFoundError:
            pass
    return env


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.clients [--quick] [--out DIR] [--rounds N]`: print the tables, write clients.json."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one round (~20 s)")
    ap.add_argument("--out", default=None, help="directory for clients.json (default bench/results)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per client (default 3, --quick 1)")
    opts = ap.parse_args(argv)
    if not _has_core():
        python, why = _python313()
        if python is None:
            print(f"{SKIP_MESSAGE}{why}", flush=True)
            return 0
        sys.stdout.flush()
        os.execve(python, [python, "-m", "bench.clients", *argv], _child_env())
    from bus.loop import run as run_loop

    started = time.time()
    desc = machine()
    result = run_loop(_measure(opts.quick, opts.rounds))
    desc.update(nats_server=result.params["nats_server"], nats_core=result.params["nats_core"],
                nats_jetstream=result.params["nats_jetstream"], nats_py=_dist_version("nats-py"))
    print(f"bench clients{' --quick' if opts.quick else ''} on {desc['cpu_model']} x{desc['cpu_cores']}, "
          f"{desc['nats_server']}, Python {desc['python']}, {desc['event_loop']}", flush=True)
    for table in result.tables:
        print()
        print(format_table(table))
    for note in result.notes:
        print(f"  note: {note}")
    path = write_result("clients", result, quick=opts.quick, out_dir=opts.out, started=started, machine_desc=desc)
    print(f"\nclients: {time.time() - started:.1f} s; result written to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
