"""Per-intent actor state in JetStream KV, with a write-back cache for the partitions this replica owns.

Keys are `<actor>.<partition>.<intent_id>`, so a replica taking over a partition finds exactly the intents
it has to resume. A step's changes are *staged* in the cache; the runtime *flushes* them (one write for
however many steps ran since the last flush) before it acknowledges the messages those steps handled.
Writes are compare-and-set on the last revision this replica saw: if another replica wrote in between (a
lease handover race) the flush fails with `StaleState` instead of overwriting. A flush that would write the
bytes already stored writes nothing.

The keys present when a partition was taken over are listed once (`intents_in`); an intent not among them
and not written since has no state, so a new intent costs no KV read.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus.acks import AckMux
from bus.kv import list_keys, live_value
from messages.codec import encode

__all__ = ["LeaseLapsed", "StateStore", "StaleState"]

_PURGE = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}


class StaleState(RuntimeError):
    """Someone else changed this intent's state since we read it."""


class LeaseLapsed(StaleState):
    """This replica can no longer be sure it owns the intent's partition (its lease renewals stalled or
    failed): whatever it would do now could race the next owner, so it does nothing and hands the
    message back."""


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class _Entry:
    __slots__ = ("state", "revision", "written", "dirty", "retire")

    def __init__(self, state: Any, revision: int, written: bytes | None) -> None:
        self.state = state
        self.revision = revision
        """KV revision of what we last read or wrote; 0 = nothing stored (or only a purge marker)."""
        self.written = _digest(written) if written is not None else None
        """A digest of what is stored, not the bytes: a flush that would write the same skips the write, and
        ten thousand open intents do not keep four copies each of their encoded states (4 KB an intent)."""
        self.dirty = False
        self.retire = False


class StateStore:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        actor: str,
        state_type: type[msgspec.Struct] | None,
        acks: AckMux,
        *,
        retired_ttl_s: float = 86_400.0,
    ) -> None:
        self._ttl = {"Nats-TTL": str(max(int(retired_ttl_s), 1))}
        self._purge = {**_PURGE, **self._ttl}
        self._js = js
        self._kv = kv
        self._acks = acks
        self._actor = actor
        self._type = state_type
        self._subject_prefix = f"$KV.{kv._name}."
        self._decoder = msgspec.json.Decoder(state_type) if state_type else None
        self._cache: dict[str, _Entry] = {}
        self._stored: dict[int, set[str]] = {}
        """Per owned partition: intents that had a key when we took it over and are not cached yet."""

    @property
    def cached(self) -> int:
        return len(self._cache)

    def _key(self, partition: int, intent_id: str) -> str:
        return f"{self._actor}.{partition}.{intent_id}"

    async def load(self, partition: int, intent_id: str) -> Any:
        if self._decoder is None:
            return None
        key = self._key(partition, intent_id)
        hit = self._cache.get(key)
        if hit is not None:
            return hit.state
        stored = self._stored.get(partition)
        if stored is not None and intent_id not in stored:
            return None  # no key when we took the partition over, and we have not written one since
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # includes deleted and purged keys
            return None
        if entry.value is None:
            return None
        state = self._decoder.decode(entry.value)
        self._cache[key] = _Entry(state, entry.revision or 0, entry.value)
        if stored is not None:
            stored.discard(intent_id)
        return state

    def stage(self, partition: int, intent_id: str, state: Any, *, retire: bool = False) -> None:
        """Keep `state` (None: delete) for the next flush; later steps load it from the cache. A retired
        state is written with the retirement TTL and leaves the cache once written."""
        if self._decoder is None:
            return
        key = self._key(partition, intent_id)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = _Entry(None, 0, None)
        entry.state = state
        entry.dirty = True
        entry.retire = retire and state is not None

    async def flush(self, partition: int, intent_id: str) -> None:
        """Write what was staged for the intent, if it differs from what is stored."""
        key = self._key(partition, intent_id)
        entry = self._cache.get(key)
        if entry is None or not entry.dirty:
            return
        if entry.state is None:
            if entry.revision:
                headers = {**self._purge, "Nats-Expected-Last-Subject-Sequence": str(entry.revision)}
                try:
                    await self._acks.publish(self._subject_prefix + key, b"", headers)
                except nats.js.errors.KeyWrongLastSequenceError as exc:
                    self._stale(key)
                    raise StaleState(key) from exc
            del self._cache[key]
            return
        data = encode(entry.state)  # (Decimals in plain notation, as on the wire)
        digest = _digest(data)
        if digest != entry.written or entry.retire:
            entry.revision = await self._write(key, data, entry.revision, retire=entry.retire)
            entry.written = digest
        entry.dirty = False
        if entry.retire:
            del self._cache[key]
            self._remember(partition, intent_id)  # read it back if the intent speaks again

    async def _write(self, key: str, data: bytes, revision: int, *, retire: bool = False) -> int:
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), **(self._ttl if retire else {})}
        try:
            ack = await self._acks.publish(self._subject_prefix + key, data, headers)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            if revision == 0:
                # A purge marker counts as a last message; nats-py's create knows to write over it.
                try:
                    return await self._kv.create(key, data, msg_ttl=int(self._ttl["Nats-TTL"]) if retire else None)
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass
            self._stale(key)
            raise StaleState(key) from exc
        return ack.seq

    async def intents_in(self, partition: int) -> list[str]:
        """The intents with a key in `partition`; remembered, so that other intents need no KV read."""
        if self._decoder is None:
            return []
        prefix = f"{self._actor}.{partition}."
        intents = [k[len(prefix):] for k in await list_keys(self._js, self._kv._name, f"{prefix}*")]
        self._stored[partition] = set(intents)
        return intents

    def known_intents(self, partition: int) -> list[str]:
        """The intents of `partition` that have (or may have) a state: cached, or stored when we took it over."""
        prefix = f"{self._actor}.{partition}."
        cached = [k[len(prefix):] for k in self._cache if k.startswith(prefix)]
        return sorted({*cached, *self._stored.get(partition, ())})

    async def find(self, intent_id: str) -> Any:
        """An intent's state from any partition (for status queries served by any replica). The owner's
        cache first: what is stored may be up to one flush delay older."""
        if self._decoder is None:
            return None
        for partition in self._stored:
            hit = self._cache.get(self._key(partition, intent_id))
            if hit is not None:
                return hit.state
        for key in await list_keys(self._js, self._kv._name, f"{self._actor}.*.{intent_id}"):
            value = await live_value(self._kv, key)
            if value:
                return self._decoder.decode(value)
        return None

    def _stale(self, key: str) -> None:
        """Someone else wrote the key: forget our copy and read it next time, never assume."""
        self._cache.pop(key, None)
        partition, intent_id = key.split(".", 2)[1:]
        self._remember(int(partition), intent_id)

    def _remember(self, partition: int, intent_id: str) -> None:
        """The intent may have a key: the next load reads KV."""
        stored = self._stored.get(partition)
        if stored is not None:  # (no set: every load reads KV anyway)
            stored.add(intent_id)

    def drop(self, partition: int, intent_id: str) -> None:
        """Forget the cached copy of one intent's state (it may hold unflushed changes); read it next time."""
        if self._cache.pop(self._key(partition, intent_id), None) is not None:
            self._remember(partition, intent_id)

    def drop_partition(self, partition: int) -> None:
        prefix = f"{self._actor}.{partition}."
        for key in [k for k in self._cache if k.startswith(prefix)]:
            del self._cache[key]
        self._stored.pop(partition, None)
