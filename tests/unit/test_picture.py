"""`bus.ops.picture.picture_of`: one intent's log records -> the picture's plain data (spans, fills, events,
the time axis), and `picture_json`, the same for the browser. Hand-built records, no bus."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bus.msglog import LogRecord
from bus.ops.picture import ExecutionPlot, FillMark, OrderSpan, picture_json, picture_of, plot_execution
from messages import (
    AggressiveLimitParams,
    AttemptTimedOut,
    CancelIntentAccepted,
    ExecutionCompleted,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    Message,
    OrderFilled,
    OrderFinalized,
    OrderKept,
    OrderPlaced,
    PlaceOrder,
    PriceQuoted,
    StrategyFinished,
    SubmitIntent,
    encode,
)

D = Decimal
NS = 1_000_000_000
T = 1_723_161_255 * NS
"""When the intent was accepted: 0 on the picture's time axis."""
I = "pic-1"
ROUTE = {"intent_id": I, "venue": "paper", "symbol": "BTC/USDT"}


def at(seconds: float) -> int:
    return T + round(seconds * NS)


class Log:
    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    def add(self, msg: Message, *, logged_s: float | None = None) -> Message:
        logged = at(logged_s) if logged_s is not None else msg.ts_event + 1_000_000  # stored 1 ms later
        self.records.append(LogRecord(len(self.records) + 1, f"exec.{msg.kind}.paper.BTC-USDT.{I}", logged, encode(msg)))
        return msg


def quote(t: float, attempt: int, mode: str, bid: str, ask: str) -> PriceQuoted:
    return PriceQuoted(**ROUTE, ts_event=at(t), attempt=attempt, side="buy", mode=mode,  # type: ignore[arg-type]
                       price=D(bid), bid=D(bid), ask=D(ask), tick_size=D("0.01"))


def order(t: float, cid: str, attempt: int, qty: str, price: str | None, **extra: Any) -> PlaceOrder:
    return PlaceOrder(**ROUTE, ts_event=at(t), client_order_id=cid, attempt=attempt, side="buy",
                      order_type="limit" if price else "market", qty=D(qty), price=D(price) if price else None, **extra)


def placed(t: float, cid: str, attempt: int, qty: str, price: str | None) -> OrderPlaced:
    return OrderPlaced(**ROUTE, ts_event=at(t), client_order_id=cid, order_id=f"o-{cid}", attempt=attempt, side="buy",
                       order_type="limit" if price else "market", qty=D(qty), price=D(price) if price else None)


def fill(t: float, cid: str, attempt: int, qty: str, price: str, liquidity: str, trade: str) -> OrderFilled:
    return OrderFilled(**ROUTE, ts_event=at(t), client_order_id=cid, order_id=f"o-{cid}", trade_id=trade, attempt=attempt,
                       side="buy", qty=D(qty), price=D(price), fee=D("0"), fee_currency="USDT", liquidity=liquidity)  # type: ignore[arg-type]


def final(t: float, cid: str, attempt: int, status: str, filled: str) -> OrderFinalized:
    return OrderFinalized(**ROUTE, ts_event=at(t), client_order_id=cid, order_id=f"o-{cid}", attempt=attempt,
                          status=status, filled_qty=D(filled))  # type: ignore[arg-type]


def fallback_execution() -> Log:
    """Buy 1: attempt 1 rests at the touch and fills 0.4 as maker, attempt 2 one tick inside, attempt 3 keeps
    that order, the budget runs out and the market fallback takes the 0.6 left in two taker fills."""
    log = Log()
    cid1, cid2, cid_f = f"{I}-1", f"{I}-2", f"{I}-F"
    log.add(SubmitIntent(**ROUTE, ts_event=at(-0.5), side="buy", qty=D("1"), strategy="aggressive_limit",
                         params=AggressiveLimitParams()))
    log.add(IntentAccepted(**ROUTE, ts_event=at(0), side="buy", qty=D("1"), strategy="aggressive_limit", deadline_ns=at(6)))
    log.add(quote(0.1, 0, "arrival", "100.00", "100.02"))
    log.add(quote(0.2, 1, "touch", "100.00", "100.02"))  # the same touch: no new step
    log.add(order(0.3, cid1, 1, "1", "100.00"))
    log.add(placed(0.4, cid1, 1, "1", "100.00"))
    filled = log.add(fill(1.0, cid1, 1, "0.4", "100.00", "maker", "t1"))
    log.add(filled)  # the same message twice (a re-publication the log kept): counted once
    log.add(AttemptTimedOut(**ROUTE, ts_event=at(2), attempt=1, client_order_id=cid1))
    log.add(quote(2.1, 2, "inside", "99.99", "100.01"))
    log.add(final(2.15, cid1, 1, "canceled", "0.4"))
    log.add(order(2.2, cid2, 2, "0.6", "100.01"))
    log.add(placed(2.3, cid2, 2, "0.6", "100.01"))
    log.add(AttemptTimedOut(**ROUTE, ts_event=at(4), attempt=2, client_order_id=cid2))
    log.add(OrderKept(**ROUTE, ts_event=at(4.05), attempt=3, client_order_id=cid2, price=D("100.01"), deadline_ns=at(6)))
    log.add(ExecutionTimedOut(**ROUTE, ts_event=at(6), side="buy", remaining_qty=D("0.6"), filled_qty=D("0.4"),
                              fallback="market"))
    log.add(final(6.1, cid2, 2, "canceled", "0"))
    log.add(order(6.2, cid_f, 0, "0.6", None, origin="market_fallback"))
    log.add(placed(6.25, cid_f, 0, "0.6", None))
    log.add(fill(6.3, cid_f, 0, "0.3", "100.03", "taker", "t2"))
    log.add(fill(6.3, cid_f, 0, "0.3", "100.04", "taker", "t3"))
    log.add(final(6.4, cid_f, 0, "filled", "0.6"))
    log.records.append(LogRecord(99, f"exec.junk.paper.BTC-USDT.{I}", at(6.42), b'{"type":"NoSuchThing"}'))
    log.add(StrategyFinished(**ROUTE, ts_event=at(6.45), client_order_ids=(cid1, cid2, cid_f), reason="budget",
                             attempts=2, fallback_used=True, arrival_bid=D("100.00"), arrival_ask=D("100.02")))
    log.add(ExecutionCompleted(**ROUTE, ts_event=0, status="filled", side="buy", strategy="aggressive_limit", qty=D("1"),
                               filled_qty=D("1"), avg_price=D("100.0221"), notional=D("100.0221"), fees=D("0.06"),
                               fee_currency="USDT", arrival_mid=D("100.01"), slippage_bps=D("1.2098"), attempts=2,
                               fallback_used=True, fills=3, orders=(cid1, cid2, cid_f), reason="filled",
                               started_ns=at(0), completed_ns=at(6.5), duration_ms=D("6500")), logged_s=6.5)
    return log


def test_the_time_axis_is_seconds_since_the_intent_was_accepted() -> None:
    plot = picture_of(fallback_execution().records)

    assert plot.info["t0_ns"] == T
    assert plot.info["end_s"] == pytest.approx(6.5)  # the report has no ts_event: the time the log stored it
    assert plot.x_label == "seconds since the intent was accepted"
    times = [q[0] for q in plot.quotes] + [o.start_s for o in plot.orders] + [e.t_s for e in plot.events]
    assert min(times) >= 0  # the SubmitIntent, before acceptance, draws nothing


def test_the_touch_is_every_change_of_the_quoted_bid_and_ask() -> None:
    plot = picture_of(fallback_execution().records)

    assert plot.quotes == [(pytest.approx(0.1), D("100.00"), D("100.02")), (pytest.approx(2.1), D("99.99"), D("100.01"))]
    assert plot.arrival_mid == D("100.01")


def test_each_order_is_a_span_from_placed_to_finalized_at_its_limit_price() -> None:
    plot = picture_of(fallback_execution().records)

    spans = [(o.client_order_id, round(o.start_s, 6), round(o.end_s, 6), o.price, o.kind, o.attempt, o.fallback, o.status)
             for o in plot.orders]
    assert spans == [
        (f"{I}-1", 0.4, 2.15, D("100.00"), "limit", 1, False, "canceled"),
        (f"{I}-2", 2.3, 6.1, D("100.01"), "limit", 2, False, "canceled"),
        (f"{I}-F", 6.25, 6.4, None, "market", 0, True, "filled"),
    ]
    labels = [o.label for o in plot.orders]
    assert labels[0] == "attempt 1 (touch): limit buy 1 @ 100 [canceled]"
    assert labels[1] == "attempt 2 (inside): limit buy 0.6 @ 100.01 [canceled]"
    assert labels[2] == f"fallback ({I}-F): market buy 0.6"


def test_fills_are_marked_maker_or_taker_with_one_summary_label_per_order() -> None:
    plot = picture_of(fallback_execution().records)

    marks = [(round(f.t_s, 6), f.price, f.qty, f.liquidity) for f in plot.fills if f.liquidity != "label"]
    assert marks == [(1.0, D("100.00"), D("0.4"), "maker"), (6.3, D("100.03"), D("0.3"), "taker"),
                     (6.3, D("100.04"), D("0.3"), "taker")]
    labels = [f.label for f in plot.fills if f.liquidity == "label"]
    assert labels == ["attempt 1: 0.4 @ 100 (maker)", "fallback: 0.6 in 2 fills, avg 100.035 (taker)"]


def test_events_timeouts_the_kept_order_the_fallback_and_the_end() -> None:
    plot = picture_of(fallback_execution().records)

    assert [(round(e.t_s, 6), e.kind) for e in plot.events] == [
        (2.0, "timeout"), (4.0, "timeout"), (4.05, "kept"), (6.0, "fallback"), (6.45, "finished"), (6.5, "done")]
    assert plot.events[2].label == f"attempt 3 keeps {I}-2 @ 100.01"
    assert plot.events[3].label == "budget out: 0.6 left -> market"


def test_title_and_subtitle_name_the_execution_and_its_cost() -> None:
    plot = picture_of(fallback_execution().records)

    assert plot.title == f"aggressive_limit buy 1 BTC/USDT ({I}): filled"
    assert "filled 1 of 1" in plot.subtitle and "avg price 100.0221" in plot.subtitle
    assert "shortfall vs arrival mid +1.21 bps" in plot.subtitle
    assert "2 attempts, market fallback" in plot.subtitle and "0 = accepted" in plot.subtitle
    assert plot.info["status"] == "filled" and plot.info["slippage_bps"] == D("1.2098")


def test_a_canceled_execution_shows_the_cancel_and_its_order_canceled() -> None:
    log = Log()
    cid = f"{I}-1"
    log.add(IntentAccepted(**ROUTE, ts_event=at(0), side="buy", qty=D("1"), strategy="aggressive_limit", deadline_ns=at(60)))
    log.add(quote(0.1, 1, "touch", "100.00", "100.02"))
    log.add(order(0.2, cid, 1, "1", "100.00"))
    log.add(placed(0.3, cid, 1, "1", "100.00"))
    log.add(CancelIntentAccepted(**ROUTE, ts_event=at(3), request="r1", phase="working"))
    log.add(CancelIntentAccepted(**ROUTE, ts_event=at(3.1), request="r2", phase="canceling", already=True))
    log.add(final(3.2, cid, 1, "canceled", "0"))
    log.add(StrategyFinished(**ROUTE, ts_event=at(3.3), client_order_ids=(cid,), reason="canceled: stale", attempts=1,
                             fallback_used=False, canceled=True))
    log.add(ExecutionCompleted(**ROUTE, ts_event=at(3.4), status="canceled", side="buy", strategy="aggressive_limit",
                               qty=D("1"), filled_qty=D("0"), avg_price=None, notional=D("0"), fees=D("0"),
                               fee_currency="USDT", arrival_mid=D("100.01"), slippage_bps=None, attempts=1,
                               fallback_used=False, fills=0, orders=(cid,), reason="canceled: stale",
                               started_ns=at(0), completed_ns=at(3.4), duration_ms=D("3400")))

    plot = picture_of(log.records)

    assert [(e.kind, e.label) for e in plot.events] == [
        ("canceled", "cancel accepted (working)"), ("finished", "strategy finished (canceled)"), ("done", "report: canceled")]
    (span,) = plot.orders
    assert (span.status, round(span.end_s, 6)) == ("canceled", 3.2)
    assert plot.fills == []
    assert plot.title.endswith("): canceled") and "filled 0 of 1" in plot.subtitle and "avg price" not in plot.subtitle


def test_an_order_still_working_runs_to_the_last_message_and_without_acceptance_time_starts_at_the_first() -> None:
    log = Log()
    log.add(order(10.0, f"{I}-1", 1, "1", "100.00"))
    log.add(placed(10.5, f"{I}-1", 1, "1", "100.00"))
    log.add(AttemptTimedOut(**ROUTE, ts_event=at(12), attempt=1, client_order_id=f"{I}-1"))

    plot = picture_of(log.records)

    assert plot.info["t0_ns"] == at(10) and plot.info["status"] == "in progress"
    (span,) = plot.orders
    assert (round(span.start_s, 6), round(span.end_s, 6), span.status) == (0.5, 2.0, "")
    assert plot.x_label == "seconds since the first message"


def test_a_rejected_intent_says_why() -> None:
    log = Log()
    log.add(SubmitIntent(**ROUTE, ts_event=at(0), side="buy", qty=D("1")))
    log.add(IntentRejected(**ROUTE, ts_event=at(0.01), field="risk", reason="notional above the limit", code="risk.max_notional"))

    plot = picture_of(log.records)

    assert plot.info["status"] == "rejected" and plot.orders == [] and plot.quotes == []
    assert "rejected: risk: notional above the limit" in plot.subtitle
    assert picture_of([]).quotes == []


def test_picture_json_is_plain_json_with_exact_decimal_strings() -> None:
    data = picture_json(picture_of(fallback_execution().records))

    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"title", "subtitle", "footnote", "x_label", "quote_label", "arrival_mid", "info", "quotes",
                         "trades", "orders", "fills", "events"}
    assert data["quotes"][1] == {"t_s": 2.1, "bid": "99.99", "ask": "100.01"}
    assert data["orders"][2] == {"label": f"fallback ({I}-F): market buy 0.6", "start_s": 6.25, "end_s": 6.4,
                                 "price": None, "kind": "market", "client_order_id": f"{I}-F", "attempt": 0,
                                 "fallback": True, "status": "filled"}
    assert data["fills"][0] == {"t_s": 1.0, "price": "100", "qty": "0.4", "liquidity": "maker", "label": ""}
    assert data["events"][3] == {"t_s": 6.0, "label": "budget out: 0.6 left -> market", "kind": "fallback"}
    assert data["info"]["slippage_bps"] == "1.2098" and data["info"]["t0_ns"] == T and data["arrival_mid"] == "100.01"
    odd = ExecutionPlot(title="t", subtitle="s", quotes=[(0.0, D("6.2E+4"), D("62000.1"))],
                        fills=[FillMark(0.5, 62000.25, 0.1, "taker")], orders=[OrderSpan("o", 0, 1, D("1E-7"))])
    data = picture_json(odd)
    assert data["quotes"] == [{"t_s": 0.0, "bid": "62000", "ask": "62000.1"}]
    assert (data["fills"][0]["price"], data["fills"][0]["qty"], data["orders"][0]["price"]) == ("62000.25", "0.1", "0.0000001")


def test_a_picture_from_the_log_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")

    path = plot_execution(picture_of(fallback_execution().records), tmp_path / "p.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
