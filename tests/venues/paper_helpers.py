"""Helpers for the venue tests: ccxt's own structure validators (under names pytest will not collect),
config shortcuts, and the full-recording skip."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import ccxt
import pytest

from ccxt.test.exchange import base as _base

from venues.config import PaperVenueConfig
from venues.paper import PaperExchange

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
FULL_0808 = SHARED / "binance_spot_btcusdt_20240808.gz"
FULL_0809 = SHARED / "binance_spot_btcusdt_20240809.gz"


def full_recording() -> list[str]:
    """Both recorded days, or skip the test cleanly when they are not around."""
    if not (FULL_0808.is_file() and FULL_0809.is_file()):
        pytest.skip("full recording not present in ../shared/data/market")
    return [str(FULL_0808), str(FULL_0809)]


def stepped(**kw: object) -> PaperVenueConfig:
    """A step-driven venue. The fill-model and fault tests are about the venue's mechanics, so they run on
    the well-behaved `strict` profile unless told otherwise; test_profiles.py covers `binance` (the default)."""
    kw.setdefault("profile", "strict")
    return PaperVenueConfig(speed=0, **kw)  # type: ignore[arg-type]


SYMBOL = "BTC/USDT"


async def wait_for_venue(url: str, venue: str = "paper", timeout: float = 10.0) -> None:
    """Poll the control ping until the service answers (no fixed sleeps)."""
    ex = PaperExchange({"options": {"natsUrl": url, "venue": venue}})
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await ex.paper_control("ping")
                return
            except ccxt.ExchangeNotAvailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.02)
    finally:
        await ex.close()


class RunningVenue:
    def __init__(self, url: str, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.url, self.stop, self.task = url, stop, task

    def client(self, **options: object) -> PaperExchange:
        return PaperExchange({"options": {"natsUrl": self.url, **options}})




def check_market(ex: Any, market: dict) -> None:
    _base.test_market(ex, {}, "fetchMarkets", market)


def check_order_book(ex: Any, book: dict, method: str = "fetchOrderBook") -> None:
    _base.test_order_book(ex, {}, method, book, SYMBOL)


def check_ticker(ex: Any, ticker: dict) -> None:
    _base.test_ticker(ex, {}, "fetchTicker", ticker, SYMBOL)


def check_balance(ex: Any, balance: dict) -> None:
    _base.test_balance(ex, {}, "fetchBalance", balance)


def check_order(ex: Any, order: dict, method: str = "createOrder") -> None:
    _base.test_order(ex, {}, method, order, SYMBOL, ex.milliseconds())


def check_trade(ex: Any, trade: dict, method: str = "fetchMyTrades") -> None:
    _base.test_trade(ex, {}, method, trade, SYMBOL, ex.milliseconds(), False)
