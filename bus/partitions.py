"""Partition ownership: N replicas of an actor share the partitions, one owner per partition at a time.

Every replica heartbeats a membership key; all replicas compute the same rendezvous-hash assignment from
the live members, and a replica works a partition only while it holds that partition's lease (a KV key
created exclusively and renewed with compare-and-set). A replica that dies stops renewing, its keys
expire with the bucket TTL, and the survivors take its partitions. A replica hands a partition over only
after it has finished the messages it already took from it, so one intent is never worked by two
replicas at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus.kv import list_keys, live_value

__all__ = ["LEASE_TRUST", "PartitionLeases", "rendezvous_owner"]

LEASE_TRUST = 0.8
"""A lease is trusted for this share of its TTL after the write that created or renewed it was *sent*.
KV expires it a TTL after the server stored that write, later still, so while we trust it nobody else
can hold it; the rest of the TTL is the margin for a step already under way when trust runs out."""

log = structlog.get_logger("execbus.bus.partitions")


def rendezvous_owner(partition: int, members: list[str]) -> str:
    """Highest-random-weight owner: stable, and moves only 1/N of partitions when membership changes."""
    return max(members, key=lambda m: (_weight(partition, m), m))


def _weight(partition: int, member: str) -> int:
    # A real hash: crc32 of short, similar strings ("3:A", "3:B") sends every partition to one member.
    return int.from_bytes(hashlib.blake2b(f"{partition}:{member}".encode(), digest_size=8).digest(), "big")


class PartitionLeases:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        actor: str,
        replica: str,
        partitions: int,
        ttl_s: float,
        on_acquire: Callable[[int], Awaitable[None]],
        on_release: Callable[[int], Awaitable[None]],
    ) -> None:
        self._js = js
        self._kv = kv
        self._actor = actor
        self._replica = replica
        self._partitions = partitions
        self._ttl = ttl_s
        self._on_acquire = on_acquire
        self._on_release = on_release
        self._held: dict[int, int] = {}  # partition -> revision of our lease
        self._epochs: dict[int, int] = {}
        """partition -> revision at which we created the lease: it only grows from owner to owner."""
        self._trusted_until: dict[int, float] = {}
        """partition -> monotonic time until which our lease cannot have passed to anyone (`valid`)."""
        self._task: asyncio.Task[None] | None = None
        self._first_round = asyncio.Event()
        self._stopping = False
        self._wake = asyncio.Event()
        self.members: list[str] = []

    @property
    def held(self) -> list[int]:
        return sorted(self._held)

    def epoch(self, partition: int) -> int:
        """Our lease epoch for `partition` (0 if we do not hold it): the lease key's revision when we created
        it. KV revisions are stream sequences, so every later owner's epoch is higher."""
        held = partition in self._held or partition in self._trusted_until  # (still ours while handing over)
        return self._epochs.get(partition, 0) if held else 0

    def valid(self, partition: int) -> bool:
        """We hold `partition` for certain right now: our last create or renewal of its lease was sent less
        than `LEASE_TRUST` × TTL ago. A replica whose renewals stall (a busy loop, NATS away) keeps its
        `held` list until a renewal fails, but stops being `valid` in time: before its lease can expire
        and another replica can take the partition and its messages. The runtime runs no step, and the
        placer sends nothing to a venue, on a partition that is not `valid`."""
        return time.monotonic() < self._trusted_until.get(partition, 0.0)

    def unexpired(self, partition: int) -> bool:
        """Nobody else can hold `partition` yet: less than a whole TTL since our last create or renewal of
        its lease was sent (KV expires it no sooner). Weaker than `valid`: what a step that began while
        `valid` checks before it speaks (`IntentContext.publish`), so only a step that outlived its lease
        is silenced, not one that merely ran into the safety margin."""
        return time.monotonic() < self._trusted_until.get(partition, 0.0) + self._ttl * (1 - LEASE_TRUST)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"leases-{self._actor}-{self._replica}")
        await self._first_round.wait()

    async def stop(self) -> None:
        """Release every partition (after draining it) so the others take over at once, not after a TTL."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # Let a round in progress finish: cancelling it could cut a partition's release short (its
            # pending state writes, its lease). Only a round stuck for a lease period is cancelled.
            await asyncio.wait({self._task}, timeout=self._ttl)
            # nats-py can swallow a CancelledError while flushing, leaving the task running: keep
            # cancelling until it has really ended (the loop also checks `_stopping`).
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            if not self._task.cancelled() and self._task.exception() is not None:
                log.warning("lease_task_failed", actor=self._actor, error=repr(self._task.exception()))
        for partition in list(self._held):
            await self._release(partition)
        try:
            await self._kv.delete(self._member_key(self._replica))
        except Exception:  # best effort: the key expires anyway
            pass

    def _member_key(self, replica: str) -> str:
        return f"member.{self._actor}.{replica}"

    def _lease_key(self, partition: int) -> str:
        return f"lease.{self._actor}.{partition}"

    async def _run(self) -> None:
        interval = self._ttl / 3
        while not self._stopping:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down for a moment: keep trying, leases may lapse
                log.warning("lease_round_failed", actor=self._actor, error=repr(exc))
            finally:
                self._first_round.set()
            try:
                await asyncio.wait_for(self._wake.wait(), interval)  # `stop` wakes it at once
            except asyncio.TimeoutError:
                pass

    async def _round(self) -> None:
        # What we hold is renewed first, together with our membership heartbeat: under load every await
        # costs a turn of a busy event loop, and taking over partitions (each one's consumer, its stored
        # intents) or handing them over (draining their handlers) can take many, so a renewal behind them
        # could outlast the trust window (`valid` false, steps skipped) although it would have succeeded.
        # A renewal that fails does not stop the round: what is no longer ours is still handed over and
        # what is ours taken; the round reports the failure at its end.
        failures = await self._renew_all(
            sorted(self._held), self._kv.put(self._member_key(self._replica), self._replica.encode())
        )
        self.members = await self._live_members()
        for partition in range(self._partitions):
            owner = rendezvous_owner(partition, self.members)
            if partition in self._held and owner != self._replica:
                await self._release(partition)
                failures += await self._renew_all(self._due())
        for partition in range(self._partitions):
            if partition not in self._held and rendezvous_owner(partition, self.members) == self._replica:
                await self._try_acquire(partition)
                failures += await self._renew_all(self._due())  # a long takeover must not starve the rest
        if failures:
            raise failures[0]

    def _due(self) -> list[int]:
        """Held partitions whose last renewal is a renewal interval old."""
        now, interval = time.monotonic(), self._ttl / 3
        return [p for p, until in self._trusted_until.items()
                if p in self._held and now >= until - self._ttl * LEASE_TRUST + interval]

    async def _renew_all(self, partitions: list[int], *also: Awaitable[object]) -> list[BaseException]:
        """Renewed together, not one after another (each await is a turn of the loop). Each renewal's
        outcome is its own: the failures are returned, for the round to report once it is done."""
        outcomes = await asyncio.gather(*(self._renew(p) for p in partitions), *also, return_exceptions=True)
        return [o for o in outcomes if isinstance(o, BaseException)]

    async def _live_members(self) -> list[str]:
        prefix = f"member.{self._actor}."
        members = []
        for key in await list_keys(self._js, self._kv._name, f"{prefix}*"):
            if await live_value(self._kv, key) is not None:  # a stopped replica leaves a delete marker
                members.append(key[len(prefix):])
        return members or [self._replica]

    async def _try_acquire(self, partition: int) -> None:
        sent = time.monotonic()
        try:
            revision = await self._kv.create(self._lease_key(partition), self._replica.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # still held by its previous owner until it hands over or expires
        self._held[partition] = revision
        self._epochs[partition] = revision
        self._trusted_until[partition] = sent + self._ttl * LEASE_TRUST
        log.debug("partition_acquired", actor=self._actor, replica=self._replica, partition=partition)
        try:
            await self._on_acquire(partition)
        except Exception:
            log.exception("partition_acquire_failed", actor=self._actor, partition=partition)
            await self._release(partition)

    async def _renew(self, partition: int) -> None:
        sent = time.monotonic()
        try:
            self._held[partition] = await self._kv.update(
                self._lease_key(partition), self._replica.encode(), last=self._held[partition]
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            # We were too slow and someone else owns it now: stop working it immediately (what is queued
            # is handed back, not handled: `valid` is false from here on).
            log.warning("partition_lease_lost", actor=self._actor, partition=partition)
            self._trusted_until.pop(partition, None)
            self._held.pop(partition, None)
            await self._on_release(partition)
            return
        self._trusted_until[partition] = sent + self._ttl * LEASE_TRUST

    async def _release(self, partition: int) -> None:
        revision = self._held.pop(partition, None)
        await self._on_release(partition)
        self._trusted_until.pop(partition, None)
        if revision is not None:
            try:
                await self._kv.delete(self._lease_key(partition), last=revision)
            except Exception:  # already expired or taken: nothing to give back
                pass
        log.debug("partition_released", actor=self._actor, replica=self._replica, partition=partition)
