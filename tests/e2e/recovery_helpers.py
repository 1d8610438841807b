"""A crash-test cluster: real processes, killed with SIGKILL.

    EmbeddedNats (its own store dir; `kill()` + `start()` = a crashed and restarted nats-server)
    the paper venue, step-driven, served from the test process on its own NATS connection
    one subprocess per actor: `python -m bus.ops.cli actor NAME --nats URL`

The venue runs in the test process only so the test can hold a request *at the venue* (a `Gate`: the
request has reached the exchange and its answer has not gone out yet) and fill a resting order at will
(`fill`, the engine's maker fill at the order's own price). The market itself never moves, so nothing fills
unless a test says so and every run sees the same book.

Nothing here sleeps for a fixed time to "let things settle": every wait is on a condition (a message on the
bus, a request arriving at the venue, a process printing that it is ready, an absolute deadline passing).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.js.api import DeliverPolicy, DiscardPolicy

from bus.bus import Bus
from bus.server import EmbeddedNats
from messages import (
    ExecutionCompleted,
    Message,
    OrderFilled,
    OrderFinalized,
    OrderKept,
    PlaceOrder,
    decode,
    subjects,
)
from tests.helpers import Recorder, fast_settings, wait_until
from venues.config import PaperVenueConfig
from venues.paper import PaperExchange
from venues.service import PaperVenueService
from venues.simulator import PaperVenue

__all__ = ["ActorProcess", "Cluster", "Gate", "check_orders", "read_log", "snapshot_stream"]

REPO = Path(__file__).resolve().parents[2]
ALL_ACTORS = ("supervisor", "pricer", "placer", "reconciler", "tracker", "market_fallback")
SYMBOL = "BTC/USDT"
ACCOUNT = "main"

# What every actor process gets. Lease TTL 1 s: a killed replica's partitions move within ~1.3 s.
# Ack wait 4 s: a message the dead replica had taken comes back 4 s after it was delivered (the default is
# 10 s); long enough that a new replica is up before it, which is the realistic order of events.
ACTOR_ENV = {
    "EXECBUS_LEASE_TTL_S": "1",
    "EXECBUS_ACK_WAIT_S": "4",
    "EXECBUS_LOG_LEVEL": "info",
    "EXECBUS_LOG_JSON": "1",
}


# -- processes ---------------------------------------------------------------------------------------------


class ActorProcess:
    """One `execbus actor NAME` subprocess; its output goes to a log file."""

    def __init__(self, name: str, url: str, log_dir: Path, generation: int) -> None:
        self.name = name
        self.url = url
        self.log_path = log_dir / f"{name}.{generation}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.replica = ""

    def start(self) -> ActorProcess:
        env = {**os.environ, **ACTOR_ENV, "NATS_URL": self.url}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bus.ops.cli", "actor", self.name, "--nats", self.url],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    async def ready(self, timeout: float = 20.0) -> str:
        """Wait for the line the CLI prints once the replica runs; returns the replica id."""
        pattern = re.compile(rf"execbus actor {self.name}: replica (\S+) on")

        def started() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            found = pattern.search(self.log_path.read_text(errors="replace"))
            return found.group(1) if found else None

        self.replica = await wait_until(started, timeout=timeout, interval=0.02)
        return self.replica

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, no lease is handed back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- the venue and its gates ---------------------------------------------------------------------------------


class Gate:
    """Holds the first `method` request for one client order id at the venue until released: the request
    has reached the exchange, the answer has not left it. Released, the venue executes it and answers
    (to whoever still listens)."""

    def __init__(self, method: str, client_order_id: str, *, lost: bool = False) -> None:
        self.method = method
        self.client_order_id = client_order_id
        self.lost = lost
        """Released, the request is dropped instead: never executed, never answered (lost on the way)."""
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()
        self.used = False

    def release(self) -> None:
        self.released.set()

    async def reached(self, timeout: float = 15.0) -> None:
        """The request is at the venue, held."""
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {self.method} for {self.client_order_id} reached the venue in {timeout}s") from None


class HeldVenue:
    """The paper venue on its own NATS connection (a separate client from everything else), with gates."""

    def __init__(self, url: str, config: PaperVenueConfig) -> None:
        self.url = url
        self.config = config
        self.venue: PaperVenue | None = None
        self.gates: list[Gate] = []
        self._nc: Any = None
        self._service: PaperVenueService | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> HeldVenue:
        async def quiet(exc: Exception) -> None:  # reconnect attempts while a test has nats-server down
            return None

        self._nc = await nats.connect(
            self.url, name="paper-venue", max_reconnect_attempts=-1, allow_reconnect=True, reconnect_time_wait=0.1,
            error_cb=quiet,
        )
        self.venue = venue = await asyncio.to_thread(PaperVenue, self.config)
        original = venue.handle

        async def handle(method: str, payload: dict[str, Any]) -> Any:
            gate = self._gate_for(method, payload)
            if gate is not None:
                gate.arrived.set()
                await gate.released.wait()
                if gate.lost:
                    await asyncio.Event().wait()  # no answer, ever (the service cancels this at stop)
            return await original(method, payload)

        venue.handle = handle  # type: ignore[method-assign]
        self._service = await PaperVenueService(self._nc, venue).start()
        self._tasks.append(asyncio.create_task(venue.run(self._stop)))
        self._tasks.append(asyncio.create_task(self._keep_books_fresh()))
        return self

    def _gate_for(self, method: str, payload: dict[str, Any]) -> Gate | None:
        if not self.gates:
            return None
        cid = payload.get("clientOrderId")
        if cid is None and payload.get("id") is not None:
            try:
                cid = self.engine.find_order(payload.get("account") or ACCOUNT, str(payload["id"])).client_order_id
            except Exception:
                return None
        for gate in self.gates:
            if not gate.used and gate.method == method and gate.client_order_id == cid:
                gate.used = True
                return gate
        return None

    def gate(self, method: str, client_order_id: str, *, lost: bool = False) -> Gate:
        gate = Gate(method, client_order_id, lost=lost)
        self.gates.append(gate)
        return gate

    def republish_books(self) -> None:
        assert self.venue is not None
        self.venue._books_dirty.update(self.venue.engine.markets)
        self.venue.publish_books(force=True)

    async def _keep_books_fresh(self) -> None:
        """The market is frozen, but the pricer refuses a book it has not heard of for 5 s: re-announce the
        (unchanged) books every second, as a live feed would."""
        assert self.venue is not None
        while True:
            await asyncio.sleep(1.0)
            self.republish_books()

    @property
    def engine(self) -> Any:
        assert self.venue is not None
        return self.venue.engine

    def orders_of(self, intent_id: str) -> list[dict[str, Any]]:
        """Every order of the intent at the venue, open or closed, in Binance wire form (exact strings)."""
        from venues.orders import order_to_wire

        pattern = re.compile(rf"^{re.escape(intent_id)}-(\d+|F)$")
        found = self.engine.open_orders(ACCOUNT) + self.engine.closed_orders(ACCOUNT)
        return [order_to_wire(o) for o in found if o.client_order_id and pattern.match(o.client_order_id)]

    def order(self, client_order_id: str) -> Any:
        return self.engine.find_order(ACCOUNT, client_order_id=client_order_id)

    def fill(self, client_order_id: str, fraction: Decimal = Decimal(1)) -> Decimal:
        """A maker fill of `fraction` of what the resting order has left, at its own price; returns the qty."""
        order = self.order(client_order_id)
        step = self.engine.markets[order.symbol].spec.amount_step
        qty = max((order.remaining * fraction).quantize(step, rounding="ROUND_DOWN"), step)
        fill = self.engine.force_fill(order, qty)
        assert fill is not None, f"{client_order_id} is {order.status}, cannot fill it"
        return qty

    def top_of_book(self) -> tuple[tuple[Decimal, Decimal], tuple[Decimal, Decimal]]:
        book = self.engine.order_book(SYMBOL, 5)
        bid, ask = book["bids"][0], book["asks"][0]
        return (Decimal(bid[0]), Decimal(bid[1])), (Decimal(ask[0]), Decimal(ask[1]))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._service is not None:
            await self._service.stop()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


# -- the cluster -------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    workdir: Path
    server: EmbeddedNats = field(init=False)
    venue: HeldVenue = field(init=False)
    bus: Bus = field(init=False)
    recorder: Recorder = field(init=False)
    exchange: Any = field(init=False)
    actors: dict[str, ActorProcess] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    everything: list[ActorProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> Cluster:
        self.server = await EmbeddedNats(store_dir=self.workdir / "nats").start()
        self.bus = await Bus.connect(self.url, fast_settings(ack_wait_s=4.0), name="recovery-test")
        # Every scenario of a campaign places its first order at once: more than the default order budget of
        # 10 a second, which is not what these tests are about (test_operator_control tests the budget).
        await (await self.bus.controls()).set_limit("max_orders_per_second", "100")
        self.venue = await HeldVenue(self.url, PaperVenueConfig(speed=0)).start()
        self.recorder = await Recorder().attach(self.bus)
        await asyncio.gather(*(self.start_actor(name) for name in ALL_ACTORS))
        self.exchange = PaperExchange({"options": {"natsUrl": self.url}})
        await self.exchange.load_markets()
        return self

    async def start_actor(self, name: str) -> ActorProcess:
        generation = self.generations.get(name, 0) + 1
        self.generations[name] = generation
        proc = ActorProcess(name, self.url, self.workdir, generation).start()
        self.everything.append(proc)
        self.actors[name] = proc
        await proc.ready()
        return proc

    async def pricer_has_current_book(self, timeout: float = 10.0) -> None:
        """Publish the venue's book now and wait until the pricer has it (its status reports the age of the
        book it holds), so the next quote is priced off the book as it is, not as it was a second ago."""
        published = time.monotonic()
        self.venue.republish_books()

        async def fresh() -> bool:
            try:
                reply = await self.bus.nc.request("execbus.ctl.pricer.status", b"", timeout=0.5)
            except Exception:
                return False
            ages = msgspec.json.decode(reply.data).get("books", {})
            age_ms = ages.get(f"paper:{SYMBOL}")
            # no book yet: its first quote fetches the current one
            return age_ms is None or age_ms < (time.monotonic() - published) * 1000

        deadline = time.monotonic() + timeout
        while not await fresh():
            if time.monotonic() > deadline:
                raise AssertionError("the pricer never received the current book")
            await asyncio.sleep(0.02)

    async def take_as_dead_replica(self, actor: str, intent_id: str) -> Message:
        """Be a replica of `actor` that takes the next message of the intent's partition and dies before
        acknowledging it: pull one message from the actor's durable consumer and never ack it. That is exactly
        what a SIGKILL in the middle of a handler leaves behind (the message comes back after the ack wait),
        without having to hit the handler's few microseconds from outside. The actor must be down."""
        stored = (await read_log(self.bus, subjects.intent_filter(intent_id)))[0][1]
        partition = subjects.parse(stored).partition  # type: ignore[union-attr]
        sub = await self.bus.js.pull_subscribe_bind(durable=f"{actor}-p{partition}", stream=self.bus.settings.stream)
        try:
            (msg,) = await sub.fetch(1, timeout=5)
        finally:
            await sub.unsubscribe()
        return decode(msg.data)

    @contextlib.asynccontextmanager
    async def writes_refused(self) -> AsyncIterator[None]:
        """JetStream refuses every new message of the `EXEC` stream (its message limit is set to what it holds,
        discard-new: what a full store or a server still restoring its streams does to a publisher) until the
        block exits. Everything else keeps working: connections, KV, acks, the venue."""
        stream = self.bus.settings.stream
        info = await self.bus.js.stream_info(stream)
        original = info.config
        await self.bus.js.update_stream(
            dataclasses.replace(original, max_msgs=info.state.messages, discard=DiscardPolicy.NEW)
        )
        try:
            yield
        finally:
            await self.bus.js.update_stream(original)

    async def failures(self, actor: str) -> int:
        """Steps of `actor` that raised (the runtime's `failed` counter, from its status endpoint)."""
        reply = await self.bus.nc.request(f"execbus.ctl.{actor}.status", b"", timeout=2)
        return int(msgspec.json.decode(reply.data)["failed"])

    def kill_actor(self, name: str) -> None:
        self.actors[name].kill()

    async def owns_all_partitions(self, name: str, timeout: float = 10.0) -> None:
        """The live replica of `name` holds every partition (the dead one's leases have expired)."""
        replica = self.actors[name].replica
        want = list(range(self.bus.settings.partitions))

        async def status() -> dict[str, Any]:
            try:
                reply = await self.bus.nc.request(f"execbus.ctl.{name}.status", b"", timeout=0.5)
                return msgspec.json.decode(reply.data)  # type: ignore[no-any-return]
            except Exception:
                return {}

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = await status()
            if current.get("replica") == replica and current.get("partitions") == want:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{name} replica {replica} never held all partitions: {await status()}")

    async def stop(self) -> None:
        for proc in self.everything:
            proc.kill()
        for step in (
            lambda: self.exchange.close() if hasattr(self, "exchange") else _none(),
            lambda: self.venue.stop() if hasattr(self, "venue") else _none(),
            lambda: self.bus.close() if hasattr(self, "bus") else _none(),
        ):
            try:
                await asyncio.wait_for(step(), 5)
            except Exception:
                pass
        if hasattr(self, "server"):
            await self.server.stop()

    def logs(self, names: Iterable[str] = ALL_ACTORS) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.tail()}" for p in self.everything if p.name in names)


async def _none() -> None:
    return None


# -- reading the log -------------------------------------------------------------------------------------


async def read_log(bus: Bus, filter_subject: str = "exec.>", timeout: float = 5.0) -> list[tuple[int, str, bytes]]:
    """Every stored message matching `filter_subject` (stored subjects carry the partition token), in order,
    as (stream sequence, subject, data)."""
    info = await bus.js.stream_info(bus.settings.stream, subjects_filter=filter_subject)
    expected = sum((info.state.subjects or {}).values())
    if expected == 0:
        return []
    out: list[tuple[int, str, bytes]] = []
    sub = await bus.js.subscribe(
        filter_subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, stream=bus.settings.stream
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=timeout)
            out.append((msg.metadata.sequence.stream, msg.subject, msg.data))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def intent_log(bus: Bus, intent_id: str) -> list[Message]:
    return [decode(data) for _seq, _subject, data in await read_log(bus, subjects.intent_filter(intent_id))]


async def snapshot_stream(bus: Bus) -> dict[int, tuple[str, bytes]]:
    return {seq: (subject, data) for seq, subject, data in await read_log(bus)}


# -- what "exactly the orders it should have" means -----------------------------------------------------------


def check_orders(
    report: ExecutionCompleted, log: list[Message], venue_orders: list[dict[str, Any]], expected: list[str] | None
) -> None:
    """The venue holds one order per attempt, `<intent>-1..n` without a gap, plus `<intent>-F` exactly when
    the fallback ran; each is in the report, none is open; each was commanded once and declared terminal
    once; the venue's executed quantities and quote amounts are exactly the report's totals."""
    intent = report.intent_id
    cids = [o["clientOrderId"] for o in venue_orders]
    assert len(cids) == len(set(cids)), f"two venue orders with one client id: {cids}"
    attempts = sorted(int(c.rsplit("-", 1)[1]) for c in cids if not c.endswith("-F"))
    kept = {m.attempt for m in log if isinstance(m, OrderKept)}  # an attempt that kept the working order
    whole = [a for a in range(1, (attempts[-1] if attempts else 0) + 1) if a not in kept]
    assert attempts == whole, f"attempts skipped or repeated: {cids} (kept: {sorted(kept)})"
    assert report.attempts == len(attempts) + len(kept), (report.attempts, cids, sorted(kept))
    assert report.fallback_used == (f"{intent}-F" in cids), (report.fallback_used, cids)
    assert sorted(report.orders) == sorted(cids), f"report lists {report.orders}, venue has {cids}"
    if expected is not None:
        assert sorted(cids) == sorted(f"{intent}-{suffix}" for suffix in expected), cids
    assert not [o for o in venue_orders if o["status"] in ("NEW", "PARTIALLY_FILLED")], "left open at the venue"

    commands = [m for m in log if isinstance(m, PlaceOrder)]
    # Once per owner: an owner that took the intent over sends its own copy (its epoch is in the id).
    by_owner = [(c.client_order_id, c.epoch) for c in commands]
    assert len(by_owner) == len(set(by_owner)), f"a command sent twice by one owner: {by_owner}"
    assert sorted({c.client_order_id for c in commands}) == sorted(cids), "a command without an order"
    finals = [m for m in log if isinstance(m, OrderFinalized)]
    assert sorted(f.client_order_id for f in finals) == sorted(cids), "an order not declared terminal exactly once"

    fills = {(f.client_order_id, f.trade_id): f for f in log if isinstance(f, OrderFilled)}
    for order in venue_orders:
        cid = order["clientOrderId"]
        mine = [f for (c, _t), f in fills.items() if c == cid]
        assert sum((f.qty for f in mine), Decimal(0)) == Decimal(order["executedQty"]), f"{cid}: fills != venue"
        assert sum((f.qty * f.price for f in mine), Decimal(0)) == Decimal(order["cummulativeQuoteQty"])
        final = next(f for f in finals if f.client_order_id == cid)
        assert final.filled_qty == Decimal(order["executedQty"]), f"{cid}: finalized qty != venue"
    assert report.filled_qty == sum((Decimal(o["executedQty"]) for o in venue_orders), Decimal(0))
    assert report.notional == sum((Decimal(o["cummulativeQuoteQty"]) for o in venue_orders), Decimal(0))
