"""The whole system in the test process: embedded nats-server, paper venue, one replica of each actor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bus.ops.sim import UNGATED
from bus.ops.system import System, SystemConfig
from tests.helpers import Recorder, fast_settings
from venues.config import PaperVenueConfig
from venues.paper import PaperExchange


class Running:
    """A started system plus what tests need around it."""

    def __init__(self, system: System, recorder: Recorder, exchange: Any) -> None:
        self.system = system
        self.recorder = recorder
        self.exchange = exchange

    @property
    def bus(self) -> Any:
        return self.system.bus


async def start_running(config: SystemConfig) -> Running:
    system = await System(config).start()
    assert system.bus is not None
    recorder = await Recorder().attach(system.bus)
    exchange = PaperExchange({"options": {"natsUrl": system.url, "natsAuth": system.credentials("ops")}})
    await exchange.load_markets()
    return Running(system, recorder, exchange)


async def stop_running(running: Running) -> None:
    await running.exchange.close()
    await running.system.stop()


OPEN_LIMITS = UNGATED
"""The risk gate wide open: these tests are about strategies and venues (the gate has its own tests, which
set their own limits). The safe defaults would refuse, say, the 1,000 BTC sell that tests the venue's own
InsufficientFunds."""


def system_config(**overrides: Any) -> SystemConfig:
    values: dict[str, Any] = {
        "settings": fast_settings(),
        "risk_limits": OPEN_LIMITS,
        "paper_config": PaperVenueConfig(speed=20.0),
        "actor_options": {"reconciler": {"poll_interval_s": 0.5, "confirm_interval_s": 0.05}},
    }
    values.update(overrides)
    return SystemConfig(**values)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    r = await start_running(system_config())
    try:
        yield r
    finally:
        await stop_running(r)


def stepped_config() -> SystemConfig:
    """A step-driven venue: the recorded market only moves when the test advances it."""
    return system_config(
        paper_config=PaperVenueConfig(speed=0),
        actor_options={
            "pricer": {"max_age_s": 3600.0},  # a frozen market is not a stale feed here
            "reconciler": {"poll_interval_s": 0.3, "confirm_interval_s": 0.05},
            "placer": {"resolve_interval_s": 0.05, "absent_grace_s": 2.0},  # > the frozen venue's 1 s visibility bound
        },
    )


@pytest.fixture
async def stepped() -> AsyncIterator[Running]:
    r = await start_running(stepped_config())
    try:
        yield r
    finally:
        await stop_running(r)
