"""The live board (`bus.ops.board`): what `execbus watch` and the web page show, folded from logged messages.

Pure: messages in, rows out — every phase of an execution, fills counted once per trade, the filters, the
trimming of old executions and fills, and the snapshot as JSON (Decimals as strings)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from bus.ops import board as board_module
from bus.ops.board import Board, BoardSnapshot
from bus.ops.watch import snapshot_json
from messages import (
    CancelIntentAccepted,
    ExecutionCompleted,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    OrderFilled,
    OrderFinalized,
    OrderKept,
    OrderPlaced,
    PlaceOrder,
    PriceQuoted,
    StrategyFinished,
    SubmitIntent,
    TradingStateChanged,
)
from tests.unit.factories import CLIENT_ORDER_ID, INTENT_ID, TS, make

S = 1_000_000_000


def fold(board: Board, *messages: Any, start: int = TS) -> None:
    for i, msg in enumerate(messages):
        board.apply(msg, start + i * 1_000_000)


def test_an_execution_goes_through_every_phase_and_ends_with_the_reports_numbers() -> None:
    board = Board()
    row = board.apply(make(SubmitIntent), TS)
    assert row is not None and row.phase == "submitted" and row.qty == Decimal("0.5") and row.side == "buy"
    assert row.strategy == "aggressive_limit" and row.started_ns == TS and not row.done

    board.apply(make(IntentAccepted), TS + 1)
    assert row.phase == "working" and row.deadline_ns == TS + 12 * S

    board.apply(make(PriceQuoted, attempt=0, bid=Decimal("61837.00"), ask=Decimal("61838.00")), TS + 2)
    assert (row.bid, row.ask, row.arrival_mid) == (Decimal("61837.00"), Decimal("61838.00"), Decimal("61837.5"))
    board.apply(make(PriceQuoted, attempt=1, bid=Decimal("61837.50"), ask=Decimal("61838.50")), TS + 3)
    assert row.bid == Decimal("61837.50") and row.arrival_mid == Decimal("61837.5")  # arrival stays the first

    board.apply(make(PlaceOrder, price=Decimal("61837.50")), TS + 4)
    assert (row.attempt, row.orders, row.working_order, row.working_price) == (
        1, 1, CLIENT_ORDER_ID, Decimal("61837.50"))
    board.apply(make(OrderPlaced), TS + 5)
    assert row.working_price == Decimal("61837.50")  # (the PlaceOrder's price stands)

    board.apply(make(OrderFilled, qty=Decimal("0.2"), price=Decimal("61837.50"), trade_id="t-1"), TS + 6)
    assert row.filled == Decimal("0.2") and row.progress == pytest.approx(0.4) and row.fill_count == 1
    assert row.live_avg_price() == Decimal("61837.50")
    assert row.slippage_bps == Decimal("0.00")  # bought at the arrival mid

    board.apply(make(OrderKept, attempt=2), TS + 7)
    assert row.attempt == 2 and row.working_order == CLIENT_ORDER_ID

    board.apply(make(OrderFinalized, status="canceled", filled_qty=Decimal("0.2")), TS + 8)
    assert row.working_order == "" and row.working_price is None

    board.apply(make(ExecutionTimedOut), TS + 9)
    assert row.phase == "fallback"
    board.apply(make(PlaceOrder, client_order_id=f"{INTENT_ID}-fb", attempt=3, order_type="market", price=None,
                     post_only=False, origin="market_fallback"), TS + 10)
    assert row.phase == "fallback" and row.fallback_used and row.attempt == 2 and row.orders == 2
    assert row.working_order == f"{INTENT_ID}-fb" and row.working_price is None
    board.apply(make(OrderFilled, client_order_id=f"{INTENT_ID}-fb", trade_id="t-2", qty=Decimal("0.3"),
                     price=Decimal("61840.00"), liquidity="taker"), TS + 11)
    assert row.filled == Decimal("0.5") and row.progress == 1.0

    board.apply(make(StrategyFinished, side="buy", qty=Decimal("0.5")), TS + 12)
    assert row.phase == "finishing" and not row.done
    assert board.in_flight() == [row] and board.finished() == []

    report = make(ExecutionCompleted, fallback_used=True, attempts=3, fills=2, slippage_bps=Decimal("0.24"),
                  avg_price=Decimal("61839.00"), filled_qty=Decimal("0.5"), notional=Decimal("30919.5"))
    board.apply(report, TS + 13)
    assert row.done and row.phase == "finished" and row.status == "filled" and row.finished_ns == TS + 13
    assert (row.filled, row.avg_price, row.slippage_bps, row.fees, row.fee_currency) == (
        Decimal("0.5"), Decimal("61839.00"), Decimal("0.24"), report.fees, "USDT")
    assert row.attempt == 3 and row.fill_count == 2 and row.fallback_used and row.working_order == ""
    assert board.in_flight() == [] and board.finished() == [row]
    assert [f.client_order_id for f in board.fills] == [
        f"{INTENT_ID}-fb", CLIENT_ORDER_ID]  # the tape: newest first


def test_a_late_fill_after_the_report_is_on_the_tape_but_does_not_change_the_reports_numbers() -> None:
    board = Board()
    fold(board, make(SubmitIntent), make(IntentAccepted),
         make(OrderFilled, qty=Decimal("0.5"), trade_id="t-1"), make(ExecutionCompleted))
    row = board.rows[INTENT_ID]
    before = msgspec.structs.asdict(row)
    board.apply(make(OrderFilled, qty=Decimal("0.1"), trade_id="t-late"), TS + 10 * S)
    after = msgspec.structs.asdict(row)
    assert {k: v for k, v in after.items() if k != "updated_ns"} == {k: v for k, v in before.items() if k != "updated_ns"}
    assert len(board.fills) == 2


def test_a_cancel_accepted_makes_it_canceling_until_the_report() -> None:
    board = Board()
    fold(board, make(SubmitIntent), make(IntentAccepted), make(CancelIntentAccepted))
    row = board.rows[INTENT_ID]
    assert row.phase == "canceling"
    board.apply(make(StrategyFinished, canceled=True), TS + S)
    assert row.phase == "finishing"
    board.apply(make(ExecutionCompleted, status="canceled", filled_qty=Decimal(0), avg_price=None,
                     notional=Decimal(0), fees=Decimal(0), slippage_bps=None, fills=0), TS + 2 * S)
    assert row.phase == "finished" and row.status == "canceled"
    board.apply(make(CancelIntentAccepted, already=True), TS + 3 * S)  # a second cancel after the end
    assert row.phase == "finished"


def test_a_rejected_intent_is_finished_as_rejected_and_a_duplicates_rejection_changes_nothing() -> None:
    board = Board()
    fold(board, make(SubmitIntent), make(IntentAccepted))
    board.apply(make(IntentRejected, duplicate=True, reason="duplicate"), TS + S)
    assert board.rows[INTENT_ID].phase == "working"

    other = Board()
    row = other.apply(make(SubmitIntent, intent_id="bad-1"), TS)
    other.apply(make(IntentRejected, intent_id="bad-1", field="risk", reason="too big", code="risk.max_notional"),
                TS + 5)
    assert row is not None and row.done and (row.phase, row.status, row.reason) == ("rejected", "rejected", "too big")
    assert row.finished_ns == TS + 5 and other.finished() == [row]


def test_fills_are_counted_once_per_order_and_trade_id() -> None:
    board = Board()
    fold(board, make(SubmitIntent), make(IntentAccepted))
    fill = make(OrderFilled, qty=Decimal("0.1"), trade_id="t-1")
    board.apply(fill, TS + 10)
    board.apply(fill, TS + 11)  # redelivered
    board.apply(make(OrderFilled, qty=Decimal("0.1"), trade_id="t-1", ts_event=TS + 99), TS + 12)  # polled again
    row = board.rows[INTENT_ID]
    assert row.filled == Decimal("0.1") and row.fill_count == 1 and len(board.fills) == 1

    board.apply(make(OrderFilled, qty=Decimal("0.1"), trade_id="t-2"), TS + 13)  # another trade
    board.apply(make(OrderFilled, client_order_id=f"{INTENT_ID}-2", qty=Decimal("0.1"), trade_id="t-1"), TS + 14)
    assert row.filled == Decimal("0.3") and row.fill_count == 3 and len(board.fills) == 3
    assert row.notional == Decimal("0.3") * Decimal("61837.62")


def test_the_filters_keep_one_venue_symbol_or_intent() -> None:
    messages = [
        make(SubmitIntent, intent_id="a"),
        make(SubmitIntent, intent_id="b", symbol="ETH/USDT"),
        make(SubmitIntent, intent_id="c", venue="binance"),
    ]
    by = {
        "venue": (Board(venue="paper"), {"a", "b"}),
        "symbol": (Board(symbol="BTC/USDT"), {"a", "c"}),
        "both": (Board(venue="paper", symbol="BTC/USDT"), {"a"}),
        "intent": (Board(intent_id="b"), {"b"}),
        "none": (Board(), {"a", "b", "c"}),
    }
    for name, (board, wanted) in by.items():
        results = [board.apply(m, TS) for m in messages]
        assert set(board.rows) == wanted, name
        assert [r is not None for r in results] == [m.intent_id in wanted for m in messages], name
    assert Board(venue="paper", intent_id="x").filters() == {"venue": "paper", "intent": "x"}
    assert Board().filters() == {}


def test_control_records_and_the_tail_of_an_execution_begun_before_the_window_are_not_shown() -> None:
    board = Board()
    assert board.apply(make(TradingStateChanged, intent_id="_trading_state"), TS) is None
    assert board.apply(make(TradingStateChanged), TS) is None  # (not about an execution: makes no row)
    assert board.apply(make(PriceQuoted), TS) is None
    assert board.apply(make(OrderFinalized), TS) is None
    assert board.apply(make(ExecutionTimedOut), TS) is None
    assert board.rows == {}
    # A fill (or an order) of an execution we only see the middle of still shows it: money moved.
    row = board.apply(make(OrderFilled, qty=Decimal("0.1")), TS + 1)
    assert row is not None and row.filled == Decimal("0.1") and row.qty == 0 and row.progress == 0.0


def test_old_finished_executions_and_fills_are_trimmed_in_flight_ones_never(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(board_module, "FINISHED_KEPT", 3)
    monkeypatch.setattr(board_module, "TAPE", 4)
    board = Board()
    fold(board, make(SubmitIntent, intent_id="working"), make(IntentAccepted, intent_id="working"))
    for i in range(6):
        intent = f"done-{i}"
        fold(board, make(SubmitIntent, intent_id=intent),
             make(OrderFilled, intent_id=intent, client_order_id=f"{intent}-1", trade_id=f"t{i}"),
             make(ExecutionCompleted, intent_id=intent, orders=(f"{intent}-1",)), start=TS + (i + 1) * S)
    assert [r.intent_id for r in board.finished()] == ["done-5", "done-4", "done-3"]
    assert [r.intent_id for r in board.in_flight()] == ["working"]
    assert [f.intent_id for f in board.fills] == ["done-5", "done-4", "done-3", "done-2"]
    assert set(board._fill_ids) == {"done-3", "done-4", "done-5"}  # (the dedup memory goes with the rows)


def test_the_snapshot_is_json_with_decimals_as_strings_and_decodes_back() -> None:
    board = Board(venue="paper")
    fold(board, make(SubmitIntent), make(IntentAccepted), make(PriceQuoted, attempt=0),
         make(OrderFilled, qty=Decimal("0.2"), trade_id="t-1"))
    fold(board, make(SubmitIntent, intent_id="done-1"), make(ExecutionCompleted, intent_id="done-1"),
         start=TS + S)
    snapshot = board.snapshot(TS + 2 * S)
    raw = snapshot_json(snapshot)
    data = json.loads(raw)
    assert data["as_of_ns"] == TS + 2 * S
    assert [r["intent_id"] for r in data["in_flight"]] == [INTENT_ID]
    assert [r["intent_id"] for r in data["finished"]] == ["done-1"]
    flight = data["in_flight"][0]
    assert flight["filled"] == "0.2" and flight["qty"] == "0.5" and flight["bid"] == "61837.62"
    assert flight["phase"] == "working" and flight["working_price"] is None
    assert data["fills"][0]["price"] == "61837.62" and data["fills"][0]["intent_id"] == INTENT_ID
    assert data["finished"][0]["status"] == "filled" and data["finished"][0]["avg_price"] == "61837.63"
    assert msgspec.json.decode(raw, type=BoardSnapshot) == snapshot
