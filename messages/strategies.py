"""Each strategy's parameters: one member of a tagged union, so a parameter of one strategy on an intent of
another fails to decode with the field named (`params.horizon_seconds` on a market intent).

On the wire the union's tag is `params.strategy`. An intent may give only the top-level `strategy` and leave
the tag out of `params` (the form clients wrote before the union existed): the codec puts it in.

To add a strategy: a Struct here, subclass of `StrategyParams` with `tag="<name>"` (it joins the union by
itself), plus its module in `actors/strategies/` (its decision core) and its tests.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, Union

import msgspec

from messages.base import check_decimal, require_non_negative, require_positive

__all__ = [
    "StrategyParams",
    "MarketParams",
    "SimpleLimitParams",
    "AggressiveLimitParams",
    "TwapParams",
    "IcebergParams",
    "STRATEGY_PARAMS",
    "PARAMS_BY_STRATEGY",
    "AnyParams",
    "StrategyName",
    "Fallback",
    "FALLBACK_TO_MARKET",
    "strategy_of",
    "params_for",
]

Fallback = Literal["market", "none"]
FALLBACK_TO_MARKET: Fallback = "market"
"""`ExecutionTimedOut.fallback` when the market-fallback actor is to take the rest."""
Attempts = Annotated[int, msgspec.Meta(ge=1, le=100)]
Slices = Annotated[int, msgspec.Meta(ge=1, le=1000)]


class StrategyParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="strategy"):
    """Parameters common to every strategy: none. Unknown names are an error: a misspelt `max_retires`
    silently ignored would execute with the wrong budget."""


class _BreakEven(msgspec.Struct, frozen=True, kw_only=True):
    trigger_fill_price: Decimal | None = None
    """Break-even bound: no limit attempt may price worse than this (plus `trigger_slippage_bps`)."""
    trigger_slippage_bps: Decimal = Decimal("0")
    """How far past `trigger_fill_price` an attempt may price, in basis points."""

    def _check_break_even(self) -> None:
        require_positive("trigger_fill_price", self.trigger_fill_price)
        require_non_negative("trigger_slippage_bps", self.trigger_slippage_bps)


class MarketParams(StrategyParams, frozen=True, kw_only=True, tag="market"):
    """One market order for the whole quantity, with the old market executor's slippage protection."""

    max_slippage_bps: Decimal | None = None
    """Cap on slippage versus the arrival touch; past it the quantity rests as a limit at the cap."""
    timeout_seconds: Decimal = Decimal("30")
    """How long that limit at the cap may rest."""

    def __post_init__(self) -> None:
        require_non_negative("max_slippage_bps", self.max_slippage_bps)
        require_positive("timeout_seconds", self.timeout_seconds)


class SimpleLimitParams(_BreakEven, StrategyParams, frozen=True, kw_only=True, tag="simple_limit"):
    """One limit order at the touch (or improved by an offset) for the whole budget."""

    timeout_seconds: Decimal = Decimal("30")
    """How long the one limit order may rest."""
    price_offset_pct: Decimal = Decimal("0")
    """Price = touch improved (buy: lower, sell: higher) by this percent; negative crosses."""

    def __post_init__(self) -> None:
        require_positive("timeout_seconds", self.timeout_seconds)
        check_decimal("price_offset_pct", self.price_offset_pct, minimum=Decimal(-50), strict=False)
        self._check_break_even()


class AggressiveLimitParams(_BreakEven, StrategyParams, frozen=True, kw_only=True, tag="aggressive_limit"):
    """Limit attempts that escalate touch -> inside -> cross, each within its own budget, then the fallback."""

    max_retries: Attempts = 3
    """How many limit attempts at most."""
    total_timeout_seconds: Decimal = Decimal("13")
    """The whole budget before the fallback takes the remainder."""
    attempt_timeout_seconds: Decimal | None = None
    """One attempt's budget; default total / max_retries."""
    fallback: Fallback = "market"
    """What takes the remainder when the total budget runs out."""

    def __post_init__(self) -> None:
        require_positive("total_timeout_seconds", self.total_timeout_seconds)
        require_positive("attempt_timeout_seconds", self.attempt_timeout_seconds)
        self._check_break_even()


class TwapParams(StrategyParams, frozen=True, kw_only=True, tag="twap"):
    """The quantity in equal slices over `horizon_seconds`; each slice is worked like an aggressive limit
    within its own interval, and a slice that falls short is made up by the next ones."""

    horizon_seconds: Decimal = Decimal("60")
    """The whole schedule: slice k may start at k x interval after acceptance."""
    slices: Slices | None = None
    """How many slices (default 4, or horizon / interval_seconds)."""
    interval_seconds: Decimal | None = None
    """The alternative to `slices`: one slice per this many seconds."""
    attempts_per_slice: Attempts = 3
    """Limit attempts within a slice, escalating touch -> inside -> cross."""
    limit_price: Decimal | None = None
    """Never buy above (sell below) this price."""
    fallback: Fallback = "market"
    """What takes what is left once the last slice's interval is over."""

    def __post_init__(self) -> None:
        require_positive("horizon_seconds", self.horizon_seconds)
        require_positive("interval_seconds", self.interval_seconds)
        require_positive("limit_price", self.limit_price)
        if self.slices is not None and self.interval_seconds is not None:
            raise ValueError("`slices` and `interval_seconds` say the same thing: give one of them")
        if self.interval_seconds is not None and self.interval_seconds > self.horizon_seconds:
            raise ValueError("`interval_seconds` must not be longer than `horizon_seconds`")
        if self.limit_price is not None and self.fallback == "market":
            raise ValueError("`fallback` market would trade past `limit_price`: set fallback=none")

    @property
    def slice_count(self) -> int:
        if self.slices is not None:
            return self.slices
        if self.interval_seconds is not None:
            return max(1, int(self.horizon_seconds / self.interval_seconds))
        return 4


class IcebergParams(StrategyParams, frozen=True, kw_only=True, tag="iceberg"):
    """Only `display_qty` shows at a time: the next child is placed once the previous one has filled."""

    display_qty: Decimal
    """The size of each child order (the last one takes what is left)."""
    limit_price: Decimal | None = None
    """Where the children rest; without it, each child joins the touch when it is shown."""
    timeout_seconds: Decimal = Decimal("60")
    """The whole budget: then the working child is canceled and the fallback (if any) takes the rest."""
    fallback: Fallback = "none"

    def __post_init__(self) -> None:
        require_positive("display_qty", self.display_qty)
        require_positive("limit_price", self.limit_price)
        require_positive("timeout_seconds", self.timeout_seconds)
        if self.limit_price is not None and self.fallback == "market":
            raise ValueError("`fallback` market would trade past `limit_price`: set fallback=none")


# (A strategy's params are defined above this line: every tagged subclass of `StrategyParams` is a member.)
STRATEGY_PARAMS: tuple[type[StrategyParams], ...] = tuple(
    kind for kind in StrategyParams.__subclasses__() if isinstance(kind.__struct_config__.tag, str)
)
PARAMS_BY_STRATEGY: dict[str, type[StrategyParams]] = {
    str(t.__struct_config__.tag): t for t in STRATEGY_PARAMS
}
AnyParams = Union[STRATEGY_PARAMS]  # type: ignore[valid-type]
StrategyName = Literal[tuple(PARAMS_BY_STRATEGY)]  # type: ignore[valid-type]


def strategy_of(params: Any) -> str:
    """The strategy a params struct belongs to (its tag)."""
    return str(type(params).__struct_config__.tag)


def params_for(strategy: str, values: dict[str, Any] | None = None, *, strict: bool = True) -> StrategyParams:
    """`strategy`'s params from plain values (`strict=False`: from strings, as a command line gives them).
    Raises `msgspec.ValidationError` naming the field, or `ValueError` for an unknown strategy."""
    kind = PARAMS_BY_STRATEGY.get(strategy)
    if kind is None:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(PARAMS_BY_STRATEGY)}")
    return msgspec.convert(dict(values or {}), kind, strict=strict)
