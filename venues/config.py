"""Configuration of the paper venue: markets, clock, balances, fees, latency and faults.

Config structs forbid unknown fields (a typo in a fault name must fail loudly, not silently disable the
fault). Prices, sizes and fees are `Decimal` — msgspec reads them from JSON strings or numbers exactly.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

import msgspec

__all__ = [
    "SAMPLE_FILE",
    "FaultKind",
    "FaultRule",
    "LatencyConfig",
    "MarketConfig",
    "PaperVenueConfig",
    "Profile",
    "SyntheticConfig",
    "VenueQuirks",
]

SAMPLE_FILE = str(Path(__file__).resolve().parent / "data" / "binance_spot_btcusdt_sample.gz")
"""The trimmed BTC/USDT recording shipped with the project: the default market."""

FaultKind = Literal[
    "rate_limit",          # request refused with RateLimitExceeded, nothing executed
    "network_error",       # request executed, caller gets NetworkError (outcome unknown)
    "request_timeout",     # request executed, caller gets RequestTimeout (outcome unknown)
    "order_not_found",     # fetch/cancel of a fresh order raise OrderNotFound for `duration_s`
    "drop_order_event",    # watch_orders / watch_my_trades event silently lost
    "delay_order_event",   # watch_orders / watch_my_trades event delivered `delay_s` late
    "fill_after_cancel",   # a fill lands between the cancel request and its effect
    "cancel_loses_race",   # the order fills completely before the cancel arrives
]


class LatencyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Request latency: sampled per request from a seeded RNG, half before execution, half after."""

    kind: Literal["none", "fixed", "uniform", "lognormal"] = "none"
    mean_ms: float = 0.0
    """Mean (fixed: the value) in exchange-time milliseconds."""
    jitter_ms: float = 0.0
    """uniform: half-width; lognormal: standard deviation."""
    max_ms: float = 10_000.0
    """Cap so a heavy tail never stalls a test for minutes."""


class FaultRule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One fault: what happens, how often, and to whom (scope filters are ANDed)."""

    kind: FaultKind
    probability: float = 1.0
    """Chance the fault fires on a matching request or event (seeded RNG)."""
    methods: list[str] | None = None
    """RPC methods it applies to (rate_limit/network_error/request_timeout); default: create_order."""
    client_order_id_prefix: str | None = None
    """Only orders whose clientOrderId starts with this (lets one test's faults not hit another's)."""
    symbol: str | None = None
    account: str | None = None
    count: int | None = None
    """Fire at most this many times, then the rule is spent."""
    duration_s: float = 2.0
    """order_not_found: how long, in exchange time after placement, lookups fail."""
    delay_s: float = 0.5
    """delay_order_event / fill_after_cancel: wall-clock delay of the late event."""
    fill_fraction: float = 0.5
    """fill_after_cancel: share of the remaining quantity that fills before the cancel takes effect."""
    name: str | None = None
    """Handle for clearing just this rule through the control API."""


class SyntheticConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A seeded random-walk market, for long or custom runs (see `venues.synthetic`)."""

    symbol: str = "BTC/USDT"
    start_price: Decimal = Decimal("60000")
    tick_size: Decimal = Decimal("0.01")
    amount_step: Decimal = Decimal("0.00001")
    volatility_ticks: float = 50.0
    """Standard deviation of the mid move per 100 ms batch, in ticks."""
    spread_ticks: int = 1
    levels: int = 200
    level_qty: Decimal = Decimal("0.5")
    """Mean displayed quantity per level."""
    trades_per_batch: float = 3.0
    trade_qty: Decimal = Decimal("0.02")
    start_ms: int = 1_723_161_255_000
    duration_s: float | None = None
    """None: endless."""


class MarketConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One tradable market; metadata left as None is inferred from the recording."""

    files: list[str] = msgspec.field(default_factory=lambda: [SAMPLE_FILE])
    """Recording files played in order as one stream (e.g. the 0808 then the 0809 file)."""
    synthetic: SyntheticConfig | None = None
    """If set, the market is generated instead of replayed and `files` is ignored."""
    symbol: str | None = None
    base: str | None = None
    quote: str | None = None
    tick_size: Decimal | None = None
    amount_step: Decimal | None = None
    min_amount: Decimal | None = None
    min_cost: Decimal | None = Decimal("5")
    maker_fee: Decimal | None = None
    """None: the venue-wide `maker_fee`."""
    taker_fee: Decimal | None = None


Profile = Literal["strict", "binance"]
"""How unkind the venue is (see venues/README.md): `strict` is the well-behaved original; `binance` (the
default) reuses closed clientOrderIds, lags fresh orders out of REST lookups and rate-limits orders."""


class VenueQuirks(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Switches for other venues' habits, all off by default; also settable at run time
    (`paper_control("quirks", {...})`)."""

    market_buy_requires_price: bool = False
    """Gate/HTX/Coinbase: a market buy needs a price (or params['cost']) and spends amount*price of quote."""
    fee_currency: str | None = None
    """Charge every fee in this third currency (e.g. 'BNB') instead of the received one."""
    fee_currency_price: Decimal = Decimal("1")
    """Quote currency per unit of `fee_currency`, to convert the fee."""
    trades_without_ids: bool = False
    """Trades (REST and stream) carry id None."""
    fetch_order_trades: bool = True
    """False: has['fetchOrderTrades'] is False, the method raises NotSupported, and fetch_my_trades pages."""
    my_trades_page_limit: int = 500
    """With fetch_order_trades False: the most trades one fetch_my_trades returns (Binance's default)."""
    silent_streams: bool = False
    """watch_orders / watch_my_trades stop delivering, without an error (a silently dead stream)."""


class PaperVenueConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Everything `run_paper_venue` needs; the defaults run the shipped sample at 1x, forever."""

    venue: str = "paper"
    """Subject namespace: `venue.<venue>.…`."""
    markets: list[MarketConfig] = msgspec.field(default_factory=lambda: [MarketConfig()])
    speed: float = 1.0
    """Replay speed-up over exchange time; 0 means step-driven (advance through the control API)."""
    seed: int = 0
    loop: bool = True
    """Restart the recording when it ends so a long-running venue never runs out of market."""
    balances: dict[str, Decimal] = msgspec.field(
        default_factory=lambda: {"BTC": Decimal("100"), "USDT": Decimal("10000000")}
    )
    """Starting balances of every account the venue has not seen before. Every base and quote of the
    markets, and the quirks' fee currency, is funded anyway (`venues.profiles.FUNDING`); these override."""
    maker_fee: Decimal = Decimal("0.001")
    taker_fee: Decimal = Decimal("0.001")
    latency: LatencyConfig = LatencyConfig()
    faults: list[FaultRule] = msgspec.field(default_factory=list)
    queue_cancel_model: Literal["prorata", "front", "back"] = "prorata"
    """Which share of a level's cancels is ahead of our order (see `venues.matching`)."""
    book_depth: int = 50
    """Levels per side in published book events."""
    book_publish_interval_ms: float = 50.0
    """Wall-clock throttle of book events in real-time mode (each step publishes once)."""
    profile: Profile = "binance"
    """Venue behaviour profile; the three fields below default to the profile's values when None."""
    visibility_lag_ms: float | None = None
    """A new order is unknown to REST lookups and cancel for U(0, this) ms of exchange time
    (None: binance 300, strict 0)."""
    order_rate_limit: int | None = None
    """Orders per account per `order_rate_window_s` of exchange time (None: binance 100, strict unlimited)."""
    order_rate_window_s: float = 10.0
    quirks: VenueQuirks = VenueQuirks()
    audit_limit: int = 1_000_000
    """Accepted creates kept for `paper_control("audit")`; older ones are dropped (and counted)."""
    history_limit: int = 100_000
    """Closed orders and trades kept per account for fetch_closed_orders / fetch_my_trades. An order's own
    trades live on its record, so fetch_order_trades returns all of them until the order itself ages out
    of the closed-order history (open orders never do); after that it raises OrderNotFound."""
