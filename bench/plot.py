"""PNG plots for the benchmarks. matplotlib is optional (the `bench` extra): it is imported lazily, with the
non-interactive Agg backend, and a missing install fails with a message that says what to install.

`plot_execution` draws one execution over market time: the recorded bid/ask (and mid) around it, the market's
own trades, our order per attempt (its limit price while it worked), our fills, the attempt timeouts and the
market fallback. It takes plain data (`ExecutionPlot`), so it knows nothing about messages or the bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MatplotlibMissing", "ExecutionPlot", "OrderSpan", "FillMark", "EventMark", "available", "plot_execution"]

INSTALL_HINT = "pip install 'execbus[bench]'  (or: .venv/bin/pip install matplotlib)"


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
        raise MatplotlibMissing(f"bench plots need matplotlib, which is not installed: {INSTALL_HINT}") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@dataclass
class OrderSpan:
    """One of our orders while it worked: a limit price held from `start_s` to `end_s` (None price: market)."""

    label: str
    start_s: float
    end_s: float
    price: float | None
    kind: str = "limit"
    """limit | market"""


@dataclass
class FillMark:
    t_s: float
    price: float
    qty: float
    liquidity: str
    """maker | taker; `label` marks a text-only annotation (no marker) at (t_s, price)"""
    label: str = ""


@dataclass
class EventMark:
    t_s: float
    label: str
    kind: str = "timeout"
    """timeout | fallback | done"""


@dataclass
class ExecutionPlot:
    title: str
    subtitle: str
    quotes: list[tuple[float, float, float]]
    """(t_s, bid, ask) after each change of the recorded book, seconds since arrival."""
    trades: list[tuple[float, float, float, bool]] = field(default_factory=list)
    """Market trades: (t_s, price, qty, buyer_is_aggressor)."""
    orders: list[OrderSpan] = field(default_factory=list)
    fills: list[FillMark] = field(default_factory=list)
    events: list[EventMark] = field(default_factory=list)
    arrival_mid: float | None = None
    footnote: str = ""


_ATTEMPT_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"]


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


def _steps(quotes: list[tuple[float, float, float]], end: float) -> tuple[list[float], list[float], list[float]]:
    ts = [q[0] for q in quotes] + [end]
    bids = [q[1] for q in quotes] + [quotes[-1][1]]
    asks = [q[2] for q in quotes] + [quotes[-1][2]]
    return ts, bids, asks


def _draw(ax: Any, data: ExecutionPlot) -> None:
    end = max([q[0] for q in data.quotes] + [o.end_s for o in data.orders] + [e.t_s for e in data.events] + [0.0])
    if data.quotes:
        ts, bids, asks = _steps(data.quotes, end)
        ax.step(ts, bids, where="post", color="#2ca02c", lw=1.0, label="best bid (recorded book)")
        ax.step(ts, asks, where="post", color="#d62728", lw=1.0, label="best ask (recorded book)")
        mids = [(b + a) / 2 for b, a in zip(bids, asks)]
        ax.step(ts, mids, where="post", color="#555555", lw=0.8, ls=":", label="mid")
    if data.trades:
        buys = [t for t in data.trades if t[3]]
        sells = [t for t in data.trades if not t[3]]
        scale = 40.0 / max(max(t[2] for t in data.trades), 1e-9)
        for group, colour, label in ((buys, "#d62728", "market trade, buyer aggressor"),
                                     (sells, "#2ca02c", "market trade, seller aggressor")):
            if group:
                ax.scatter([t[0] for t in group], [t[1] for t in group], s=[4 + t[2] * scale for t in group],
                           color=colour, alpha=0.25, lw=0, label=label, zorder=2)
    if data.arrival_mid is not None:
        ax.axhline(data.arrival_mid, color="#000000", lw=0.8, ls="--", alpha=0.6, label="arrival mid")
    for i, o in enumerate(data.orders):
        colour = _ATTEMPT_COLOURS[i % len(_ATTEMPT_COLOURS)]
        if o.price is not None:
            ax.hlines(o.price, o.start_s, max(o.end_s, o.start_s + 0.02), color=colour, lw=3.2, alpha=0.85,
                      label=o.label, zorder=3)
        else:
            ax.axvline(o.start_s, color=colour, lw=1.5, ls="-.", alpha=0.9, label=o.label, zorder=3)
    marks = [f for f in data.fills if f.liquidity in ("maker", "taker")]
    if marks:
        top = max(f.qty for f in marks)
        for liquidity, marker in (("maker", "o"), ("taker", "X")):
            group = [f for f in marks if f.liquidity == liquidity]
            if group:
                ax.scatter([f.t_s for f in group], [f.price for f in group],
                           s=[25 + 260 * f.qty / top for f in group], marker=marker, color="#000000",
                           edgecolor="#ffffff", lw=0.8, zorder=5, label=f"our fill ({liquidity}; size ~ qty)")
    for f in data.fills:
        if f.label:  # above and right of the order's last fill, clear of the order's own price line
            ax.annotate(f.label, (f.t_s, f.price), textcoords="offset points", xytext=(8, 12), fontsize=8,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "#ffffff", "ec": "#999999", "alpha": 0.7}, zorder=6)
    seen: set[str] = set()
    stacked: dict[float, int] = {}
    for e in data.events:
        colour = {"timeout": "#7f7f7f", "fallback": "#e377c2", "done": "#000000"}.get(e.kind, "#7f7f7f")
        label = {"timeout": "attempt timeout", "fallback": "budget out: market fallback",
                 "done": "execution complete"}.get(e.kind, e.kind)
        ax.axvline(e.t_s, color=colour, lw=1.0, ls="--", alpha=0.9, label=None if label in seen else label, zorder=1)
        seen.add(label)
        k = stacked.get(round(e.t_s, 3), 0)
        stacked[round(e.t_s, 3)] = k + 1
        ax.annotate(e.label, (e.t_s, 1.0), xycoords=("data", "axes fraction"), xytext=(-3 - 11 * k, -6),
                    textcoords="offset points", fontsize=7.5, color=colour, rotation=90, va="top", ha="right")
    ax.set_xlabel("market time since arrival (s)")
    ax.set_ylabel("price (quote currency)")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
