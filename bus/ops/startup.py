"""Start-up reconciliation with the venues: no open order of ours goes unwatched.

Before execbus takes new work it lists the open orders at each configured venue and keeps the ones that are
*ours* — their client order id has the shape execbus gives its orders, `<intent>-<attempt>` or
`<intent>-F` — and compares them with what the reconciler watches (its per-intent state in JetStream KV,
`reconciler.<partition>.<intent_id>` in the state bucket). An order of ours is

- **unverified** when no intent of that id was ever accepted here (the intent guard in the `execbus_intents`
  bucket has no `intent.<id>`): venues give orders without a client id one of their own, and the paper venue's
  `paper-3` has our shape. Left alone and logged, unless `verify_intents=False`;
- **known** when the reconciler's state has it (not final): nothing to do;
- **in flight** when the log holds a `PlaceOrder`/`OrderPlaced` for its intent that the reconciler has not
  acknowledged yet: the reconciler is about to learn of it, so it is left alone;
- an **orphan** otherwise — placed by a deployment whose state is gone, or missed while nothing watched. An
  orphan is *adopted*: an `OrderPlaced` (`recovered=True`) goes into the log, which is what makes the
  reconciler watch an order, so its fills and its terminal state are published like any other order's. With
  the `cancel` policy it is then also canceled at the venue, and an `OrderCanceled` tells the reconciler to
  confirm its final state at once. Canceling an unwatched order without adopting it first would lose the fills
  it had, and leave a supervisor that still waits on it waiting forever.

The policy is `adopt` or `cancel` (`EXECBUS_ORPHAN_POLICY`, default `cancel`: an order nobody will cancel at
its deadline is an unmanaged position). When a venue cannot be listed, or an orphan cannot be canceled, this
raises `StartupReconciliationError` naming the venue and the reason: execbus must not run blind.

Call it once the actor hosts have started (their durable consumers exist, so the reconciler receives what
this publishes even on a brand-new stream) and before taking intents from outside.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import ccxt
import msgspec
import nats.errors
import nats.js.errors
import structlog

from bus.bus import Bus
from bus.kv import list_keys, live_value
from venues import gateway
from venues.types import VenueOrder
from messages import OrderCanceled, OrderPlaced, PlaceOrder, subjects

__all__ = [
    "ORPHAN_POLICY_ENV",
    "VENUES_ENV",
    "OrphanPolicy",
    "StartupReconciliationError",
    "StartupReport",
    "VenueReconciliation",
    "configured_venues",
    "orphan_policy",
    "parse_client_order_id",
    "reconcile_with_venues",
]

log = structlog.get_logger("execbus.ops.startup")

OrphanPolicy = Literal["adopt", "cancel"]
ORPHAN_POLICY_ENV = "EXECBUS_ORPHAN_POLICY"
VENUES_ENV = "EXECBUS_VENUES"
RECONCILER = "reconciler"
"""The actor whose state says which orders are watched (its KV keys and durable consumers are named so)."""
_CLIENT_ORDER_ID = re.compile(r"^(?P<intent>[A-Za-z0-9_-]{1,64})-(?P<attempt>[0-9]+|F)$")


class StartupReconciliationError(RuntimeError):
    """Reconciliation with `venue` could not complete; execbus must not start."""

    def __init__(self, venue: str, reason: str) -> None:
        super().__init__(f"start-up reconciliation with venue {venue!r} failed: {reason}")
        self.venue = venue
        self.reason = reason


@dataclass
class VenueReconciliation:
    venue: str
    open_orders: int = 0
    """Every open order the venue listed (ours or not)."""
    ours: list[str] = field(default_factory=list)
    """Open orders whose client order id has our shape."""
    unverified: list[str] = field(default_factory=list)
    """Of those, the ones whose intent id was never accepted here: left alone."""
    known: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    """Orphans now watched by the reconciler (with the cancel policy: also canceled)."""
    canceled: list[str] = field(default_factory=list)


@dataclass
class StartupReport:
    policy: OrphanPolicy
    venues: list[VenueReconciliation] = field(default_factory=list)

    @property
    def orphans(self) -> list[str]:
        return [cid for v in self.venues for cid in v.adopted]


def parse_client_order_id(client_order_id: str | None) -> tuple[str, int] | None:
    """(intent id, attempt) for a client order id execbus gives (`<intent>-<n>`, `<intent>-F` -> attempt 0)."""
    if not client_order_id:
        return None
    match = _CLIENT_ORDER_ID.match(client_order_id)
    if match is None:
        return None
    attempt = match.group("attempt")
    return match.group("intent"), 0 if attempt == "F" else int(attempt)


def orphan_policy(value: str | None = None) -> OrphanPolicy:
    raw = (value or os.environ.get(ORPHAN_POLICY_ENV) or "cancel").strip().lower()
    if raw not in ("adopt", "cancel"):
        raise ValueError(f"{ORPHAN_POLICY_ENV} must be 'adopt' or 'cancel', not {raw!r}")
    return raw  # type: ignore[return-value]


def configured_venues() -> list[str]:
    """`EXECBUS_VENUES` (comma-separated ccxt ids), else the paper venue."""
    raw = os.environ.get(VENUES_ENV, "")
    return [v.strip() for v in raw.split(",") if v.strip()] or ["paper"]


async def reconcile_with_venues(
    bus: Bus,
    venues: Any,
    *,
    venue_ids: Sequence[str] | None = None,
    policy: str | None = None,
    attempts: int = 3,
    retry_delay_s: float = 0.5,
    timeout_s: float = 60.0,
    verify_intents: bool = True,
) -> StartupReport:
    """Reconcile every configured venue (`venue_ids`, default `configured_venues()`) with the reconciler's
    state; orphans are adopted or canceled per `policy` (default `orphan_policy()`). `venues` is the
    `venues.gateway.VenuePool` the actors use. Venue calls that fail on the network are retried `attempts`
    times, `retry_delay_s` apart; a venue that takes longer than `timeout_s` in all fails the start-up. With
    `verify_intents` (the default) an order counts as ours only if its intent id was accepted here once.

    Raises `StartupReconciliationError(venue, reason)` when a venue cannot be opened or listed, the
    reconciler's state cannot be read, or an orphan cannot be canceled; `ValueError` for an unknown policy."""
    chosen = orphan_policy(policy)
    report = StartupReport(policy=chosen)
    for venue in list(venue_ids) if venue_ids is not None else configured_venues():
        try:
            result = await asyncio.wait_for(
                _reconcile_venue(bus, venues, venue, chosen, attempts, retry_delay_s, verify_intents), timeout_s
            )
        except asyncio.TimeoutError:
            raise StartupReconciliationError(venue, f"no complete answer within {timeout_s:g} s") from None
        report.venues.append(result)
        log.info(
            "startup_reconciled",
            venue=venue,
            policy=chosen,
            open_orders=result.open_orders,
            ours=len(result.ours),
            unverified=result.unverified,
            known=len(result.known),
            in_flight=len(result.in_flight),
            adopted=result.adopted,
            canceled=result.canceled,
        )
    return report


# -- one venue ---------------------------------------------------------------------------------------------


class _KnownOrder(msgspec.Struct):
    order_id: str | None = None
    final: bool = False


class _KnownIntent(msgspec.Struct):
    """The part of the reconciler's per-intent state this needs (other fields are ignored)."""

    venue: str
    symbol: str
    orders: dict[str, _KnownOrder] = msgspec.field(default_factory=dict)


async def _reconcile_venue(
    bus: Bus, venues: Any, venue: str, policy: OrphanPolicy, attempts: int, delay: float, verify: bool
) -> VenueReconciliation:
    result = VenueReconciliation(venue=venue)
    try:
        exchange = await venues.get(venue)
    except Exception as exc:
        raise StartupReconciliationError(venue, f"cannot open the venue: {exc!r}") from exc
    known = await _watched(bus, venue)
    open_orders = await _list_open_orders(exchange, venue, sorted({s for s, _ in known.values()}), attempts, delay)
    result.open_orders = len(open_orders)
    for order in open_orders:
        cid = order.client_order_id
        parsed = parse_client_order_id(cid)
        symbol = order.symbol
        if parsed is None or not symbol:
            continue  # not one of ours: someone else's order on the same account is none of our business
        intent_id, attempt = parsed
        assert cid is not None
        result.ours.append(cid)
        if cid in known:
            result.known.append(cid)
            continue
        if verify and not await _accepted_here(bus, venue, intent_id):
            result.unverified.append(cid)
            log.warning("startup_order_not_verified", venue=venue, client_order_id=cid, order_id=str(order.id))
            continue
        if await _in_flight(bus, venue, symbol, intent_id):
            result.in_flight.append(cid)
            continue
        await _adopt(bus, venue, intent_id, attempt, order)
        result.adopted.append(cid)
        if policy == "cancel":
            if await _cancel(exchange, venue, order, attempts, delay):
                result.canceled.append(cid)
            await bus.publish(
                OrderCanceled(
                    intent_id=intent_id, venue=venue, symbol=symbol, client_order_id=cid, order_id=str(order.id),
                    msg_id=f"{intent_id}.order_canceled.{cid}.startup",
                )
            )
    return result


async def _watched(bus: Bus, venue: str) -> dict[str, tuple[str, str]]:
    """client order id -> (symbol, intent) of every non-final order the reconciler watches at `venue`."""
    kv = bus.buckets.state
    decoder = msgspec.json.Decoder(_KnownIntent)
    watched: dict[str, tuple[str, str]] = {}
    try:
        keys = await list_keys(bus.js, kv._name, f"{RECONCILER}.*.*")
        for key in keys:
            value = await live_value(kv, key)
            if not value:
                continue
            state = decoder.decode(value)
            if state.venue != venue:
                continue
            intent_id = key.split(".", 2)[2]
            for cid, order in state.orders.items():
                if not order.final:
                    watched[cid] = (state.symbol, intent_id)
    except (nats.errors.Error, asyncio.TimeoutError, msgspec.DecodeError) as exc:
        raise StartupReconciliationError(venue, f"cannot read the reconciler's state: {exc!r}") from exc
    return watched


async def _list_open_orders(exchange: Any, venue: str, symbols: list[str], attempts: int, delay: float) -> list[VenueOrder]:
    options = getattr(exchange, "options", None)
    if isinstance(options, dict) and "warnOnFetchOpenOrdersWithoutSymbol" in options:
        options["warnOnFetchOpenOrdersWithoutSymbol"] = False  # binance: listing every symbol at once is intended
    try:
        return list(await _retry(lambda: gateway.fetch_open_orders(exchange), venue, "list open orders", attempts, delay))
    except StartupReconciliationError as exc:
        if not isinstance(exc.__cause__, (ccxt.ArgumentsRequired, ccxt.NotSupported)):
            raise
        if not symbols:
            raise StartupReconciliationError(
                venue, "the venue lists open orders only per symbol and no symbol of ours is known"
            ) from exc.__cause__
    orders: list[VenueOrder] = []
    for symbol in symbols:  # this venue wants a symbol: at least every market we have orders on
        orders += await _retry(lambda s=symbol: gateway.fetch_open_orders(exchange, s), venue, f"list open orders on {symbol}", attempts, delay)
    return orders


async def _retry(call: Any, venue: str, what: str, attempts: int, delay: float) -> Any:
    last: Exception | None = None
    for attempt in range(max(attempts, 1)):
        try:
            return await call()
        except ccxt.NetworkError as exc:  # timeouts, rate limits, venue unreachable: worth another try
            last = exc
            log.warning("startup_venue_call_failed", venue=venue, what=what, attempt=attempt + 1, error=repr(exc))
            if attempt + 1 < attempts:
                await asyncio.sleep(delay)
        except ccxt.BaseError as exc:
            raise StartupReconciliationError(venue, f"cannot {what}: {type(exc).__name__}: {exc}") from exc
    raise StartupReconciliationError(venue, f"cannot {what}: {type(last).__name__}: {last}") from last


async def _accepted_here(bus: Bus, venue: str, intent_id: str) -> bool:
    """The supervisor's once-only guard (`intent.<id>` in the intent bucket) records every intent it took."""
    try:
        return await live_value(bus.buckets.intents, f"intent.{intent_id}") is not None
    except (nats.errors.Error, asyncio.TimeoutError) as exc:
        raise StartupReconciliationError(venue, f"cannot read the intent guard: {exc!r}") from exc


async def _in_flight(bus: Bus, venue: str, symbol: str, intent_id: str) -> bool:
    """Does the log hold an order command or placement of this intent that the reconciler has not acked?"""
    stream = bus.settings.stream
    token = subjects.symbol_token(symbol)
    for kind in (PlaceOrder.kind, OrderPlaced.kind):
        pattern = subjects.stored_filter(f"{subjects.PREFIX}.{kind}.{venue}.{token}.{intent_id}", bus.shape)
        info = await bus.js.stream_info(stream, subjects_filter=pattern)
        for stored in info.state.subjects or {}:
            last = await bus.js.get_last_msg(stream, stored)
            parts = subjects.parse(stored, bus.shape)
            partition = parts.partition if parts is not None else None
            try:
                consumer = await bus.js.consumer_info(stream, f"{RECONCILER}-p{partition}")
            except nats.js.errors.NotFoundError:
                return True  # the reconciler has never consumed this partition: all of it is ahead of it
            if last.seq is not None and last.seq > consumer.ack_floor.stream_seq:  # type: ignore[union-attr]
                return True
    return False


async def _adopt(bus: Bus, venue: str, intent_id: str, attempt: int, order: VenueOrder) -> None:
    """`OrderPlaced` is what makes the reconciler watch an order (and tell the supervisor and tracker its id).
    The message id is its own, so an earlier `OrderPlaced` of the same order cannot swallow it as a duplicate,
    while a second start-up within the duplicate window does not adopt twice."""
    cid = str(order.client_order_id)
    price = order.price
    await bus.publish(
        OrderPlaced(
            intent_id=intent_id,
            venue=venue,
            symbol=str(order.symbol),
            client_order_id=cid,
            order_id=str(order.id),
            attempt=attempt,
            side=order.side,  # type: ignore[arg-type]
            order_type="market" if order.type == "market" else "limit",
            qty=order.amount or Decimal(0),
            price=price if price else None,
            recovered=True,
            msg_id=f"{intent_id}.order_placed.{cid}.startup",
        )
    )


async def _cancel(exchange: Any, venue: str, order: VenueOrder, attempts: int, delay: float) -> bool:
    """Cancel at the venue; False when it was no longer open (filled or canceled meanwhile: the reconciler,
    now watching it, reports what it became)."""
    try:
        await _retry(lambda: gateway.cancel_order(exchange, str(order.id), str(order.symbol)), venue,
                     f"cancel {order.client_order_id}", attempts, delay)
    except StartupReconciliationError as exc:
        if isinstance(exc.__cause__, ccxt.OrderNotFound):
            return False
        raise
    return True

