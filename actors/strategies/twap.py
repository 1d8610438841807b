"""TWAP: the quantity in equal slices over the horizon. Slice k may start `k x interval` after acceptance and
is worked like an aggressive limit within its own interval (touch, then inside, then cross); its target is
cumulative (k+1 slices' worth), so a slice that falls short is made up by the next. After the last interval
the market fallback (a parameter) takes what is left.

Its state is the driver's `leg` (the slice being worked) and the time: slice windows are fixed at acceptance.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from actors.strategies.base import (
    AllFinal, Arrived, AskPrice, AttemptExpired, CancelWorking, Decision, Event, HandOff, Place, Quoted, Reprice,
    View, WaitUntil, Woke, bounded, escalation, floor_to_step, ns, to_tick,
)
from messages.strategies import TwapParams


class Twap:
    name: ClassVar[str] = "twap"
    Params: ClassVar[type[TwapParams]] = TwapParams
    summary: ClassVar[str] = (
        "slices equal parts over horizon_seconds, each worked touch -> inside -> cross in its interval; "
        "shortfalls carried forward; the market fallback after the last"
    )

    def benchmark_params(self, budget_s: str, qty: Decimal) -> dict[str, str]:
        return {"horizon_seconds": budget_s, "slices": "4"}

    def budget_ns(self, params: TwapParams) -> int:
        return ns(params.horizon_seconds)

    def check(self, params: TwapParams, qty: Decimal, min_amount: Decimal | None, amount_step: Decimal | None) -> tuple[str, str] | None:
        n = params.slice_count
        part = floor_to_step(qty / n, amount_step)
        if part <= 0 or (min_amount is not None and part < min_amount):
            return "params.slices", (
                f"{n} slices of {qty} are {part} each, below the market minimum amount {min_amount or amount_step}"
            )
        return None

    def decide(self, params: TwapParams, view: View, event: Event) -> Decision:
        match event:
            case Arrived():
                return self._start(params, view, leg=0, attempt=1)
            case Quoted(quote=quote):
                qty = self._slice_qty(params, view, view.leg)
                if qty <= 0 or view.now_ns >= view.deadline_ns:
                    return self._after_slice(params, view)  # (past the horizon no order is placed)
                tick = view.tick_size or quote.tick_size
                price = bounded(to_tick(quote.price, tick, view.side), params.limit_price, view.side, tick)
                end = self._slice_end(params, view, view.leg)
                left = max(1, params.attempts_per_slice - (view.attempt - view.leg_first_attempt))
                # The slice's time shared by its attempts left; an attempt that starts late (a cancel took
                # long to confirm) still gets a fair minimum rather than expiring at once.
                shortest = self._interval_ns(params) // (2 * params.attempts_per_slice)
                deadline = min(view.now_ns + max(shortest, (end - view.now_ns) // left), view.deadline_ns)
                return Place(attempt=view.attempt, order_type="limit", price=price, deadline_ns=deadline, qty=qty)
            case AttemptExpired():
                index = view.attempt - view.leg_first_attempt + 1
                if index < params.attempts_per_slice and view.now_ns < self._slice_end(params, view, view.leg):
                    return Reprice(attempt=view.attempt + 1, mode=escalation(index))
                return CancelWorking(announce=True)
            case AllFinal() | Woke():
                if view.filled >= self._target(params, view, view.leg) or self._slice_qty(params, view, view.leg) <= 0:
                    # Met, or nothing of it can be placed (a slice skipped below the venue's minimum: asking
                    # for a price of nothing would read as "filled" to the driver).
                    return self._after_slice(params, view)
                index = view.attempt - view.leg_first_attempt + 1
                if index < params.attempts_per_slice and view.now_ns < view.deadline_ns:
                    # Short of the slice's target with attempts left: the next, more aggressive one, even when
                    # the interval is over (its cancel took long to confirm) — each slice ends aggressively —
                    # but never past the horizon: the fallback comes after it.
                    return AskPrice(attempt=view.attempt + 1, mode=escalation(index), qty=self._slice_qty(params, view, view.leg))
                if view.now_ns < self._slice_end(params, view, view.leg):
                    return WaitUntil(self._slice_end(params, view, view.leg))  # (attempts used up early)
                return self._after_slice(params, view)
        return self._after_slice(params, view)

    def _after_slice(self, params: TwapParams, view: View) -> Decision:
        """The current slice is met or its interval is over: the next slice (the one the clock is in, if
        later), or the end of the schedule."""
        n = params.slice_count
        following = max(view.leg + 1, self._slice_at(params, view, view.now_ns))
        if following >= n:
            if view.now_ns < view.deadline_ns and view.filled < view.qty:
                return WaitUntil(view.deadline_ns)  # (the last slice's target was met early: nothing is left)
            return HandOff(f"twap horizon over after {n} slices", fallback=params.fallback == "market")
        start = self._slice_start(params, view, following)
        if view.now_ns < start:
            return WaitUntil(start)
        return self._start(params, view, leg=following, attempt=view.attempt + 1)

    def _start(self, params: TwapParams, view: View, *, leg: int, attempt: int) -> Decision:
        qty = self._slice_qty(params, view, leg)
        if qty <= 0:
            # Ahead of the schedule (or what this slice would add is below the venue's minimum): skip it.
            nxt = leg + 1
            if nxt >= params.slice_count:
                return HandOff(f"twap horizon over after {params.slice_count} slices", fallback=params.fallback == "market")
            return WaitUntil(max(view.now_ns, self._slice_start(params, view, nxt)))
        return AskPrice(attempt=attempt, mode=escalation(0), leg=leg, qty=qty)

    @staticmethod
    def _interval_ns(params: TwapParams) -> int:
        return ns(params.horizon_seconds) // params.slice_count

    def _slice_start(self, params: TwapParams, view: View, leg: int) -> int:
        return view.accepted_ns + leg * self._interval_ns(params)

    def _slice_end(self, params: TwapParams, view: View, leg: int) -> int:
        if leg >= params.slice_count - 1:
            return view.deadline_ns
        return self._slice_start(params, view, leg + 1)

    def _slice_at(self, params: TwapParams, view: View, at_ns: int) -> int:
        return min(params.slice_count - 1, max(0, (at_ns - view.accepted_ns) // self._interval_ns(params)))

    def _target(self, params: TwapParams, view: View, leg: int) -> Decimal:
        """What should have filled by the end of slice `leg`: cumulative, on the amount grid."""
        n = params.slice_count
        if leg >= n - 1:
            return view.qty
        return floor_to_step(view.qty * (leg + 1) / n, view.amount_step)

    def _slice_qty(self, params: TwapParams, view: View, leg: int) -> Decimal:
        """This slice's order: its target minus everything filled (a shortfall carried forward); nothing when
        that is below the venue's minimum and a later slice can take it."""
        qty = min(self._target(params, view, leg) - view.filled, view.remaining)
        if qty <= 0:
            return Decimal(0)
        if leg < params.slice_count - 1 and view.below_minimum(qty):
            return Decimal(0)
        return qty


STRATEGY = Twap()
