"""Issue 5: the log as system of record — show, fills, export/import, and redrive in virtual time."""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from pathlib import Path

from bus.ops.client import execute
from bus.ops.redrive import compare, redrive_file, redrive_records
from bus.ops.replay import IMPORT_STREAM, LogRecord, read_file, read_stream, timeline, write_jsonl
from bus.ops.sim import Arrival, Simulation
from messages import AggressiveLimitParams, ExecutionCompleted, IcebergParams, OrderFilled, SimpleLimitParams, TwapParams
from tests.e2e.conftest import Running
from tests.helpers import fast_settings, new_intent

ROOT = Path(__file__).resolve().parents[2]
NS = 1_000_000_000


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.ops.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_replay_show_lists_every_step_of_an_execution_in_order(stepped: Running) -> None:
    intent = new_intent(strategy="aggressive_limit", params=AggressiveLimitParams(total_timeout_seconds=Decimal("2"), attempt_timeout_seconds=Decimal("0.3")))
    report = await execute(stepped.bus, intent, timeout=15)
    assert isinstance(report, ExecutionCompleted)

    code, out, err = await _cli("replay", "show", intent.intent_id, "--nats", stepped.system.url, "--json")

    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    live = [m for m in stepped.recorder.messages if m.intent_id == intent.intent_id]
    assert [r["type"] for r in rows] == [type(m).__name__ for m in live]
    assert rows[0]["type"] == "SubmitIntent" and rows[-1]["type"] == "ExecutionCompleted"
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert all(r["subject"].endswith("." + intent.intent_id) for r in rows)
    code, diagram, _ = await _cli("replay", "show", intent.intent_id, "--nats", stepped.system.url, "--diagram")
    assert code == 0
    assert "supervisor      ─ PlaceOrder" in diagram and "reconciler      ─ OrderFinalized" in diagram


async def test_replay_fills_lists_each_fill_once_with_exact_quantities(stepped: Running) -> None:
    intents = [new_intent(qty=Decimal("0.3")), new_intent(side="sell", qty=Decimal("0.2"))]
    for intent in intents:
        await execute(stepped.bus, intent, timeout=10)

    code, out, err = await _cli("replay", "fills", "--since", "10m", "--nats", stepped.system.url, "--json")

    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    for intent in intents:
        mine = [r for r in rows if r["intent_id"] == intent.intent_id]
        assert sum(Decimal(r["qty"]) for r in mine) == intent.qty
        assert len({r["trade_id"] for r in mine}) == len(mine)
    # live subscribers may see a re-published fill that the log stored once (same Nats-Msg-Id)
    assert len(rows) == len({(f.client_order_id, f.trade_id) for f in stepped.recorder.of(OrderFilled)})


async def test_export_then_import_then_show_is_lossless(stepped: Running, tmp_path: Path) -> None:
    intent = new_intent(qty=Decimal("0.4"))
    await execute(stepped.bus, intent, timeout=10)
    log = tmp_path / "log.jsonl"

    code, _, err = await _cli("replay", "export", "--nats", stepped.system.url, "-o", str(log))
    assert code == 0, err
    code, _, err = await _cli("replay", "import", str(log), "--nats", stepped.system.url)
    assert code == 0, err

    exported = list(read_file(log))
    imported = [r async for r in read_stream(stepped.bus, stream=IMPORT_STREAM)]
    assert [_essence(r) for r in imported] == [_essence(r) for r in exported]
    code, original, _ = await _cli("replay", "show", intent.intent_id, "--nats", stepped.system.url, "--json")
    code2, again, _ = await _cli("replay", "show", intent.intent_id, "--nats", stepped.system.url, "--stream", IMPORT_STREAM, "--json")
    assert code == code2 == 0
    strip = lambda text: [{k: v for k, v in json.loads(line).items() if k != "seq"} for line in text.splitlines()]  # noqa: E731
    assert strip(original) == strip(again) and len(strip(original)) > 5


def _essence(record: LogRecord) -> tuple[str, int, bytes, dict[str, str]]:
    return record.subject, record.time_ns, record.data, record.headers


async def _simulated_log(tmp_path: Path) -> tuple[Path, dict[str, ExecutionCompleted]]:
    async with Simulation(settings=fast_settings()) as sim:
        t0 = sim.clock.now_ns()
        arrivals = [
            Arrival(t0 + 1 * NS, new_intent(intent_id="sim-market", qty=Decimal("0.5"))),
            Arrival(t0 + 5 * NS, new_intent(intent_id="sim-aggr", qty=Decimal("1"), strategy="aggressive_limit")),
            Arrival(
                t0 + 30 * NS,
                new_intent(
                    intent_id="sim-fallback", qty=Decimal("3"), side="sell", strategy="aggressive_limit",
                    params=AggressiveLimitParams(total_timeout_seconds=Decimal("6"), max_retries=2, trigger_fill_price=Decimal("61900")),
                ),
            ),
            Arrival(t0 + 60 * NS, new_intent(intent_id="sim-simple", qty=Decimal("0.3"), strategy="simple_limit", params=SimpleLimitParams(timeout_seconds=Decimal("20")))),
            Arrival(t0 + 85 * NS, new_intent(intent_id="sim-twap", qty=Decimal("0.4"), params=TwapParams(horizon_seconds=Decimal(8), slices=4))),
            Arrival(
                t0 + 100 * NS,
                new_intent(intent_id="sim-iceberg", qty=Decimal("0.3"), side="sell",
                           params=IcebergParams(display_qty=Decimal("0.1"), timeout_seconds=Decimal(20), fallback="market")),
            ),
        ]
        outcomes = await sim.run(arrivals)
        records = [r async for r in read_stream(sim.system.bus)]
    log = tmp_path / "sim.jsonl"
    with open(log, "w") as handle:
        write_jsonl(records, handle)
    return log, {k: v for k, v in outcomes.items() if isinstance(v, ExecutionCompleted)}


async def test_a_simulation_runs_strategies_over_the_recording_in_virtual_time(tmp_path: Path) -> None:
    log, outcomes = await _simulated_log(tmp_path)

    assert set(outcomes) == {"sim-market", "sim-aggr", "sim-fallback", "sim-simple", "sim-twap", "sim-iceberg"}
    assert all(o.status == "filled" for o in outcomes.values()), {k: o.reason for k, o in outcomes.items()}
    assert outcomes["sim-twap"].attempts >= 4 and outcomes["sim-iceberg"].attempts >= 3
    assert outcomes["sim-fallback"].fallback_used and outcomes["sim-fallback"].attempts == 2
    rows = timeline(list(read_file(log, "exec.*.*.*.sim-fallback")))
    timed_out = next(r for r in rows if r["type"] == "ExecutionTimedOut")
    assert timed_out["offset_ms"] == 6000.0  # the 6 s budget, in market time


async def test_redrive_of_an_exported_log_reproduces_the_original_outcome_exactly(tmp_path: Path) -> None:
    log, originals = await _simulated_log(tmp_path)

    rows = await redrive_records(list(read_file(log)))
    code = await redrive_file(log)

    assert [r["differences"] for r in rows] == [[]] * 6
    assert {r["intent_id"] for r in rows} == set(originals)
    assert code == 0


def test_compare_names_every_field_that_differs() -> None:
    base = dict(
        intent_id="x", venue="paper", symbol="BTC/USDT", status="filled", side="buy", strategy="market",
        qty=Decimal(1), filled_qty=Decimal(1), avg_price=Decimal("100.0"), notional=Decimal(100), fees=Decimal(0),
        fee_currency="USDT", arrival_mid=Decimal(100), slippage_bps=Decimal(0), attempts=1, fallback_used=False,
        fills=1, orders=("x-1",), reason="filled", started_ns=0, completed_ns=1, duration_ms=Decimal(0),
    )
    a = ExecutionCompleted(**base)  # type: ignore[arg-type]
    b = ExecutionCompleted(**{**base, "avg_price": Decimal("100.00"), "attempts": 2})  # type: ignore[arg-type]

    assert compare(a, b) == {"attempts": (1, 2)}


def test_fill_rows_keep_the_logged_amounts_and_still_take_numbers_or_name_what_is_wrong() -> None:
    import pytest

    from bus.ops.replay import fill_rows
    from messages import InvalidMessage, OrderFilled, encode

    fill = OrderFilled(intent_id="I-1", venue="paper", symbol="BTC/USDT", client_order_id="I-1-1", order_id="7",
                       trade_id="t1", attempt=1, side="buy", qty=Decimal("0.00010"), price=Decimal("64000.5"),
                       fee=Decimal("-0.01"), fee_currency="USDT", liquidity="maker", ts_event=1)
    as_logged = LogRecord(1, "exec.order_filled.paper.BTC-USDT.I-1", 1_700_000_000_123_456_789, encode(fill))
    body = json.loads(encode(fill))
    body["qty"], body["price"] = 0.0001, 64000.5  # a client in another language wrote numbers
    as_numbers = LogRecord(2, as_logged.subject, as_logged.time_ns, json.dumps(body).encode())

    (row, from_numbers) = fill_rows([as_logged, as_numbers])

    assert row["qty"] == "0.00010" and row["price"] == "64000.5" and row["fee"] == "-0.01"
    assert row["time"] == "2023-11-14T22:13:20.123456789Z" and row["trade_id"] == "t1"
    assert from_numbers["qty"] == "0.0001" and from_numbers["price"] == "64000.5"
    not_a_fill = LogRecord(3, as_logged.subject, 1, b'{"type": "OrderPlaced", "intent_id": "I-1"}')
    with pytest.raises(InvalidMessage):
        fill_rows([not_a_fill])
