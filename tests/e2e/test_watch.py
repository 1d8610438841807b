"""`execbus watch` against a running system: the live view in a pseudo-terminal shows the intents, their
fills and their reports, and keeps showing what happens after it started; `--once --json` is the board as data,
the same numbers as the intents' reports. An unreachable server is one line and exit 1; SIGTERM/SIGINT end the
live view cleanly.

Every wait is on a condition (a pattern on the screen, the process exiting), each with a bound."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bus.bus import Bus
from bus.control import ControlService
from bus.ops.board import BoardSnapshot
from bus.ops.watch import ACTOR_KINDS, HealthPoller
from bus.server import EmbeddedNats
from bus.ops.client import execute
from messages import CancelIntent, ExecutionCompleted, OrderFilled, OrderPlaced, PlaceOrder, PriceQuoted, SimpleLimitParams
from tests.e2e.conftest import Running
from tests.helpers import fast_settings, new_intent

ROOT = Path(__file__).resolve().parents[2]
COLS, ROWS = 200, 70
SCREEN_TIMEOUT_S = 30.0
STOP_BOUND_S = 5.0

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def _env() -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm", "COLUMNS": str(COLS), "LINES": str(ROWS)}
    for name in ("NATS_URL", "NO_COLOR", "FORCE_COLOR", "TERM_PROGRAM", "EXECBUS_LOG_LEVEL"):
        env.pop(name, None)
    return env


def _num(value: Decimal) -> str:
    """A price as the view prints it (no trailing zeros)."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class Terminal:
    """`execbus watch ...` in a pseudo-terminal of COLS x ROWS; `expect` reads the screen until a condition."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.eof = False
        self._changed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self._master = -1

    async def start(self, *args: str) -> Terminal:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self._master = master
        os.set_blocking(master, False)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bus.ops.cli", "watch", *args,
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=_env(), start_new_session=True,
        )
        os.close(slave)
        asyncio.get_running_loop().add_reader(master, self._read)
        return self

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the child closed its side
            data = b""
        if not data:
            self.eof = True
            asyncio.get_running_loop().remove_reader(self._master)
        self.raw += data
        self._changed.set()

    @property
    def text(self) -> str:
        return _ANSI.sub("", self.raw.decode("utf-8", errors="replace")).replace("\r", "")

    def lines(self) -> list[str]:
        return self.text.split("\n")

    async def expect(self, what: str, condition: Callable[[list[str]], Any], timeout: float = SCREEN_TIMEOUT_S) -> Any:
        """Wait until `condition(lines)` (every line drawn so far) is truthy; fail with the last screen."""
        deadline = time.monotonic() + timeout
        while True:
            found = condition(self.lines())
            if found:
                return found
            if self.eof:
                raise AssertionError(f"watch ended before {what}; output:\n{self.text[-6000:]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout} s; last output:\n{self.text[-6000:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_BOUND_S)
        except TimeoutError:
            raise AssertionError(f"watch still running {STOP_BOUND_S} s after {signal.Signals(sig).name}") from None
        return self.proc.returncode or 0, time.monotonic() - t0

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._master >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = -1


def _row(intent_id: str, *patterns: str) -> Callable[[list[str]], str | None]:
    """A drawn line with the intent id and every pattern (regular expressions)."""
    def find(lines: list[str]) -> str | None:
        for line in reversed(lines):
            if intent_id in line and all(re.search(p, line) for p in patterns):
                return line
        return None
    return find


async def _run(*args: str, timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.ops.cli", "watch", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"execbus watch {' '.join(args)} still running after {timeout} s") from None
    return proc.returncode or 0, out, err


async def _execute_market(running: Running, qty: str = "0.01", side: str = "buy") -> ExecutionCompleted:
    report = await execute(running.bus, new_intent(qty=Decimal(qty), side=side), timeout=30.0)
    assert isinstance(report, ExecutionCompleted) and report.status == "filled", report
    return report


async def test_the_live_view_shows_history_then_what_happens_and_stops_on_sigterm(running: Running) -> None:
    before = [await _execute_market(running), await _execute_market(running, "0.02", "sell")]
    term = await Terminal().start("--nats", running.system.url)
    try:
        # History: both executions finished, with a filled status, and their fills on the tape.
        for report in before:
            await term.expect(f"{report.intent_id} finished", _row(
                report.intent_id, r"\bfilled\b", re.escape(f"{_num(report.filled_qty)} / {_num(report.qty)}"),
                re.escape(_num(report.avg_price or Decimal(0)))))
            for fill in running.recorder.of(OrderFilled, report.intent_id):
                await term.expect(f"the fill of {report.intent_id} at {fill.price}", _row(
                    report.intent_id, r"\b(maker|taker)\b", re.escape(_num(fill.price))))
        # The control plane: every actor kind of the system answers.
        for actor in running.system.hosts:
            await term.expect(f"{actor}'s health", lambda lines, a=actor: any(
                re.search(rf"● {a}\s+1 replica\b", line) for line in lines))

        # Live: an intent submitted now appears, fills and finishes on the screen.
        live = await _execute_market(running, "0.03")
        await term.expect(f"{live.intent_id} finished", _row(
            live.intent_id, r"\bfilled\b", re.escape(_num(live.avg_price or Decimal(0))), r"bps"))
        fills = running.recorder.of(OrderFilled, live.intent_id)
        assert fills
        await term.expect(f"the live fill at {fills[0].price}", _row(
            live.intent_id, r"\b(maker|taker)\b", re.escape(_num(fills[0].price))))
        header = await term.expect("the header", lambda lines: next(
            (line for line in reversed(lines) if "execbus watch" in line and "3 finished" in line), None))
        assert running.system.url in header and "0 in flight" in header

        code, took = await term.stop(signal.SIGTERM)
        assert code == 0 and took < STOP_BOUND_S, term.text[-3000:]
        assert "Traceback" not in term.text
    finally:
        await term.close()


async def test_an_execution_in_flight_shows_its_working_price_against_the_touch_then_its_cancel(
        stepped: Running) -> None:
    """A resting limit order on a frozen market: in flight, working at our price below the touch, budget ticking;
    then canceled, and finished as canceled."""
    intent = new_intent(strategy="simple_limit",
                        params=SimpleLimitParams(price_offset_pct=Decimal("1"), timeout_seconds=Decimal("120")))
    await stepped.bus.publish(intent)
    (order,) = await stepped.recorder.wait_for(PlaceOrder, intent.intent_id)
    quote = (await stepped.recorder.wait_for(PriceQuoted, intent.intent_id))[-1]  # (the market is frozen)
    await stepped.recorder.wait_for(OrderPlaced, intent.intent_id)
    assert order.price is not None and order.price < quote.bid
    term = await Terminal().start("--nats", stepped.system.url, "--venue", "paper", "--symbol", "BTC/USDT")
    try:
        line = await term.expect(f"{intent.intent_id} in flight", _row(
            intent.intent_id, r"\bsimple_limit\b", r"\bworking\b", re.escape("0 / 0.01"), r"\b0%",
            re.escape(_num(order.price)), re.escape(f"{_num(quote.bid)} / {_num(quote.ask)}"), r"\b1m\d\ds\b"))
        assert "buy" in line and "venue=paper symbol=BTC/USDT" in term.text

        await stepped.bus.publish(CancelIntent(
            intent_id=intent.intent_id, venue=intent.venue, symbol=intent.symbol, request="watch-test",
            reason="test", requested_by="test", ts_event=time.time_ns()))
        (report,) = await stepped.recorder.wait_for(ExecutionCompleted, intent.intent_id, timeout=30.0)
        assert report.status == "canceled"
        await term.expect(f"{intent.intent_id} canceled", _row(intent.intent_id, r"\bcanceled\b", re.escape("0 / 0.01")))
        await term.expect("nothing in flight", lambda lines: any("nothing in flight" in line for line in lines[-40:]))
        code, _took = await term.stop()
        assert code == 0
    finally:
        await term.close()


async def test_the_live_view_stops_cleanly_on_sigint(running: Running) -> None:
    term = await Terminal().start("--nats", running.system.url, "--since", "0")
    try:
        await term.expect("the empty board", lambda lines: any("nothing in flight" in line for line in lines))
        code, _took = await term.stop(signal.SIGINT)
        assert code == 0 and "Traceback" not in term.text, term.text[-3000:]
    finally:
        await term.close()


async def test_once_json_is_the_board_with_the_numbers_of_the_reports(running: Running) -> None:
    reports = [await _execute_market(running), await _execute_market(running, "0.02", "sell"),
               await _execute_market(running, "0.015")]
    code, out, err = await _run("--nats", running.system.url, "--once", "--json")
    assert code == 0, err.decode()
    assert out.count(b"\n") == 1 and out.strip().startswith(b"{")
    assert b'"filled":"' in out  # Decimals as strings
    snapshot = msgspec.json.decode(out, type=BoardSnapshot)
    assert snapshot.in_flight == []
    rows = {row.intent_id: row for row in snapshot.finished}
    assert set(rows) == {r.intent_id for r in reports}
    for report in reports:
        row = rows[report.intent_id]
        assert (row.phase, row.status, row.side, row.qty, row.strategy) == (
            "finished", report.status, report.side, report.qty, report.strategy)
        assert (row.filled, row.notional, row.avg_price, row.slippage_bps) == (
            report.filled_qty, report.notional, report.avg_price, report.slippage_bps)
        assert (row.fees, row.fee_currency, row.fill_count, row.arrival_mid) == (
            report.fees, report.fee_currency, report.fills, report.arrival_mid)
        tape = [f for f in snapshot.fills if f.intent_id == report.intent_id]
        assert len(tape) == report.fills and sum((f.qty for f in tape), Decimal(0)) == report.filled_qty
        assert {(f.client_order_id, f.price) for f in tape} == {
            (f.client_order_id, f.price) for f in running.recorder.of(OrderFilled, report.intent_id)}
    # Newest first on both lists.
    assert [r.intent_id for r in snapshot.finished] == [r.intent_id for r in reversed(reports)]
    assert snapshot.fills[0].intent_id == reports[-1].intent_id

    # One intent only.
    code, out, err = await _run("--nats", running.system.url, "--once", "--json", "--intent", reports[1].intent_id)
    assert code == 0, err.decode()
    only = msgspec.json.decode(out, type=BoardSnapshot)
    assert [r.intent_id for r in only.finished] == [reports[1].intent_id]
    assert {f.intent_id for f in only.fills} == {reports[1].intent_id}
    # `--once` alone: the screen, printed once (COLUMNS wide), health included.
    code, out, err = await _run("--nats", running.system.url, "--once")
    assert code == 0, err.decode()
    screen = out.decode().splitlines()
    for report in reports:
        assert _row(report.intent_id, r"\bfilled\b", re.escape(_num(report.avg_price or Decimal(0))))(screen), out.decode()
    assert any(re.search(r"● supervisor\s+1 replica\b", line) for line in screen), out.decode()
    # Nothing from before the window.
    code, out, _ = await _run("--nats", running.system.url, "--once", "--json", "--since", "0")
    assert code == 0 and msgspec.json.decode(out, type=BoardSnapshot).finished == []


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", [["--once", "--json"], []], ids=["once-json", "live"])
async def test_an_unreachable_server_is_one_line_and_exit_1(mode: list[str]) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    code, out, err = await _run("--nats", url, "--connect-timeout", "0.5", *mode, timeout=20.0)
    assert code == 1 and out == b""
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and f"cannot reach NATS at {url}" in lines[0], lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_while_still_connecting_exits_0_at_once(sig: int) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    env = {**_env(), "EXECBUS_LOG_LEVEL": "warning", "EXECBUS_LOG_JSON": "1"}  # (so the failed attempt is logged)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.ops.cli", "watch", "--nats", url, "--connect-timeout", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
    try:
        assert proc.stderr is not None
        # The first failed attempt is logged: it is connecting now, its signal handlers installed before.
        await asyncio.wait_for(proc.stderr.readuntil(b'"nats_error"'), 20.0)
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, _err = await asyncio.wait_for(proc.communicate(), STOP_BOUND_S)
        assert proc.returncode == 0 and out == b"" and time.monotonic() - t0 < STOP_BOUND_S
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_json_without_once_is_a_usage_error() -> None:
    code, out, err = await _run("--json")
    assert code == 64 and out == b"" and "--json needs --once" in err.decode()


async def test_the_health_poller_counts_every_replica_and_says_which_actor_does_not_answer(
        nats_server: EmbeddedNats) -> None:
    """Two replicas of one actor answer (their status endpoints share a queue group: each request reaches one of
    them, so the poller asks until it has heard both); their counters are summed; the actors that are not
    running are `no answer`, and one whose status endpoint breaks is no crash."""
    bus = await Bus.connect(nats_server.url, fast_settings(), name="watch-health-test")
    services = [
        ControlService(bus, "placer", lambda n=n: {"replica": f"placer-{n}", "partitions": [n, n + 2],
                                                   "intents_in_flight": n + 1, "created": 10 * (n + 1), "failed": n})
        for n in range(2)
    ]
    try:
        for service in services:
            await service.start()
        poller = HealthPoller(bus.nc, timeout=2.0)
        health = await poller.poll()
        assert set(health) == set(ACTOR_KINDS)
        placer = health["placer"]
        assert (placer.replicas, placer.reported, placer.partitions, placer.in_flight) == (2, 2, 4, 3)
        assert placer.counters == {"created": 30, "failed": 1}
        assert all(not health[a].answering for a in ACTOR_KINDS if a != "placer")

        await services[1].stop()
        after = await poller.poll()  # (the same poller: what it remembered of the stopped replica goes too)
        assert (after["placer"].replicas, after["placer"].reported, after["placer"].counters["created"]) == (1, 1, 10)
    finally:
        for service in services:
            await service.stop()
        await bus.close()
