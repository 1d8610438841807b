"""`execbus bench quality`: the scoring rules, the arrival schedule, and a smoke run on the shipped sample."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

import pytest

from bench import plot, quality
from venues.config import SAMPLE_FILE

NS = 1_000_000_000


def test_shortfall_is_a_cost_on_both_sides_and_includes_fees_and_the_unfilled_part() -> None:
    mid = Decimal(100)
    buy = quality.shortfall_bps("buy", Decimal(1), Decimal(1), Decimal("100.01"), Decimal("0.02"), mid, mid)
    sell = quality.shortfall_bps("sell", Decimal(1), Decimal(1), Decimal("99.99"), Decimal("0.02"), mid, mid)
    assert buy == pytest.approx((3.0, 1.0, 2.0, 0.0))
    assert sell == pytest.approx((3.0, 1.0, 2.0, 0.0))
    # Half filled at the mid, no fee, and the price ran 1% away: the unfilled half costs 50 bps.
    half = quality.shortfall_bps("buy", Decimal(2), Decimal(1), Decimal(100), Decimal(0), mid, Decimal(101))
    assert half == pytest.approx((50.0, 0.0, 0.0, 50.0))
    # A sell that never filled while the price rose gained nothing and lost nothing it could have had... but
    # a sell that never filled while the price fell lost the fall.
    unfilled = quality.shortfall_bps("sell", Decimal(1), Decimal(0), Decimal(0), Decimal(0), mid, Decimal(99))
    assert unfilled[0] == pytest.approx(100.0)


def test_schedule_spaces_arrivals_by_the_budget_stays_inside_the_data_and_is_seeded() -> None:
    start, end = 1_000 * NS, 1_650 * NS
    passes = quality.make_schedule(start, end, 100, seed=7, budget_s=13)
    arrivals = [a for one in passes for a in one]
    assert len(arrivals) == 100 and len(passes) > 1
    for one in passes:
        times = [t for t, _ in one]
        assert times == sorted(times)
        assert all(b - a >= 15 * NS for a, b in zip(times, times[1:]))
        assert all(start < t <= end - 18 * NS for t in times)
        sides = [s for _, s in one]
        assert abs(sides.count("buy") - sides.count("sell")) <= 1
    assert quality.make_schedule(start, end, 100, seed=7, budget_s=13) == passes
    assert quality.make_schedule(start, end, 100, seed=8, budget_s=13) != passes
    with pytest.raises(ValueError):
        quality.make_schedule(start, start + 10 * NS, 5, seed=1, budget_s=13)


def test_touch_size_is_the_median_best_level_quantity_to_two_significant_figures() -> None:
    prof = quality.MarketProfile([], "BTC/USDT", Decimal("0.01"), Decimal("0.00001"), 0, 1)
    prof.bid_qty = [Decimal("1.2345"), Decimal("0.5"), Decimal("9")]
    prof.ask_qty = [Decimal("1.9871"), Decimal("3"), Decimal("0.1")]
    size, raw = quality.touch_size(prof)
    assert raw == Decimal("1.9871") and size == Decimal("2.0")


def test_the_full_recording_is_the_default_when_it_is_beside_the_repo() -> None:
    files = quality.default_files()
    if all((quality.SHARED / name).is_file() for name in quality.FULL_FILES):
        assert [Path(f).name for f in files] == list(quality.FULL_FILES)
    else:
        assert files == [SAMPLE_FILE]


@pytest.mark.slow
async def test_quick_run_on_the_shipped_sample_scores_every_strategy_and_size() -> None:
    result = await quality.run(True, ["--data", SAMPLE_FILE, "--n", "3", "--no-plot"])

    cells = result.results["cells"]
    assert set(cells) == {"small", "touch", "deep"}
    for size in cells.values():
        for label in ("market", "aggressive_limit", "aggressive_limit r=1", "simple_limit"):
            summary = size[label]
            assert summary["n"] == 3
            assert summary["mid_check_failures"] == 0
        assert size["market"]["completion"] == 1.0
        assert size["market"]["is_bps"]["mean"] >= result.params["taker_bps"] - 0.01  # a taker pays the fee
        assert size["oracle"]["n"] == 3
    main = result.tables[0]
    assert sum(1 for row in main.rows if row[2] == "oracle bound") == 3
    assert len(main.rows) == 3 * 5
    (target,) = result.targets
    assert target.name == "quality" and isinstance(target.met, bool)
    assert result.results["runtime"]["simulations"] == 12


def test_plot_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    data = plot.ExecutionPlot(
        title="t", subtitle="s",
        quotes=[(-1.0, 100.0, 100.01), (0.5, 99.99, 100.0), (3.0, 99.9, 99.91)],
        trades=[(0.2, 100.0, 0.5, False), (2.0, 99.9, 1.0, False)],
        orders=[plot.OrderSpan("attempt 1", 0.0, 1.5, 99.99), plot.OrderSpan("fallback", 3.0, 3.0, None, "market")],
        fills=[plot.FillMark(1.0, 99.99, 0.3, "maker"), plot.FillMark(3.0, 99.91, 0.7, "taker"),
               plot.FillMark(3.0, 99.91, 0.0, "label", "fallback: 0.7 @ 99.91")],
        events=[plot.EventMark(1.5, "attempt 1 timed out"), plot.EventMark(3.0, "budget out", "fallback")],
        arrival_mid=100.005,
    )
    path = plot.plot_execution(data, tmp_path / "x" / "sample.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert not plot.available()
    with pytest.raises(plot.MatplotlibMissing, match="execbus\\[bench\\]"):
        plot.plot_execution(plot.ExecutionPlot(title="t", subtitle="s", quotes=[]), "unused.png")
