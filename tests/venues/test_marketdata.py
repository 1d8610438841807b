"""Recording reader, book rebuild, looping, the shipped sample and the synthetic generator."""

from __future__ import annotations

import gzip
import hashlib
import itertools
from decimal import Decimal
from pathlib import Path

import msgspec

from venues.book import L2Book
from venues.config import SAMPLE_FILE, MarketConfig, SyntheticConfig
from venues.data.make_sample import make_sample
from venues.marketdata import (BookSnapshot, BookTicker, DepthUpdate, RecordingSource, TradePrint,
                               inspect_recording, split_symbol_id)
from venues.simulator import PaperVenue
from venues.synthetic import synthetic_events

from paper_helpers import FULL_0808, SYMBOL, full_recording, stepped


def test_the_shipped_sample_holds_the_snapshot_and_the_buffered_update_before_it() -> None:
    assert Path(SAMPLE_FILE).stat().st_size < 1_500_000
    with gzip.open(SAMPLE_FILE, "rb") as fh:
        head = [msgspec.json.decode(line.split(b" ", 1)[1]) for line in itertools.islice(fh, 8)]
    snapshot = head[7]
    assert snapshot["lastUpdateId"] == 50093239218 and len(snapshot["bids"]) == 1000
    buffered = [m["data"] for m in head[:7] if m.get("data", {}).get("e") == "depthUpdate"]
    assert any(d["U"] <= 50093239219 <= d["u"] for d in buffered)


def test_the_sample_is_reproducible_from_the_original(tmp_path: Path) -> None:
    if not FULL_0808.is_file():
        import pytest
        pytest.skip("original recording not present")
    out = tmp_path / "sample.gz"
    make_sample(FULL_0808, out)
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(out) == digest(SAMPLE_FILE)


def test_metadata_is_inferred_from_the_recording() -> None:
    info = inspect_recording([SAMPLE_FILE])
    assert (info.symbol_id, info.tick_size, info.amount_step) == ("BTCUSDT", Decimal("0.01"), Decimal("0.00001"))
    assert split_symbol_id("ETHBTC") == ("ETH", "BTC") and split_symbol_id("BTCFDUSD") == ("BTC", "FDUSD")


def test_events_come_in_exchange_time_order_with_every_kind_present() -> None:
    kinds: dict[type, int] = {}
    last = 0
    for ev in RecordingSource([SAMPLE_FILE]):
        assert ev.ts >= last
        last = ev.ts
        kinds[type(ev)] = kinds.get(type(ev), 0) + 1
    assert kinds[BookSnapshot] == 1 and kinds[DepthUpdate] > 1000 and kinds[TradePrint] > 1000
    assert kinds[BookTicker] > 1000


def test_the_rebuilt_book_agrees_with_book_ticker_and_is_never_crossed() -> None:
    book = L2Book(SYMBOL)
    last_ticker: BookTicker | None = None
    checked = agree = 0
    for ev in RecordingSource([SAMPLE_FILE]):
        if isinstance(ev, BookSnapshot):
            book.on_snapshot(ev)
        elif isinstance(ev, DepthUpdate):
            if book.on_depth(ev) is None:
                continue
            assert book.bids.best() < book.asks.best()  # type: ignore[operator]
            if last_ticker is not None and last_ticker.update_id <= ev.last_id:
                checked += 1
                agree += (last_ticker.bid, last_ticker.ask) == (book.bids.best(), book.asks.best())
        elif isinstance(ev, BookTicker):
            last_ticker = ev
    assert checked > 1000 and agree / checked > 0.9


def test_a_looped_recording_keeps_time_moving_and_resyncs_the_book() -> None:
    venue = PaperVenue(stepped())
    ms = venue.engine.markets[SYMBOL]
    start = venue.engine.now_ns
    venue.replay.advance(400)  # the sample is 180 s: two loops
    assert venue.engine.now_ns == start + 400 * 10**9
    assert ms.book.synced and ms.book.resyncs == 3
    assert ms.best(True) < ms.best(False)  # type: ignore[operator]


def test_two_files_play_as_one_stream_across_midnight() -> None:
    files = full_recording()
    venue = PaperVenue(stepped(markets=[MarketConfig(files=files)], loop=False))
    ms = venue.engine.markets[SYMBOL]
    venue.replay.advance(11 * 60)
    assert venue.replay.exhausted and ms.book.synced and ms.book.resyncs == 1
    assert ms.prints == 9_757 + 10_147 - 1  # every trade after the snapshot


def test_a_recording_without_a_snapshot_builds_its_book_from_diffs() -> None:
    files = full_recording()
    venue = PaperVenue(stepped(markets=[MarketConfig(files=files[1:])]))
    ms = venue.engine.markets[SYMBOL]
    assert ms.book.synced and ms.best(True) < ms.best(False)  # type: ignore[operator]


def test_the_synthetic_market_is_seeded_and_trades_like_a_recording() -> None:
    cfg = SyntheticConfig(duration_s=30)
    first = list(synthetic_events(cfg, seed=3))
    assert first == list(synthetic_events(cfg, seed=3)) and first != list(synthetic_events(cfg, seed=4))
    venue = PaperVenue(stepped(markets=[MarketConfig(synthetic=SyntheticConfig(symbol="ETH/USDT"))]))
    ms = venue.engine.markets["ETH/USDT"]
    price = ms.best(True)
    order = venue.engine.create_order("s", "ETH/USDT", "limit", "buy", Decimal("0.1"), price)
    assert venue.replay.step_until(lambda: order.status == "closed", max_seconds=600)
    assert ms.book.synced and ms.prints > 0
