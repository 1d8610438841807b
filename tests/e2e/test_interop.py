"""Interoperability: a plain nats-py client, the CLI, `nats micro`-style discovery and the demo."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from decimal import Decimal
from pathlib import Path

from messages import ExecutionCompleted, decode
from tests.e2e.conftest import Running

HERE = Path(__file__).parent


async def _run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=HERE.parent.parent
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_plain_nats_client_submits_json_and_reads_the_execution_as_json(running: Running) -> None:
    source = (HERE / "plain_client.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+(bus|messages|actors|venues)\b", source, re.M)

    code, out, err = await _run(sys.executable, str(HERE / "plain_client.py"), running.system.url, "plain-1")

    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    types = [line["body"]["type"] for line in lines]
    assert "IntentAccepted" in types and "OrderFilled" in types and types[-1] == "ExecutionCompleted"
    report = lines[-1]["body"]
    assert report["status"] == "filled" and Decimal(report["filled_qty"]) == Decimal("0.02")
    fills = [Decimal(line["body"]["qty"]) for line in lines if line["body"]["type"] == "OrderFilled"]
    assert sum(fills) == Decimal(report["filled_qty"])
    assert lines[-1]["subject"] == "exec.execution_completed.paper.BTC-USDT.plain-1"


async def test_execbus_submit_prints_the_report_as_one_json_line(running: Running) -> None:
    code, out, err = await _run(
        sys.executable, "-m", "bus.ops.cli", "submit", "--symbol", "BTC/USDT", "--side", "sell", "--qty", "0.03",
        "--nats", running.system.url, "--intent-id", "cli-json-1", "--json",
    )

    assert code == 0, err
    report = decode(out.strip().splitlines()[-1].encode())
    assert isinstance(report, ExecutionCompleted)
    assert report.intent_id == "cli-json-1" and report.filled_qty == Decimal("0.03")


async def test_execbus_submit_exits_non_zero_on_a_rejected_intent(running: Running) -> None:
    code, _out, err = await _run(
        sys.executable, "-m", "bus.ops.cli", "submit", "--symbol", "ETH/BTC", "--side", "buy", "--qty", "1",
        "--nats", running.system.url,
    )

    assert code == 2
    assert "symbol" in err and "no market" in err


async def test_execbus_submit_refuses_an_unknown_param_before_publishing(running: Running) -> None:
    code, _out, err = await _run(
        sys.executable, "-m", "bus.ops.cli", "submit", "--symbol", "BTC/USDT", "--side", "buy", "--qty", "0.01",
        "--param", "max_retires=3", "--nats", running.system.url,
    )

    assert code == 64 and "max_retires" in err


async def test_every_actor_answers_nats_micro_discovery(running: Running) -> None:
    bus = running.bus
    replies: list[dict[str, object]] = []
    inbox = bus.nc.new_inbox()
    got_all = asyncio.Event()

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        replies.append(json.loads(msg.data))
        if len({r["name"] for r in replies}) >= 6:
            got_all.set()

    await bus.nc.subscribe(inbox, cb=collect)
    await bus.nc.publish("$SRV.PING", b"", reply=inbox)
    await asyncio.wait_for(got_all.wait(), 5)

    names = {r["name"] for r in replies}
    for actor in ("supervisor", "pricer", "placer", "reconciler", "tracker", "market-fallback"):
        assert f"execbus-{actor}" in names
    status = json.loads((await bus.nc.request("execbus.ctl.placer.status", b"", timeout=2)).data)
    assert status["partitions"] == list(range(8)) and "created" in status


async def test_demo_prints_a_filled_market_execution_report() -> None:
    code, out, err = await _run(sys.executable, "-m", "bus.ops.cli", "--log-level", "warning", "demo", timeout=120)

    assert code == 0, err[-2000:]
    assert re.search(r"demo-buy-1: filled buy 0\.01/0\.01 BTC/USDT on paper \(market\)", out), out
    assert "avg price" in out and "slippage" in out
