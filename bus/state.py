"""Per-intent actor state in JetStream KV, with a cache for the partitions this replica owns.

Keys are `<actor>.<partition>.<intent_id>`, so a replica taking over a partition finds exactly the intents
it has to resume. Writes are compare-and-set on the last revision this replica saw: if another replica
wrote in between (a lease handover race) the write fails with `StaleState` instead of overwriting.
"""

from __future__ import annotations

from typing import Any

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus.kv import list_keys, live_value

__all__ = ["StateStore", "StaleState"]


class StaleState(RuntimeError):
    """Someone else changed this intent's state since we read it."""


class StateStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue, actor: str, state_type: type[msgspec.Struct] | None) -> None:
        self._js = js
        self._kv = kv
        self._actor = actor
        self._type = state_type
        self._decoder = msgspec.json.Decoder(state_type) if state_type else None
        self._encoder = msgspec.json.Encoder(decimal_format="string")
        self._cache: dict[str, tuple[Any, int]] = {}  # key -> (state, revision)

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
            return hit[0]
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        state = self._decoder.decode(entry.value)
        self._cache[key] = (state, entry.revision or 0)
        return state

    async def save(self, partition: int, intent_id: str, state: Any) -> None:
        key = self._key(partition, intent_id)
        data = self._encoder.encode(state)
        hit = self._cache.get(key)
        try:
            if hit is None:
                revision = await self._kv.create(key, data)
            else:
                revision = await self._kv.update(key, data, last=hit[1])
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            self._cache.pop(key, None)
            raise StaleState(key) from exc
        self._cache[key] = (state, revision)

    async def delete(self, partition: int, intent_id: str) -> None:
        if self._decoder is None:
            return
        key = self._key(partition, intent_id)
        self._cache.pop(key, None)
        await self._kv.purge(key)

    async def intents_in(self, partition: int) -> list[str]:
        if self._decoder is None:
            return []
        prefix = f"{self._actor}.{partition}."
        return [k[len(prefix):] for k in await list_keys(self._js, self._kv._name, f"{prefix}*")]

    async def find(self, intent_id: str) -> Any:
        """An intent's state from any partition (for status queries served by any replica)."""
        if self._decoder is None:
            return None
        for key in await list_keys(self._js, self._kv._name, f"{self._actor}.*.{intent_id}"):
            value = await live_value(self._kv, key)
            if value:
                return self._decoder.decode(value)
        return None

    def drop(self, partition: int, intent_id: str) -> None:
        """Forget the cached copy of one intent's state (it may hold unsaved changes)."""
        self._cache.pop(self._key(partition, intent_id), None)

    def drop_partition(self, partition: int) -> None:
        prefix = f"{self._actor}.{partition}."
        for key in [k for k in self._cache if k.startswith(prefix)]:
            del self._cache[key]
