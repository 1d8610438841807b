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
        for label in ("market", "aggressive_limit", "aggressive_limit r=1", "simple_limit", "twap"):
            summary = size[label]
            assert summary["n"] == 3
            assert summary["mid_check_failures"] == 0
        assert size["market"]["completion"] == 1.0
        assert size["market"]["is_bps"]["mean"] >= result.params["taker_bps"] - 0.01  # a taker pays the fee
        assert size["oracle"]["n"] == 3
    main = result.tables[0]
    assert sum(1 for row in main.rows if row[2] == "oracle bound") == 3
    assert len(main.rows) == 3 * 6  # five strategies and the oracle, at three sizes
    (target,) = result.targets
    assert target.name == "quality" and isinstance(target.met, bool)
    assert result.results["runtime"]["simulations"] == 15


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


# -- another symbol -------------------------------------------------------------------------------------------


def _eth_recording(path: Path, seconds: float = 70.0) -> Path:
    """The first `seconds` of the shipped BTC/USDT sample made into an ETH/USDT recording, in the exact same
    format (gzip text, `<local ns> <raw Binance JSON>`): symbol and stream names renamed, prices divided by 20
    and quantities multiplied by 20 (same notional; the tick becomes 0.0005, printed with 4 places)."""
    import gzip
    import json

    price_f, qty_f = Decimal("0.05"), Decimal(20)
    eight = Decimal("0.00000001")

    def px(v: str) -> str:
        return format((Decimal(v) * price_f).quantize(eight), "f")

    def qt(v: str) -> str:
        return format((Decimal(v) * qty_f).quantize(eight), "f")

    def levels(rows: list[list[str]]) -> list[list[str]]:
        return [[px(p), qt(q)] for p, q in rows]

    out = []
    first: int | None = None
    with gzip.open(SAMPLE_FILE, "rt") as src:
        for line in src:
            stamp, _, raw = line.rstrip("\n").partition(" ")
            first = int(stamp) if first is None else first
            if int(stamp) - first > seconds * NS:
                break
            obj = json.loads(raw)
            data = obj.get("data", obj)
            if "stream" in obj:
                obj["stream"] = obj["stream"].replace("btcusdt", "ethusdt")
            if "s" in data:
                data["s"] = "ETHUSDT"
            for key in ("bids", "asks", "b", "a"):
                if isinstance(data.get(key), list):
                    data[key] = levels(data[key])
            if data.get("e") == "trade":
                data["p"], data["q"] = px(data["p"]), qt(data["q"])
            elif "B" in data:  # bookTicker
                data["b"], data["B"], data["a"], data["A"] = px(data["b"]), qt(data["B"]), px(data["a"]), qt(data["A"])
            out.append(f"{stamp} {json.dumps(obj, separators=(',', ':'))}\n")
    with gzip.open(path, "wt", compresslevel=1) as dst:
        dst.writelines(out)
    return path


def test_funding_follows_the_recorded_symbol_and_prices_print_at_its_precision() -> None:
    assert set(quality.balances_for("ETH/USDT")) == {"ETH", "USDT"}
    assert quality.fmt_price(Decimal("3091.88175000000000000000000001"), Decimal("0.0005")) == "3091.8818"
    assert quality.fmt_price(Decimal("61837.635"), Decimal("0.01"), 1) == "61837.635"
    assert quality.fmt_price(None, Decimal("0.01")) is None


@pytest.mark.slow
async def test_quick_run_on_another_symbol_funds_it_names_it_and_prints_its_precision(tmp_path: Path) -> None:
    data = _eth_recording(tmp_path / "binance_spot_ethusdt_sample.gz")
    png = tmp_path / "sample.png"
    rows = tmp_path / "rows.jsonl"
    # 200 ETH deep: more than the venue funds a market it is not told about (100 base), so a sell of it that
    # comes before any buy (seed 4: the first arrival sells) is refused unless the bench funds the base itself.
    args = ["--data", str(data), "--n", "2", "--seed", "4", "--budget", "4", "--strategies", "aggressive_limit",
            "--sizes", "0.2,auto,200", "--rows", str(rows)]
    args += ["--plot", str(png)] if plot.available() else ["--no-plot"]
    result = await quality.run(True, args)

    cells = [size[label] for size in result.results["cells"].values() for label in ("market", "aggressive_limit")]
    assert [cell["n"] for cell in cells] == [2] * 6
    assert not [r for cell in cells for r in cell["incomplete_reasons"] if "nsufficient" in r]
    assert [cell["completion"] for cell in cells] == [1.0] * 6  # the sell of 200 ETH executes too
    assert not [cell["sim"]["order_rejections"] for cell in cells if cell["sim"]["order_rejections"]]
    rec = result.results["recording"]
    assert rec["symbol"] == "ETH/USDT" and Decimal(rec["tick_size"]) == Decimal("0.0001")
    assert "ETH/USDT" in result.tables[1].title
    lines = [__import__("json").loads(x) for x in rows.read_text().splitlines()]
    assert {r["side"] for r in lines} == {"buy", "sell"}
    assert min(lines, key=lambda r: r["at_ns"])["side"] == "sell"  # nothing bought yet to sell from
    for r in lines:
        assert r["avg_price"] is not None
        assert Decimal(r["avg_price"]).as_tuple().exponent >= -4, r["avg_price"]  # the market's precision
    sample = result.results["sample"]
    assert sample is not None
    assert "ETH/USDT" in sample["title"] and "BTC" not in sample["title"]
    if plot.available():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
