"""How an execution reads on a terminal: the report of an `ExecutionCompleted` and one line per message
while it runs. Shared by `execbus submit`, `execbus cancel --wait` and `execbus demo`."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["format_report", "progress_line"]


def progress_line(msg: Any) -> str:
    fields = {
        k: v
        for k, v in msgspec.structs.asdict(msg).items()
        if k not in ("intent_id", "venue", "symbol", "msg_id", "ts_event", "ts_init", "params")
        and v not in (None, "", (), False)
    }
    detail = " ".join(f"{k}={v}" for k, v in list(fields.items())[:7])
    return f"  {type(msg).__name__:<20} {detail}"


def format_report(report: Any) -> str:
    lines = [
        f"{report.intent_id}: {report.status} {report.side} {report.filled_qty}/{report.qty} {report.symbol} "
        f"on {report.venue} ({report.strategy})",
        f"  avg price {report.avg_price}  notional {report.notional}  fees {report.fees} {report.fee_currency}",
        f"  arrival mid {report.arrival_mid}  slippage {report.slippage_bps} bps  attempts {report.attempts}"
        f"  fallback {'yes' if report.fallback_used else 'no'}  fills {report.fills}  {report.duration_ms:.1f} ms",
        f"  reason: {report.reason}",
    ]
    return "\n".join(lines)
