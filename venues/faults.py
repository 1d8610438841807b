"""Seeded latency and fault injection: the ways a live venue misbehaves, on demand.

Each `FaultRule` names a misbehaviour (see `venues.config.FaultKind`), a probability, a scope
(clientOrderId prefix, symbol, account, RPC methods) and optionally a count. Rules come from the
config or are set per test through the control API; scoping by clientOrderId prefix lets concurrent
tests share one venue without hitting each other. The RNG is seeded, so a given request sequence
sees the same faults every run.

Exception classes are exactly what ccxt raises for a live exchange: `RateLimitExceeded`,
`NetworkError`, `RequestTimeout`, `OrderNotFound`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import ccxt

from venues.config import FaultKind, FaultRule, LatencyConfig

__all__ = ["FaultInjector", "LatencySampler", "Scope"]

_DEFAULT_METHODS = {
    "rate_limit": None,  # every RPC
    "network_error": ("create_order",),
    "request_timeout": ("create_order",),
}


@dataclass(slots=True, frozen=True)
class Scope:
    """What a request or event is about, for matching rules."""

    method: str | None = None
    account: str | None = None
    symbol: str | None = None
    client_order_id: str | None = None


class LatencySampler:
    """Request latency in seconds of exchange time, from a seeded distribution."""

    def __init__(self, cfg: LatencyConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = random.Random(f"latency:{seed}")

    def sample(self) -> float:
        c = self.cfg
        if c.kind == "none":
            return 0.0
        if c.kind == "fixed":
            ms = c.mean_ms
        elif c.kind == "uniform":
            ms = self.rng.uniform(c.mean_ms - c.jitter_ms, c.mean_ms + c.jitter_ms)
        else:  # lognormal with the given mean and standard deviation
            mean, sd = max(c.mean_ms, 1e-6), max(c.jitter_ms, 1e-6)
            sigma2 = math.log(1 + (sd / mean) ** 2)
            ms = self.rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))
        return max(0.0, min(ms, c.max_ms)) / 1000.0


class FaultInjector:
    """Holds the active rules and decides, per request or event, which fault fires."""

    def __init__(self, rules: list[FaultRule], seed: int) -> None:
        self.rng = random.Random(f"faults:{seed}")
        self.rules: list[FaultRule] = []
        self._left: list[int | None] = []
        self.fired: dict[str, int] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> None:
        self.rules.append(rule)
        self._left.append(rule.count)

    def clear(self, name: str | None = None) -> int:
        """Remove all rules, or the ones named `name`; returns how many were removed."""
        keep = [(r, n) for r, n in zip(self.rules, self._left) if name is not None and r.name != name]
        removed = len(self.rules) - len(keep)
        self.rules = [r for r, _ in keep]
        self._left = [n for _, n in keep]
        return removed

    def _matches(self, rule: FaultRule, scope: Scope) -> bool:
        if rule.account is not None and rule.account != scope.account:
            return False
        if rule.symbol is not None and rule.symbol != scope.symbol:
            return False
        if rule.client_order_id_prefix is not None and not (
            scope.client_order_id or "").startswith(rule.client_order_id_prefix):
            return False
        if scope.method is not None:
            methods = rule.methods if rule.methods is not None else _DEFAULT_METHODS.get(rule.kind)
            if methods is not None and scope.method not in methods:
                return False
        return True

    def fire(self, kind: FaultKind, scope: Scope) -> FaultRule | None:
        """The first matching rule of `kind` that fires (probability, count), consuming one shot."""
        for i, rule in enumerate(self.rules):
            if rule.kind != kind or not self._matches(rule, scope):
                continue
            left = self._left[i]
            if left is not None and left <= 0:
                continue
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            if left is not None:
                self._left[i] = left - 1
            self.fired[kind] = self.fired.get(kind, 0) + 1
            return rule
        return None

    def before(self, scope: Scope) -> None:
        """Faults that refuse a request before it executes."""
        if self.fire("rate_limit", scope):
            raise ccxt.RateLimitExceeded("paper 429 Too Many Requests (fault injection)")

    def after(self, scope: Scope) -> None:
        """Faults that lose the response of a request that did execute (outcome unknown to the caller)."""
        if self.fire("request_timeout", scope):
            raise ccxt.RequestTimeout(f"paper {scope.method} request timed out (fault injection)")
        if self.fire("network_error", scope):
            raise ccxt.NetworkError(f"paper {scope.method} connection reset by peer (fault injection)")
