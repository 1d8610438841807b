"""What every registered strategy owes, whatever the market does: never two orders working at once, never
more placed than is left, nothing placed once a cancel is accepted, and the same end after a failover at any
point (the state rebuilt from the log). Property style: seeded random scenarios, a few dozen per strategy."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

import pytest

from actors.strategies import STRATEGIES
from messages import (
    AggressiveLimitParams, CancelIntent, CancelIntentAccepted, IcebergParams, MarketParams, PlaceOrder,
    SimpleLimitParams, SubmitIntent, TwapParams,
)
from tests.actors.kit import D, ActorKit, ScriptedMarket, order_violations, supervised

CASES = 40
"""Seeds per strategy and property."""

PARAMS: dict[str, Callable[[random.Random], Any]] = {
    "market": lambda r: MarketParams(max_slippage_bps=r.choice([None, D(5), D(50)]), timeout_seconds=D(4)),
    "simple_limit": lambda r: SimpleLimitParams(timeout_seconds=D(4), price_offset_pct=r.choice([D(0), D("0.01"), D("-0.05")])),
    "aggressive_limit": lambda r: AggressiveLimitParams(
        total_timeout_seconds=D(6), max_retries=r.choice([1, 3, 4]), fallback=r.choice(["market", "none"])
    ),
    "twap": lambda r: TwapParams(horizon_seconds=D(6), slices=r.choice([2, 4]), fallback=r.choice(["market", "none"])),
    "iceberg": lambda r: IcebergParams(display_qty=D("0.2"), timeout_seconds=D(6), fallback=r.choice(["market", "none"])),
}


def test_every_registered_strategy_has_a_scenario() -> None:
    assert set(PARAMS) == set(STRATEGIES)


@dataclass
class Scenario:
    """One intent in one scripted market, from a seed: the fill rule, per-order fill fractions, the book
    moving, partial fills over time, the pricer refusing for a while."""

    strategy: str
    seed: int
    intent: SubmitIntent = field(init=False)
    rule: str = field(init=False)
    script: list[Any] = field(init=False)
    events: list[tuple[float, str, Any]] = field(init=False)
    spread_ticks: int = field(init=False)

    def __post_init__(self) -> None:
        r = random.Random(f"{self.strategy}-{self.seed}")
        side = r.choice(["buy", "sell"])
        qty = r.choice([D(1), D("0.5"), D("0.37")])
        self.intent = SubmitIntent(intent_id=f"p-{self.strategy}-{self.seed}", venue="paper", symbol="BTC/USDT",
                                   side=side, qty=qty, strategy=self.strategy, params=PARAMS[self.strategy](r))  # type: ignore[arg-type]
        self.rule = r.choice(["marketable", "marketable", "nothing", "all"])
        self.spread_ticks = r.choice([1, 2, 3])
        self.script = [r.choice([0, 0, "0.4", 1, "reject-retryable"]) for _ in range(r.randint(0, 4))]
        if r.random() < 0.05:
            self.script.insert(r.randint(0, len(self.script)), "reject")
        self.events = []
        for _ in range(r.randint(0, 4)):
            at = round(r.uniform(0, 8), 2)
            kind = r.choice(["move", "move", "fill", "thin", "refuse"])
            arg = {"move": r.randint(-3, 3), "fill": r.choice(["0.5", 1]), "thin": r.choice([None, D("100.2")]),
                   "refuse": round(r.uniform(0.1, 1.5), 2)}[kind]
            self.events.append((at, kind, arg))

    def setup(self, kit: ActorKit, market: ScriptedMarket) -> None:
        market.rule = self.rule
        market.set_book(ask=market.book.bid + self.spread_ticks * market.book.tick)
        market.script(*self.script)
        for at, kind, arg in self.events:
            kit.at(at, _event(market, kit, kind, arg))


def _event(market: ScriptedMarket, kit: ActorKit, kind: str, arg: Any) -> Callable[[], Any]:
    def apply() -> Any:
        book = market.book
        if kind == "move":
            market.set_book(bid=book.bid + arg * book.tick, ask=book.ask + arg * book.tick)
        elif kind == "fill":
            return market.fill_working(arg)
        elif kind == "thin":
            market.set_book(sweep=arg)
        elif kind == "refuse":
            market.set_book(unavailable="book stale")
            kit.at(arg, lambda: market.set_book(unavailable=""))
        return None

    return apply


@dataclass(frozen=True)
class End:
    reason: str
    filled: Decimal
    fallback_used: bool
    canceled: bool
    orders: tuple[tuple[str, Decimal, Decimal | None], ...]


async def play(sc: Scenario, *, failover_after: int | None = None, mode: str = "failover",
               cancel_after: int | None = None) -> tuple[End, ActorKit]:
    """Run the scenario to its report. After actor step `failover_after`, by `mode`: "failover" (a new owner
    with the log alone), "restart" (with the stored snapshot too), "crash" (the next step dies after publishing,
    before saving; its input comes back first) or "crash-late" (... comes back after everything else). After
    step `cancel_after`, a client's `CancelIntent`."""
    kit, market = await supervised()
    sc.setup(kit, market)

    async def hook(k: ActorKit) -> None:
        if failover_after is not None and k.steps == failover_after:
            if mode.startswith("crash"):
                k.crash_in_next_step(late=mode == "crash-late")
            elif mode == "restart":
                await k.restart()
            else:
                await k.failover()
        if cancel_after is not None and k.steps == cancel_after:
            k.append(CancelIntent(intent_id=sc.intent.intent_id, venue="paper", symbol="BTC/USDT", request="c1",
                                  reason="test"))

    kit.on_step = hook
    await kit.send(sc.intent)
    report = await kit.run_until_finished(sc.intent.intent_id, within=300)
    await kit.advance(60)  # anything left to happen after the report would show up here
    filled = sum((o.filled for o in market.orders.values()), D(0))
    orders = tuple((o.client_order_id, o.qty, o.price) for o in market.placed)
    return End(report.reason, filled, report.fallback_used, report.canceled, orders), kit


def _cases(strategy: str) -> list[Scenario]:
    return [Scenario(strategy, seed) for seed in range(CASES)]


@pytest.mark.parametrize("strategy", sorted(PARAMS))
async def test_one_order_at_a_time_never_more_than_is_left(strategy: str) -> None:
    for sc in _cases(strategy):
        end, kit = await play(sc)
        assert order_violations(kit, sc.intent) == [], (sc, kit.kinds())
        assert end.filled <= sc.intent.qty
        assert len(kit.of(type(kit.finished(sc.intent.intent_id)))) == 1, "one report"  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", sorted(PARAMS))
async def test_a_canceled_intent_places_nothing_more(strategy: str) -> None:
    for sc in _cases(strategy):
        _, kit = await play(sc)
        end, kit = await play(sc, cancel_after=random.Random(sc.seed).randint(2, kit.steps))
        accepted = [seq for seq, m in kit.history(sc.intent.intent_id) if isinstance(m, CancelIntentAccepted)]
        if accepted:
            later = [m for seq, m in kit.history(sc.intent.intent_id) if isinstance(m, PlaceOrder) and seq > accepted[0]]
            assert later == [], (sc, later)
            assert end.canceled or end.reason == "filled", end
        assert order_violations(kit, sc.intent) == [], sc


@pytest.mark.parametrize("strategy", sorted(PARAMS))
async def test_a_failover_anywhere_ends_as_without_it(strategy: str) -> None:
    for sc in _cases(strategy):
        baseline, kit = await play(sc)
        r = random.Random(sc.seed)
        at, mode = r.randint(1, kit.steps), r.choice(["failover", "restart", "crash", "crash-late"])
        recovered, kit2 = await play(sc, failover_after=at, mode=mode)
        assert recovered == baseline, (sc, at, mode, kit2.kinds(sc.intent.intent_id))
        assert order_violations(kit2, sc.intent) == [], sc
