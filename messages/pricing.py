"""Prices for attempts: the supervisor asks, the pricer answers from a fresh book or says why it cannot."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from messages.base import Message, Side, require_positive

__all__ = ["PriceMode", "PriceRequested", "PriceQuoted", "PriceUnavailable"]

PriceMode = Literal["arrival", "touch", "inside", "cross"]
"""arrival: record the book at arrival; touch: join our side's best; inside: one tick inside the spread;
cross: take the other side's best."""


class PriceRequested(Message, frozen=True, kw_only=True):
    """The supervisor needs a price for `attempt` (0 = arrival quote)."""

    attempt: int
    side: Side
    mode: PriceMode
    qty: Decimal
    """How much the attempt will trade: the pricer reports the book's cost to take it."""
    request: int = 0
    """Retry counter for the same attempt (after `PriceUnavailable`): part of the message id."""
    leg: int = 0
    """The strategy's step the attempt belongs to (TWAP's slice, iceberg's child; 0 for the others): in the
    log so an owner rebuilt from it knows where the strategy was."""

    def validate(self) -> None:
        require_positive("qty", self.qty)

    def dedup_suffix(self) -> str:
        return f"{self.attempt}.{self.request}"


class PriceQuoted(Message, frozen=True, kw_only=True):
    """A price for one attempt, from a book no older than the pricer's age limit."""

    attempt: int
    side: Side
    mode: PriceMode
    price: Decimal
    """The limit price for this mode, on the venue's tick grid."""
    bid: Decimal
    ask: Decimal
    tick_size: Decimal
    sweep_avg_price: Decimal | None = None
    """Average price of taking `qty` from the book now (None when the visible book is too thin)."""
    book_ts_ns: int = 0
    request: int = 0

    def validate(self) -> None:
        for name in ("price", "bid", "ask", "tick_size", "sweep_avg_price"):
            require_positive(name, getattr(self, name))

    def dedup_suffix(self) -> str:
        return f"{self.attempt}.{self.request}"


class PriceUnavailable(Message, frozen=True, kw_only=True):
    """No trustworthy price: the book is stale, empty or crossed. Never a guess."""

    attempt: int
    reason: str
    book_age_ms: int | None = None
    request: int = 0

    def dedup_suffix(self) -> str:
        return f"{self.attempt}.{self.request}"
