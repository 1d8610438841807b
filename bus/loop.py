"""The event loop every execbus process runs on: uvloop where it is installed (it comes with ccxt on Linux
and macOS), asyncio's own otherwise. `EXECBUS_LOOP=asyncio` forces the standard loop.

Most of an actor's CPU is the event loop and nats-py's protocol handling (see bench/README.md); uvloop
cuts that share by about a fifth."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run", "loop_name"]

T = TypeVar("T")


def _factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if os.environ.get("EXECBUS_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(main)


def loop_name() -> str:
    return "uvloop" if _factory() is not None else "asyncio"
