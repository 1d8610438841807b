"""What a strategy's decision core sees, what it is told, and what it may answer.

A decision core is a pure function: `decide(params, view, event) -> Decision`. No I/O, no publishing, no clock
reads: the time is `view.now_ns`. The supervisor (the generic driver) turns the decision into messages and
timers, and owns the invariants every strategy shares: the next order only once every earlier one is
confirmed terminal, never more than the intent's quantity minus everything filled, the fallback hand-off,
cancel and halt, the report. A strategy's own state is the driver's `attempt` and `leg` counters plus the
time: everything it needs is rebuilt from the log that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import ClassVar, Generic, Protocol, TypeVar

from messages.pricing import PriceMode, PriceQuoted
from messages.strategies import StrategyParams

__all__ = [
    "NS",
    "View",
    "Working",
    "Arrived",
    "Quoted",
    "AttemptExpired",
    "AllFinal",
    "Woke",
    "Event",
    "AskPrice",
    "Place",
    "Reprice",
    "CancelWorking",
    "WaitUntil",
    "HandOff",
    "Finish",
    "Decision",
    "Strategy",
    "ns",
    "to_tick",
    "bounded",
    "floor_to_step",
    "escalation",
]

NS = 1_000_000_000
P = TypeVar("P", bound=StrategyParams)


@dataclass(frozen=True, slots=True)
class Working:
    """The one order of the current attempt still working (not canceled, not terminal)."""

    client_order_id: str
    attempt: int
    price: Decimal | None
    qty: Decimal


@dataclass(frozen=True, slots=True)
class View:
    """The intent as the driver knows it, at `now_ns`."""

    side: str
    qty: Decimal
    filled: Decimal
    now_ns: int
    accepted_ns: int
    deadline_ns: int
    """End of the strategy's budget (`Strategy.budget_ns` after acceptance)."""
    attempt: int
    """The current attempt (0: the arrival quote); each order of the strategy has its own."""
    leg: int = 0
    """The strategy's own step counter (TWAP's slice, iceberg's child); 0 for strategies without."""
    leg_first_attempt: int = 0
    """The first attempt of the current leg."""
    arrival_bid: Decimal | None = None
    arrival_ask: Decimal | None = None
    tick_size: Decimal | None = None
    amount_step: Decimal | None = None
    min_amount: Decimal | None = None
    min_cost: Decimal | None = None
    """The venue's minimum order value (quote currency), if it has one."""
    working: Working | None = None
    last_filled: Decimal | None = None
    """What the strategy's most recent order filled (None: it has placed none yet)."""
    reason: str = ""
    """Why the last order ended short (a rejection, the slippage cap), if the driver knows."""

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled

    def below_minimum(self, qty: Decimal) -> bool:
        """An order of `qty` would be refused by the venue: under its minimum amount or (at the arrival
        mid) its minimum order value."""
        if self.min_amount is not None and qty < self.min_amount:
            return True
        if self.min_cost is not None and self.arrival_bid and self.arrival_ask:
            return qty * (self.arrival_bid + self.arrival_ask) / 2 < self.min_cost
        return False


# -- events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrived:
    """The arrival quote: the book when the intent was accepted. The strategy's first move."""

    quote: PriceQuoted


@dataclass(frozen=True, slots=True)
class Quoted:
    """The price asked for attempt `view.attempt`. With `view.working` set, the attempt was asked for while
    the previous attempt's order still works (`Reprice`): a `Place` at that order's very price keeps it."""

    quote: PriceQuoted


@dataclass(frozen=True, slots=True)
class AttemptExpired:
    """The current attempt's deadline passed with its order still working."""


@dataclass(frozen=True, slots=True)
class AllFinal:
    """Every order is confirmed terminal, quantity is left, the intent is not canceled, and what is left can
    still be placed (above the venue's minimums). What next?"""


@dataclass(frozen=True, slots=True)
class Woke:
    """The time a `WaitUntil` asked for has come."""


Event = Arrived | Quoted | AttemptExpired | AllFinal | Woke


# -- decisions ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AskPrice:
    """Ask the pricer for attempt `attempt` (the current one asked again, or the next)."""

    attempt: int
    mode: PriceMode
    leg: int | None = None
    """A new leg begins with this attempt (None: the current leg goes on)."""
    qty: Decimal | None = None
    """What the attempt will trade, for the pricer's sweep estimate (None: all that is left)."""


@dataclass(frozen=True, slots=True)
class Place:
    """Place the order of attempt `attempt`. The driver caps `qty` at what is left (None: all of it) and
    places only when every earlier order is terminal."""

    attempt: int
    order_type: str
    price: Decimal | None
    deadline_ns: int
    """When this attempt ends: its order is then canceled, or the next attempt priced (`AttemptExpired`)."""
    qty: Decimal | None = None
    leg: int | None = None
    with_reference: bool = False
    """Carry the quote's touch to the placer (a market order needs no second look at the book)."""
    reason: str = ""
    """Said in the report if this order is the last (e.g. the slippage cap's switch to a limit)."""


@dataclass(frozen=True, slots=True)
class Reprice:
    """The attempt expired with its order working: price attempt `attempt` before canceling, so an order that
    would be placed again at the same price keeps its place in the queue (`OrderKept`)."""

    attempt: int
    mode: PriceMode


@dataclass(frozen=True, slots=True)
class CancelWorking:
    """Cancel the working order; `announce`: say so in the log (`AttemptTimedOut`), for strategies with
    attempts."""

    announce: bool = False


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing to do before `at_ns` (TWAP between slices); then the strategy is asked again (`Woke`)."""

    at_ns: int


@dataclass(frozen=True, slots=True)
class HandOff:
    """The strategy is done with quantity left: the fallback (when `fallback`) takes the rest, else finish."""

    reason: str
    fallback: bool


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str


Decision = AskPrice | Place | Reprice | CancelWorking | WaitUntil | HandOff | Finish


class Strategy(Protocol, Generic[P]):
    """A strategy plug-in: its name, its params type and its pure decision core."""

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]]
    summary: ClassVar[str]
    """One line for the README's table and `execbus submit --help`."""

    def budget_ns(self, params: P) -> int:
        """How long after acceptance the strategy may place orders (the fallback comes after)."""
        ...

    def check(self, params: P, qty: Decimal, min_amount: Decimal | None, amount_step: Decimal | None) -> tuple[str, str] | None:
        """Against the venue's market, at intake: (field, reason) when the intent cannot be executed so."""
        ...

    def decide(self, params: P, view: View, event: Event) -> Decision:
        ...

    def benchmark_params(self, budget_s: str, qty: Decimal) -> dict[str, str]:
        """Its settings in the quality benchmark for a time budget and size (`execbus bench quality`)."""
        ...


# -- pricing arithmetic the strategies share --------------------------------------------------------------


def ns(seconds: Decimal) -> int:
    return int(seconds * NS)


def to_tick(price: Decimal, tick: Decimal | None, side: str) -> Decimal:
    """On the venue's grid, rounded in our favour (buy down, sell up) so rounding never crosses a bound."""
    if tick is None or tick <= 0:
        return price
    rounding = ROUND_FLOOR if side == "buy" else ROUND_CEILING
    return (price / tick).to_integral_value(rounding=rounding) * tick


def bounded(price: Decimal, bound: Decimal | None, side: str, tick: Decimal | None) -> Decimal:
    """`price` no worse than `bound` (a buy never above it, a sell never below), on the grid."""
    if bound is None:
        return price
    limited = min(price, bound) if side == "buy" else max(price, bound)
    return to_tick(limited, tick, side)


def floor_to_step(qty: Decimal, step: Decimal | None) -> Decimal:
    if step is None or step <= 0:
        return qty
    return (qty / step).to_integral_value(rounding=ROUND_FLOOR) * step


ESCALATION: tuple[PriceMode, ...] = ("touch", "inside", "cross")


def escalation(index: int) -> PriceMode:
    """The pricing mode of the `index`-th attempt (0-based) of an escalating run: touch, inside, then cross."""
    return ESCALATION[min(max(index, 0), len(ESCALATION) - 1)]
