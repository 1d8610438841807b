"""The picture of one execution: what `execbus replay plot` draws, what the benchmarks draw, and what the web
page draws in the browser.

Three parts, each usable without the others:

* plain data (`ExecutionPlot`, `OrderSpan`, `FillMark`, `EventMark`): the book's bid/ask over time, the
  market's own trades, our order per attempt (its limit price while it worked), our fills, and events
  (attempt timeouts, the market fallback, a cancel, the end); it knows nothing about messages or the bus;
* `picture_of(records)`: that data from the message log of ONE intent (pure), and `picture_json(plot)`:
  the same as plain JSON, for the browser;
* `plot_execution(plot, path)`: a PNG. matplotlib is optional (the `bench` extra): it is imported lazily,
  with the non-interactive Agg backend, and a missing install fails with `MatplotlibMissing`, whose
  message says what to install.

Prices and quantities may be `Decimal` (what `picture_of` keeps, exact as the log holds them) or `float`
(what the benchmarks compute); the drawing turns them into floats, `picture_json` into strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from bus.msglog import LogRecord

__all__ = [
    "MatplotlibMissing",
    "INSTALL_HINT",
    "ExecutionPlot",
    "OrderSpan",
    "FillMark",
    "EventMark",
    "available",
    "plot_execution",
    "picture_of",
    "picture_json",
]

INSTALL_HINT = "pip install 'execbus[bench]'  (or: .venv/bin/pip install matplotlib)"

Num = Union[float, Decimal]
NS = 1_000_000_000


class MatplotlibMissing(RuntimeError):
    """Raised when a plot is asked for and matplotlib is not installed."""


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise MatplotlibMissing(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# -- the data ----------------------------------------------------------------------------------------------


@dataclass
class OrderSpan:
    """One of our orders while it worked: a limit price held from `start_s` to `end_s` (None price: market)."""

    label: str
    start_s: float
    end_s: float
    price: Num | None
    kind: str = "limit"
    """limit | market"""
    client_order_id: str = ""
    attempt: int | None = None
    """1, 2, ... for the strategy's attempts; 0 for the fallback's order."""
    fallback: bool = False
    """The market fallback's order (`<intent>-F`)."""
    status: str = ""
    """How it ended (`OrderFinalized.status`, or `rejected`); empty while it works (or when not known)."""


@dataclass
class FillMark:
    t_s: float
    price: Num
    qty: Num
    liquidity: str
    """maker | taker; `label` marks a text-only annotation (no marker) at (t_s, price)"""
    label: str = ""


@dataclass
class EventMark:
    t_s: float
    label: str
    kind: str = "timeout"
    """timeout | kept | fallback | canceled | finished | done"""


@dataclass
class ExecutionPlot:
    title: str
    subtitle: str
    quotes: list[tuple[float, Num, Num]]
    """(t_s, bid, ask) after each change of the recorded book, seconds since arrival."""
    trades: list[tuple[float, Num, Num, bool]] = field(default_factory=list)
    """Market trades: (t_s, price, qty, buyer_is_aggressor)."""
    orders: list[OrderSpan] = field(default_factory=list)
    fills: list[FillMark] = field(default_factory=list)
    events: list[EventMark] = field(default_factory=list)
    arrival_mid: Num | None = None
    footnote: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    """Facts about the execution (`picture_of` fills it: intent_id, status, ...), for the JSON form."""
    x_label: str = "market time since arrival (s)"
    quote_label: str = "recorded book"
    """What the bid/ask lines are, in the legend: "best bid (<quote_label>)"."""


# -- from the message log ----------------------------------------------------------------------------------

_EVENT_FOOTNOTE = (
    "Bid/ask: the touch each PriceQuoted saw (the pricer's book when it priced an attempt), held until the "
    "next quote; the log has no market trades. Our orders: PlaceOrder -> OrderPlaced -> OrderFinalized; "
    "fills: OrderFilled; dashed lines: AttemptTimedOut, OrderKept, ExecutionTimedOut, CancelIntentAccepted, "
    "StrategyFinished, ExecutionCompleted. Time: each message's ts_event (market time in a simulation)."
)


def picture_of(records: list[LogRecord]) -> ExecutionPlot:
    """The picture of one intent from its log records, oldest first (pure: no bus, no matplotlib).

    Time axis: seconds since the intent was accepted (`IntentAccepted`), or since the first record when
    there is none; each message counts at its `ts_event` (the producer's clock: wall time live, market time
    in a simulation), or at the time the log stored it when that is 0. The bid/ask is what the log has of
    the market: the touch of every `PriceQuoted`, held until the next one. Each order of ours (one per
    `client_order_id`) is a span from `OrderPlaced` (or its `PlaceOrder`) to `OrderFinalized` (or its
    rejection, or the end of the execution while it still works) at its limit price; market orders have
    no price, and the fallback's `-F` order is marked. Records that do not decode, and repeats of a
    message id, are skipped.
    """
    from messages import (
        AttemptTimedOut,
        CancelIntentAccepted,
        ExecutionCompleted,
        ExecutionTimedOut,
        IntentAccepted,
        IntentRejected,
        OrderFilled,
        OrderFinalized,
        OrderKept,
        OrderPlaced,
        OrderRejected,
        PlaceOrder,
        PriceQuoted,
        StrategyFinished,
        SubmitIntent,
    )

    timed: list[tuple[int, Any]] = []
    seen: set[str] = set()
    for record in records:
        try:
            msg: Any = record.message()
        except ValueError:
            continue
        if msg.msg_id and msg.msg_id in seen:
            continue
        seen.add(msg.msg_id)
        timed.append((msg.ts_event or record.time_ns, msg))
    if not timed:
        return ExecutionPlot(title="(no messages)", subtitle="", quotes=[], footnote=_EVENT_FOOTNOTE)

    def first(kind: type) -> Any:
        return next((m for _, m in timed if isinstance(m, kind)), None)

    accepted = first(IntentAccepted)
    t0 = next((at for at, m in timed if m is accepted), timed[0][0]) if accepted is not None else timed[0][0]
    end_ns = max(at for at, _ in timed)
    report = first(ExecutionCompleted)
    if report is not None:
        end_ns = next(at for at, m in timed if m is report)

    def sec(ns: int) -> float:
        return (ns - t0) / NS

    quotes: list[tuple[float, Num, Num]] = []
    modes: dict[int, str] = {}
    tick: Decimal | None = None
    placed: dict[str, tuple[int, Any]] = {}
    ended: dict[str, tuple[int, str]] = {}
    commands: list[tuple[int, Any]] = []
    fills: list[tuple[int, Any]] = []
    events: list[EventMark] = []
    for at, m in timed:
        if isinstance(m, PriceQuoted):
            if not quotes or (quotes[-1][1], quotes[-1][2]) != (m.bid, m.ask):
                quotes.append((sec(at), m.bid, m.ask))
            modes[m.attempt] = m.mode
            tick = m.tick_size
        elif isinstance(m, PlaceOrder):
            if all(c.client_order_id != m.client_order_id for _, c in commands):  # (a new owner's copy)
                commands.append((at, m))
        elif isinstance(m, OrderPlaced):
            placed.setdefault(m.client_order_id, (at, m))
        elif isinstance(m, OrderFinalized):
            ended.setdefault(m.client_order_id, (at, m.status))
        elif isinstance(m, OrderRejected):
            ended.setdefault(m.client_order_id, (at, "rejected"))
        elif isinstance(m, OrderFilled):
            fills.append((at, m))
        elif isinstance(m, AttemptTimedOut):
            events.append(EventMark(sec(at), f"attempt {m.attempt} timed out", "timeout"))
        elif isinstance(m, OrderKept):
            events.append(EventMark(sec(at), f"attempt {m.attempt} keeps {m.client_order_id} @ {_text(m.price)}", "kept"))
        elif isinstance(m, ExecutionTimedOut):
            then = "market" if m.fallback == "market" else "no fallback"
            events.append(EventMark(sec(at), f"budget out: {_text(m.remaining_qty)} left -> {then}", "fallback"))
        elif isinstance(m, CancelIntentAccepted) and not m.already:
            events.append(EventMark(sec(at), f"cancel accepted ({m.phase})", "canceled"))
        elif isinstance(m, StrategyFinished):
            events.append(EventMark(sec(at), "strategy finished" + (" (canceled)" if m.canceled else ""), "finished"))
        elif isinstance(m, ExecutionCompleted):
            events.append(EventMark(sec(at), f"report: {m.status}", "done"))

    orders: list[OrderSpan] = []
    for at, m in commands:
        cid = m.client_order_id
        start = placed[cid][0] if cid in placed else at
        stop, status = ended.get(cid, (end_ns, ""))
        is_fallback = m.origin == "market_fallback" or cid.endswith("-F")
        if m.order_type == "market":
            what = f"market {m.side} {_text(m.qty)}"
        else:
            what = f"limit {m.side} {_text(m.qty)} @ {_text(m.price)}"
        if is_fallback:
            label = f"fallback ({cid}): {what}"
        else:
            mode = modes.get(m.attempt)
            label = f"attempt {m.attempt}" + (f" ({mode})" if mode else "") + f": {what}"
        if status and status != "filled":
            label += f" [{status}]"
        orders.append(OrderSpan(label, sec(start), sec(max(stop, start)), m.price if m.order_type == "limit" else None,
                                m.order_type, cid, m.attempt, is_fallback, status))

    places = max(0, -int(tick.normalize().as_tuple().exponent)) + 2 if tick else 8  # an average: the tick's places + 2
    marks = [FillMark(sec(at), m.price, m.qty, m.liquidity) for at, m in fills]
    for cid in dict.fromkeys(m.client_order_id for _, m in fills):  # one label per order, at its last fill
        own = [(at, m) for at, m in fills if m.client_order_id == cid]
        qty = sum((m.qty for _, m in own), Decimal(0))
        avg = sum((m.qty * m.price for _, m in own), Decimal(0)) / qty
        attempt = own[0][1].attempt
        who = "fallback" if attempt == 0 or cid.endswith("-F") else f"attempt {attempt}"
        kinds = "/".join(sorted({m.liquidity for _, m in own}))
        text = (f"{who}: {_text(qty)} @ {_text(avg, places)} ({kinds})" if len(own) == 1 else
                f"{who}: {_text(qty)} in {len(own)} fills, avg {_text(avg, places)} ({kinds})")
        marks.append(FillMark(sec(max(at for at, _ in own)), avg, Decimal(0), "label", text))

    intent = first(SubmitIntent)
    rejected = first(IntentRejected)
    finished = first(StrategyFinished)
    sources = [x for x in (report, accepted, intent, finished) if x is not None]

    def fact(name: str) -> Any:
        return next((getattr(x, name) for x in sources if getattr(x, name, None) not in (None, "")), None)

    m0 = timed[0][1]
    arrival_mid = report.arrival_mid if report is not None else None
    if arrival_mid is None and finished is not None and finished.arrival_bid and finished.arrival_ask:
        arrival_mid = (finished.arrival_bid + finished.arrival_ask) / 2
    status = report.status if report is not None else "rejected" if rejected is not None else "in progress"
    info: dict[str, Any] = {
        "intent_id": m0.intent_id,
        "venue": m0.venue,
        "symbol": m0.symbol,
        "strategy": fact("strategy") or "",
        "side": fact("side") or "",
        "qty": fact("qty"),
        "status": status,
        "t0_ns": t0,
        "end_s": sec(end_ns),
    }
    if report is not None:
        info.update(filled_qty=report.filled_qty, avg_price=report.avg_price, slippage_bps=report.slippage_bps,
                    fees=report.fees, fee_currency=report.fee_currency, attempts=report.attempts,
                    fallback_used=report.fallback_used, reason=report.reason)
    if rejected is not None:
        info["reason"] = f"{rejected.field}: {rejected.reason}" if rejected.field else rejected.reason

    title = (f"{info['strategy'] or '?'} {info['side'] or '?'} {_text(info['qty'])} {info['symbol']} "
             f"({info['intent_id']}): {status}")
    parts: list[str] = []
    more: list[str] = []
    if report is not None:
        parts.append(f"filled {_text(report.filled_qty)} of {_text(report.qty)}")
        if report.avg_price is not None:
            parts.append(f"avg price {_text(report.avg_price, places)}")
        if report.slippage_bps is not None:
            bps = report.slippage_bps.quantize(Decimal("0.01")) + 0  # (+ 0: no "-0.00")
            parts.append(f"shortfall vs arrival mid {bps:+} bps")
        parts.append(f"fees {_text(report.fees, places)} {report.fee_currency}")
        more.append(f"{report.attempts} attempt{'s' if report.attempts != 1 else ''}"
                    + (", market fallback" if report.fallback_used else ""))
        if report.status != "filled" and report.reason:
            more.append(_clip(report.reason, 90))
    elif rejected is not None:
        parts.append(f"rejected: {_clip(info['reason'], 120)}")
    if arrival_mid is not None:
        more.append(f"arrival mid {_text(arrival_mid, places)}")
    more.append("0 = accepted" if accepted is not None else "0 = first message")
    return ExecutionPlot(
        title=title,
        subtitle="; ".join(parts) + ("\n" if parts else "") + "; ".join(more),
        quotes=quotes,
        orders=orders,
        fills=marks,
        events=events,
        arrival_mid=arrival_mid,
        footnote=_EVENT_FOOTNOTE,
        info=info,
        x_label="seconds since the intent was accepted" if accepted is not None else "seconds since the first message",
        quote_label="quoted by the pricer",
    )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _text(value: Any, places: int | None = None) -> str:
    """A number as plain text: no exponent, no trailing zeros (`places`: round to that many first)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        if places is not None and value.as_tuple().exponent < -places:  # type: ignore[operator]
            value = value.quantize(Decimal(1).scaleb(-places))
        text = format(value.normalize(), "f") if value else "0"
        return text
    return str(value)


def picture_json(plot: ExecutionPlot) -> dict[str, Any]:
    """`plot` as plain JSON (what the web page draws in the browser). Times are seconds (numbers, µs
    precision) since `info.t0_ns`; prices and quantities are strings, exact, without exponent::

        {"title": str, "subtitle": str, "footnote": str, "x_label": str, "quote_label": str,
         "arrival_mid": str | null,
         "info": {"intent_id", "venue", "symbol", "strategy", "side", "qty", "status", "t0_ns", "end_s",
                  and once reported: "filled_qty", "avg_price", "slippage_bps", "fees", "fee_currency",
                  "attempts", "fallback_used", "reason"},
         "quotes": [{"t_s", "bid", "ask"}],             # the touch, a step line: held until the next one
         "trades": [{"t_s", "price", "qty", "buyer_is_aggressor"}],     # market trades (none from the log)
         "orders": [{"label", "start_s", "end_s", "price" (null: market order), "kind" (limit | market),
                     "client_order_id", "attempt", "fallback" (bool), "status"}],
         "fills":  [{"t_s", "price", "qty", "liquidity" (maker | taker | label), "label"}],
                   # liquidity "label": no marker, a text annotation at (t_s, price): an order's fills summed
         "events": [{"t_s", "label", "kind" (timeout | kept | fallback | canceled | finished | done)}]}
    """

    def num(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, float):
            value = Decimal(repr(value))
        return _text(value) if isinstance(value, Decimal) else str(value)

    def t(value: float) -> float:
        return round(float(value), 6)

    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return _text(value)
        if isinstance(value, float):
            return round(value, 6)
        return value

    return {
        "title": plot.title,
        "subtitle": plot.subtitle,
        "footnote": plot.footnote,
        "x_label": plot.x_label,
        "quote_label": plot.quote_label,
        "arrival_mid": num(plot.arrival_mid),
        "info": {k: plain(v) for k, v in plot.info.items()},
        "quotes": [{"t_s": t(q[0]), "bid": num(q[1]), "ask": num(q[2])} for q in plot.quotes],
        "trades": [{"t_s": t(x[0]), "price": num(x[1]), "qty": num(x[2]), "buyer_is_aggressor": bool(x[3])}
                   for x in plot.trades],
        "orders": [{"label": o.label, "start_s": t(o.start_s), "end_s": t(o.end_s), "price": num(o.price),
                    "kind": o.kind, "client_order_id": o.client_order_id, "attempt": o.attempt,
                    "fallback": o.fallback, "status": o.status} for o in plot.orders],
        "fills": [{"t_s": t(f.t_s), "price": num(f.price), "qty": num(f.qty), "liquidity": f.liquidity,
                   "label": f.label} for f in plot.fills],
        "events": [{"t_s": t(e.t_s), "label": e.label, "kind": e.kind} for e in plot.events],
    }


# -- the drawing -------------------------------------------------------------------------------------------

_ATTEMPT_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"]
_EVENT_COLOURS = {"timeout": "#7f7f7f", "kept": "#17becf", "fallback": "#e377c2", "canceled": "#d62728",
                  "finished": "#555555", "done": "#000000"}
_EVENT_LEGEND = {"timeout": "attempt timeout", "kept": "attempt keeps its order", "fallback": "budget out: market fallback",
                 "canceled": "cancel accepted", "finished": "strategy finished", "done": "execution complete"}


def plot_execution(data: ExecutionPlot, path: str | Path) -> Path:
    """Draw `data` into a PNG at `path` (directories are created); returns the path."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 6.2), dpi=110)
    try:
        _draw(ax, data)
        fig.suptitle(data.title, fontsize=12, x=0.01, ha="left")
        ax.set_title(data.subtitle, fontsize=9, loc="left", color="#333333")
        if data.footnote:
            fig.text(0.01, 0.01, data.footnote, fontsize=7.5, color="#555555", ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.06 if data.footnote else 0, 1, 0.97))
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _f(value: Any) -> float:
    return float(value)


def _steps(quotes: list[tuple[float, float, float]], end: float) -> tuple[list[float], list[float], list[float]]:
    ts = [q[0] for q in quotes] + [end]
    bids = [q[1] for q in quotes] + [quotes[-1][1]]
    asks = [q[2] for q in quotes] + [quotes[-1][2]]
    return ts, bids, asks


def _draw(ax: Any, data: ExecutionPlot) -> None:
    quotes = [(_f(t), _f(b), _f(a)) for t, b, a in data.quotes]
    trades = [(_f(t), _f(p), _f(q), bool(buy)) for t, p, q, buy in data.trades]
    fills = [FillMark(f.t_s, _f(f.price), _f(f.qty), f.liquidity, f.label) for f in data.fills]
    end = max([q[0] for q in quotes] + [o.end_s for o in data.orders] + [e.t_s for e in data.events]
              + [f.t_s for f in fills] + [0.0])
    if quotes:
        ts, bids, asks = _steps(quotes, end)
        ax.step(ts, bids, where="post", color="#2ca02c", lw=1.0, label=f"best bid ({data.quote_label})")
        ax.step(ts, asks, where="post", color="#d62728", lw=1.0, label=f"best ask ({data.quote_label})")
        mids = [(b + a) / 2 for b, a in zip(bids, asks)]
        ax.step(ts, mids, where="post", color="#555555", lw=0.8, ls=":", label="mid")
    if trades:
        buys = [t for t in trades if t[3]]
        sells = [t for t in trades if not t[3]]
        scale = 40.0 / max(max(t[2] for t in trades), 1e-9)
        for group, colour, label in ((buys, "#d62728", "market trade, buyer aggressor"),
                                     (sells, "#2ca02c", "market trade, seller aggressor")):
            if group:
                ax.scatter([t[0] for t in group], [t[1] for t in group], s=[4 + t[2] * scale for t in group],
                           color=colour, alpha=0.25, lw=0, label=label, zorder=2)
    if data.arrival_mid is not None:
        ax.axhline(_f(data.arrival_mid), color="#000000", lw=0.8, ls="--", alpha=0.6, label="arrival mid")
    for i, o in enumerate(data.orders):
        colour = _ATTEMPT_COLOURS[i % len(_ATTEMPT_COLOURS)]
        if o.price is not None:
            ax.hlines(_f(o.price), o.start_s, max(o.end_s, o.start_s + 0.02), color=colour, lw=3.2, alpha=0.85,
                      label=o.label, zorder=3)
        else:
            ax.axvline(o.start_s, color=colour, lw=1.5, ls="-.", alpha=0.9, label=o.label, zorder=3)
    marks = [f for f in fills if f.liquidity in ("maker", "taker")]
    if marks:
        top = max(max(f.qty for f in marks), 1e-12)
        for liquidity, marker in (("maker", "o"), ("taker", "X")):
            group = [f for f in marks if f.liquidity == liquidity]
            if group:
                ax.scatter([f.t_s for f in group], [f.price for f in group],
                           s=[25 + 260 * f.qty / top for f in group], marker=marker, color="#000000",
                           edgecolor="#ffffff", lw=0.8, zorder=5, label=f"our fill ({liquidity}; size ~ qty)")
    for f in fills:
        if f.label:  # above and right of the order's last fill, clear of the order's own price line
            ax.annotate(f.label, (f.t_s, f.price), textcoords="offset points", xytext=(8, 12), fontsize=8,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "#ffffff", "ec": "#999999", "alpha": 0.7}, zorder=6)
    seen: set[str] = set()
    stacked: dict[float, int] = {}
    for e in data.events:
        colour = _EVENT_COLOURS.get(e.kind, "#7f7f7f")
        label = _EVENT_LEGEND.get(e.kind, e.kind)
        ax.axvline(e.t_s, color=colour, lw=1.0, ls="--", alpha=0.9, label=None if label in seen else label, zorder=1)
        seen.add(label)
        k = stacked.get(round(e.t_s, 3), 0)
        stacked[round(e.t_s, 3)] = k + 1
        ax.annotate(e.label, (e.t_s, 1.0), xycoords=("data", "axes fraction"), xytext=(-3 - 11 * k, -6),
                    textcoords="offset points", fontsize=7.5, color=colour, rotation=90, va="top", ha="right")
    ax.set_xlabel(data.x_label)
    ax.set_ylabel("price (quote currency)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
