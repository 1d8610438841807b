"""Fixtures for the paper venue tests: step-driven venues, in-process exchanges, a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bus.server import EmbeddedNats
from venues.paper import PaperExchange
from venues.service import run_paper_venue
from venues.simulator import PaperVenue

from paper_helpers import RunningVenue, stepped, wait_for_venue


@pytest.fixture
def venue() -> PaperVenue:
    return PaperVenue(stepped())


@pytest_asyncio.fixture
async def exchange(venue: PaperVenue) -> AsyncIterator[PaperExchange]:
    ex = PaperExchange({"options": {"engine": venue}})
    await ex.load_markets()
    yield ex
    await ex.close()


@pytest_asyncio.fixture
async def nats_venue() -> AsyncIterator[RunningVenue]:
    """A real nats-server with a step-driven paper venue serving on it."""
    async with EmbeddedNats() as server:
        stop = asyncio.Event()
        task = asyncio.create_task(run_paper_venue(server.url, stepped(), stop=stop))
        await wait_for_venue(server.url)
        yield RunningVenue(server.url, stop, task)
        stop.set()
        await asyncio.wait_for(task, 10)
