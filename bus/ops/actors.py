"""The registry of actor kinds: the bus knows actors only by name, as factories loaded from `actors.<module>`.

Each gets the venue pool (when it trades through venues) and its options through its constructor. The system,
`execbus actor NAME` and the bus's permissions (bus/ops/auth.py) all read this one table.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ACTORS", "USES_VENUES", "actor_class", "build_actor"]

ACTORS: dict[str, str] = {
    "supervisor": "actors.supervisor:Supervisor",
    "pricer": "actors.pricer:Pricer",
    "placer": "actors.placer:Placer",
    "reconciler": "actors.reconciler:Reconciler",
    "tracker": "actors.tracker:Tracker",
    "market_fallback": "actors.market_fallback:MarketFallback",
}
USES_VENUES = {"supervisor", "pricer", "placer", "reconciler"}


def actor_class(name: str) -> type:
    if name not in ACTORS:
        raise ValueError(f"unknown actor {name!r}; one of {', '.join(ACTORS)}")
    module_name, class_name = ACTORS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_actor(name: str, venues: Any, options: dict[str, Any] | None = None) -> Any:
    cls = actor_class(name)
    if name in USES_VENUES:
        return cls(venues, **(options or {}))
    return cls(**(options or {}))
