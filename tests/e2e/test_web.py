"""`execbus web`: the page of executions, served by execbus itself, in a real headless Chromium (Playwright,
pointed at Debian's /usr/bin/chromium; `playwright install` is never needed), plus its HTTP API and the
`execbus web` / `execbus up --http` commands.

Everything waits on a condition with a bound (the DOM, a line a process prints, an SSE event), never a sleep.
The screenshots the README shows are written by the browser test (`EXECBUS_UPDATE_SCREENSHOTS=1`):
bus/ops/web/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bus.msglog import read_stream
from bus.ops.client import execute
from bus.ops.web.app import STATIC
from bus.ops.web.server import WebServer
from messages import AggressiveLimitParams, AttemptTimedOut, ExecutionCompleted, OrderFilled, PlaceOrder, SimpleLimitParams
from tests.e2e.conftest import Running, start_running, stepped_config, stop_running
from tests.helpers import new_intent

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
README_SCREENSHOTS = ROOT / "bus" / "ops" / "web" / "screenshots"
SCREENSHOTS = README_SCREENSHOTS if os.environ.get("EXECBUS_UPDATE_SCREENSHOTS") else Path(
    os.environ.get("EXECBUS_TEST_ARTIFACTS", "/tmp/execbus-test-artifacts"))
"""Where the browser test saves its screenshots: a scratch folder, or the README's with
`EXECBUS_UPDATE_SCREENSHOTS=1` (so a test run does not leave the checkout modified)."""
DOM_TIMEOUT_MS = 10_000


in_module_loop = pytest.mark.asyncio(loop_scope="module")
"""The async tests here share one event loop, so that they share one Chromium (a launch costs seconds)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    if not os.path.exists(CHROMIUM):
        message = (f"the browser tests need Chromium at {CHROMIUM}: install it with `apt-get install -y chromium` "
                   "(CI's .ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)  # CI installs it: missing there is a broken CI, not a skip
        pytest.skip(message)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright's Python package: pip install -e '.[test]'", pytrace=False)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def stepped() -> AsyncIterator[Running]:
    """tests/e2e/conftest.py's stepped system (the market moves only when a test advances it), in this loop."""
    r = await start_running(stepped_config())
    try:
        yield r
    finally:
        await stop_running(r)


@pytest_asyncio.fixture(loop_scope="module")
async def served() -> AsyncIterator[Running]:
    """The stepped system with the web page beside it, as `execbus up --http 0` runs it."""
    config = stepped_config()
    config.http_port = 0
    r = await start_running(config)
    try:
        yield r
    finally:
        await stop_running(r)


def escalating() -> Any:
    """An aggressive limit buy on the frozen market: attempt 1 at the bid and 2 inside the spread time out,
    attempt 3 crosses and fills: two timeouts, fills, and an order per attempt (two when the spread is one
    tick: then attempt 2 keeps attempt 1's order, as the log says with OrderKept)."""
    params = AggressiveLimitParams(total_timeout_seconds=Decimal("3"), attempt_timeout_seconds=Decimal("0.3"), max_retries=3)
    return new_intent(strategy="aggressive_limit", qty=Decimal("0.02"), params=params)


async def stored(r: Running, intent_id: str) -> list[Any]:
    async with aclosing(read_stream(r.bus, f"exec.*.*.*.{intent_id}")) as records:
        return [x async for x in records]


def kinds(records: list[Any], kind: type) -> list[Any]:
    return [m for m in (x.message() for x in records) if isinstance(m, kind)]


# -- in the browser --------------------------------------------------------------------------------------


@in_module_loop
async def test_the_board_shows_a_new_execution_live_and_its_page_draws_it_as_it_happens(
    served: Running, browser: Any
) -> None:
    from playwright.async_api import expect

    web = served.system.web

    earlier = await execute(served.bus, new_intent(side="sell", qty=Decimal("0.3")), timeout=10)  # a market sell
    assert isinstance(earlier, ExecutionCompleted) and earlier.status == "filled"
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    board = await context.new_page()
    await board.goto(web.url + "/")
    await expect(board.locator("#conn")).to_have_attribute("data-state", "live", timeout=DOM_TIMEOUT_MS)
    await expect(board.locator(f'#finished tr[data-intent="{earlier.intent_id}"]')).to_have_count(1)

    intent = escalating()
    # Its page is open before the intent exists: everything it draws arrives live.
    page = await context.new_page()
    await page.goto(f"{web.url}/executions/{intent.intent_id}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=DOM_TIMEOUT_MS)
    await expect(page.locator("#missing")).to_be_visible()

    resting = new_intent(strategy="simple_limit", qty=Decimal("0.05"),
                         params=SimpleLimitParams(price_offset_pct=Decimal("1"), timeout_seconds=Decimal("20")))
    waiting = asyncio.ensure_future(execute(served.bus, resting, timeout=30))  # stays in flight: the board's top
    running = asyncio.ensure_future(execute(served.bus, intent, timeout=20))
    try:
        await check_board_and_page(served, board, page, intent.intent_id, resting.intent_id, running)
    finally:
        running.cancel()
        waiting.cancel()
        await context.close()


async def check_board_and_page(r: Running, board: Any, page: Any, intent_id: str, resting_id: str,
                               running: asyncio.Future[Any]) -> None:
    from playwright.async_api import expect

    await expect(board.locator(f'#inflight tr[data-intent="{intent_id}"]')).to_have_count(1, timeout=DOM_TIMEOUT_MS)
    status = board.locator(f'#finished tr[data-intent="{intent_id}"] td[data-status]')
    await expect(status).to_have_attribute("data-status", "filled", timeout=DOM_TIMEOUT_MS)
    report = await asyncio.wait_for(running, 10)
    assert isinstance(report, ExecutionCompleted) and report.status == "filled" and report.attempts == 3
    await expect(board.locator(f'#inflight tr[data-intent="{intent_id}"]')).to_have_count(0)
    await expect(board.locator(f'#inflight tr[data-intent="{resting_id}"] td[data-status]')).to_have_attribute(
        "data-status", "working")
    records = await stored(r, intent_id)
    fills, orders = kinds(records, OrderFilled), kinds(records, PlaceOrder)
    timeouts = kinds(records, AttemptTimedOut)
    assert fills and timeouts
    await expect(board.locator(f'#tape tr[data-intent="{intent_id}"]')).to_have_count(len(fills))
    cell = board.locator(f'#finished tr[data-intent="{intent_id}"] td[data-field="filled"]')
    await expect(cell).to_have_text(str(report.filled_qty))  # the decimal string as the message carries it
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await board.screenshot(path=str(SCREENSHOTS / "page.png"), full_page=True)

    # The execution's own page drew it all from live events: an order per attempt, its fills, the timeouts.
    await expect(page.locator("#facts dd[data-status]")).to_have_attribute("data-status", "filled", timeout=DOM_TIMEOUT_MS)
    chart = page.locator("#chart")
    await expect(chart.locator('[data-kind="order"]')).to_have_count(len(orders))
    await expect(chart.locator('[data-kind="fill"]')).to_have_count(len(fills))
    await expect(chart.locator('[data-kind="event"][data-event="timeout"]')).to_have_count(len(timeouts))
    await expect(chart.locator('[data-kind="event"][data-event="done"]')).to_have_count(1)
    await expect(chart.locator('[data-kind="bid"]')).to_have_count(1)
    await expect(chart.locator('[data-kind="ask"]')).to_have_count(1)
    await expect(page.locator("#timeline tbody tr")).to_have_count(len(records))
    await expect(page.locator("#missing")).to_be_hidden()
    await page.screenshot(path=str(SCREENSHOTS / "execution.png"), full_page=True)

    # And the board's link opens the same page.
    await board.click(f'#finished tr[data-intent="{intent_id}"] a.intent')
    await expect(board).to_have_url(re.compile(f"/executions/{intent_id}$"))
    await expect(board.locator('#chart [data-kind="order"]')).to_have_count(len(orders), timeout=DOM_TIMEOUT_MS)


@in_module_loop
async def test_an_earlier_execution_opens_by_id_after_the_web_server_restarts(stepped: Running, browser: Any) -> None:
    from playwright.async_api import expect

    first = await WebServer(nats_url=stepped.system.url, port=0).start()
    try:
        report = await execute(stepped.bus, escalating(), timeout=20)
        assert isinstance(report, ExecutionCompleted) and report.status == "filled"
    finally:
        await first.stop()
    # A new server that reads nothing back for its board: the execution's page comes from the stream alone.
    second = await WebServer(nats_url=stepped.system.url, port=0, lookback_s=0).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(second.url + "/api/board") as resp:
                assert (await resp.json())["finished"] == []
        records = await stored(stepped, report.intent_id)
        page = await browser.new_page()
        await page.goto(f"{second.url}/executions/{report.intent_id}")
        await expect(page.locator("#facts dd[data-status]")).to_have_attribute("data-status", "filled",
                                                                               timeout=DOM_TIMEOUT_MS)
        await expect(page.locator('#chart [data-kind="order"]')).to_have_count(len(kinds(records, PlaceOrder)))
        await expect(page.locator('#chart [data-kind="fill"]')).to_have_count(len(kinds(records, OrderFilled)))
        await expect(page.locator("#timeline tbody tr")).to_have_count(len(records))
        await expect(page.locator("#title")).to_contain_text(report.intent_id)
    finally:
        await second.stop()


# -- the HTTP API ----------------------------------------------------------------------------------------


@in_module_loop
async def test_the_execution_api_serves_the_log_and_says_404_for_an_unknown_id(served: Running) -> None:
    web = served.system.web
    report = await execute(served.bus, escalating(), timeout=20)
    assert isinstance(report, ExecutionCompleted)
    records = await stored(served, report.intent_id)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web.url}/api/executions/{report.intent_id}") as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.get(web.url + "/api/executions/no-such-intent") as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
            assert "unknown execution 'no-such-intent'" in error and "nothing is logged" in error
        async with http.get(web.url + "/api/executions/not.an*id") as resp:
            assert resp.status == 404 and "not an intent id" in (await resp.json())["error"]
        async with http.get(web.url + "/executions/no-such-intent") as resp:  # the page says so itself, live
            assert resp.status == 200 and 'id="missing"' in await resp.text()
        async with http.get(web.url + "/static/nope.js") as resp:
            assert resp.status == 404
        async with http.get(web.url + "/static/chart.js") as resp:
            assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]
    assert [r["seq"] for r in body["records"]] == [r.seq for r in records]
    assert body["records"][-1]["type"] == "ExecutionCompleted"
    assert body["row"]["status"] == "filled" and body["row"]["filled"] == str(report.filled_qty)
    picture = body["picture"]
    assert len(picture["orders"]) == len(kinds(records, PlaceOrder)) and picture["info"]["status"] == "filled"
    assert all(isinstance(o["price"], str) for o in picture["orders"])  # decimal strings, never floats


async def _sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    event, data = "message", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


@in_module_loop
async def test_events_deliver_each_new_record_and_the_board_changes(served: Running) -> None:
    web = served.system.web
    other, wanted = new_intent(), new_intent(qty=Decimal("0.02"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{web.url}/api/events?intent={wanted.intent_id}") as one, \
                http.get(f"{web.url}/api/events?board=1&records=0") as board:
            assert one.status == 200 and one.headers["Content-Type"].startswith("text/event-stream")
            assert (await asyncio.wait_for(one.content.readline(), 5)).startswith(b": connected")
            board_events = _sse_events(board)
            event, snap = await asyncio.wait_for(anext(board_events), 5)
            assert event == "snapshot" and set(snap) >= {"in_flight", "finished", "fills", "as_of_ns"}
            await execute(served.bus, other, timeout=10)
            await execute(served.bus, wanted, timeout=10)

            async def until_report() -> list[dict[str, Any]]:
                seen = []
                async for name, data in _sse_events(one):
                    assert name == "record"
                    seen.append(data)
                    if data["type"] == "ExecutionCompleted":
                        return seen
                raise AssertionError("stream ended")

            async def until_finished() -> tuple[list[str], list[dict[str, Any]]]:
                names, fills = [], []
                async for name, data in board_events:
                    names.append(name)
                    if name == "fill":
                        fills.append(data)
                    if name == "row" and data["intent_id"] == wanted.intent_id and data["phase"] == "finished":
                        return names, fills
                raise AssertionError("stream ended")

            got = await asyncio.wait_for(until_report(), 10)
            names, fills = await asyncio.wait_for(until_finished(), 10)
    assert {r["intent_id"] for r in got} == {wanted.intent_id}
    assert [r["seq"] for r in got] == [r.seq for r in await stored(served, wanted.intent_id)]
    assert got[0]["type"] == "SubmitIntent" and got[0]["data"]["qty"] == "0.02"
    assert "record" not in names and {f["intent_id"] for f in fills} == {other.intent_id, wanted.intent_id}


def test_the_pages_load_nothing_from_the_internet() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), f"{path.name} loads from the internet"
        assert not re.search(r"""(import|fetch)\s*\(\s*["']https?://""", text), path.name


# -- the commands ----------------------------------------------------------------------------------------


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "EXECBUS_LOG_LEVEL": "warning"}
    env.pop("NATS_URL", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.ops.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env=env,
    )


async def _url_line(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> str:
    assert proc.stdout is not None

    async def read() -> str:
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("exited before printing its web address: " + (await proc.stderr.read()).decode())
            found = re.search(r"http://[\d.]+:\d+", line)
            if found:
                return found.group(0)

    return await asyncio.wait_for(read(), timeout)


async def _terminate(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.communicate(), 8)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("still running 8 s after SIGTERM") from None
    assert proc.returncode is not None
    return proc.returncode


@in_module_loop
async def test_execbus_web_serves_a_running_system_and_stops_on_sigterm(stepped: Running) -> None:
    proc = await _spawn("web", "--nats", stepped.system.url, "--http", "0")
    try:
        url = await _url_line(proc)
        report = await execute(stepped.bus, new_intent(), timeout=10)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/executions/{report.intent_id}") as resp:
                assert resp.status == 200 and (await resp.json())["row"]["status"] == "filled"
    finally:
        code = await _terminate(proc)
    assert code == 0


@in_module_loop
async def test_execbus_up_with_http_serves_the_page_beside_the_system(tmp_path: Path) -> None:
    proc = await _spawn("up", "--port", "-1", "--http", "0", "--store", str(tmp_path / "store"))
    try:
        url = await _url_line(proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/") as resp:
                assert resp.status == 200 and "Fill tape" in await resp.text()
            async with http.get(url + "/api/board") as resp:
                assert resp.status == 200 and (await resp.json())["in_flight"] == []
    finally:
        code = await _terminate(proc)
    assert code == 0
