"""The live board: what every execution is doing, folded from its messages as they are logged.

Pure (no I/O): `Board.apply(msg, logged_ns)` takes any message of the contract in log order and keeps, per
execution, what a person watching wants — strategy, progress, the current attempt and our working price
against the touch, the time left in the budget — plus a tape of recent fills and, once reported, the final
numbers. `execbus watch` renders it in the terminal and `execbus web` serves it to the browser, both fed by
`bus.msglog.follow_stream` (the recent log, then every new message), so both start from what is in flight.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from decimal import Decimal

import msgspec

from actors.tracker import slippage_bps  # (the report's own formula: the live figure is the same)
from messages import (
    CancelIntentAccepted,
    ExecutionCompleted,
    ExecutionTimedOut,
    IntentAccepted,
    IntentRejected,
    Message,
    OrderFilled,
    OrderFinalized,
    OrderKept,
    OrderPlaced,
    PlaceOrder,
    PriceQuoted,
    StrategyFinished,
    SubmitIntent,
)

__all__ = ["Board", "ExecutionRow", "FillRow", "BoardSnapshot"]

FINISHED_KEPT = 200
"""Finished executions kept on the board (the oldest go first; the log keeps them all)."""
TAPE = 200
"""Fills on the tape."""


class FillRow(msgspec.Struct, kw_only=True):
    logged_ns: int
    intent_id: str
    venue: str
    symbol: str
    client_order_id: str
    side: str
    qty: Decimal
    price: Decimal
    liquidity: str
    fee: Decimal
    fee_currency: str


class ExecutionRow(msgspec.Struct, kw_only=True):
    intent_id: str
    venue: str
    symbol: str
    side: str = ""
    qty: Decimal = Decimal(0)
    strategy: str = ""
    phase: str = "submitted"
    """submitted -> working -> (fallback ->) finishing -> finished | rejected; `canceling` once a cancel is
    accepted."""
    status: str = ""
    """The report's status once finished (filled, partially_filled, unfilled, failed, canceled), or
    `rejected`."""
    filled: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    fill_count: int = 0
    """Distinct fills seen (the report's count once finished)."""
    attempt: int = 0
    orders: int = 0
    working_price: Decimal | None = None
    """The limit price of the order working now (None: none working, or a market order)."""
    working_order: str = ""
    bid: Decimal | None = None
    ask: Decimal | None = None
    """The touch as the pricer last quoted it for this execution."""
    arrival_mid: Decimal | None = None
    deadline_ns: int = 0
    started_ns: int = 0
    updated_ns: int = 0
    finished_ns: int = 0
    fallback_used: bool = False
    avg_price: Decimal | None = None
    slippage_bps: Decimal | None = None
    """Versus the arrival mid, positive = worse (the report's; live: from the fills so far)."""
    fees: Decimal = Decimal(0)
    fee_currency: str = ""
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.phase in ("finished", "rejected")

    @property
    def progress(self) -> float:
        return float(self.filled / self.qty) if self.qty > 0 else 0.0

    def live_avg_price(self) -> Decimal | None:
        return self.avg_price if self.avg_price is not None else (self.notional / self.filled if self.filled else None)


class BoardSnapshot(msgspec.Struct, kw_only=True):
    """What `execbus watch --once --json` prints and the web page's list loads first."""

    as_of_ns: int
    in_flight: list[ExecutionRow]
    finished: list[ExecutionRow]
    fills: list[FillRow]


class Board:
    def __init__(self, *, venue: str | None = None, symbol: str | None = None, intent_id: str | None = None) -> None:
        self._venue, self._symbol, self._intent = venue, symbol, intent_id
        self.rows: OrderedDict[str, ExecutionRow] = OrderedDict()
        self.fills: deque[FillRow] = deque(maxlen=TAPE)
        self._fill_ids: dict[str, set[tuple[str, str]]] = {}
        """Per intent on the board, the (client order id, trade id) of every fill folded: a fill delivered twice
        (a redelivery, the reconciler's poll and the stream both seeing it) counts once."""
        self.last_ns = 0

    def filters(self) -> dict[str, str]:
        """The filters this board was made with (venue, symbol, intent), those set only."""
        named = {"venue": self._venue, "symbol": self._symbol, "intent": self._intent}
        return {k: v for k, v in named.items() if v is not None}

    def wants(self, msg: Message) -> bool:
        return (
            (self._venue is None or msg.venue == self._venue)
            and (self._symbol is None or msg.symbol == self._symbol)
            and (self._intent is None or msg.intent_id == self._intent)
        )

    def apply(self, msg: Message, logged_ns: int) -> ExecutionRow | None:
        """Fold one logged message; the row it changed (None when it is not about an execution we show)."""
        if not self.wants(msg) or msg.intent_id.startswith("_"):
            return None  # (control records such as the trading state have intent ids of their own)
        self.last_ns = max(self.last_ns, logged_ns)
        row = self.rows.get(msg.intent_id)
        if row is None:
            if not isinstance(msg, SubmitIntent | IntentAccepted | IntentRejected | StrategyFinished | ExecutionCompleted
                              | PlaceOrder | OrderPlaced | OrderFilled):
                return None  # (the tail of an execution that began before what we read: nothing to show)
            row = ExecutionRow(intent_id=msg.intent_id, venue=msg.venue, symbol=msg.symbol, started_ns=logged_ns)
            self.rows[msg.intent_id] = row
        row.updated_ns = logged_ns
        was_done = row.done
        self._fold(row, msg, logged_ns)
        if row.done and not was_done:
            self._trim()
        return row

    def _fold(self, row: ExecutionRow, msg: Message, logged_ns: int) -> None:
        match msg:
            case SubmitIntent():
                row.side, row.qty, row.strategy = msg.side, msg.qty, msg.strategy or row.strategy
            case IntentAccepted():
                row.side, row.qty, row.strategy = msg.side, msg.qty, msg.strategy
                row.deadline_ns = msg.deadline_ns
                if row.phase == "submitted":
                    row.phase = "working"
            case IntentRejected():
                if not msg.duplicate:
                    row.phase, row.status, row.reason = "rejected", "rejected", msg.reason
                    row.finished_ns = logged_ns
            case PriceQuoted():
                row.bid, row.ask = msg.bid, msg.ask
                if msg.attempt == 0 and row.arrival_mid is None:
                    row.arrival_mid = (msg.bid + msg.ask) / 2
            case PlaceOrder():
                row.orders += 1
                if msg.origin == "market_fallback":
                    row.phase, row.fallback_used = "fallback", True
                else:
                    row.attempt = max(row.attempt, msg.attempt)
                row.working_order, row.working_price = msg.client_order_id, msg.price
            case OrderKept():
                row.attempt = max(row.attempt, msg.attempt)
            case OrderPlaced():
                if not row.working_order:
                    row.working_order, row.working_price = msg.client_order_id, msg.price
            case OrderFilled():
                key = (msg.client_order_id, msg.trade_id)
                seen = self._fill_ids.setdefault(msg.intent_id, set())
                if key not in seen:
                    seen.add(key)
                    if not row.done:  # (a late fill after the report: on the tape; the report's numbers stand)
                        row.fill_count += 1
                        row.filled += msg.qty
                        row.notional += msg.qty * msg.price
                        row.slippage_bps = _slippage(row)
                    self.fills.appendleft(FillRow(
                        logged_ns=logged_ns, intent_id=msg.intent_id, venue=msg.venue, symbol=msg.symbol,
                        client_order_id=msg.client_order_id, side=msg.side, qty=msg.qty, price=msg.price,
                        liquidity=msg.liquidity, fee=msg.fee, fee_currency=msg.fee_currency,
                    ))
            case OrderFinalized():
                if msg.client_order_id == row.working_order:
                    row.working_order, row.working_price = "", None
            case ExecutionTimedOut():
                row.phase = "fallback"
            case CancelIntentAccepted():
                if not row.done:
                    row.phase = "canceling"
            case StrategyFinished():
                if not row.done:
                    row.phase = "finishing"
                row.side = msg.side or row.side
                row.qty = msg.qty or row.qty
                row.strategy = msg.strategy or row.strategy
            case ExecutionCompleted():
                row.phase, row.status, row.reason = "finished", msg.status, msg.reason
                row.side, row.qty, row.strategy = msg.side, msg.qty, msg.strategy
                row.filled, row.notional, row.avg_price = msg.filled_qty, msg.notional, msg.avg_price
                row.slippage_bps, row.fees, row.fee_currency = msg.slippage_bps, msg.fees, msg.fee_currency
                row.arrival_mid = msg.arrival_mid or row.arrival_mid
                row.fallback_used = msg.fallback_used
                row.attempt = max(row.attempt, msg.attempts)
                row.fill_count = max(row.fill_count, msg.fills)
                row.finished_ns = logged_ns
                row.working_order, row.working_price = "", None

    def _trim(self) -> None:
        finished = [k for k, r in self.rows.items() if r.done]
        for key in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            del self.rows[key]
            self._fill_ids.pop(key, None)

    def in_flight(self) -> list[ExecutionRow]:
        return [r for r in self.rows.values() if not r.done]

    def finished(self) -> list[ExecutionRow]:
        return sorted((r for r in self.rows.values() if r.done), key=lambda r: r.finished_ns, reverse=True)

    def snapshot(self, now_ns: int) -> BoardSnapshot:
        return BoardSnapshot(as_of_ns=now_ns, in_flight=self.in_flight(), finished=self.finished(), fills=list(self.fills))


def _slippage(row: ExecutionRow) -> Decimal | None:
    """Live cost of the fills so far versus the arrival mid, as the report will count it."""
    if not row.filled:
        return None
    return slippage_bps(row.side, row.notional / row.filled, row.arrival_mid)
