"""Messages bigger than the server's `max_payload`, split and reassembled below the JSON layer.

A NATS server refuses any message over its `max_payload` (1 MB by default; nats-py raises
`MaxPayloadError` before sending). Listing thousands of orders, or one order that filled against
thousands of resting orders, easily gets there, so both directions of the paper venue can split:

* **Replies** (pull). A reply that fits goes out exactly as before: no header, no copy, no extra round
  trip. One that does not is sent as its first chunk with headers `Paper-Chunks` (count), `Paper-Size`
  (bytes), `Paper-Handle` and `Paper-More` (the subject of the service *instance* that holds the rest);
  the client requests chunks 1..n-1 there one by one. Pulling keeps flow control with the client (no burst
  a slow consumer could drop), works with nats-py's shared request inbox (which accepts one reply per
  request), and addresses the instance that holds the bytes even if several services share the queue
  group. The held reply is freed once every chunk was served, or after `ttl_s`.
* **Events** (push). Pub/sub has no one to pull, so an oversized event is published as consecutive
  messages on its own subject with `Paper-Event`, `Paper-Chunk` and `Paper-Chunks` headers; NATS keeps one
  publisher's order per subscription, and `EventAssembler` joins them (an incomplete event whose chunk
  was dropped is discarded: events are at-most-once anyway).

Chunk sizes come from the connected server's `max_payload` minus the header block, which the server
counts against the same limit.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["CHUNK", "CHUNKS", "EVENT", "HANDLE", "MORE", "SIZE", "EventAssembler", "PendingReplies",
           "chunk_size", "event_chunks", "header_size", "is_chunked_reply", "is_event_chunk"]

CHUNKS = "Paper-Chunks"
SIZE = "Paper-Size"
HANDLE = "Paper-Handle"
MORE = "Paper-More"
CHUNK = "Paper-Chunk"
EVENT = "Paper-Event"

_MIN_CHUNK = 64  # below this the headers would dwarf the data: a misconfigured server, not a use case


def header_size(headers: dict[str, str]) -> int:
    """Bytes of the NATS header block nats-py sends for `headers` ('NATS/1.0' line, 'K: v' lines, blank)."""
    return len("NATS/1.0\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2


def chunk_size(max_payload: int, headers: dict[str, str]) -> int:
    """Largest data slice that fits in one message beside `headers` (their widest form)."""
    size = max_payload - header_size(headers)
    if size < _MIN_CHUNK:
        raise ValueError(f"max_payload {max_payload} leaves no room for data beside the chunk headers")
    return size


def is_chunked_reply(headers: dict[str, str] | None) -> bool:
    """True for the first message of a split reply (plain replies have no headers at all)."""
    return headers is not None and HANDLE in headers


def is_event_chunk(headers: dict[str, str] | None) -> bool:
    return headers is not None and EVENT in headers


# ----------------------------------------------------------------- replies (service side)
@dataclass(slots=True)
class _Held:
    data: bytes
    size: int
    count: int
    unserved: set[int]
    expires: float


class PendingReplies:
    """Oversized replies held by a service until their client has pulled every chunk.

    Bounded two ways so a client that never comes back cannot leak memory: entries expire after `ttl_s`
    of wall time, and the oldest go first when more than `max_bytes` are held.
    """

    def __init__(self, ttl_s: float = 30.0, max_bytes: int = 256 * 2**20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.clock = clock
        self._held: OrderedDict[str, _Held] = OrderedDict()  # insertion order is expiry order
        self._bytes = 0
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, data: bytes, max_payload: int, more: str) -> tuple[memoryview, dict[str, str]]:
        """Keep `data`; returns the first chunk and the headers that tell the client where the rest is."""
        self._expire()
        handle = str(next(self._ids))
        widest = {CHUNKS: str(len(data)), SIZE: str(len(data)), HANDLE: handle, MORE: more}
        size = chunk_size(max_payload, widest)  # chunk i's own header ({CHUNK: i}) is always smaller
        count = -(-len(data) // size)
        self._held[handle] = _Held(data, size, count, set(range(1, count)), self.clock() + self.ttl_s)
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._held) > 1:
            self._drop(next(iter(self._held)))
        headers = {CHUNKS: str(count), SIZE: str(len(data)), HANDLE: handle, MORE: more}
        return memoryview(data)[:size], headers

    def take(self, handle: str, index: int) -> tuple[memoryview, dict[str, str]]:
        """Chunk `index` (>= 1) of a held reply; KeyError if it expired, never existed or has no such chunk."""
        self._expire()
        held = self._held[handle]
        if not 1 <= index < held.count:
            raise KeyError(index)
        held.unserved.discard(index)
        view = memoryview(held.data)[index * held.size:(index + 1) * held.size]  # copied only into the socket
        if not held.unserved:
            self._drop(handle)
        return view, {CHUNK: str(index)}

    def _expire(self) -> None:
        now = self.clock()
        while self._held:
            handle, held = next(iter(self._held.items()))
            if held.expires > now:
                return
            self._drop(handle)

    def _drop(self, handle: str) -> None:
        held = self._held.pop(handle, None)
        if held is not None:
            self._bytes -= len(held.data)


# ----------------------------------------------------------------- events
def event_chunks(data: bytes, max_payload: int, event_id: str) -> Iterator[tuple[memoryview, dict[str, str]]]:
    """(slice, headers) messages that carry `data` as one event under `max_payload`."""
    widest = {EVENT: event_id, CHUNK: str(len(data)), CHUNKS: str(len(data))}
    size = chunk_size(max_payload, widest)
    n = -(-len(data) // size)
    view = memoryview(data)
    for i in range(n):
        yield view[i * size:(i + 1) * size], {EVENT: event_id, CHUNK: str(i), CHUNKS: str(n)}


class EventAssembler:
    """Joins the chunks of split events on one subscription (plain events never come here)."""

    def __init__(self, max_partial: int = 8) -> None:
        self.max_partial = max_partial
        self._parts: OrderedDict[str, list[bytes]] = OrderedDict()
        self.discarded = 0
        """Incomplete events (or orphan chunks of one) thrown away."""

    def add(self, data: bytes, headers: dict[str, str]) -> bytes | None:
        """The whole event once its last chunk arrived, else None."""
        event_id, index, n = headers[EVENT], int(headers[CHUNK]), int(headers[CHUNKS])
        parts = self._parts.setdefault(event_id, [])
        if index != len(parts):  # a chunk was lost (slow consumer): this event can never be whole
            self._discard(event_id)
            return None
        parts.append(data)
        if len(parts) == n:
            del self._parts[event_id]
            return b"".join(parts)
        while len(self._parts) > self.max_partial:
            self._discard(next(iter(self._parts)))
        return None

    def _discard(self, event_id: str) -> None:
        self._parts.pop(event_id, None)
        self.discarded += 1
