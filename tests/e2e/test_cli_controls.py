"""Operator control from the command line, on a real nats-server: `halt`, `reduce`, `resume`, `state`,
`risk set|show` and `cancel`. The CLI runs in-process (`cli.main` in a worker thread, with its own event loop,
as a process would) while the test's own bus checks what it wrote: the controls bucket and the EXEC log.

No supervisor runs here: `cancel` is answered by a responder written in the test, or by nobody (the timeout).
Every wait is on a condition; the only time bound is the CLI's own `--timeout`."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from bus.ops import cli
from bus.bus import Bus
from bus.controls import ControlStore
from bus.ops.replay import read_stream
from bus.server import EmbeddedNats
from messages import (
    CancelIntent,
    CancelIntentAccepted,
    CancelIntentRejected,
    ExecutionCompleted,
    Message,
    TradingStateChanged,
)
from messages.base import routing
from messages.controls import RiskLimits
from tests.helpers import new_intent


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, name="test-cli-controls")
    try:
        yield b
    finally:
        await b.close()


def controls_of(bus: Bus) -> ControlStore:
    """The controls bucket, read fresh each time (no watch to stop)."""
    return ControlStore(bus.buckets.controls, bus.acks)


class Run(msgspec.Struct):
    code: int
    out: str
    err: str


async def run_cli(capsys: pytest.CaptureFixture[str], server: EmbeddedNats | None, *argv: str) -> Run:
    """`execbus ARGV --nats URL` in a worker thread (the CLI runs its own event loop, as a process would)."""
    capsys.readouterr()  # drop whatever came before
    args = [*argv, "--nats", server.url] if server is not None else list(argv)
    try:
        code = await asyncio.to_thread(cli.main, args)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


async def logged(bus: Bus, kind: type[Message]) -> list[Any]:
    """Every message of `kind` in the EXEC stream, oldest first."""
    return [r.message() async for r in read_stream(bus, f"exec.{kind.kind}.>")]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- trading states ---------------------------------------------------------------------------------------


async def test_halt_then_state_then_resume_round_trip(capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats,
                                                      bus: Bus) -> None:
    halted = await run_cli(capsys, nats_server, "halt", "--reason", "exchange maintenance")
    assert halted.code == cli.EXIT_OK, halted.err
    assert "all venues: ACTIVE -> HALTED (exchange maintenance)" in halted.out

    trading = await controls_of(bus).trading()
    assert [(s.venue, s.symbol, s.state, s.reason) for s in trading.scopes] == [("", "", "HALTED", "exchange maintenance")]
    assert "@" in trading.scopes[0].by and not trading.scopes[0].cancel_working

    shown = await run_cli(capsys, nats_server, "state")
    assert shown.code == cli.EXIT_OK, shown.err
    line = shown.out.strip()
    assert line.startswith("all venues: HALTED") and "reason: exchange maintenance" in line, line
    assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line) and f"by {trading.scopes[0].by}" in line, line

    as_json = await run_cli(capsys, nats_server, "state", "--json")
    [scope] = json.loads(as_json.out)["scopes"]
    assert scope["scope"] == "all venues" and scope["state"] == "HALTED" and scope["cancel_working"] is False
    assert scope["reason"] == "exchange maintenance" and scope["changed"].endswith("Z")

    resumed = await run_cli(capsys, nats_server, "resume", "--reason", "back")
    assert resumed.code == cli.EXIT_OK, resumed.err
    assert "all venues: HALTED -> ACTIVE (back)" in resumed.out
    assert (await controls_of(bus).trading()).scopes == ()
    assert (await run_cli(capsys, nats_server, "state")).out.strip() == "all ACTIVE"
    assert json.loads((await run_cli(capsys, nats_server, "state", "--json")).out) == {"scopes": []}

    changes = await logged(bus, TradingStateChanged)
    assert [(c.scope_venue, c.previous, c.state, c.reason) for c in changes] == [
        ("", "ACTIVE", "HALTED", "exchange maintenance"), ("", "HALTED", "ACTIVE", "back")]
    assert all("@" in c.by for c in changes)


async def test_halt_of_one_venue_and_symbol_with_cancel_working_and_reduce_of_a_venue(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    halted = await run_cli(capsys, nats_server, "halt", "--venue", "paper", "--symbol", "BTC/USDT", "--cancel-working")
    assert halted.code == cli.EXIT_OK, halted.err
    assert "paper BTC/USDT: ACTIVE -> HALTED" in halted.out and "cancel" in halted.out
    reduced = await run_cli(capsys, nats_server, "reduce", "--venue", "binance", "--reason", "inventory")
    assert reduced.code == cli.EXIT_OK, reduced.err
    assert "binance: ACTIVE -> REDUCING (inventory)" in reduced.out

    trading = await controls_of(bus).trading()
    scope = trading.find("paper", "BTC/USDT")
    assert scope is not None and scope.state == "HALTED" and scope.cancel_working
    assert trading.effective("paper", "ETH/USDT") is None  # only that symbol
    assert trading.effective("binance", "ETH/USDT").state == "REDUCING"  # type: ignore[union-attr]

    lines = (await run_cli(capsys, nats_server, "state")).out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("binance: REDUCING") and "reason: inventory" in lines[0]
    assert lines[1].startswith("paper BTC/USDT: HALTED") and "cancel working" in lines[1]

    [event] = [c for c in await logged(bus, TradingStateChanged) if c.scope_venue == "paper"]
    assert (event.venue, event.symbol, event.scope_symbol, event.cancel_working) == ("paper", "BTC/USDT", "BTC/USDT", True)

    # Halting it again without --cancel-working does not take the cancel back.
    again = await run_cli(capsys, nats_server, "halt", "--venue", "paper", "--symbol", "BTC/USDT")
    assert again.code == cli.EXIT_OK and again.out.strip() == "paper BTC/USDT: already HALTED (canceling working intents)"
    assert (await controls_of(bus).trading()).find("paper", "BTC/USDT").cancel_working  # type: ignore[union-attr]


async def test_halt_twice_is_harmless_and_resume_under_a_wider_halt_says_it_still_holds(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    assert (await run_cli(capsys, nats_server, "halt", "--venue", "paper")).code == cli.EXIT_OK
    again = await run_cli(capsys, nats_server, "halt", "--venue", "paper")
    assert again.code == cli.EXIT_OK, again.err
    assert again.out.strip() == "paper: already HALTED"
    assert len(await logged(bus, TradingStateChanged)) == 1

    assert (await run_cli(capsys, nats_server, "halt", "--reason", "incident")).code == cli.EXIT_OK
    resumed = await run_cli(capsys, nats_server, "resume", "--venue", "paper")
    assert resumed.code == cli.EXIT_OK, resumed.err
    assert "paper: HALTED -> ACTIVE" in resumed.out
    assert "note: paper is still HALTED by the all venues scope (incident); `execbus resume` lifts that" in resumed.out
    assert (await run_cli(capsys, nats_server, "resume", "--venue", "paper")).out.startswith("paper: already ACTIVE")
    assert [s.venue for s in (await controls_of(bus).trading()).scopes] == [""]


@pytest.mark.parametrize("argv, message", [
    (["halt", "--symbol", "BTC/USDT"], "--symbol needs --venue"),
    (["halt", "--venue", "nosuchexchange"], "unknown scope: no venue 'nosuchexchange'"),
    (["reduce", "--venue", "Paper!"], "unknown scope: no venue 'Paper!'"),
    (["halt", "--venue", "paper", "--symbol", "BTCUSDT"], "unknown scope: 'BTCUSDT' is not a symbol"),
    (["resume", "--venue", "paper", "--symbol", "BTC/USDT/X"], "is not a symbol"),
], ids=["symbol-without-venue", "unknown-venue", "bad-venue-id", "bad-symbol", "bad-symbol-resume"])
async def test_a_bad_scope_is_a_usage_error_that_changes_nothing(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    controls = controls_of(bus)
    await controls.set_trading(bus.publish, venue="binance", state="REDUCING", reason="before")
    before = await controls.trading()

    run = await run_cli(capsys, nats_server, *argv)

    assert run.code == cli.EXIT_USAGE
    assert message in run.err and "nothing changed" in run.err and run.err.count("\n") == 1, run.err
    assert run.out == ""
    assert await controls.trading() == before
    assert len(await logged(bus, TradingStateChanged)) == 1


async def test_a_usage_error_from_argparse_exits_usage_not_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    run = await run_cli(capsys, None, "halt", "--no-such-flag")
    assert run.code == cli.EXIT_USAGE != cli.EXIT_REJECTED
    assert "unrecognized arguments" in run.err


async def test_a_server_that_cannot_be_reached_fails_within_the_connect_bound(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "CONNECT_TIMEOUT_S", 0.5)
    url = f"nats://127.0.0.1:{_closed_port()}"
    run = await run_cli(capsys, None, "halt", "--nats", url)
    assert run.code == cli.EXIT_FAILED
    assert f"cannot reach NATS at {url}" in run.err and "nothing changed" in run.err


# -- risk limits ------------------------------------------------------------------------------------------


async def test_risk_set_and_show_round_trip(capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    fields = [f.name for f in msgspec.structs.fields(RiskLimits)]
    shown = await run_cli(capsys, nats_server, "risk", "show")
    assert shown.code == cli.EXIT_OK, shown.err
    lines = shown.out.strip().splitlines()
    assert [line.split()[0] for line in lines] == fields
    assert all(line.endswith("(default)") for line in lines), lines

    changed = await run_cli(capsys, nats_server, "risk", "set", "max_orders_per_second", "20")
    assert changed.code == cli.EXIT_OK, changed.err
    assert changed.out.strip() == "max_orders_per_second: 10 -> 20"
    off = await run_cli(capsys, nats_server, "risk", "set", "balance_check", "off")
    assert off.out.strip() == "balance_check: on -> off"
    notional = await run_cli(capsys, nats_server, "risk", "set", "max_intent_notional", "5000.5")
    assert notional.out.strip() == "max_intent_notional: 100000 -> 5000.5"
    same = await run_cli(capsys, nats_server, "risk", "set", "max_intent_notional", "5000.5")
    assert same.code == cli.EXIT_OK and same.out.strip() == "max_intent_notional: 5000.5 (unchanged)"

    limits = await controls_of(bus).limits(fresh=True)
    assert (limits.max_orders_per_second, limits.balance_check, limits.max_intent_notional) == (20, False, Decimal("5000.5"))

    rows = {line.split()[0]: line for line in (await run_cli(capsys, nats_server, "risk", "show")).out.strip().splitlines()}
    assert rows["max_orders_per_second"].split()[1] == "20" and "(default)" not in rows["max_orders_per_second"]
    assert rows["balance_check"].split()[1] == "off" and "(default)" not in rows["balance_check"]
    assert rows["max_open_notional"].endswith("(default)")

    as_json = json.loads((await run_cli(capsys, nats_server, "risk", "show", "--json")).out)
    assert list(as_json) == fields
    assert as_json["max_orders_per_second"] == {"value": 20, "default": False}
    assert as_json["balance_check"] == {"value": False, "default": False}
    assert as_json["max_intent_notional"] == {"value": "5000.5", "default": False}
    assert as_json["max_open_notional"] == {"value": "250000", "default": True}


@pytest.mark.parametrize("key, value, message", [
    ("max_orders", "5", "unknown risk limit 'max_orders'"),
    ("max_orders_per_second", "abc", "max_orders_per_second is a whole number, got 'abc'"),
    ("max_orders_per_second", "-1", "max_orders_per_second must be >= 1, got -1"),
    ("max_orders_per_second", "0", "max_orders_per_second must be >= 1, got 0"),
    ("max_orders_per_second", "1.5", "whole number"),
    ("max_intent_notional", "-1", "max_intent_notional must be > 0"),
    ("max_open_notional", "abc", "max_open_notional is a number"),
    ("max_open_notional", "NaN", "finite"),
    ("balance_buffer_pct", "101", "between 0 and 100"),
    ("balance_check", "maybe", "on or off"),
])
async def test_a_bad_risk_limit_is_a_one_line_usage_error_that_changes_nothing(
        key: str, value: str, message: str, capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats,
        bus: Bus) -> None:
    controls = controls_of(bus)
    before = await controls.set_limit("max_orders_per_second", "7")

    run = await run_cli(capsys, nats_server, "risk", "set", key, value)

    assert run.code == cli.EXIT_USAGE
    assert run.err.startswith("execbus risk set: ") and message in run.err and run.err.count("\n") == 1, run.err
    assert run.out == ""
    assert await controls.limits(fresh=True) == before


# -- cancel -----------------------------------------------------------------------------------------------


async def test_cancel_of_an_intent_the_log_does_not_have_is_rejected_and_sends_nothing(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    await bus.publish(new_intent(intent_id="someone-else"))  # the log is not empty, just without this one

    run = await run_cli(capsys, nats_server, "cancel", "never-submitted", "--timeout", "1")

    assert run.code == cli.EXIT_REJECTED
    assert "unknown intent ID never-submitted" in run.err and "nothing sent" in run.err, run.err
    assert await logged(bus, CancelIntent) == []


@pytest.mark.parametrize("bad", ["has space", "a.b", "x" * 65, "with/slash", ""])
async def test_cancel_of_a_string_that_is_no_intent_id_is_rejected(
        bad: str, capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    run = await run_cli(capsys, nats_server, "cancel", bad)
    assert run.code == cli.EXIT_REJECTED
    assert f"unknown intent ID {bad!r}: not an intent id" in run.err, run.err
    assert await logged(bus, CancelIntent) == []


async def test_cancel_with_no_supervisor_running_is_logged_once_and_times_out_saying_so(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    intent = new_intent(symbol="ETH/USDT")
    await bus.publish(intent)

    run = await run_cli(capsys, nats_server, "cancel", intent.intent_id, "--timeout", "1", "--reason", "fat finger")

    assert run.code == cli.EXIT_TIMEOUT, run.err
    assert f"no answer for {intent.intent_id} within 1 s" in run.err
    assert "in the log and will be acted on when a supervisor runs" in run.err
    [cancel] = await logged(bus, CancelIntent)
    assert (cancel.intent_id, cancel.venue, cancel.symbol, cancel.reason) == (intent.intent_id, "paper", "ETH/USDT", "fat finger")
    assert re.fullmatch(r"[0-9a-f]{16}", cancel.request) and f"request {cancel.request}" in run.err
    assert "@" in cancel.requested_by


class Responder:
    """Answers every `CancelIntent` like a supervisor would, on the bus: accepted (with `phase`) or rejected,
    and with `report` the final report after an acceptance."""

    def __init__(self, bus: Bus, *, reject: str | None = None, report: bool = False) -> None:
        self.bus = bus
        self.reject = reject
        self.report = report
        self.seen: list[CancelIntent] = []

    async def start(self) -> Responder:
        await self.bus.subscribe("exec.cancel_intent.>", self._answer)
        await self.bus.nc.flush()
        return self

    async def _answer(self, msg: Message) -> None:
        assert isinstance(msg, CancelIntent)
        self.seen.append(msg)
        if self.reject:
            await self.bus.publish(CancelIntentRejected(**routing(msg), request=msg.request, reason=self.reject,
                                                        status="finished"))
            return
        await self.bus.publish(CancelIntentAccepted(**routing(msg), request=msg.request, phase="working"))
        if self.report:
            await self.bus.publish(_report(msg))


def _report(msg: Message) -> ExecutionCompleted:
    return ExecutionCompleted(
        **routing(msg), status="canceled", side="buy", strategy="simple_limit", qty=Decimal("0.01"),
        filled_qty=Decimal("0.004"), avg_price=Decimal("100"), notional=Decimal("0.4"), fees=Decimal(0),
        fee_currency="USDT", arrival_mid=Decimal("100"), slippage_bps=Decimal(0), attempts=1, fallback_used=False,
        fills=1, orders=(f"{msg.intent_id}-1",), reason="canceled by operator", started_ns=1, completed_ns=2,
        duration_ms=Decimal("1.0"),
    )


async def test_cancel_accepted_by_the_supervisor_prints_the_phase(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    intent = new_intent(venue="paper", symbol="BTC/USDT")
    await bus.publish(intent)
    responder = await Responder(bus).start()

    run = await run_cli(capsys, nats_server, "cancel", intent.intent_id, "--reason", "desk asked")

    assert run.code == cli.EXIT_OK, run.err
    [asked] = responder.seen
    assert (asked.venue, asked.symbol, asked.reason) == ("paper", "BTC/USDT", "desk asked")
    assert run.out.strip() == f"cancel of {intent.intent_id} accepted (request {asked.request}): phase working"


async def test_cancel_wait_prints_the_report_and_json_prints_both_messages(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    intent = new_intent()
    await bus.publish(intent)
    await Responder(bus, report=True).start()

    waited = await run_cli(capsys, nats_server, "cancel", intent.intent_id, "--wait")
    assert waited.code == cli.EXIT_OK, waited.err
    assert "phase working" in waited.out
    assert f"{intent.intent_id}: canceled buy 0.004/0.01 BTC/USDT on paper" in waited.out
    assert "reason: canceled by operator" in waited.out

    as_json = await run_cli(capsys, nats_server, "cancel", intent.intent_id, "--wait", "--json")
    assert as_json.code == cli.EXIT_OK, as_json.err
    answer, report = [json.loads(line) for line in as_json.out.strip().splitlines()]
    assert answer["type"] == "CancelIntentAccepted" and answer["phase"] == "working"
    assert report["type"] == "ExecutionCompleted" and report["status"] == "canceled"
    assert len(await logged(bus, CancelIntent)) == 2  # two requests, two cancels: each its own request id


async def test_cancel_rejected_by_the_supervisor_says_why(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    intent = new_intent()
    await bus.publish(intent)
    await Responder(bus, reject="the intent finished already (filled)").start()

    run = await run_cli(capsys, nats_server, "cancel", intent.intent_id)

    assert run.code == cli.EXIT_REJECTED
    assert f"rejected for {intent.intent_id} (finished): the intent finished already (filled)" in run.err, run.err


async def test_cancel_ignores_an_answer_to_another_request(
        capsys: pytest.CaptureFixture[str], nats_server: EmbeddedNats, bus: Bus) -> None:
    """An answer to someone else's cancel of the same intent is not ours: only the one carrying our request
    ends the wait."""
    intent = new_intent()
    await bus.publish(intent)

    async def answer_twice(msg: Message) -> None:
        assert isinstance(msg, CancelIntent)
        await bus.publish(CancelIntentRejected(**routing(intent), request="someone-else", reason="not you",
                                               status="finished"))
        await bus.publish(CancelIntentAccepted(**routing(intent), request=msg.request, phase="pricing", already=True))

    await bus.subscribe("exec.cancel_intent.>", answer_twice)
    await bus.nc.flush()

    run = await run_cli(capsys, nats_server, "cancel", intent.intent_id)

    assert run.code == cli.EXIT_OK, run.err
    assert "phase pricing; it was being canceled already" in run.out

