"""Submitting intents and waiting for their outcome: what `execbus submit`, the demo and the tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bus.bus import Bus
from messages import ExecutionCompleted, IntentRejected, Message, SubmitIntent, subjects

__all__ = ["execute", "Outcome"]

Outcome = ExecutionCompleted | IntentRejected


async def execute(
    bus: Bus,
    intent: SubmitIntent,
    *,
    timeout: float = 60.0,
    on_message: Callable[[Message], Awaitable[None]] | None = None,
    answers_only: bool = False,
) -> Outcome:
    """Publish `intent` and return its report (or its rejection). Subscribes before publishing, so no
    message of the intent can be missed. Raises `TimeoutError` when nothing final came in `timeout`.
    `answers_only`: hear only the answers, fills and report (`subjects.ANSWER_KINDS`), all an upstream user
    may read."""
    outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    async def follow(msg: Message) -> None:
        if on_message is not None:
            await on_message(msg)
        if isinstance(msg, ExecutionCompleted | IntentRejected) and not outcome.done():
            outcome.set_result(msg)

    patterns = subjects.answer_filters(intent.intent_id) if answers_only else [f"{subjects.PREFIX}.*.*.*.{intent.intent_id}"]
    subs = [await bus.subscribe(pattern, follow) for pattern in patterns]
    try:
        await bus.nc.flush()
        await bus.publish(intent)
        return await asyncio.wait_for(outcome, timeout)
    finally:
        for sub in subs:
            await sub.unsubscribe()
