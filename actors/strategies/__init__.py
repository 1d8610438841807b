"""Strategies as plug-ins: one module per strategy, each a pure decision core (`base.py` says what it sees and
may answer), and this registry — the one list the supervisor, `execbus submit --strategy`, the schema, the
quality benchmark and the README's table read.

Adding a strategy touches its own module here, its params in `messages/strategies.py` and its tests:

    class Hold:                                   # actors/strategies/hold.py
        name = "hold"
        Params = HoldParams                       # messages/strategies.py: class HoldParams(StrategyParams, tag="hold")
        summary = "one limit order at a fixed price"
        def budget_ns(self, params): return ns(params.timeout_seconds)
        def check(self, params, qty, min_amount, amount_step): return None
        def decide(self, params, view, event):
            match event:
                case Arrived(): return Place(attempt=1, order_type="limit", price=params.price, deadline_ns=view.deadline_ns)
                case AttemptExpired(): return CancelWorking()
            return Finish("timeout with quantity left")
"""

from __future__ import annotations

from actors.strategies.aggressive_limit import AggressiveLimit
from actors.strategies.base import Strategy
from actors.strategies.iceberg import Iceberg
from actors.strategies.market import Market
from actors.strategies.simple_limit import SimpleLimit
from actors.strategies.twap import Twap

__all__ = ["STRATEGIES", "strategy_for", "Strategy"]

STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (Market(), SimpleLimit(), AggressiveLimit(), Twap(), Iceberg())  # type: ignore[misc]
}


def strategy_for(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"no strategy {name!r}: one of {', '.join(STRATEGIES)}") from None
