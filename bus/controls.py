"""The operator's controls in JetStream KV (bucket `execbus_controls`): trading states, risk limits, the
balance reservations of in-flight intents and the shared order-rate budget.

    trading                 TradingStates: every scope that is not ACTIVE
    risk                    RiskLimits (absent: the defaults)
    reserve.<venue>         Reservations of that venue's in-flight intents
    rate.<venue>.<second>   orders sent to the venue in that wall-clock second (expires after a minute)

Every change is a compare-and-set on the key's last revision, retried on conflict, so two writers never
lose one another's change: two supervisors reserving the same balance, two placers taking the last order
slot of a second, an operator halting while another resumes. Actors read through `ControlStore`: the
money path reads `trading` fresh (a halt holds from the moment `execbus halt` returns); limits come from a
watch, a change reaching every actor within milliseconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import nats.js.errors
import structlog
from nats.js.kv import KeyValue

from bus.acks import AckMux
from messages import Message
from messages.base import Symbol, VenueId
from messages.controls import (
    ANY_SYMBOL,
    ANY_VENUE,
    CONTROL_INTENT,
    Reservation,
    Reservations,
    RiskLimits,
    ScopeState,
    TradingState,
    TradingStateChanged,
    TradingStates,
)

__all__ = ["ControlStore", "RISK_KEYS", "parse_limit"]

log = structlog.get_logger("execbus.bus.controls")

TRADING_KEY = "trading"
RISK_KEY = "risk"
RATE_KEY_TTL_S = 60
SLOT_GUARD_S = 0.1
"""An order slot is only taken in the first 900 ms of a second: the order's way to the venue must not
carry it into the venue's count of the next second."""
_MAX_CAS_TRIES = 50
_CAS_BACKOFF_S = 0.001
_CAS_BACKOFF_MAX_S = 0.05

T = TypeVar("T", bound=msgspec.Struct)

RISK_KEYS: dict[str, str] = {
    name: (field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type)))
    for name, field in ((f.name, f) for f in msgspec.structs.fields(RiskLimits))
}
"""Every limit `execbus risk set` knows, with its type."""

_encoder = msgspec.json.Encoder(decimal_format="string")


def parse_limit(limits: RiskLimits, key: str, raw: str) -> RiskLimits:
    """`limits` with `key` set from its text form. Raises `ValueError` with a clear message for an unknown
    key, a value that is not of the key's type, or one the limit does not allow (negative, zero, ...)."""
    if key not in RISK_KEYS:
        raise ValueError(f"unknown risk limit {key!r}; known: {', '.join(RISK_KEYS)}")
    default = getattr(RiskLimits(), key)
    value: Any
    text = raw.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered not in ("true", "false", "on", "off", "yes", "no", "1", "0"):
            raise ValueError(f"{key} is on or off, got {raw!r}")
        value = lowered in ("true", "on", "yes", "1")
    elif isinstance(default, int):
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{key} is a whole number, got {raw!r}") from None
    else:
        try:
            value = Decimal(text)
        except ArithmeticError:
            raise ValueError(f"{key} is a number, got {raw!r}") from None
        if not value.is_finite():
            raise ValueError(f"{key} must be a finite number, got {raw!r}")
    try:
        return msgspec.structs.replace(limits, **{key: value})
    except (ValueError, msgspec.ValidationError) as exc:
        raise ValueError(str(exc).replace("`", "")) from None


class ControlStore:
    """One process's view of the controls bucket; `start` begins watching it."""

    def __init__(self, kv: KeyValue, acks: AckMux) -> None:
        self._kv = kv
        self._acks = acks
        self._subject = f"$KV.{kv._name}."
        self.trading_cached = TradingStates()
        self.limits_cached = RiskLimits()
        self._watch_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[TradingStates], None]] = []

    # -- reading ----------------------------------------------------------------------------------------

    async def trading(self) -> TradingStates:
        """The trading states as stored now (one KV read)."""
        states, _rev = await self._read(TRADING_KEY, TradingStates)
        self.trading_cached = states
        return states

    async def limits(self, *, fresh: bool = False) -> RiskLimits:
        if fresh or self._watch_task is None:
            self.limits_cached, _rev = await self._read(RISK_KEY, RiskLimits)
        return self.limits_cached

    async def reservations(self, venue: str) -> Reservations:
        return (await self._read(_reserve_key(venue), Reservations))[0]

    def on_trading_change(self, listener: Callable[[TradingStates], None]) -> None:
        """Call `listener` with the new trading states whenever they change (from the watch)."""
        self._listeners.append(listener)

    # -- watching ---------------------------------------------------------------------------------------

    async def start(self) -> ControlStore:
        if self._watch_task is None:
            self.trading_cached = (await self._read(TRADING_KEY, TradingStates))[0]
            self.limits_cached = (await self._read(RISK_KEY, RiskLimits))[0]
            self._watch_task = asyncio.create_task(self._watch_all(), name="controls-watch")
        return self

    async def stop(self) -> None:
        if self._watch_task is not None:
            # Cancel until it ends: under Python 3.11 `asyncio.wait_for` (nats-py's requests, e.g. while the
            # watch is being set up) drops a cancel that lands as its reply arrives, and the watch goes on.
            while not self._watch_task.done():
                self._watch_task.cancel()
                await asyncio.wait([self._watch_task], timeout=0.1)
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None

    async def _watch_all(self) -> None:
        await asyncio.gather(self._watch(TRADING_KEY), self._watch(RISK_KEY))

    async def _watch(self, key: str) -> None:
        while True:
            watcher = None
            try:
                watcher = await self._kv.watch(key)
                async for entry in watcher:
                    if entry is None:  # the initial value is in
                        continue
                    self._apply(entry.key, entry.value if entry.operation not in ("DEL", "PURGE") else b"")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: watch again; the money path reads fresh anyway
                log.warning("controls_watch_failed", key=key, error=repr(exc))
                await asyncio.sleep(0.5)
            finally:
                if watcher is not None:
                    try:
                        await watcher.stop()
                    except Exception:  # the connection is gone with it
                        pass

    def _apply(self, key: str, value: bytes | None) -> None:
        try:
            if key == TRADING_KEY:
                self.trading_cached = _decode(value, TradingStates)
                for listener in self._listeners:
                    listener(self.trading_cached)
            elif key == RISK_KEY:
                self.limits_cached = _decode(value, RiskLimits)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # Someone wrote the bucket by hand and got it wrong: keep the last good view, say so loudly.
            log.error("controls_value_invalid", key=key, error=str(exc))

    # -- changing ---------------------------------------------------------------------------------------

    async def set_trading(
        self,
        publish: Callable[[Message], Any],
        *,
        venue: str = "",
        symbol: str = "",
        state: TradingState,
        reason: str = "",
        by: str = "",
        cancel_working: bool = False,
    ) -> TradingStateChanged | None:
        """Set one scope's state (ACTIVE removes it) and announce the change in the log. None: the scope
        was in that state already (nothing written, nothing announced). A scope that is no venue id or no
        symbol raises `ValueError` and changes nothing."""
        _check_scope(venue, symbol)
        scope = ScopeState(
            venue=venue, symbol=symbol, state=state, reason=reason, changed_ns=time.time_ns(), by=by,
            cancel_working=cancel_working,
        )
        previous: TradingState = "ACTIVE"

        def change(current: TradingStates) -> TradingStates | None:
            nonlocal previous
            old = current.find(venue, symbol)
            previous = old.state if old is not None else "ACTIVE"
            if previous == state and (old is None or old.cancel_working == cancel_working):
                return None
            others = tuple(s for s in current.scopes if not (s.venue == venue and s.symbol == symbol))
            return TradingStates(scopes=others if state == "ACTIVE" else (*others, scope))

        revision = await self._update(TRADING_KEY, TradingStates, change)
        if revision is None:
            return None
        event = TradingStateChanged(
            intent_id=CONTROL_INTENT,
            venue=venue or ANY_VENUE,
            symbol=symbol or ANY_SYMBOL,
            scope_venue=venue,
            scope_symbol=symbol,
            state=state,
            previous=previous,
            reason=reason,
            by=by,
            cancel_working=cancel_working,
            revision=revision,
            ts_event=scope.changed_ns,
        )
        await publish(event)
        return event

    async def set_limit(self, key: str, raw: str) -> RiskLimits:
        """Change one limit (validated by `parse_limit`: a bad value raises and changes nothing)."""
        result = RiskLimits()

        def change(current: RiskLimits) -> RiskLimits:
            nonlocal result
            result = parse_limit(current, key, raw)
            return result

        parse_limit(RiskLimits(), key, raw)  # fail before touching the bucket
        await self._update(RISK_KEY, RiskLimits, change)
        self.limits_cached = result
        return result

    async def reserve(
        self, venue: str, reservation: Reservation, decide: Callable[[Reservations], str | None]
    ) -> str | None:
        """Add `reservation` (replacing the intent's own) unless `decide(current)` names a denial; atomic
        with respect to every other reservation. Returns the denial, or None when reserved."""
        denial: str | None = None

        def change(current: Reservations) -> Reservations | None:
            nonlocal denial
            denial = decide(current)
            if denial is not None:
                return None
            now = time.time_ns()
            kept = tuple(r for r in current.live(now) if r.intent_id != reservation.intent_id)
            return Reservations(entries=(*kept, reservation))

        await self._update(_reserve_key(venue), Reservations, change)
        return denial

    async def release(self, venue: str, intent_id: str) -> None:
        """Give back what the intent reserved (nothing if it reserved nothing)."""

        def change(current: Reservations) -> Reservations | None:
            if current.of(intent_id) is None:
                return None
            now = time.time_ns()
            return Reservations(entries=tuple(r for r in current.live(now) if r.intent_id != intent_id))

        await self._update(_reserve_key(venue), Reservations, change)

    async def take_order_slot(self, venue: str, per_second: int) -> float:
        """Count one new order against the venue's budget for this wall-clock second, shared by every
        process. Returns 0 when it may go now, else how many seconds until the next second's budget."""
        for _ in range(_MAX_CAS_TRIES):
            now = time.time()
            second = int(now)
            if second + 1 - now < SLOT_GUARD_S:
                return second + 1 - now  # too late in this second: the venue could count it in the next
            key = f"rate.{venue}.{second}"
            try:
                entry = await self._kv.get(key)
                count, revision = int(entry.value or b"0"), entry.revision
            except nats.js.errors.KeyNotFoundError as exc:
                count, revision = 0, _marker_revision(exc)
            if count >= per_second:
                return max(second + 1 - now, 0.001)
            headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), "Nats-TTL": str(RATE_KEY_TTL_S)}
            try:
                await self._acks.publish(self._subject + key, str(count + 1).encode(), headers)
                if time.time() - second > 1 - SLOT_GUARD_S:
                    continue  # the write took us past the guard: that slot is lost, take one of the next second
                return 0.0
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another placer took a slot meanwhile: count again
        return 0.05  # contended beyond reason: back off a little and try again

    # -- plumbing ---------------------------------------------------------------------------------------

    async def _read(self, key: str, kind: type[T]) -> tuple[T, int]:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            return kind(), _marker_revision(exc)
        return _decode(entry.value, kind), entry.revision

    async def _update(self, key: str, kind: type[T], change: Callable[[T], T | None]) -> int | None:
        """Read, change, write back if nobody wrote in between (else again). Returns the new revision, or
        None when `change` wanted no write."""
        for attempt in range(_MAX_CAS_TRIES):
            current, revision = await self._read(key, kind)
            updated = change(current)
            if updated is None:
                return None
            headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
            try:
                ack = await self._acks.publish(self._subject + key, _encoder.encode(updated), headers)
            except nats.js.errors.KeyWrongLastSequenceError:
                # A burst of writers (a hundred intents reaching the supervisors at once) would otherwise
                # retry in lockstep, one winner a round, and the last ones run out of tries: spread them.
                await asyncio.sleep(random.uniform(0, min(_CAS_BACKOFF_MAX_S, _CAS_BACKOFF_S * 2**attempt)))
                continue
            return int(ack.seq)
        raise RuntimeError(f"controls key {key!r}: {_MAX_CAS_TRIES} writers in a row changed it first")


def _reserve_key(venue: str) -> str:
    return f"reserve.{venue}"


def _marker_revision(exc: nats.js.errors.KeyNotFoundError) -> int:
    """The revision to compare-and-set against for a key that has no value: 0 if it never had one, else the
    revision of its delete or purge marker (`nats kv del execbus_controls risk` to go back to the defaults):
    the key's last message is that marker, so expecting 0 would fail every write forever."""
    entry = getattr(exc, "entry", None)
    return int(entry.revision) if entry is not None and entry.revision else 0


def _check_scope(venue: str, symbol: str) -> None:
    """A scope the log can route, or a `ValueError` saying why not, before anything is written: a state
    stored for a scope whose announcement cannot be sent (or read back) would hold unannounced."""
    if symbol and not venue:
        raise ValueError("a symbol scope needs its venue")
    if venue:
        if venue == ANY_VENUE:
            raise ValueError(f"unknown scope: venue {venue!r} is reserved (leave the venue empty for every venue)")
        try:
            msgspec.convert(venue, VenueId)
        except msgspec.ValidationError:
            raise ValueError(
                f"unknown scope: {venue!r} is not a venue id (1-32 of a-z 0-9 _, e.g. 'binance')"
            ) from None
    if symbol:
        if symbol == ANY_SYMBOL:
            raise ValueError(f"unknown scope: symbol {symbol!r} is reserved (leave the symbol empty for every symbol)")
        try:
            msgspec.convert(symbol, Symbol)
        except msgspec.ValidationError:
            raise ValueError(f"unknown scope: {symbol!r} is not a symbol (BASE/QUOTE, e.g. 'BTC/USDT')") from None


def _decode(value: bytes | None, kind: type[T]) -> T:
    if not value:
        return kind()
    return msgspec.json.decode(value, type=kind)
