"""Strategies as plug-ins: one module per strategy, each a pure decision core (`base.py` says what it sees and
may answer), and this registry — the one list the supervisor, `execbus submit --strategy`, the schema, the
quality benchmark and the README's table read. It finds the strategies itself: each module here but `base`
is one, exposed as `STRATEGY`.

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

    STRATEGY = Hold()
"""

from __future__ import annotations

import importlib
import pkgutil

from actors.strategies.base import Strategy
from messages.strategies import PARAMS_BY_STRATEGY

__all__ = ["STRATEGIES", "strategy_for", "Strategy"]


def _discover() -> dict[str, Strategy]:
    """Every module of this package but `base` is one strategy, exposed as its `STRATEGY`; listed in the
    order their params are declared in `messages/strategies.py`."""
    found: dict[str, Strategy] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        strategy = getattr(module, "STRATEGY", None)
        if strategy is None:
            raise ImportError(f"actors/strategies/{info.name}.py defines no STRATEGY")
        if strategy.name in found:
            raise ImportError(f"two strategies named {strategy.name!r}")
        found[strategy.name] = strategy
    missing = set(PARAMS_BY_STRATEGY) ^ set(found)
    if missing:
        raise ImportError(f"strategies and their params do not match: {sorted(missing)}")
    return {name: found[name] for name in PARAMS_BY_STRATEGY}


STRATEGIES: dict[str, Strategy] = _discover()


def strategy_for(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"no strategy {name!r}: one of {', '.join(STRATEGIES)}") from None
