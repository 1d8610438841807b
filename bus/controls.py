"""The operator's controls in JetStream KV (bucket `execbus_controls`): trading states, risk limits, the
balance reservations of in-flight intents and the shared order-rate budget.

    trading                 TradingStates: every scope that is not ACTIVE
    risk                    RiskLimits (absent: the defaults)
    reserve.<venue>.total   ReservedTotals: what that venue's in-flight intents hold, summed
    reserve.<venue>.intent.<intent_id>
                            Reservation: what that intent holds (expires by itself after its window)
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
from messages import Message, encode
from messages.base import Symbol, VenueId
from messages.controls import (
    ANY_SYMBOL,
    ANY_VENUE,
    CONTROL_INTENT,
    Reservation,
    ReservedTotals,
    RiskLimits,
    ScopeState,
    TradingState,
    TradingStateChanged,
    TradingStates,
    reservation_window,
)

__all__ = ["ControlStore", "RISK_KEYS", "ReservationsFull", "parse_limit"]

log = structlog.get_logger("execbus.bus.controls")

TRADING_KEY = "trading"
RISK_KEY = "risk"
RATE_KEY_TTL_S = 60
SLOT_GUARD_S = 0.1
"""An order sent this close to the end of a second may reach the venue in the next: it takes a slot in both."""
_MAX_CAS_TRIES = 50
_CAS_BACKOFF_S = 0.001
_CAS_BACKOFF_MAX_S = 0.05

T = TypeVar("T", bound=msgspec.Struct)

HOLD_GRACE_S = 60
"""An intent's reservation key outlives the end of its window by this: a release that comes late still finds
what to take off the totals (which no longer count it after the window either way)."""
RELEASED_TTL_S = 10
"""A released reservation's key keeps an empty value this long, so that a second release loses its
compare-and-set instead of taking the amount off the totals twice; then it is gone."""

_HEADROOM = 1024
"""Bytes of `max_payload` left for the write's headers."""


class ReservationsFull(Exception):
    """The venue's reservation totals with this one added would not fit one NATS message (`max_payload`)."""

RISK_KEYS: dict[str, str] = {
    name: (field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type)))
    for name, field in ((f.name, f) for f in msgspec.structs.fields(RiskLimits))
}
"""Every limit `execbus risk set` knows, with its type."""



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
        value = Decimal(format(value, "f"))  # `1e5` is kept as 100000: no exponent in the bucket or on screen
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
        self._locks: dict[str, asyncio.Lock] = {}
        """One writer per key in this process: the intents of one supervisor (sixty-four in flight in the
        throughput benchmark) queue here instead of losing compare-and-sets to one another."""
        self._slot_requests: dict[str, list[asyncio.Future[bool]]] = {}
        self._slot_writers: dict[str, asyncio.Task[None]] = {}
        self._together: dict[str, list[tuple[Callable[[Any], Any], asyncio.Future[int | None], bool]]] = {}
        self._together_writers: dict[str, asyncio.Task[None]] = {}
        self.max_payload_override: int | None = None
        """Tests set a small limit here instead of filling a megabyte."""
        self._migrated: set[str] = set()
        """Venues whose reservations this process has checked for the layout before the totals (`_migrate`)."""
        self._known: dict[str, tuple[Any, int]] = {}
        """key -> (value, revision) as we last wrote it: the next write tries it first, saving the read; a
        write by another process makes that try fail its compare-and-set, and the key is read again."""

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

    async def reserved_totals(self, venue: str) -> ReservedTotals:
        """What the venue's intents in flight hold, summed (one KV read)."""
        return (await self._read(_totals_key(venue), ReservedTotals))[0]

    async def reservation(self, venue: str, intent_id: str) -> Reservation | None:
        """What the intent holds now (one KV read of its own small key); None: nothing, or released."""
        return (await self._read_hold(_hold_key(venue, intent_id)))[0]

    @property
    def watching(self) -> bool:
        """`trading_cached` and `limits_cached` follow the bucket (the watch runs)."""
        return self._watch_task is not None and not self._watch_task.done()

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
        self, venue: str, reservation: Reservation, decide: Callable[[ReservedTotals], str | None], *,
        fresh: bool = False,
    ) -> str | None:
        """Add `reservation` to the venue's totals unless `decide(totals)` names a denial, atomic with respect
        to every other reservation; then record it under the intent's own key. Returns the denial, or None
        when reserved.

        An intent that holds a reservation already (an earlier delivery of the same submission, whose deadline
        this one restarts) has it replaced: `decide` sees the totals without it; the new one is added, the
        intent's key moved to it by compare-and-set, and only then the old one taken off. A crash between any
        two of these writes leaves the totals counting an amount too many: it holds back too much, never too
        little, until that amount's window ends.

        `fresh`: the caller knows no earlier delivery reserved (a first delivery): the key is not read first,
        only created. Should it exist after all, it is read then and replaced as above (the decision having
        counted both: too cautious, never too bold)."""
        await self._migrate(venue)
        key = _hold_key(venue, reservation.intent_id)
        held, revision = (None, 0) if fresh else await self._read_hold(key)
        denial: str | None = None

        def change(current: ReservedTotals) -> ReservedTotals | None:
            nonlocal denial
            now = time.time_ns()
            denial = decide(current.removing(held, now) if held is not None else current)
            return None if denial is not None else current.adding(reservation, now)

        try:
            await self._update_together(_totals_key(venue), ReservedTotals, change, grows=True)
        except ReservationsFull as exc:
            return str(exc)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # Written by hand and wrong: nothing can be decided against it (taking it for empty would let
            # every intent spend the same balance). Refused, with the key to fix.
            return f"{_totals_key(venue)} cannot be read ({exc}): fix or delete it in the controls bucket"
        if denial is not None:
            return denial
        ttl_s = _hold_ttl_s(reservation)
        for attempt in range(2):
            headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), "Nats-TTL": str(ttl_s)}
            try:
                await self._acks.publish(self._subject + key, encode(reservation), headers)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                if fresh and attempt == 0:
                    held, revision = await self._read_hold(key)  # (there after all: replace it)
                    continue
                # Changed since we read it: a release of this intent (it then took the old amount off) or
                # the same intent reserving elsewhere (a fenced owner). The totals count ours once too many
                # until its window ends; nothing is taken off on the strength of a key we did not write.
                log.warning("reservation_raced", venue=venue, intent_id=reservation.intent_id)
                return None
        if held is not None:
            replaced = held
            await self._update_together(_totals_key(venue), ReservedTotals, lambda c: _without(c, replaced))
        return None

    async def release(self, venue: str, intent_id: str) -> None:
        """Give back what the intent reserved (nothing if it reserved nothing, or was released already).

        The intent's key is emptied first, by compare-and-set: of two releases only one goes on to take the
        amount off the totals. A crash in between leaves the totals holding it until its window ends."""
        await self._migrate(venue)
        key = _hold_key(venue, intent_id)
        for attempt in range(_MAX_CAS_TRIES):
            held, revision = await self._read_hold(key)
            if held is None:
                return
            headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), "Nats-TTL": str(RELEASED_TTL_S)}
            try:
                await self._acks.publish(self._subject + key, b"", headers)
            except nats.js.errors.KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0, min(_CAS_BACKOFF_MAX_S, _CAS_BACKOFF_S * 2**attempt)))
                continue
            break
        else:
            raise RuntimeError(f"controls key {key!r}: {_MAX_CAS_TRIES} writers in a row changed it first")
        released = held
        try:
            await self._update_together(_totals_key(venue), ReservedTotals, lambda c: _without(c, released))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("reservation_totals_unreadable", venue=venue, intent_id=intent_id, error=str(exc))

    async def _migrate(self, venue: str) -> None:
        """Fold the layout before the totals (one `Reservations` document under `reserve.<venue>`) into this
        one, once per venue and process: each live entry gets its own key (unless it has one) and is added to
        the totals, then the old key is deleted. Two processes doing it at once count an entry twice (too much
        held back until its window ends, never too little)."""
        if venue in self._migrated:
            return
        old = f"reserve.{venue}"
        try:
            entry = await self._kv.get(old)
        except nats.js.errors.KeyNotFoundError:
            self._migrated.add(venue)
            return
        try:
            entries = msgspec.json.decode(entry.value or b'{"entries":[]}', type=_OldReservations).entries
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("controls_value_invalid", key=old, error=str(exc))
            entries = ()
        now = time.time_ns()
        for reservation in (r for r in entries if r.expires_ns > now):
            key = _hold_key(venue, reservation.intent_id)
            _held, revision = await self._read_hold(key)
            if revision:
                continue  # (moved already, or reserved again since)
            ttl_s = _hold_ttl_s(reservation)
            try:
                await self._acks.publish(
                    self._subject + key, encode(reservation),
                    {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-TTL": str(ttl_s)},
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            moved = reservation
            await self._update_together(_totals_key(venue), ReservedTotals, lambda c: c.adding(moved, time.time_ns()))
        await self._kv.delete(old)
        log.info("reservations_migrated", venue=venue, entries=len(entries))
        self._migrated.add(venue)

    async def take_order_slot(self, venue: str, per_second: int) -> float:
        """Count one new order against the venue's budget for this wall-clock second, shared by every
        process. Returns 0 when it may go now, else how many seconds until the next second's budget.

        An order sent in the last `SLOT_GUARD_S` of a second may reach the venue in the next one, so it is
        counted in both: the venue sees at most `per_second` in any of its seconds."""
        now = time.time()
        second = int(now)
        if not await self._take_slot(f"rate.{venue}.{second}", per_second):
            return max(second + 1 - now, 0.001)
        if second + 1 - time.time() < SLOT_GUARD_S and not await self._take_slot(f"rate.{venue}.{second + 1}", per_second):
            return max(second + 2 - time.time(), 0.001)  # (its slot in this second is spent for nothing)
        return 0.0

    async def _take_slot(self, key: str, per_second: int) -> bool:
        """One slot of `key`'s second. The requests of this process that meet here together take their slots
        in one compare-and-set (a burst of orders costs one round trip, not one each)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._slot_requests.setdefault(key, []).append(future)
        if key not in self._slot_writers:
            self._slot_writers[key] = asyncio.create_task(self._grant_slots(key, per_second))
        return await future

    async def _grant_slots(self, key: str, per_second: int) -> None:
        try:
            while requests := self._slot_requests.pop(key, []):
                granted = 0
                try:
                    for _ in range(_MAX_CAS_TRIES):
                        try:
                            entry = await self._kv.get(key)
                            count, revision = int(entry.value or b"0"), entry.revision
                        except nats.js.errors.KeyNotFoundError as exc:
                            count, revision = 0, _marker_revision(exc)
                        room = max(per_second - count, 0)
                        if room == 0:
                            break
                        take = min(room, len(requests))
                        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision), "Nats-TTL": str(RATE_KEY_TTL_S)}
                        try:
                            await self._acks.publish(self._subject + key, str(count + take).encode(), headers)
                        except nats.js.errors.KeyWrongLastSequenceError:
                            continue  # another placer took slots meanwhile: count again
                        granted = take
                        break
                except Exception as exc:
                    for future in requests:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for i, future in enumerate(requests):
                    if not future.done():
                        future.set_result(i < granted)
        finally:
            self._slot_writers.pop(key, None)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # -- plumbing ---------------------------------------------------------------------------------------

    async def _read(self, key: str, kind: type[T]) -> tuple[T, int]:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            return kind(), _marker_revision(exc)
        return _decode(entry.value, kind), entry.revision

    async def _read_hold(self, key: str) -> tuple[Reservation | None, int]:
        """An intent's reservation and its key's revision (to compare-and-set on); an empty value: released."""
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            return None, _marker_revision(exc)
        if not entry.value:
            return None, entry.revision
        try:
            return msgspec.json.decode(entry.value, type=Reservation), entry.revision
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # Written by hand and wrong: it holds nothing we can take off the totals (they expire by window).
            log.error("controls_value_invalid", key=key, error=str(exc))
            return None, entry.revision

    async def _update_together(
        self, key: str, kind: type[T], change: Callable[[T], T | None], *, grows: bool = False
    ) -> int | None:
        """`_update`, but the changes of this process that meet on `key` are applied one after another to one
        read and written in one compare-and-set: sixty-four intents reaching a supervisor at once cost a
        few round trips, not sixty-four, and still none of them decides on a value another has changed.
        Returns the revision written if this change wrote, else None. A change that `grows` the value past
        what one message can hold fails with `ReservationsFull`; the others of its batch are written."""
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._together.setdefault(key, []).append((change, future, grows))
        if key not in self._together_writers:
            self._together_writers[key] = asyncio.create_task(self._write_together(key, kind))
        return await future

    async def _write_together(self, key: str, kind: type[Any]) -> None:
        try:
            while batch := self._together.pop(key, []):
                try:
                    results = await self._write_batch(key, kind, batch)
                except Exception as exc:
                    for _change, future, _grows in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_change, future, _grows), result in zip(batch, results):
                    if not future.done():
                        if isinstance(result, Exception):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
        finally:
            self._together_writers.pop(key, None)

    @property
    def max_payload(self) -> int:
        """The server's message size limit, as the connection last heard it: one key's value must fit it."""
        if self.max_payload_override is not None:
            return self.max_payload_override
        js = getattr(self._kv, "_js", None)
        return int(getattr(getattr(js, "_nc", None), "max_payload", 0) or 1024 * 1024)

    async def _write_batch(
        self, key: str, kind: type[Any], batch: list[tuple[Callable[[Any], Any], asyncio.Future[int | None], bool]]
    ) -> list[int | None | Exception]:
        for attempt in range(_MAX_CAS_TRIES):
            value, revision = await self._read(key, kind)
            value, outcomes, payload = self._apply_batch(key, value, batch)
            if not any(o is True for o in outcomes):
                return [o if isinstance(o, Exception) else None for o in outcomes]
            headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
            try:
                ack = await self._acks.publish(self._subject + key, payload, headers)
            except nats.js.errors.KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0, min(_CAS_BACKOFF_MAX_S, _CAS_BACKOFF_S * 2**attempt)))
                continue
            return [int(ack.seq) if o is True else o if isinstance(o, Exception) else None for o in outcomes]
        raise RuntimeError(f"controls key {key!r}: {_MAX_CAS_TRIES} writers in a row changed it first")

    def _apply_batch(
        self, key: str, start: Any, batch: list[tuple[Callable[[Any], Any], asyncio.Future[int | None], bool]]
    ) -> tuple[Any, list[bool | Exception], bytes]:
        """The batch's changes applied in order to `start` (True: changed it; False: wanted no write). When
        the result would not fit one message, they are applied again one by one, and a change that grows
        the value past it is refused (`ReservationsFull`): the others, releases first of all, still go in."""
        limit = self.max_payload - _HEADROOM
        value, outcomes = start, []
        for change, _future, _grows in batch:
            updated = _applied(change, value)  # (run again on a retry or a second pass: the changes are pure)
            outcomes.append(updated if isinstance(updated, Exception) else updated is not None)
            value = updated if updated is not None and not isinstance(updated, Exception) else value
        payload = encode(value)
        if len(payload) <= limit or not any(g for _c, _f, g in batch):
            return value, outcomes, payload
        value, outcomes, payload = start, [], encode(start)
        for change, _future, grows in batch:
            updated = _applied(change, value)
            if isinstance(updated, Exception):
                outcomes.append(updated)
                continue
            if updated is None:
                outcomes.append(False)
                continue
            data = encode(updated)
            if grows and len(data) > limit:
                windows = len(getattr(updated, "windows", ()))
                outcomes.append(ReservationsFull(
                    f"{key}: the totals of intents in flight, over {windows} windows of expiry, would take "
                    f"{len(data):,} bytes, more than one message of the NATS server holds (max_payload "
                    f"{self.max_payload:,}): too many budgets spread too far on this venue; try again when some "
                    f"have finished"
                ))
                continue
            outcomes.append(True)
            value, payload = updated, data
        return value, outcomes, payload

    async def _update(self, key: str, kind: type[T], change: Callable[[T], T | None]) -> int | None:
        """Read, change, write back if nobody wrote in between (else again). Returns the new revision, or
        None when `change` wanted no write."""
        async with self._lock(key):
            for attempt in range(_MAX_CAS_TRIES):
                known = self._known.get(key)
                if known is not None:
                    current, revision = known
                else:
                    current, revision = await self._read(key, kind)
                updated = change(current)
                if updated is None:
                    if known is not None:
                        self._known.pop(key, None)  # decided on what we wrote last: decide on what is stored
                        continue
                    return None
                headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
                try:
                    ack = await self._acks.publish(self._subject + key, encode(updated), headers)
                except nats.js.errors.KeyWrongLastSequenceError:
                    self._known.pop(key, None)
                    if known is not None:
                        continue  # only our copy was old: read and try again at once
                    # Writers in other processes (a hundred intents reaching the supervisors at once) would
                    # otherwise retry in lockstep, one winner a round, and the last run out of tries: spread them.
                    await asyncio.sleep(random.uniform(0, min(_CAS_BACKOFF_MAX_S, _CAS_BACKOFF_S * 2**attempt)))
                    continue
                self._known[key] = (updated, int(ack.seq))
                return int(ack.seq)
            raise RuntimeError(f"controls key {key!r}: {_MAX_CAS_TRIES} writers in a row changed it first")


def _applied(change: Callable[[Any], Any], value: Any) -> Any:
    """`change(value)`, or the exception it raised: one change that fails (a value that makes no sense to it)
    fails alone, and the rest of its batch is written."""
    try:
        return change(value)
    except Exception as exc:
        return exc


class _OldReservations(msgspec.Struct):
    """`reserve.<venue>` before the totals: every in-flight intent's reservation in one document."""

    entries: tuple[Reservation, ...] = ()


def _without(current: ReservedTotals, reservation: Reservation) -> ReservedTotals | None:
    after = current.removing(reservation, time.time_ns())
    return None if after == current else after


def _hold_ttl_s(reservation: Reservation) -> int:
    """Seconds the intent's key lives: to the end of its window (whole seconds, rounded up), plus the grace."""
    to_window_end_ns = reservation_window(reservation.expires_ns) - time.time_ns()
    return max(1, -(-to_window_end_ns // 1_000_000_000)) + HOLD_GRACE_S


def _totals_key(venue: str) -> str:
    return f"reserve.{venue}.total"


def _hold_key(venue: str, intent_id: str) -> str:
    return f"reserve.{venue}.intent.{intent_id}"


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
