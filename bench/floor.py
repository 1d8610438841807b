"""The floors of the benchmarks: bare nats-py chains with the hops of the market choreography.

Two kinds, no execbus code in either (nats-py only):

1. **Latency** (`bench/latency.py`): one intent at a time up to `OrderPlaced`.
2. **Throughput** (`bench/throughput.py`): the market path *to completion*, driven closed-loop with a window
   of chains in flight (`ChainLoad`), by relays in the same processes as the actors they stand for.

## 1. Latency: up to `OrderPlaced`

The critical path of a market intent up to `OrderPlaced`, read off the actors (bus/runtime.py,
actors/supervisor.py, actors/pricer.py, actors/placer.py):

    client   publish SubmitIntent (JetStream, ack awaited)
    S        <- SubmitIntent   KV create (intent guard), publish IntentAccepted + PriceRequested (sent
                               together, acks awaited together), KV create (state), ack
    P        <- PriceRequested publish PriceQuoted, ack
    S        <- PriceQuoted    publish PlaceOrder, KV update (state), ack
    PL       <- PlaceOrder     venue request/reply (create_order), publish OrderPlaced, KV create, ack
    client   <- OrderPlaced    (core subscription)

Two bare chains with exactly these hops:

* `core`: plain NATS publish/subscribe for each hop plus the venue request/reply — what NATS itself
  allows with no durability: 5 one-way hops and 1 round trip.
* `js`: the same hops as JetStream publishes (ack awaited) delivered by durable push consumers with
  explicit acks, plus a KV write per step — at least the durability execbus has. (execbus holds its state
  writes back up to `flush_delay_s` and writes an intent's burst of steps once, after the publishes; the
  floor writes after every step, also after its publishes, so the writes stay off both critical paths.)

Plus the raw primitives between the benchmark process and the relays' process: request/reply round trip
and one-way publish -> subscribe latency (CLOCK_MONOTONIC is shared by all processes on Linux).
`serve` runs the relay side (in a `bench.worker` process); `FloorClient` runs the client side.

## 2. Throughput: the market path to completion (`CHAIN`)

`CHAIN` (below) is the whole market choreography as a table, one row per actor step: every delivery of a
stored message to an actor's consumers, and each venue event the reconciler acts on. Each row says what the
step publishes and which KV writes it makes. Stored messages per chain = the kinds published (plus the
client's `submit_intent`); deliveries per chain = the rows triggered by a stored kind. Counted from the
actors' `consumes` (actors/*.py) and checked against what `bench throughput` measures on the real path
(`_work_per_intent`: stored messages by kind, deliveries by actor), which it prints next to the floor's
own counts read back from the server. When the actors change what they consume, add or delete rows here.

Today's table (10 stored messages, 16 deliveries: S 5, P 1, PL 4, R 2, T 4):

    client  publish submit_intent
    S   <- submit_intent      KV create (intent guard); publish intent_accepted + price_requested; KV write
    S   <- price_quoted       publish place_order; KV write
    S   <- place_order        (its own, as the supervisor consumes the fallback's PlaceOrder) ack only
    S   <- order_placed       ack only
    S   <- order_finalized    publish strategy_finished; KV write
    P   <- price_requested    publish price_quoted (the pricer keeps no KV state)
    PL  <- intent_accepted    ack only
    PL  <- place_order        KV create (create claim); venue request/reply; publish order_placed; KV write
    PL  <- order_finalized, strategy_finished    ack only
    R   <- place_order, order_placed             ack only
    V   <- create request     reply, then a trade event and an order event (core NATS, as the paper venue
                              publishes `evt.trades` / `evt.orders`), seen by every R process
    R   <- venue trade event  publish order_filled; KV write
    R   <- venue order event  publish order_finalized; KV write
    T   <- intent_accepted, order_filled, order_finalized  ack only
    T   <- strategy_finished  publish execution_completed; KV write
    client <- execution_completed (core subscription, as the benchmark's `Load` sees the market's)

What each step does, bare: the KV creates before acting (a claim must be held first), the venue request,
the step's publishes sent at once as JetStream publishes (nats-py `publish_async`, each with a
`Nats-Msg-Id` as execbus's deterministic ids, acks awaited together), then the step's KV write (`put`,
awaited), then the explicit ack of the delivery (nats-py `ack`, like execbus's). A step that publishes
nothing only acks (execbus stages state there and may write it later; the floor does not — it is a floor).
So 9 KV writes per chain (2 claims + 7 state writes); execbus's own count depends on its batching (one
write per burst of an intent's steps within `flush_delay_s`), `bench throughput` measures and prints it.

Subjects `flt.<kind>.<partition>.<chain id>` in their own stream (`BENCH_FLOOR_CHAIN`, file storage, the
duplicate window of `EXEC`), the intent id in the stored subject as in `EXEC`; the client picks the
partition (execbus: a subject transform). Each role has one durable push consumer per partition it owns
(explicit acks, `max_ack_pending` 10,000, filtered on the kinds of its rows, as an actor has one per
partition), every delivery handled in its own task (execbus: one task per intent), so many chains are in
flight in each process. Partitions are split over replicas round-robin (`chain_spec`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, NamedTuple

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType, StreamConfig

from bench.common import WindowedLoad

__all__ = ["CHAIN", "CHAIN_ACTORS", "VENUE_EVENTS", "ChainLoad", "FloorClient", "ROLES", "Step", "chain_counts",
           "chain_plan", "chain_spec", "ensure_layout", "serve"]

ROLES = ("S", "P", "PL", "V", "echo")
STREAM = "BENCH_FLOOR"
BUCKET = "bench_floor"
PAYLOAD = b"x" * 360
"""About the size of an encoded PlaceOrder / OrderPlaced."""


class Step(NamedTuple):
    """One step of an actor in the throughput floor chain (see the module docstring)."""

    role: str
    on: str
    """The stored kind delivered to the role's consumers, or a venue event (`VENUE_EVENTS`, core NATS)."""
    publishes: tuple[str, ...] = ()
    claims: int = 0
    """KV creates before acting (the supervisor's intent guard, the placer's claim per client order id)."""
    venue: bool = False
    """A venue request/reply (create_order) before the publishes."""
    writes: int = 0
    """KV writes (state) after the publishes."""


CHAIN: tuple[Step, ...] = (
    #    role  on (delivery / venue event)  publishes (together, acks awaited together)  KV and venue
    Step("S",  "submit_intent",      ("intent_accepted", "price_requested"),  claims=1, writes=1),
    Step("S",  "price_quoted",       ("place_order",),                         writes=1),
    Step("S",  "place_order"),
    Step("S",  "order_placed"),
    Step("S",  "order_finalized",    ("strategy_finished",),                   writes=1),
    Step("P",  "price_requested",    ("price_quoted",)),
    Step("PL", "intent_accepted"),
    Step("PL", "place_order",        ("order_placed",),                        claims=1, venue=True, writes=1),
    Step("PL", "order_finalized"),
    Step("PL", "strategy_finished"),
    Step("R",  "place_order"),
    Step("R",  "order_placed"),
    Step("R",  "venue_trade",        ("order_filled",),                        writes=1),
    Step("R",  "venue_order",        ("order_finalized",),                     writes=1),
    Step("T",  "intent_accepted"),
    Step("T",  "order_filled"),
    Step("T",  "order_finalized"),
    Step("T",  "strategy_finished",  ("execution_completed",),                 writes=1),
)
"""The market path, one row per actor step (at most one row per role and kind). Matched to the actors
today (their `consumes`); `bench throughput` says which rows to add or delete when they differ."""

CHAIN_START = "submit_intent"
"""What the client publishes (JetStream, ack awaited)."""
CHAIN_END = "execution_completed"
"""What the client waits for (core subscription)."""
VENUE_EVENTS = ("venue_trade", "venue_order")
"""Core NATS events the venue (role `V`) publishes after answering a create, in this order."""
CHAIN_ROLES = ("S", "P", "PL", "R", "T")
CHAIN_ACTORS = {"S": "supervisor", "P": "pricer", "PL": "placer", "R": "reconciler", "T": "tracker"}
"""The execbus actor each role stands for (and whose process hosts it)."""
CHAIN_STREAM = "BENCH_FLOOR_CHAIN"
CHAIN_BUCKET = "bench_floor_chain"
CHAIN_DUPLICATE_WINDOW_S = 120.0
"""As `EXEC`'s (`BusSettings.duplicate_window_s`)."""


async def ensure_layout(nc: Client) -> None:
    """The stream and KV bucket of the JetStream chain (file storage, like EXEC and the state bucket)."""
    js = nc.jetstream()
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(name=STREAM, subjects=["flj.>"], storage=StorageType.FILE,
                                         duplicate_window=120.0))
    try:
        await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE))
    try:
        await js.stream_info(CHAIN_STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(name=CHAIN_STREAM, subjects=["flt.>"], storage=StorageType.FILE,
                                         duplicate_window=CHAIN_DUPLICATE_WINDOW_S))
    try:
        await js.key_value(CHAIN_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        await js.create_key_value(KeyValueConfig(bucket=CHAIN_BUCKET, history=1, storage=StorageType.FILE))


async def serve(nc: Client, roles: list[str]) -> list[Any]:
    """Start the relays for `roles` on `nc`; returns the subscriptions. Latency floor roles: S, P, PL, V,
    echo; throughput chain roles: `c:<role>` with `cp:<partition>+<partition>...` (see `chain_spec`)."""
    subs: list[Any] = []
    chain = [r[2:] for r in roles if r.startswith("c:")]
    if chain:
        parts = next((r[3:] for r in roles if r.startswith("cp:")), "")
        subs += await _serve_chain(nc, chain, [int(x) for x in parts.split("+") if x])
    roles = [r for r in roles if ":" not in r]
    js = nc.jetstream()
    kv = await js.key_value(BUCKET) if {"S", "PL"} & set(roles) else None
    revisions: dict[str, int] = {}

    def tail(msg: Msg) -> str:
        return msg.subject.rsplit(".", 1)[1]

    if "S" in roles:
        async def s_core(msg: Msg) -> None:
            step = msg.subject.split(".")[2]
            await nc.publish(f"flc.p.req.{tail(msg)}" if step == "submit" else f"flc.pl.place.{tail(msg)}", PAYLOAD)

        async def s_js(msg: Msg) -> None:
            assert kv is not None
            i, step = tail(msg), msg.subject.split(".")[2]
            if step == "submit":
                await kv.create(f"claim.{i}", b"1")
                # Both out at once, acks awaited together (nats-py's publish_async): the way execbus sends.
                acks = [await js.publish_async(f"flj.o.accepted.{i}", PAYLOAD),
                        await js.publish_async(f"flj.p.req.{i}", PAYLOAD)]
                await asyncio.gather(*acks)
                revisions[i] = await kv.create(f"s.{i}", PAYLOAD)
            else:
                await js.publish(f"flj.pl.place.{i}", PAYLOAD)
                await kv.update(f"s.{i}", PAYLOAD, last=revisions.pop(i))
            await msg.ack()

        subs.append(await nc.subscribe("flc.s.>", cb=s_core))
        subs.append(await js.subscribe("flj.s.>", durable="floor_s", cb=s_js, manual_ack=True,
                                       deliver_policy=DeliverPolicy.NEW))
    if "P" in roles:
        async def p_core(msg: Msg) -> None:
            await nc.publish(f"flc.s.quoted.{tail(msg)}", PAYLOAD)

        async def p_js(msg: Msg) -> None:
            await js.publish(f"flj.s.quoted.{tail(msg)}", PAYLOAD)
            await msg.ack()

        subs.append(await nc.subscribe("flc.p.>", cb=p_core))
        subs.append(await js.subscribe("flj.p.>", durable="floor_p", cb=p_js, manual_ack=True,
                                       deliver_policy=DeliverPolicy.NEW))
    if "PL" in roles:
        async def pl_core(msg: Msg) -> None:
            await nc.request("flc.v.create", PAYLOAD, timeout=5)
            await nc.publish(f"flc.c.placed.{tail(msg)}", PAYLOAD)

        async def pl_js(msg: Msg) -> None:
            assert kv is not None
            i = tail(msg)
            await nc.request("flc.v.create", PAYLOAD, timeout=5)
            await js.publish(f"flj.c.placed.{i}", PAYLOAD)
            await kv.create(f"pl.{i}", PAYLOAD)
            await msg.ack()

        subs.append(await nc.subscribe("flc.pl.>", cb=pl_core))
        subs.append(await js.subscribe("flj.pl.>", durable="floor_pl", cb=pl_js, manual_ack=True,
                                       deliver_policy=DeliverPolicy.NEW))
    if "V" in roles:
        async def venue(msg: Msg) -> None:
            await msg.respond(PAYLOAD)

        subs.append(await nc.subscribe("flc.v.create", cb=venue))
    if "echo" in roles:
        one_way: list[int] = []

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        async def arrive(msg: Msg) -> None:
            one_way.append(time.monotonic_ns() - int(msg.data))

        async def stats(msg: Msg) -> None:
            data, one_way[:] = list(one_way), []
            await msg.respond(",".join(map(str, data)).encode())

        subs.append(await nc.subscribe("fl.echo", cb=echo))
        subs.append(await nc.subscribe("fl.ow", cb=arrive))
        subs.append(await nc.subscribe("fl.ow.stats", cb=stats))
    await nc.flush()
    return subs


class FloorClient:
    """The client side: one chain run at a time, sequentially, each sample in milliseconds."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._n = 0

    async def start(self) -> FloorClient:
        async def placed(msg: Msg) -> None:
            now = time.monotonic_ns()
            fut = self._waiting.pop(msg.subject.rsplit(".", 1)[1], None)
            if fut is not None and not fut.done():
                fut.set_result(now)

        await self.nc.subscribe("flc.c.>", cb=placed)
        await self.nc.subscribe("flj.c.>", cb=placed)
        await self.nc.flush()
        return self

    async def chain(self, mode: str) -> float:
        """One intent through the bare chain (`core` or `js`); ms from before the submit to `placed`."""
        self._n += 1
        i = f"{mode}{self._n}"
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        t0 = time.monotonic_ns()
        if mode == "core":
            await self.nc.publish(f"flc.s.submit.{i}", PAYLOAD)
        else:
            await self.js.publish(f"flj.s.submit.{i}", PAYLOAD)
        done = await asyncio.wait_for(fut, 10)
        return (done - t0) / 1e6

    async def rtt(self) -> float:
        t0 = time.monotonic_ns()
        await self.nc.request("fl.echo", PAYLOAD, timeout=5)
        return (time.monotonic_ns() - t0) / 1e6

    async def one_way(self) -> None:
        """Send one stamped message; its latency is read back with `one_way_samples`."""
        await self.nc.publish("fl.ow", str(time.monotonic_ns()).encode())
        await self.nc.flush()

    async def one_way_samples(self) -> list[float]:
        reply = await self.nc.request("fl.ow.stats", b"", timeout=5)
        return [int(x) / 1e6 for x in reply.data.decode().split(",") if x]


# -- the throughput floor: the market path to completion ----------------------------------------------------


def chain_spec(roles: list[str], partitions: list[int]) -> str:
    """The `--floor` value of a worker hosting chain `roles` (`V`: the venue) for `partitions`."""
    return ",".join([f"c:{r}" for r in roles] + ([f"cp:{'+'.join(map(str, partitions))}"] if partitions else []))


def _subject(kind: str, partition: int | str, chain: str) -> str:
    return f"flt.{kind}.{partition}.{chain}"


def chain_plan() -> dict[str, Any]:
    """What one chain costs by the table: stored messages by kind, deliveries by role, KV writes, venue calls."""
    stored = collections.Counter([CHAIN_START] + [k for s in CHAIN for k in s.publishes])
    deliveries = collections.Counter(s.role for s in CHAIN if s.on not in VENUE_EVENTS)
    by_kind = collections.Counter(s.on for s in CHAIN if s.on not in VENUE_EVENTS)
    return {
        "stored_per_chain": sum(stored.values()),
        "stored_by_kind": dict(stored),
        "deliveries_per_chain": sum(deliveries.values()),
        "deliveries_by_actor": {CHAIN_ACTORS[r]: deliveries.get(r, 0) for r in CHAIN_ROLES},
        "deliveries_by_kind": dict(by_kind),
        "kv_writes_per_chain": sum(s.claims + s.writes for s in CHAIN),
        "kv_claims_per_chain": sum(s.claims for s in CHAIN),
        "venue_round_trips": sum(s.venue for s in CHAIN),
        "venue_events": len(VENUE_EVENTS),
        "steps": len(CHAIN),
    }


def _check_chain() -> None:
    published = {CHAIN_START} | {k for s in CHAIN for k in s.publishes}
    seen: set[tuple[str, str]] = set()
    for s in CHAIN:
        assert s.role in CHAIN_ROLES, s
        assert s.on in published or s.on in VENUE_EVENTS, f"nothing publishes {s.on}: {s}"
        assert (s.role, s.on) not in seen, f"two rows for {s.role} on {s.on}"
        seen.add((s.role, s.on))
    assert CHAIN_END in published
    assert sum(s.venue for s in CHAIN) == 1, "one step makes the venue request"


_check_chain()


async def _serve_chain(nc: Client, roles: list[str], partitions: list[int]) -> list[Any]:
    """The chain relays of `roles` for `partitions`: per role and partition one durable push consumer on
    the kinds of its rows; each delivery runs its step in a task of its own."""
    js = nc.jetstream()
    kv = await js.key_value(CHAIN_BUCKET)
    tasks: set[asyncio.Task[None]] = set()
    subs: list[Any] = []
    steps = {(s.role, s.on): s for s in CHAIN}

    async def run(step: Step, partition: str, chain: str, msg: Msg | None) -> None:
        for n in range(step.claims):
            await kv.create(f"claim.{step.role}.{n}.{chain}", b"1")
        if step.venue:
            await nc.request(f"flv.create.{partition}.{chain}", PAYLOAD, timeout=10)
        if step.publishes:
            acks = [await js.publish_async(_subject(k, partition, chain), PAYLOAD,
                                           headers={"Nats-Msg-Id": f"{chain}.{k}"}) for k in step.publishes]
            await asyncio.gather(*acks)  # (nats-py's futures have no timeout: a lost ack shows as undrained)
        for _ in range(step.writes):
            await kv.put(f"{step.role}.{partition}.{chain}", PAYLOAD)
        if msg is not None:
            await msg.ack()

    def spawn(step: Step, partition: str, chain: str, msg: Msg | None) -> None:
        task = asyncio.create_task(run(step, partition, chain, msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for role in roles:
        if role == "V":
            async def venue(msg: Msg) -> None:
                _, _, partition, chain = msg.subject.split(".")
                await msg.respond(PAYLOAD)
                for event in VENUE_EVENTS:
                    await nc.publish(f"flv.{event}.{partition}.{chain}", PAYLOAD)

            subs.append(await nc.subscribe("flv.create.>", cb=venue))
            continue
        kinds = [s.on for s in CHAIN if s.role == role and s.on not in VENUE_EVENTS]
        for p in partitions:
            inbox = nc.new_inbox()

            async def deliver(msg: Msg, role: str = role) -> None:
                _, kind, partition, chain = msg.subject.split(".")
                spawn(steps[(role, kind)], partition, chain, msg)

            subs.append(await nc.subscribe(inbox, cb=deliver))
            filters = [_subject(k, p, "*") for k in kinds]
            await js.add_consumer(CHAIN_STREAM, ConsumerConfig(
                durable_name=f"flc_{role}_p{p}", deliver_subject=inbox, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW, ack_wait=10.0, max_ack_pending=10_000, max_deliver=-1,
                **({"filter_subject": filters[0]} if len(filters) == 1 else {"filter_subjects": filters})))
        for event in (e for e in VENUE_EVENTS if (role, e) in steps):
            # Every reconciler process sees every venue event (it watches the account) and acts on its own.
            owned = {str(p) for p in partitions}

            async def on_event(msg: Msg, step: Step = steps[(role, event)]) -> None:
                _, _, partition, chain = msg.subject.split(".")
                if partition in owned:
                    spawn(step, partition, chain, None)

            subs.append(await nc.subscribe(f"flv.{event}.>", cb=on_event))
    await nc.flush()
    return subs


async def chain_counts(nc: Client, chains: int) -> dict[str, Any]:
    """What the chains cost, read back from the server: stored messages, deliveries by role (the consumers'
    own counts), redeliveries, KV writes (the bucket's last sequence), per chain started."""
    js = nc.jetstream()
    # The chain's end is seen before its last steps have written and acknowledged: until nothing is pending.
    deadline, last = time.monotonic() + 10.0, -1
    while True:
        consumers = await js.consumers_info(CHAIN_STREAM)
        kv = await js.stream_info(f"KV_{CHAIN_BUCKET}")
        busy = any((i.num_pending or 0) + (i.num_ack_pending or 0) for i in consumers)
        if (not busy and kv.state.last_seq == last) or time.monotonic() > deadline:
            break
        last = kv.state.last_seq
        await asyncio.sleep(0.2)
    stream = await js.stream_info(CHAIN_STREAM)
    deliveries: collections.Counter[str] = collections.Counter()
    redelivered = 0
    for info in consumers:
        role = (info.name or "").split("_")[1]
        deliveries[CHAIN_ACTORS.get(role, role)] += info.delivered.consumer_seq if info.delivered else 0
        redelivered += info.num_redelivered or 0
    per = (lambda n: round(n / chains, 2)) if chains else (lambda n: 0.0)
    return {
        "chains": chains,
        "stored_per_chain": per(stream.state.messages),
        "deliveries_per_chain": per(sum(deliveries.values())),
        "deliveries_by_actor": {k: per(v) for k, v in deliveries.items()},
        "redelivered": redelivered,
        "kv_writes_per_chain": per(kv.state.last_seq),
    }


class ChainLoad(WindowedLoad):
    """The client side of the throughput floor: like the market benchmark's `Load` (a JetStream publish per
    chain, ack awaited; the end seen on one core subscription), with a closed loop of `window` in flight."""

    def __init__(self, nc: Client, partitions: int) -> None:
        super().__init__()
        self.nc = nc
        self.js = nc.jetstream()
        self.partitions = partitions
        self.publish_errors = 0
        self._n = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> ChainLoad:
        await self.nc.subscribe(_subject(CHAIN_END, "*", "*"), cb=self._completed)
        await self.nc.flush()
        return self

    async def _completed(self, msg: Msg) -> None:
        now = time.monotonic_ns()
        self._done(msg.subject.rsplit(".", 1)[1], now)

    def submit(self, prefix: str) -> str:
        self._n += 1
        chain = f"{prefix}{self._n}"
        self.sent[chain] = time.monotonic_ns()
        task = asyncio.create_task(self._publish(_subject(CHAIN_START, self._n % self.partitions, chain), chain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return chain

    async def _publish(self, subject: str, chain: str) -> None:
        try:
            await self.js.publish(subject, PAYLOAD, headers={"Nats-Msg-Id": f"{chain}.{CHAIN_START}"})
        except Exception:
            self.publish_errors += 1

