"""PNG plots for the benchmarks: the drawing lives in `bus.ops.picture` (shared with `execbus replay plot` and
the web page), re-exported here under the names the benchmarks have always used. matplotlib is optional (the
`bench` extra): it is imported lazily, with the non-interactive Agg backend, and a missing install fails with
a message that says what to install.

`plot_execution` draws one execution over market time: the recorded bid/ask (and mid) around it, the market's
own trades, our order per attempt (its limit price while it worked), our fills, the attempt timeouts and the
market fallback. It takes plain data (`ExecutionPlot`), so it knows nothing about messages or the bus.
"""

from __future__ import annotations

from bus.ops.picture import (
    INSTALL_HINT,
    EventMark,
    ExecutionPlot,
    FillMark,
    MatplotlibMissing,
    OrderSpan,
    available,
    plot_execution,
)

__all__ = ["MatplotlibMissing", "ExecutionPlot", "OrderSpan", "FillMark", "EventMark", "available", "plot_execution",
           "INSTALL_HINT"]
