"""The kit itself: log sequence numbers, deduplication, state between steps, timers on virtual time, rebuilds."""

from __future__ import annotations

from typing import Any

import msgspec

from bus.actor import Actor, IntentContext
from messages import CancelIntent, CancelIntentAccepted, CancelIntentRejected, Message
from tests.actors.kit import NS, ActorKit


class Count(msgspec.Struct):
    seen: int = 0
    timers: int = 0


def _cancel(intent_id: str, request: str) -> CancelIntent:
    return CancelIntent(intent_id=intent_id, venue="paper", symbol="BTC/USDT", request=request)


class Toy(Actor[Count]):
    """Counts an intent's cancels; answers each with its log position; retires after three; a timer 5 s on."""

    consumes = (CancelIntent,)
    State = Count

    def __init__(self) -> None:
        self.seqs: list[tuple[int, int]] = []

    async def handle(self, msg: Message, ctx: IntentContext[Count]) -> None:
        state = ctx.state or Count()
        state.seen += 1
        await ctx.publish(CancelIntentAccepted(intent_id=msg.intent_id, venue=msg.venue, symbol=msg.symbol,
                                               request=f"r{state.seen}", phase="x"))
        self.seqs.append((ctx.message_seq, (await ctx.sent[-1]).seq))
        ctx.wake_at(ctx.clock.now_ns() + 5 * NS)
        (ctx.retire if state.seen >= 3 else ctx.save)(state)

    async def on_timer(self, ctx: IntentContext[Count]) -> None:
        assert ctx.state is not None
        ctx.state.timers += 1
        ctx.save(ctx.state)

    async def rebuild(self, history: list[tuple[int, Message]], stored: Count | None, ctx: IntentContext[Count]) -> Any:
        return Count(seen=sum(isinstance(m, CancelIntent) for _, m in history))


async def test_the_kit_keeps_state_sequences_timers_and_rebuilds() -> None:
    toy = Toy()
    kit = await ActorKit(toy).start()

    await kit.send(_cancel("a", "1"), _cancel("a", "1"), _cancel("b", "1"))  # the second is a duplicate id

    assert kit.kinds() == ["CancelIntent", "CancelIntent", "CancelIntentAccepted", "CancelIntentAccepted"]
    assert toy.seqs == [(1, 3), (2, 4)]  # the message's own place, and what it published
    assert kit.states["a"].seen == 1 and set(kit.timers) == {"a", "b"}

    await kit.advance(4.9)
    assert kit.states["a"].timers == 0
    await kit.advance(0.1)
    assert kit.states["a"].timers == 1 and kit.timers == {}

    await kit.send(_cancel("a", "2"), _cancel("a", "3"))
    assert kit.states["a"].seen == 3 and "a" in kit.retired

    kit.states["a"] = Count()  # a snapshot that lost track: the log says otherwise
    await kit.failover(["a"])
    assert kit.states["a"].seen == 3 and kit.epoch == 2
    assert kit.of(CancelIntentRejected) == []
