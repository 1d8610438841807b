"""`execbus watch`'s screen as a pure function: `render(board, health, now_ns)` to text, and the README's SVG."""

from __future__ import annotations

import io
from decimal import Decimal

from rich.console import Console

from bus.ops.board import Board
from bus.ops.watch import ACTOR_KINDS, ActorHealth, log_filter, render, sample_view, save_screenshot
from messages import IntentAccepted, OrderFilled, PlaceOrder, PriceQuoted, SubmitIntent
from tests.unit.factories import INTENT_ID, TS, make

NOW = 1_732_713_612_000_000_000
S = 1_000_000_000


def text(renderable: object, width: int = 160) -> str:
    console = Console(width=width, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_sample_screen_shows_in_flight_fills_finished_and_health() -> None:
    board, health = sample_view(NOW)
    screen = text(render(board, health, NOW, source="nats://x:4222"))
    lines = screen.splitlines()
    assert "2 in flight" in lines[0] and "3 finished" in lines[0] and "8 fills" in lines[0] and "nats://x:4222" in lines[0]
    twap = next(line for line in lines if line.startswith("twap-btc-7"))
    for part in ("paper BTC/USDT", "buy", "twap", "working", "38%", "0.15 / 0.4", "61839.5 / 61839.6", "1m20s"):
        assert part in twap, (part, twap)
    fills = [line for line in lines if "maker" in line or "taker" in line]
    assert len(fills) == 8 and "61845.2" in fills[0] and "ice-sell-3" in fills[0]  # newest first
    done = next(line for line in lines if " agg-lim-42 " in line and "filled" in line)
    for part in ("aggressive_limit", "0.25 / 0.25", "61835.7", "0.07 bps", "15.4589 USDT", "6.1s"):
        assert part in done, (part, done)
    assert "partially_filled" in screen and "-0.01 bps" in screen
    supervisor = next(line for line in lines if "supervisor" in line and "replicas" in line)
    assert "2 replicas" in supervisor and "accepted 5" in supervisor and "in flight 2" in supervisor
    assert any("market_fallback" in line and "no answer" in line for line in lines)


def test_render_is_pure_and_counts_the_budget_from_now() -> None:
    board = Board()
    board.apply(make(SubmitIntent), TS)
    board.apply(make(IntentAccepted, deadline_ns=TS + 12 * S), TS + 1)
    assert text(render(board, None, TS + 2 * S)) == text(render(board, None, TS + 2 * S))
    assert "10.0s" in text(render(board, None, TS + 2 * S))
    assert "over 3.0s" in text(render(board, None, TS + 15 * S))
    # Not asked yet: every actor says so, nothing crashes.
    waiting = text(render(board, None, TS))
    assert all(any(a in line and "asking" in line for line in waiting.splitlines()) for a in ACTOR_KINDS)


def test_our_working_price_is_shown_against_the_touch_and_an_empty_board_says_so() -> None:
    empty = text(render(Board(venue="paper"), {}, NOW))
    assert "nothing in flight" in empty and "no fills yet" in empty and "nothing finished yet" in empty
    assert "venue=paper" in empty.splitlines()[0]
    assert sum("no answer" in line for line in empty.splitlines()) == len(ACTOR_KINDS)

    board = Board()
    board.apply(make(SubmitIntent), TS)
    board.apply(make(IntentAccepted), TS + 1)
    board.apply(make(PriceQuoted, attempt=1, bid=Decimal("100.0"), ask=Decimal("100.5")), TS + 2)
    board.apply(make(PlaceOrder, price=Decimal("100.1")), TS + 3)
    board.apply(make(OrderFilled, qty=Decimal("0.25"), price=Decimal("100.1")), TS + 4)
    line = next(line for line in text(render(board, {}, TS + 5)).splitlines() if line.startswith(INTENT_ID))
    assert "100.1" in line and "100 / 100.5" in line and "0.25 / 0.5" in line and "50%" in line


def test_a_health_line_tells_replicas_reporting_and_counters() -> None:
    health = {"pricer": ActorHealth("pricer", replicas=3, reported=2, partitions=8, in_flight=4,
                                    counters={"quoted": 12, "failed": 1})}
    line = next(line for line in text(render(Board(), health, NOW)).splitlines() if "pricer" in line)
    assert "3 replicas" in line and "(2 reported)" in line and "partitions 8" in line and "in flight 4" in line
    assert "quoted 12" in line and "failed 1" in line


def test_the_log_filter_reads_only_what_the_board_shows() -> None:
    assert log_filter(None, None, None) == "exec.*.*.*.*"
    assert log_filter("paper", "BTC/USDT", None) == "exec.*.paper.BTC-USDT.*"
    assert log_filter(None, None, "I-1") == "exec.*.*.*.I-1"


def test_the_screenshot_is_an_svg_of_the_sample_view(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = save_screenshot(tmp_path / "shots" / "watch.svg")
    svg = path.read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "rich-terminal" in svg
    assert "twap-btc-7" in svg and "market_fallback" in svg
