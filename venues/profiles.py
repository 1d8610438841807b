"""Venue behaviour profiles: how unkind the paper venue is to its clients (see venues/README.md).

`strict` is the original well-behaved venue. `binance` (the default) does what Binance spot does to a
client that is not careful: clientOrderIds are unique only among open orders, a fresh order is unknown to
REST lookups for a few hundred milliseconds, and orders beyond a per-account budget are refused with
RateLimitExceeded. Everything is measured on the venue's own (exchange) clock and drawn from a seeded
RNG, so a step-driven simulation stays deterministic.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ccxt

from venues.config import PaperVenueConfig, Profile
from venues.orders import MarketSpec, SimOrder, dec_str

__all__ = ["FUNDING", "AuditLog", "OrderRateLimiter", "ProfileSettings", "VisibilityLag", "funded_balances"]

_NS_PER_MS = 1_000_000
_NS = 1_000_000_000

FUNDING = {"base": Decimal("100"), "quote": Decimal("10000000"), "fee": Decimal("1000000")}
"""Starting balance of every market base, quote and the fee currency unless `balances` names it."""


@dataclass(slots=True, frozen=True)
class ProfileSettings:
    """A profile with the config's overrides applied."""

    profile: Profile
    reuse_closed_client_ids: bool
    visibility_lag_ms: float
    order_rate_limit: int | None
    order_rate_window_s: float

    @classmethod
    def resolve(cls, profile: Profile, visibility_lag_ms: float | None = None, order_rate_limit: int | None = None,
                order_rate_window_s: float = 10.0) -> ProfileSettings:
        binance = profile == "binance"
        if profile not in ("strict", "binance"):
            raise ccxt.BadRequest(f"paper has no venue profile {profile!r}")
        lag = visibility_lag_ms if visibility_lag_ms is not None else (300.0 if binance else 0.0)
        limit = order_rate_limit if order_rate_limit is not None else (100 if binance else None)
        if lag < 0 or (limit is not None and limit <= 0) or order_rate_window_s <= 0:
            raise ccxt.BadRequest("paper visibility_lag_ms must be >= 0, order_rate_limit and window > 0")
        return cls(profile, binance, float(lag), limit, float(order_rate_window_s))

    @classmethod
    def from_config(cls, cfg: PaperVenueConfig) -> ProfileSettings:
        return cls.resolve(cfg.profile, cfg.visibility_lag_ms, cfg.order_rate_limit, cfg.order_rate_window_s)

    def to_wire(self) -> dict[str, Any]:
        return {"profile": self.profile, "visibility_lag_ms": self.visibility_lag_ms,
                "order_rate_limit": self.order_rate_limit, "order_rate_window_s": self.order_rate_window_s}


def funded_balances(specs: list[MarketSpec], explicit: dict[str, Decimal], fee_currency: str | None
                    ) -> dict[str, Decimal]:
    """Every market currency (and the fee currency) funded, then the configured `balances` on top."""
    out: dict[str, Decimal] = {}
    for spec in specs:
        out.setdefault(spec.quote, FUNDING["quote"])
    for spec in specs:
        out.setdefault(spec.base, FUNDING["base"])
    if fee_currency:
        out.setdefault(fee_currency, FUNDING["fee"])
    out.update(explicit)
    return out


class OrderRateLimiter:
    """Per-account sliding window of accepted order requests, like Binance's ORDERS 100 / 10 s."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[int]] = {}

    def admit(self, account: str, now_ns: int, limit: int | None, window_s: float) -> None:
        """Count one order request, or refuse it (nothing counted) with the wait until there is room."""
        if limit is None:
            return
        window = int(window_s * _NS)
        seen = self._seen.setdefault(account, deque())
        while seen and seen[0] <= now_ns - window:
            seen.popleft()
        if len(seen) >= limit:
            wait_ms = max(1, math.ceil((seen[-limit] + window - now_ns) / _NS_PER_MS))
            raise ccxt.RateLimitExceeded(
                f"paper Too many new orders; current limit is {limit} orders per {window_s:g} SECOND."
                f" retry_after_ms={wait_ms}")
        seen.append(now_ns)


WALL_BOUND_S = 1.0
"""However the venue's clock moves, a new order is visible after three times its longest possible lag (at
least this) of wall-clock time: a step-driven venue that nobody advances (a frozen market in a test) must not
hide an order for ever, as no real venue does."""


class VisibilityLag:
    """When each fresh order becomes visible to REST lookups: creation + U(0, lag) of exchange time, or the
    wall-clock bound above, whichever comes first. In a simulation exchange time runs far ahead of the wall
    clock, so the seeded lag decides and runs stay deterministic."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"visibility:{seed}")
        self._until: dict[tuple[str, str], tuple[int, int]] = {}
        """(account, order id) -> (exchange ns, wall monotonic ns) after which the order is visible"""
        self._expiry: deque[tuple[int, tuple[str, str]]] = deque()  # creation order, for pruning

    def hide(self, o: SimOrder, now_ns: int, lag_ms: float) -> None:
        self._prune(now_ns)
        if lag_ms <= 0:
            return
        key = (o.account, o.id)
        wall_until = time.monotonic_ns() + int(max(3 * lag_ms / 1000, WALL_BOUND_S) * 1e9)
        self._until[key] = (now_ns + int(self.rng.uniform(0.0, lag_ms) * _NS_PER_MS), wall_until)
        self._expiry.append((now_ns + int(lag_ms * _NS_PER_MS), key))

    def hidden(self, account: str, order_id: str, now_ns: int) -> bool:
        until = self._until.get((account, order_id))
        return until is not None and now_ns < until[0] and time.monotonic_ns() < until[1]

    def _prune(self, now_ns: int) -> None:
        """Forget orders whose longest possible lag has passed, so the map stays small."""
        while self._expiry and self._expiry[0][0] <= now_ns:
            _, key = self._expiry.popleft()
            self._until.pop(key, None)


class AuditLog:
    """Every create the venue accepted (the live order, so filled/status are current) and refusals by class."""

    def __init__(self, limit: int) -> None:
        self.orders: deque[SimOrder] = deque()
        self.received_ns: dict[int, int] = {}
        """id(order) -> wall-clock time the venue accepted it: its own clock may be virtual (a stepped
        market), while an order-rate budget is counted in real seconds."""
        self.limit = limit
        self.dropped = 0
        self.refused: dict[str, int] = {}

    def accepted(self, o: SimOrder) -> None:
        self.orders.append(o)
        self.received_ns[id(o)] = time.time_ns()
        if len(self.orders) > self.limit:
            self.received_ns.pop(id(self.orders.popleft()), None)
            self.dropped += 1

    def refused_by(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.refused[name] = self.refused.get(name, 0) + 1

    def report(self, prefix: str | None = None, account: str | None = None) -> dict[str, Any]:
        rows = [{**_audit_row(o), "received_wall_ms": self.received_ns.get(id(o), 0) // _NS_PER_MS}
                for o in self.orders
                if (prefix is None or o.client_order_id.startswith(prefix))
                and (account is None or o.account == account)]
        return {"accepted": rows, "refused": dict(self.refused), "dropped": self.dropped}


def _audit_row(o: SimOrder) -> dict[str, Any]:
    return {"client_order_id": o.client_order_id, "id": o.id, "symbol": o.symbol, "side": o.side,
            "type": o.type, "amount": dec_str(o.amount), "price": dec_str(o.price), "filled": dec_str(o.filled),
            "status": o.status, "timestamp": o.ts // _NS_PER_MS, "account": o.account}
