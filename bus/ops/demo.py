"""`execbus demo`: the whole system on embedded defaults — a real nats-server from the wheel, the paper
exchange replaying the shipped BTC/USDT recording, every actor — running a few intents end to end."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from bus.ops.client import execute
from bus.ops.report import format_report
from bus.ops.system import System, SystemConfig
from messages import AggressiveLimitParams, IntentRejected, SubmitIntent, encode

__all__ = ["run_demo", "DEMO_INTENTS"]

DEMO_INTENTS = (
    SubmitIntent(intent_id="demo-buy-1", venue="paper", symbol="BTC/USDT", side="buy", qty=Decimal("0.01")),
    SubmitIntent(intent_id="demo-sell-1", venue="paper", symbol="BTC/USDT", side="sell", qty=Decimal("0.25")),
    SubmitIntent(intent_id="demo-buy-2", venue="paper", symbol="BTC/USDT", side="buy", qty=Decimal("1.5")),
    SubmitIntent(
        intent_id="demo-aggr-1",
        venue="paper",
        symbol="BTC/USDT",
        side="buy",
        qty=Decimal("0.05"),
        strategy="aggressive_limit",
        params=AggressiveLimitParams(total_timeout_seconds=Decimal("3"), max_retries=3),
    ),
)


async def run_demo(*, json_lines: bool = False) -> int:
    failures = 0
    async with System(SystemConfig()) as system:
        assert system.bus is not None
        print(f"execbus demo: embedded NATS at {system.url}, paper exchange on recorded BTC/USDT\n", flush=True)
        reports = await asyncio.gather(*(execute(system.bus, i, timeout=60) for i in DEMO_INTENTS))
        for report in reports:
            if json_lines:
                print(encode(report).decode())
            elif isinstance(report, IntentRejected):
                failures += 1
                print(f"{report.intent_id}: rejected: {report.code or report.field}: {report.reason}\n")
            else:
                print(format_report(report) + "\n", flush=True)
                failures += report.status == "failed"
    return 1 if failures else 0
