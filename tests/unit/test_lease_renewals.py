"""A round renews every held lease at once, before it takes over anything: one after another, or behind a
takeover, a loaded event loop's turns add up, and the round can outlast the trust window although every
renewal succeeds (steps skipped for a lapsed lease)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.js.errors

from bus.partitions import PartitionLeases, rendezvous_owner
from tests.helpers import wait_until


class SlowKV:
    """A lease bucket whose compare-and-set updates wait at a gate, counting how many wait together."""

    _name = "leases"

    def __init__(self, lost: frozenset[str] = frozenset()) -> None:
        self.gate = asyncio.Event()
        self.waiting = 0
        self.lost = lost

    async def put(self, key: str, value: bytes) -> int:
        return 1

    async def create(self, key: str, value: bytes) -> int:
        raise nats.js.errors.KeyWrongLastSequenceError  # (the partition we lost is someone else's now)

    async def update(self, key: str, value: bytes, last: int) -> int:
        self.waiting += 1
        await self.gate.wait()
        if key in self.lost:
            raise nats.js.errors.KeyWrongLastSequenceError
        return last + 1


def _leases(kv: SlowKV, released: list[int]) -> PartitionLeases:
    async def acquired(partition: int) -> None: ...

    async def gone(partition: int) -> None:
        released.append(partition)

    leases = PartitionLeases(None, kv, "placer", "r1", 8, 10.0, acquired, gone)  # type: ignore[arg-type]

    async def only_us() -> list[str]:
        return ["r1"]

    leases._live_members = only_us  # type: ignore[method-assign]
    for p in range(8):
        leases._held[p] = 1
        leases._epochs[p] = 1
    return leases


async def test_every_held_lease_is_renewed_in_the_same_turn_and_each_outcome_is_its_own() -> None:
    kv = SlowKV(lost=frozenset({"lease.placer.3"}))
    released: list[int] = []
    leases = _leases(kv, released)
    round_ = asyncio.create_task(leases._round())

    await wait_until(lambda: kv.waiting == 8)  # all eight in flight before any is answered
    kv.gate.set()
    await round_

    assert released == [3]  # the one someone else took is handed back ...
    assert leases.held == [0, 1, 2, 4, 5, 6, 7] and all(leases.valid(p) for p in leases.held)  # ... the rest renewed
    assert not leases.valid(3)


async def test_a_renewal_failing_on_the_bus_fails_the_round_after_the_others_are_done() -> None:
    kv = SlowKV()
    original = kv.update

    async def update(key: str, value: bytes, last: int) -> int:
        if key == "lease.placer.5":
            raise TimeoutError("nats: timeout")
        return await original(key, value, last)

    kv.update = update  # type: ignore[method-assign]
    leases = _leases(kv, [])
    round_ = asyncio.create_task(leases._round())
    await wait_until(lambda: kv.waiting == 7)
    kv.gate.set()

    try:
        await round_
    except TimeoutError:
        pass
    else:
        raise AssertionError("the round did not say a renewal failed")
    assert all(leases.valid(p) for p in range(8) if p != 5)


async def test_what_is_held_is_renewed_before_a_slow_takeover_and_again_while_it_lasts() -> None:
    """A takeover under load (the new partition's consumer, its stored intents) can take longer than a
    renewal interval: the leases already held are renewed first, and again when one comes due meanwhile."""
    kv = SlowKV()
    kv.gate.set()
    renewed: list[int] = []
    original = kv.update

    async def update(key: str, value: bytes, last: int) -> int:
        renewed.append(int(key.rsplit(".", 1)[1]))
        return await original(key, value, last)

    async def create(key: str, value: bytes) -> int:
        return 1

    kv.update = update  # type: ignore[method-assign]
    kv.create = create  # type: ignore[method-assign]
    taking_over = asyncio.Event()
    leases = _leases(kv, [])
    del leases._held[7]

    renewed_before: list[int] = []

    async def slow_takeover(partition: int) -> None:
        renewed_before.extend(renewed)
        taking_over.set()
        for p in list(leases._trusted_until):  # a renewal interval passes during the takeover
            leases._trusted_until[p] -= leases._ttl / 3

    leases._on_acquire = slow_takeover
    await leases._round()

    assert taking_over.is_set()
    assert renewed_before == [0, 1, 2, 3, 4, 5, 6]  # what we held was renewed before the takeover began
    assert sorted(renewed[7:]) == [0, 1, 2, 3, 4, 5, 6, 7]  # renewed again right after it, the new one too
    assert leases.held == list(range(8)) and all(leases.valid(p) for p in range(8))


async def test_a_failed_renewal_does_not_stop_the_round_from_handing_over_and_taking_over() -> None:
    """One renewal timing out (a loaded server) must not keep a replica from handing over what a new
    replica now owns, nor from taking what is newly its own; the round reports the failure at its end."""
    kv = SlowKV()
    kv.gate.set()
    original = kv.update
    created: list[str] = []

    async def update(key: str, value: bytes, last: int) -> int:
        if key == "lease.placer.2":
            raise TimeoutError("nats: timeout")
        return await original(key, value, last)

    async def create(key: str, value: bytes) -> int:
        created.append(key)
        return 1

    async def delete(key: str, last: int | None = None) -> None: ...

    kv.update = update  # type: ignore[method-assign]
    kv.create = create  # type: ignore[method-assign]
    kv.delete = delete  # type: ignore[attr-defined]
    released: list[int] = []
    leases = _leases(kv, released)
    members = ["r1", "r2"]  # a second replica has joined
    moved = next(p for p in range(8) if rendezvous_owner(p, members) == "r2" and p != 2)
    new = next(p for p in range(8) if rendezvous_owner(p, members) == "r1" and p != 2)
    del leases._held[new]  # ours by the hash, not yet taken
    leases._epochs.pop(new)

    async def two() -> list[str]:
        return members

    leases._live_members = two  # type: ignore[method-assign]
    mine = [p for p in range(8) if rendezvous_owner(p, members) == "r1"]

    try:
        await leases._round()
    except TimeoutError:
        pass
    else:
        raise AssertionError("the round did not say a renewal failed")

    assert moved in released  # handed over although a renewal failed first
    assert all(p not in leases.held for p in range(8) if p not in mine)
    assert created == [f"lease.placer.{new}"] and new in leases.held  # and what is newly ours was taken
