"""How a `PaperExchange` reaches its venue: over NATS (the normal case) or in-process (unit tests).

Both transports carry the same JSON: a request dict in, `{"ok": result}` or
`{"error": "<ccxt exception class>", "message": ...}` out, and events as `(subject, payload)`. The
in-process transport round-trips through the JSON codec too, so a test in-process sees exactly the
bytes a NATS client would. Over NATS, replies and events bigger than the server's `max_payload` arrive
in chunks (`venues.chunks`) and are reassembled here before decoding, invisibly to ccxt callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import ccxt
import msgspec
import nats
import nats.errors
import structlog

from messages import codec

from messages import subjects
from venues.chunks import CHUNK, CHUNKS, HANDLE, MORE, SIZE, EventAssembler, is_chunked_reply, is_event_chunk
from bus.connect import connect_options
from venues.subjects import Subjects

__all__ = ["EventCallback", "InProcessTransport", "NatsTransport", "Transport", "error_body", "raise_error",
           "subject_matches", "encode", "decode"]

log = structlog.get_logger("execbus.venues.transport")

EventCallback = Callable[[str, dict[str, Any]], None]
encode = codec.encode  # (Decimals in plain notation, as Binance writes them)
decode = msgspec.json.Decoder().decode


def error_body(exc: BaseException) -> dict[str, str]:
    """The wire form of an exception: ccxt class name and message (anything else is ExchangeError)."""
    name = type(exc).__name__ if isinstance(exc, ccxt.BaseError) else "ExchangeError"
    return {"error": name, "message": str(exc) if isinstance(exc, ccxt.BaseError) else repr(exc)}


def raise_error(body: dict[str, Any]) -> None:
    """Re-raise a wire error as the same ccxt exception class."""
    cls = getattr(ccxt, str(body.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, ccxt.BaseError)):
        cls = ccxt.ExchangeError
    raise cls(body.get("message", ""))


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject match with `*` (one token) and a trailing `>`."""
    return subjects.matches(pattern, subject)


class Transport(Protocol):
    async def call(self, kind: str, name: str, payload: dict[str, Any]) -> Any: ...
    async def subscribe(self, subject: str, cb: EventCallback) -> Any: ...
    async def unsubscribe(self, handle: Any) -> None: ...
    async def close(self) -> None: ...


class InProcessTransport:
    """Direct calls into a `PaperVenue` living in this process."""

    def __init__(self, venue: Any) -> None:
        self.venue = venue

    async def call(self, kind: str, name: str, payload: dict[str, Any]) -> Any:
        payload = decode(encode(payload))
        try:
            if kind == "rpc":
                result = await self.venue.handle(name, payload)
            else:
                result = self.venue.control(name, payload)
        except ccxt.BaseError as exc:
            raise_error(error_body(exc))
        return decode(encode(result))

    async def subscribe(self, subject: str, cb: EventCallback) -> Any:
        def listener(subj: str, payload: dict[str, Any]) -> None:
            if subject_matches(subject, subj):
                cb(subj, decode(encode(payload)))

        self.venue.listeners.append(listener)
        return listener

    async def unsubscribe(self, handle: Any) -> None:
        if handle in self.venue.listeners:
            self.venue.listeners.remove(handle)

    async def close(self) -> None:
        return None


class NatsTransport:
    """Request/reply and subscriptions on a NATS server where `run_paper_venue` is serving."""

    def __init__(self, url: str, subjects: Subjects, timeout_s: float, auth: Any = None) -> None:
        self.url = url
        self.auth = auth
        """Who this client is on the bus (`bus.connect.ClientAuth`); None: from the environment."""
        self.subjects = subjects
        self.timeout_s = timeout_s
        self._nc: Any = None
        self._lock = asyncio.Lock()

    async def _conn(self) -> Any:
        if self._nc is not None and not self._nc.is_closed:
            return self._nc
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                try:
                    options = connect_options(self.url, self.auth)
                    self._nc = await nats.connect(**options, name="execbus-paper-client", connect_timeout=2,
                                                  max_reconnect_attempts=-1, allow_reconnect=True)
                except Exception as exc:  # nats raises plain OSError/NoServersError
                    raise ccxt.ExchangeNotAvailable(f"paper venue bus {self.url} unreachable: {exc!r}") from exc
        return self._nc

    async def call(self, kind: str, name: str, payload: dict[str, Any]) -> Any:
        nc = await self._conn()
        subject = self.subjects.rpc(name) if kind == "rpc" else self.subjects.ctl(name)
        try:
            msg = await nc.request(subject, encode(payload), timeout=self.timeout_s)
        except nats.errors.NoRespondersError as exc:
            raise ccxt.ExchangeNotAvailable(f"paper venue not running on {self.url} ({subject})") from exc
        except nats.errors.TimeoutError as exc:
            raise ccxt.RequestTimeout(f"paper {name} timed out after {self.timeout_s}s") from exc
        data = msg.data
        if msg.headers is not None and is_chunked_reply(msg.headers):  # over max_payload: pull the rest
            data = await self._pull_rest(nc, name, msg.data, msg.headers)
        body = decode(data) if data else {}
        if not isinstance(body, dict) or "ok" not in body:
            raise_error(body if isinstance(body, dict) and "error" in body
                        else {"error": "ExchangeError", "message": f"bad reply {data[:200]!r}"})
        return body["ok"]

    async def _pull_rest(self, nc: Any, name: str, first: bytes, headers: dict[str, str]) -> bytes:
        """The whole reply from its first chunk: chunks 1..n-1 pulled in order, then joined once."""
        parts = [first]
        for index in range(1, int(headers[CHUNKS])):
            parts.append(await self._pull(nc, name, headers[MORE], headers[HANDLE], index))
        data = b"".join(parts)
        if len(data) != int(headers[SIZE]):
            raise ccxt.NetworkError(f"paper {name} reply came back as {len(data)} of {headers[SIZE]} bytes")
        return data

    async def _pull(self, nc: Any, name: str, subject: str, handle: str, index: int) -> bytes:
        # Failures here come after the venue executed the request: they are NetworkErrors (outcome
        # unknown), like a lost reply, never ExchangeNotAvailable (which means nothing was done).
        try:
            msg = await nc.request(subject, encode({"handle": handle, "index": index}), timeout=self.timeout_s)
        except nats.errors.TimeoutError as exc:
            raise ccxt.RequestTimeout(f"paper {name} reply chunk {index} timed out after {self.timeout_s}s") from exc
        except nats.errors.NoRespondersError as exc:
            raise ccxt.NetworkError(f"paper {name} reply lost: the venue instance holding it is gone") from exc
        if (msg.headers or {}).get(CHUNK) != str(index):
            body = decode(msg.data) if msg.data else {}
            raise_error(body if isinstance(body, dict) and "error" in body
                        else {"error": "NetworkError", "message": f"paper {name} reply chunk {index} is bad"})
        return msg.data

    async def subscribe(self, subject: str, cb: EventCallback) -> Any:
        nc = await self._conn()
        assembler = EventAssembler()  # per subscription: NATS orders one publisher's messages per subscription

        async def handler(msg: Any) -> None:
            data = msg.data
            if msg.headers is not None and is_event_chunk(msg.headers):
                data = assembler.add(data, msg.headers)
                if data is None:
                    return
            cb(msg.subject, decode(data))

        sub = await nc.subscribe(subject, cb=handler)
        await nc.flush()  # the server knows the interest before we return: no event is missed after this
        return sub

    async def unsubscribe(self, handle: Any) -> None:
        try:
            await handle.unsubscribe()
        except Exception:  # connection already gone
            pass

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()
        self._nc = None
