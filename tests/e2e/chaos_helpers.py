"""A seeded chaos run: every actor in its own process (two replicas of most), the paper venue in its own
process replaying the shipped recording in real time, a burst of intents of every strategy, and SIGKILLs of
random actor processes (and once of nats-server) while they execute. Afterwards the venue's own records and
the EXEC log are checked against the invariants that must survive any crash:

    every intent has exactly one ExecutionCompleted and no IntentRejected
    no client order id was created twice at the venue
    nothing of ours is left open at the venue
    per intent, what the venue traded equals the report's filled_qty and never exceeds the intent's qty
    an intent whose cancel was accepted ends `canceled` (or `filled`, when the fills won the race), and no
    order of it commanded after the cancel in the log reached the venue; only a cancel after the intent's
    acceptance in the log can make it `canceled`

Some intents (`ChaosConfig.cancel_share`) are canceled by upstream a seeded moment after their submission,
while the kills go on: the cancel must survive them like everything else.

`run_chaos(seed, workdir)` does one run and returns a `ChaosResult` (summary + violations with evidence).
`tests/e2e/test_chaos.py` runs one seed in the suite; `tests/e2e/run_chaos_seeds.py` runs many.

Kills: the seeded RNG picks an actor (weighted by replicas) and one of its live processes; a kill event
sometimes takes two processes at once; every killed process is restarted after a seeded delay (as a process
supervisor would, again if it exits while starting). By default the last live replica of a two-replica actor
is never killed, so the kills exercise lease failover under load rather than a whole actor being down
(`ChaosConfig.keep_one_replica`); market_fallback runs one replica and is killed outright. Kills are not made
while nats-server is down (that one is killed once, and restarted on the same store and port).

Timing: the *scenario* (when each intent is submitted, when each kill happens, how long a killed process
stays down, how long nats-server stays down) is a seeded schedule of delays — that is what is being tested,
not synchronisation. Every *wait* (a process ready, the venue answering, reports arriving) is on a condition
with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from bus.bus import Bus
from bus.server import EmbeddedNats
from messages import (
    CancelIntent,
    CancelIntentAccepted,
    CancelIntentRejected,
    ExecutionCompleted,
    IntentAccepted,
    StrategyParams,
    params_for,
    IntentRejected,
    Message,
    PlaceOrder,
    SubmitIntent,
    decode,
    subjects,
)
from messages.base import routing
from tests.e2e.recovery_helpers import ACTOR_ENV, REPO, ActorProcess, read_log
from tests.helpers import fast_settings, wait_until
from venues.paper import PaperExchange

__all__ = ["ChaosConfig", "ChaosResult", "DEFAULT_SEED", "run_chaos", "seed_from_env"]

DEFAULT_SEED = 20261201
SYMBOL = "BTC/USDT"
REPLICAS = {"supervisor": 2, "pricer": 2, "placer": 2, "reconciler": 2, "tracker": 2, "market_fallback": 1}
VARIANTS = ("market", "simple_limit", "aggressive_fb_market", "aggressive_fb_none", "market_capped", "twap", "iceberg")
TAGS = {"market": "mkt", "simple_limit": "lim", "aggressive_fb_market": "agm", "aggressive_fb_none": "agn",
        "market_capped": "cap", "twap": "twp", "iceberg": "ice"}


def seed_from_env() -> int:
    raw = os.environ.get("EXECBUS_CHAOS_SEED", "").strip()
    return int(raw) if raw else DEFAULT_SEED


@dataclass(frozen=True)
class ChaosConfig:
    per_variant: int = 29
    """Intents of each of the seven variants (market, simple_limit, aggressive_limit fallback=market,
    aggressive_limit fallback=none, market with max_slippage_bps, twap, iceberg): about 200 in all."""
    submit_window_s: float = 10.0
    actor_kill_events: int = 12
    """Kill events (some kill two processes at once); at least 10 processes are killed in all."""
    double_kill_probability: float = 0.3
    kill_window_s: tuple[float, float] = (0.3, 12.0)
    nats_kill_window_s: tuple[float, float] = (3.0, 8.0)
    nats_down_s: tuple[float, float] = (0.5, 1.5)
    restart_delay_s: tuple[float, float] = (0.1, 1.0)
    keep_one_replica: bool = True
    """Never kill the last live process of an actor that runs two replicas: the kills exercise failover under
    load rather than a whole actor being down (that is `test_recovery`'s matter). market_fallback, with one
    replica, is killed outright. False: anything live may be killed."""
    min_kills: int = 10
    cancel_share: float = 0.12
    """Share of intents canceled `cancel_after_s` after their submission."""
    cancel_after_s: tuple[float, float] = (0.05, 3.0)
    report_deadline_s: float = 60.0
    """After the last submission, how long every intent has to get its report."""


# -- the result ---------------------------------------------------------------------------------------------


@dataclass
class Violation:
    invariant: str
    intent_id: str
    detail: str
    evidence: str = ""


@dataclass
class ChaosResult:
    seed: int
    workdir: Path
    intents: int = 0
    kills: int = 0
    nats_restarts: int = 0
    reports: int = 0
    rejected: int = 0
    max_overfill: Decimal = Decimal(0)
    duplicate_cids: int = 0
    open_orders: int = 0
    qty_mismatches: int = 0
    dead_letters: int = 0
    late_fills: int = 0
    wall_s: float = 0.0
    audit_source: str = ""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Report statuses (and fallback use) over all intents: shows what the run exercised."""
    violations: list[Violation] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    """Noteworthy but not an invariant: a restarted actor that exited while starting (and was restarted
    again), an intent whose report says `failed`."""
    errors: list[str] = field(default_factory=list)
    """Harness trouble (a process that would not restart, a check that could not run)."""

    def summary(self) -> str:
        return (
            f"chaos seed={self.seed} intents={self.intents} kills={self.kills} nats_restarts={self.nats_restarts} "
            f"reports={self.reports}/{self.intents} rejected={self.rejected} max_overfill={self.max_overfill} "
            f"duplicate_cids={self.duplicate_cids} open_orders={self.open_orders} qty_mismatches={self.qty_mismatches} "
            f"outcomes={dict(sorted(self.outcomes.items()))} dead_letters={self.dead_letters} late_fills={self.late_fills} violations={len(self.violations)} "
            f"findings={len(self.findings)} errors={len(self.errors)} wall={self.wall_s:.1f}s venue_records={self.audit_source} logs={self.workdir}"
        )

    @property
    def ok(self) -> bool:
        return not self.violations and not self.errors

    def failure_message(self, max_per_invariant: int = 4) -> str:
        lines = [self.summary(), f"seed {self.seed} (rerun: EXECBUS_CHAOS_SEED={self.seed})",
                 f"actor, venue and nats-server logs: {self.workdir}  (full evidence: {self.workdir / 'chaos_report.txt'})"]
        for err in self.errors:
            lines.append(f"HARNESS: {err}")
        for finding in self.findings:
            lines.append(f"FINDING (not an invariant): {finding}")
        by_invariant: dict[str, list[Violation]] = defaultdict(list)
        for v in self.violations:
            by_invariant[v.invariant].append(v)
        for invariant, items in by_invariant.items():
            lines.append(f"== {invariant}: {len(items)} intent(s): {', '.join(v.intent_id for v in items[:30])}")
            for v in items[:max_per_invariant]:
                lines.append(f"-- {v.intent_id}: {v.detail}")
                if v.evidence:
                    lines.append(v.evidence)
        lines.append("== chaos timeline")
        lines.extend(self.events)
        return "\n".join(lines)

    def full_report(self) -> str:
        return self.failure_message(max_per_invariant=10**6)


# -- processes ---------------------------------------------------------------------------------------------


class VenueProcess:
    """`execbus venue paper --nats URL --profile binance --seed N`: the paper venue as its own process, replaying
    the shipped recording at 1x (its default), with the Binance profile: new orders invisible to lookups for up
    to 300 ms, an order rate limit, client order ids unique only among open orders."""

    def __init__(self, url: str, log_dir: Path, seed: int) -> None:
        self.url = url
        self.log_path = log_dir / "venue.paper.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.flags = _venue_flags(seed)

    def start(self) -> VenueProcess:
        env = {**os.environ, "EXECBUS_LOG_LEVEL": "info", "EXECBUS_LOG_JSON": "1", "NATS_URL": self.url}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                # -X faulthandler: a SIGABRT at the end dumps where a venue that stopped answering is stuck
                [sys.executable, "-X", "faulthandler", "-m", "bus.ops.cli", "venue", "paper", "--nats", self.url, *self.flags],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def _venue_flags(seed: int) -> list[str]:
    """`--profile binance --seed N` when this checkout's `execbus venue paper` takes them (else its defaults)."""
    from bus.ops.cli import _parser

    flags = ["--profile", "binance", "--seed", str(seed)]
    try:
        _parser().parse_args(["venue", "paper", *flags])
    except SystemExit:
        return []
    return flags


@dataclass
class Intent:
    submit: SubmitIntent
    variant: str
    at_s: float
    published_at_s: float | None = None
    publish_error: str = ""
    cancel_after_s: float | None = None
    """Upstream cancels it this long after publishing it (None: never)."""


class ChaosRun:
    def __init__(self, seed: int, workdir: Path, config: ChaosConfig) -> None:
        self.seed = seed
        self.workdir = workdir
        self.config = config
        self.rng = random.Random(seed)
        self.result = ChaosResult(seed=seed, workdir=workdir)
        self.server: EmbeddedNats | None = None
        self.venue: VenueProcess | None = None
        self.bus: Bus | None = None
        self.exchange: Any = None
        self.live: list[ActorProcess] = []
        self.everything: list[ActorProcess] = []
        self.generations: Counter[str] = Counter()
        self.t0 = 0.0
        self.t0_ns = 0
        self.nats_up = asyncio.Event()
        self.intents: list[Intent] = []
        self.restarts: list[asyncio.Task[None]] = []

    # -- bookkeeping ----------------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        line = f"{self.now():8.3f}s  {time.strftime('%H:%M:%S', time.gmtime())}.{int(time.time() * 1000) % 1000:03d}Z  {text}"
        self.result.events.append(line)
        with open(self.workdir / "chaos_events.log", "a") as f:
            f.write(line + "\n")

    # -- start / stop -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.t0 = time.monotonic()
        self.t0_ns = time.time_ns()
        self.server = await EmbeddedNats(store_dir=self.workdir / "nats").start()
        self.nats_up.set()
        self.event(f"nats-server up at {self.server.url} (store {self.server.store_dir})")
        self.venue = VenueProcess(self.server.url, self.workdir, self.seed).start()
        self.bus = await Bus.connect(self.server.url, fast_settings(ack_wait_s=4.0), name="chaos-test")
        # The notional limits off (a 3 BTC capped market is bigger than the default), the balance check and
        # the venue's own order rate (Binance: 100 per 10 s) on: as `execbus risk set` would.
        controls = await self.bus.controls()
        await controls.set_limit("max_intent_notional", "1000000000")
        await controls.set_limit("max_open_notional", "1000000000")
        await controls.set_limit("max_orders_per_second", "10")
        self.exchange = PaperExchange({"options": {"natsUrl": self.server.url}, "timeout": 3000})

        async def venue_answers() -> bool:
            if not self.venue or not self.venue.alive():
                raise AssertionError(f"the venue process exited: {_tail(self.workdir / 'venue.paper.log')}")
            try:
                await self.exchange.load_markets(reload=True)
                await self.exchange.fetch_order_book(SYMBOL, 5)
                return True
            except Exception:
                return False

        await wait_until(venue_answers, timeout=30, interval=0.1)
        try:
            profile = (await self.exchange._rpc("features")).get("profile")
        except Exception as exc:
            profile = f"unknown ({exc!r:.80})"
        self.event(f"paper venue process answers (flags {self.venue.flags or 'none: this CLI takes no config'}; profile {profile})")
        starting = [self._spawn(name) for name, n in REPLICAS.items() for _ in range(n)]
        await asyncio.gather(*(p.ready(timeout=60) for p in starting))
        self.live.extend(starting)
        self.event(f"{len(starting)} actor processes ready: {', '.join(p.log_path.stem for p in starting)}")

    def _spawn(self, name: str) -> ActorProcess:
        self.generations[name] += 1
        assert self.server is not None
        proc = ActorProcess(name, self.server.url, self.workdir, self.generations[name]).start()
        self.everything.append(proc)
        return proc

    async def stop(self) -> None:
        for task in self.restarts:
            task.cancel()
        await asyncio.gather(*self.restarts, return_exceptions=True)
        for proc in self.everything:
            proc.kill()
        if self.venue is not None:
            self.venue.kill()
        for step in (self.exchange.close() if self.exchange else None, self.bus.close() if self.bus else None):
            if step is None:
                continue
            try:
                await asyncio.wait_for(step, 5)
            except Exception:
                pass
        if self.server is not None:
            await self.server.stop()

    # -- the scenario -----------------------------------------------------------------------------------------

    def plan_intents(self) -> None:
        rng = self.rng
        variants = [v for v in VARIANTS for _ in range(self.config.per_variant)]
        rng.shuffle(variants)
        times = sorted(rng.uniform(0.0, self.config.submit_window_s) for _ in variants)
        for i, (variant, at) in enumerate(zip(variants, times)):
            side = rng.choice(("buy", "sell"))
            qty = Decimal(rng.randint(20, 400)) * Decimal("0.00001")  # 0.0002 .. 0.004 BTC, >= 5 USDT
            strategy = "market"
            params: dict[str, Any] = {}
            if variant == "market":
                pass
            elif variant == "simple_limit":
                strategy = "simple_limit"
                params = {"price_offset_pct": rng.choice((Decimal(0), Decimal("0.001"), Decimal("-0.001"))),
                          "timeout_seconds": Decimal(rng.choice((2, 3, 4)))}
            elif variant == "twap":
                strategy = "twap"
                qty = Decimal(rng.randint(60, 400)) * Decimal("0.00001")  # slices of >= 0.0002 BTC (>= 5 USDT)
                params = {"horizon_seconds": Decimal(rng.choice((2, 3, 4))), "slices": rng.choice((2, 3)),
                          "attempts_per_slice": rng.choice((1, 2, 3)), "fallback": rng.choice(("market", "none"))}
            elif variant == "iceberg":
                strategy = "iceberg"
                display = max(Decimal("0.0001"), (qty / 2).quantize(Decimal("0.00001")))
                params = {"display_qty": display, "timeout_seconds": Decimal(rng.choice((2, 3, 4))),
                          "fallback": rng.choice(("market", "none"))}
            elif variant in ("aggressive_fb_market", "aggressive_fb_none"):
                strategy = "aggressive_limit"
                params = {"total_timeout_seconds": Decimal(rng.choice((2, 3, 4))), "max_retries": rng.choice((1, 2, 3)),
                          "fallback": "market" if variant == "aggressive_fb_market" else "none"}
            else:
                params = {"max_slippage_bps": Decimal(rng.choice((0, 1, 5))), "timeout_seconds": Decimal(rng.choice((2, 3)))}
                if rng.random() < 0.3:
                    qty = Decimal(rng.randint(100, 300)) * Decimal("0.01")  # 1..3 BTC: deeper than the touch
            intent_id = f"x{self.seed % 100000}-{i:03d}-{TAGS[variant]}"
            submit = SubmitIntent(intent_id=intent_id, venue="paper", symbol=SYMBOL, side=side, qty=qty,
                                  strategy=strategy, params=params_for(strategy, params))  # type: ignore[arg-type]
            cancel_after = rng.uniform(*self.config.cancel_after_s) if rng.random() < self.config.cancel_share else None
            self.intents.append(Intent(submit, variant, at, cancel_after_s=cancel_after))

    async def submit_all(self) -> None:
        start = self.now()
        tasks = []
        for intent in self.intents:
            # scenario pacing: each intent is submitted at its seeded moment
            delay = start + intent.at_s - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._publish(intent)))
        await asyncio.gather(*tasks)
        self.event(f"all {len(self.intents)} intents published (last at {max(i.published_at_s or 0 for i in self.intents):.3f}s)")

    async def _publish(self, intent: Intent) -> None:
        """Upstream's resend: the same message (same Nats-Msg-Id) until JetStream stores it."""
        assert self.bus is not None
        deadline = self.now() + 30
        while True:
            await self.nats_up.wait()
            try:
                await asyncio.wait_for(self.bus.publish(intent.submit), 2.0)
                intent.published_at_s = self.now()
                break
            except Exception as exc:
                if self.now() > deadline:
                    intent.publish_error = repr(exc)
                    self.result.errors.append(f"{intent.submit.intent_id} could not be published: {exc!r}")
                    return
                await asyncio.sleep(0.1)  # retry interval of the resend loop, not a synchronisation
        if intent.cancel_after_s is not None:
            await asyncio.sleep(intent.cancel_after_s)  # scenario pacing: upstream changes its mind then
            await self._cancel(intent)

    async def _cancel(self, intent: Intent) -> None:
        """Upstream's cancel, resent like a submission until JetStream stores it; answered "unknown" (it
        reached the log before the intent's acceptance, which a slow failover delays), it is sent again, as
        the answer says to, until it is accepted or the intent has finished."""
        assert self.bus is not None
        answers: dict[str, Any] = {}
        arrived = asyncio.Event()

        async def answer(msg: Message) -> None:
            if isinstance(msg, CancelIntentAccepted | CancelIntentRejected):
                answers[msg.request] = msg
                arrived.set()

        subject = subjects.subject("*", intent.submit.venue, intent.submit.symbol, intent.submit.intent_id)
        sub = await self.bus.subscribe(subject, answer)
        try:
            for attempt in range(1, 11):
                request = f"chaos-{attempt}"
                cancel = CancelIntent(**routing(intent.submit), request=request,
                                      reason="chaos: upstream changed its mind", requested_by="chaos")
                if not await self._publish_cancel(intent, cancel):
                    return
                deadline = self.now() + 15
                while request not in answers and self.now() < deadline:
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), max(deadline - self.now(), 0.01))
                    except asyncio.TimeoutError:
                        break
                got = answers.get(request)
                if not (isinstance(got, CancelIntentRejected) and got.status == "unknown"):
                    return  # accepted, finished, or no answer in time (the log has it; the check judges)
                await asyncio.sleep(0.3)  # scenario pacing: upstream's resend interval
        finally:
            await sub.unsubscribe()

    async def _publish_cancel(self, intent: Intent, cancel: CancelIntent) -> bool:
        assert self.bus is not None
        deadline = self.now() + 30
        while True:
            await self.nats_up.wait()
            try:
                await asyncio.wait_for(self.bus.publish(cancel), 2.0)
                return True
            except Exception as exc:
                if self.now() > deadline:
                    self.result.errors.append(f"{intent.submit.intent_id}: its cancel could not be published: {exc!r}")
                    return False
                await asyncio.sleep(0.1)  # retry interval of the resend loop, not a synchronisation

    def plan_kills(self) -> list[tuple[float, str]]:
        rng = self.rng
        lo, hi = self.config.kill_window_s
        plan = [(rng.uniform(lo, hi), "double" if rng.random() < self.config.double_kill_probability else "single")
                for _ in range(self.config.actor_kill_events)]
        plan.append((rng.uniform(*self.config.nats_kill_window_s), "nats"))
        plan.sort()
        singles = sum(1 for _t, k in plan if k == "single") + 2 * sum(1 for _t, k in plan if k == "double")
        if singles < 10:  # at least ten processes killed in all
            plan.append((rng.uniform(lo, hi), "double"))
            plan.sort()
        return plan

    async def chaos(self) -> None:
        start = self.now()
        for at, kind in self.plan_kills():
            # scenario pacing: the seeded moment of the next kill
            delay = start + at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.nats_up.wait()  # actors are killed while nats-server runs (their restart needs it)
            if kind == "nats":
                await self._kill_nats()
            else:
                self._kill_actors(2 if kind == "double" else 1)
        # top up to the minimum (a kill finds nobody to kill while everything killable is restarting)
        extra = 0
        while self.result.kills < self.config.min_kills and extra < 20:
            extra += 1
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))  # scenario pacing of the extra kills
            await self.nats_up.wait()
            self._kill_actors(1)

    def _kill_actors(self, n: int) -> None:
        """Kill `n` distinct live actor processes: the seeded RNG picks an actor (weighted by its replica
        count), then one of its live processes."""
        victims: list[ActorProcess] = []
        names = [name for name, k in REPLICAS.items() for _ in range(k)]
        for _ in range(n):
            candidates = [p for p in self.live if p.proc is not None and p.proc.poll() is None and p not in victims]
            if self.config.keep_one_replica:
                alive = Counter(p.name for p in candidates)
                candidates = [p for p in candidates if REPLICAS[p.name] == 1 or alive[p.name] > 1]
            if not candidates:
                break
            live_names = {p.name for p in candidates}
            name = self.rng.choice([x for x in names if x in live_names])
            victims.append(self.rng.choice([p for p in candidates if p.name == name]))
        if not victims:
            self.event("no actor process may be killed now (skipped)")
            return
        for victim in victims:
            victim.kill()
            self.live.remove(victim)
            self.result.kills += 1
        self.event(f"SIGKILL {' + '.join(v.log_path.stem for v in victims)}")
        for victim in victims:
            delay = self.rng.uniform(*self.config.restart_delay_s)
            self.restarts.append(asyncio.create_task(self._restart(victim.name, delay, victim.log_path.stem)))

    async def _restart(self, name: str, delay: float, was: str) -> None:
        """Restart like a process supervisor (Restart=on-failure): a process that exits while starting is
        started again, up to 5 times; each such exit is a finding, and giving up is a harness error."""
        await asyncio.sleep(delay)  # scenario: how long the killed process stays down
        for attempt in range(1, 6):
            await self.nats_up.wait()
            proc = self._spawn(name)
            try:
                await proc.ready(timeout=45)
            except AssertionError as exc:
                tail = [line for line in proc.tail(200).splitlines() if line.strip()]
                first = (tail[-1] if tail else str(exc).splitlines()[0])[:200]  # the exception it died of
                refusal = next((line for line in tail if "refusing to run" in line), "")[:300]
                self.result.findings.append(f"{proc.log_path.stem} (restart {attempt} of {was}) exited while starting: "
                                            f"{refusal or first}")
                self.event(f"restart of {was} as {proc.log_path.stem} FAILED: {refusal or first}")
                await asyncio.sleep(0.5)  # the process supervisor's restart back-off
                continue
            self.live.append(proc)
            self.event(f"restarted {was} as {proc.log_path.stem} (replica {proc.replica})")
            return
        self.result.errors.append(f"{was} could not be restarted in 5 attempts (see {name}.*.log)")

    async def _kill_nats(self) -> None:
        assert self.server is not None
        self.nats_up.clear()
        self.server.kill()
        self.result.nats_restarts += 1
        self.event("SIGKILL nats-server")
        await asyncio.sleep(self.rng.uniform(*self.config.nats_down_s))  # scenario: how long it stays down
        await self.server.start()
        self.nats_up.set()
        self.event(f"nats-server restarted on the same store and port ({self.server.url})")
        self.restarts.append(asyncio.create_task(self._venue_back()))

    async def _venue_answers(self) -> bool:
        try:
            await self.exchange.fetch_order_book(SYMBOL, 5)
            return True
        except Exception:
            return False

    async def _venue_back(self, timeout: float = 20.0) -> None:
        """Evidence, not a gate: when the venue process answers again after the nats-server restart."""
        restarted = self.now()
        while self.now() - restarted < timeout:
            if await self._venue_answers():
                self.event(f"the venue answers again {self.now() - restarted:.2f}s after the nats-server restart")
                return
            await asyncio.sleep(0.1)  # polling: the venue's reconnection has no event we can wait on
        alive = self.venue is not None and self.venue.alive()
        self.event(f"the venue did NOT answer within {timeout}s of the nats-server restart (process alive: {alive})")

    # -- waiting for the outcome -------------------------------------------------------------------------------

    async def _subject_intents(self, kind: str) -> Counter[str]:
        """Per intent id, how many stored messages of `kind` the EXEC stream holds (from the stream's
        per-subject counts: cheap enough to poll)."""
        assert self.bus is not None
        info = await self.bus.js.stream_info(self.bus.settings.stream, subjects_filter=f"exec.{kind}.>")
        counts: Counter[str] = Counter()
        for subject, n in (info.state.subjects or {}).items():
            counts[subjects.parse(subject).intent_id] += n  # type: ignore[union-attr]
        return counts

    async def wait_for_reports(self) -> None:
        want = {i.submit.intent_id for i in self.intents if not i.publish_error}
        deadline = self.now() + self.config.report_deadline_s
        while True:
            try:
                done = set(await self._subject_intents("execution_completed"))
                rejected = set(await self._subject_intents("intent_rejected"))
            except Exception:
                done, rejected = set(), set()
            finished = (done | rejected) & want
            if finished == want:
                self.event(f"every intent has a report or a rejection ({len(done & want)} reports, {len(rejected & want)} rejected)")
                return
            if self.now() > deadline:
                missing = sorted(want - finished)
                self.event(f"report deadline passed: {len(missing)} intents without a report: {', '.join(missing[:20])}")
                await self.diagnose()
                return
            await asyncio.sleep(0.25)  # polling the stream's subject counts: the condition has no event

    async def diagnose(self) -> None:
        """Evidence for intents stuck without a report: every durable consumer's position and every live
        replica's status (`execbus.ctl.<actor>.status`, all replies)."""
        assert self.bus is not None
        lines = []
        try:
            for ci in await self.bus.js.consumers_info(self.bus.settings.stream):
                if ci.num_pending or ci.num_ack_pending or ci.num_redelivered:
                    lines.append(f"consumer {ci.name}: pending={ci.num_pending} ack_pending={ci.num_ack_pending} "
                                 f"redelivered={ci.num_redelivered} delivered={ci.delivered.stream_seq if ci.delivered else None} "
                                 f"ack_floor={ci.ack_floor.stream_seq if ci.ack_floor else None} waiting={ci.num_waiting}")
        except Exception as exc:
            lines.append(f"consumers_info failed: {exc!r}")
        nc = self.bus.nc
        for name in REPLICAS:
            inbox = nc.new_inbox()
            replies: list[bytes] = []

            async def got(msg: Any) -> None:
                replies.append(msg.data)

            sub = await nc.subscribe(inbox, cb=got)
            await nc.publish(f"execbus.ctl.{name}.status", b"", reply=inbox)
            await nc.flush()
            await asyncio.sleep(0.5)  # collecting every replica's answer to one request: no count to wait for
            await sub.unsubscribe()
            for data in replies:
                text = data.decode(errors="replace")
                lines.append(f"status {name}: {text if len(text) < 600 else text[:600] + '...'}")
        for line in lines:
            self.event("diagnose: " + line)

    # -- checking -----------------------------------------------------------------------------------------------

    async def venue_records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """(every order of the account, the open ones, every trade), in the venue's wire form (exact strings).
        Prefers the venue's audit of accepted creates when it exists; otherwise closed + open orders."""
        ex = self.exchange
        opened = [o["info"] for o in await ex.fetch_open_orders(SYMBOL)]
        trades = [t["info"] for t in await ex.fetch_my_trades(SYMBOL)]
        audit: list[dict[str, Any]] | None = None
        try:
            reply = await ex.paper_control("audit")
            audit = reply.get("accepted") if isinstance(reply, dict) else None
            if isinstance(reply, dict) and reply.get("dropped"):
                self.result.errors.append(f"the venue audit dropped {reply['dropped']} creates")
            if isinstance(reply, dict):
                self.event(f"venue audit: {len(audit or [])} accepted creates, refused by class {reply.get('refused')}")
        except Exception as exc:
            self.result.audit_source = "closed+open orders"
            self.event(f"no venue audit ({exc!r:.80}): using fetch_closed_orders + fetch_open_orders + fetch_my_trades")
        if audit is not None and isinstance(audit, list):
            self.result.audit_source = "audit"
            orders = [_audit_to_wire(a) for a in audit]
        else:
            closed = [o["info"] for o in await ex.fetch_closed_orders(SYMBOL)]
            orders = closed + opened
        return orders, opened, trades

    async def check(self) -> None:
        assert self.bus is not None
        res = self.result
        res.intents = len(self.intents)
        log = await read_log(self.bus, "exec.>", timeout=10)
        by_intent: dict[str, list[tuple[int, Message]]] = defaultdict(list)
        dead = 0
        for seq, subject, data in log:
            if subject.startswith("exec.dead_letter."):
                dead += 1
                continue
            try:
                msg = decode(data)
            except Exception:
                continue
            by_intent[msg.intent_id].append((seq, msg))
        res.dead_letters = dead
        res.late_fills = sum(1 for msgs in by_intent.values() for _s, m in msgs if type(m).__name__ == "LateFillRecorded")

        if not await self._venue_answers():
            alive = self.venue is not None and self.venue.alive()
            self.event(f"the venue does not answer at check time (process alive: {alive}); SIGABRT for a traceback")
            if alive and self.venue is not None and self.venue.proc is not None:
                self.venue.proc.send_signal(signal.SIGABRT)
            res.errors.append(f"the paper venue process does not answer at check time (alive: {alive}): the venue "
                              f"invariants could not be checked; see {self.venue.log_path if self.venue else ''}")
            orders, opened, trades = [], [], []
        else:
            orders, opened, trades = await self.venue_records()
        intent_of = {i.submit.intent_id: i for i in self.intents}
        cid_re = re.compile(r"^(.*)-(\d+|F)$")
        venue_by_intent: dict[str, list[dict[str, Any]]] = defaultdict(list)
        stray: list[dict[str, Any]] = []
        for o in orders:
            cid = o.get("clientOrderId") or ""
            m = cid_re.match(cid)
            if m and m.group(1) in intent_of:
                venue_by_intent[m.group(1)].append(o)
            else:
                stray.append(o)
        trades_by_order: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for t in trades:
            trades_by_order[str(t.get("orderId"))].append(t)

        cid_counts = Counter(o.get("clientOrderId") for o in orders if o.get("clientOrderId"))
        dup_cids = {c for c, n in cid_counts.items() if n > 1}
        res.duplicate_cids = len(dup_cids)
        open_ids = {str(o.get("orderId")) for o in opened}
        open_ids |= {str(o.get("orderId")) for o in orders if str(o.get("status")).lower() in ("open", "new", "partially_filled")}
        res.open_orders = sum(1 for o in orders if str(o.get("orderId")) in open_ids and cid_re.match(o.get("clientOrderId") or ""))
        for o in stray:
            res.errors.append(f"an order at the venue that is none of our intents': {_order_line(o)}")

        max_over = Decimal(0)
        for intent in self.intents:
            iid = intent.submit.intent_id
            msgs = [m for _s, m in by_intent.get(iid, [])]
            reports = [m for m in msgs if isinstance(m, ExecutionCompleted)]
            rejections = [m for m in msgs if isinstance(m, IntentRejected)]
            venue_orders = venue_by_intent.get(iid, [])
            traded = sum((Decimal(o.get("executedQty") or 0) for o in venue_orders), Decimal(0))
            traded_by_trades = sum(
                (Decimal(t["qty"]) for o in venue_orders for t in trades_by_order.get(str(o.get("orderId")), [])), Decimal(0)
            )

            def evidence() -> str:
                return self._evidence(intent, by_intent.get(iid, []), venue_orders, trades_by_order, reports)

            if reports:
                res.reports += 1
                res.outcomes[reports[0].status] += 1
                res.outcomes["fallback_used"] += int(reports[0].fallback_used)
                if reports[0].status == "failed":
                    res.findings.append(f"{iid} ({intent.variant}) reported failed: {reports[0].reason!r}, "
                                        f"filled {reports[0].filled_qty} of {intent.submit.qty}")
            canceled_at_intake = bool(rejections) and not reports and all(r.field == "canceled" for r in rejections)
            if rejections:
                res.rejected += 1
            if rejections and not canceled_at_intake:  # (a cancel of an intent never accepted: its answer)
                res.violations.append(Violation("IntentRejected", iid, f"{len(rejections)} IntentRejected: "
                                                f"{[(r.field, r.reason, r.duplicate) for r in rejections]}", evidence()))
            if len(reports) != 1 and not canceled_at_intake:
                res.violations.append(Violation("exactly one ExecutionCompleted", iid,
                                                f"{len(reports)} ExecutionCompleted in the log", evidence()))
            dups = sorted({o.get("clientOrderId") for o in venue_orders} & dup_cids)
            if dups:
                res.violations.append(Violation("client order id created twice at the venue", iid,
                                                f"{dups}: {[_order_line(o) for o in venue_orders if o.get('clientOrderId') in dups]}",
                                                evidence()))
            left_open = [o for o in venue_orders
                         if str(o.get("orderId")) in open_ids or str(o.get("status")).lower() in ("open", "new", "partially_filled")]
            if left_open:
                res.violations.append(Violation("order left open at the venue", iid,
                                                f"{[_order_line(o) for o in left_open]}", evidence()))
            over = traded - intent.submit.qty
            max_over = max(max_over, over)
            if over > 0:
                res.violations.append(Violation("venue traded more than the intent's qty", iid,
                                                f"venue traded {traded} > qty {intent.submit.qty} (overfill {over})", evidence()))
            if traded_by_trades != traded:
                res.violations.append(Violation("venue orders' executedQty != venue trades", iid,
                                                f"orders say {traded}, trades say {traded_by_trades}", evidence()))
            if reports and reports[0].status == "canceled":
                accepted_at = min((seq for seq, m in by_intent[iid] if isinstance(m, IntentAccepted)), default=0)
                if not any(isinstance(m, CancelIntent) and seq > accepted_at for seq, m in by_intent[iid]):
                    res.violations.append(Violation("canceled only by a cancel after the acceptance", iid,
                                                    "the report says canceled, but no CancelIntent follows the "
                                                    "IntentAccepted in the log", evidence()))
            accepted = [m for m in msgs if isinstance(m, CancelIntentAccepted)]
            if accepted and reports and reports[0].status not in ("canceled", "filled"):
                res.violations.append(Violation("an accepted cancel ends canceled or filled", iid,
                                                f"cancel accepted in phase {accepted[0].phase}, report {reports[0].status}",
                                                evidence()))
            if accepted:
                res.outcomes["cancel_accepted"] += 1
                first = next((a for a in accepted if not a.already), accepted[0])  # the cancel that took effect
                cancel_seq = min((seq for seq, m in by_intent[iid] if isinstance(m, CancelIntent) and m.request == first.request),
                                 default=0)
                commanded = {m.client_order_id: seq for seq, m in reversed(by_intent[iid]) if isinstance(m, PlaceOrder)}
                late = [o for o in venue_orders if commanded.get(o.get("clientOrderId") or "", 0) > cancel_seq]
                if late:
                    res.violations.append(Violation("no order commanded after the cancel reaches the venue", iid,
                                                    f"{[_order_line(o) for o in late]}", evidence()))
            if len(reports) >= 1 and any(r.filled_qty != traded for r in reports):
                res.qty_mismatches += 1
                res.violations.append(Violation("report filled_qty != venue traded qty", iid,
                                                f"report(s) {[str(r.filled_qty) for r in reports]} vs venue {traded}", evidence()))
        res.max_overfill = max_over

    def _evidence(self, intent: Intent, msgs: list[tuple[int, Message]], venue_orders: list[dict[str, Any]],
                  trades_by_order: dict[str, list[dict[str, Any]]], reports: list[ExecutionCompleted]) -> str:
        s = intent.submit
        lines = [f"   intent: {s.side} {s.qty} {s.strategy} {_params(s.params)} variant={intent.variant} "
                 f"scheduled {intent.at_s:.3f}s published {intent.published_at_s if intent.published_at_s is None else round(intent.published_at_s, 3)}s"]
        for r in reports:
            lines.append(f"   report: status={r.status} filled={r.filled_qty} fills={r.fills} orders={list(r.orders)} "
                         f"attempts={r.attempts} fallback={r.fallback_used} reason={r.reason!r}")
        lines.append(f"   venue orders ({len(venue_orders)}):")
        for o in venue_orders:
            tr = trades_by_order.get(str(o.get("orderId")), [])
            lines.append(f"     {_order_line(o)} trades={len(tr)} traded={sum((Decimal(t['qty']) for t in tr), Decimal(0))}")
        lines.append(f"   log ({len(msgs)} messages, t relative to the run start; seq, kind, fields):")
        for seq, m in msgs:
            t = (m.ts_init or m.ts_event) - self.t0_ns
            lines.append(f"     {t / 1e9:8.3f}s #{seq} {type(m).__name__} {_fields(m)}")
        lines.append("   actor log lines naming it (warnings/errors first):")
        lines.extend(f"     {line}" for line in self._actor_lines(s.intent_id))
        return "\n".join(lines)

    def _actor_lines(self, intent_id: str, limit: int = 15) -> list[str]:
        hits: list[tuple[int, str]] = []
        for path in sorted(self.workdir.glob("*.log")):
            if path.name in ("chaos_events.log",):
                continue
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if intent_id not in line:
                    continue
                low = line.lower()
                rank = 0 if ('"error"' in low or '"warning"' in low or "traceback" in low) else 1
                hits.append((rank, f"{path.name}: {line[:300]}"))
        hits.sort(key=lambda h: h[0])
        return [h for _r, h in hits[:limit]]


def _audit_to_wire(a: dict[str, Any]) -> dict[str, Any]:
    """An audit record ({client_order_id, id, symbol, side, type, amount, price, filled, status, ...}) in the
    field names the rest of the check uses."""
    if "clientOrderId" in a:
        return a
    status = str(a.get("status", ""))
    return {"clientOrderId": a.get("client_order_id"), "orderId": a.get("id"), "symbol": a.get("symbol"),
            "side": a.get("side"), "type": a.get("type"), "origQty": a.get("amount"), "price": a.get("price"),
            "executedQty": a.get("filled"), "status": status, "time": a.get("timestamp"), "account": a.get("account")}


def _order_line(o: dict[str, Any]) -> str:
    return (f"{o.get('clientOrderId')} id={o.get('orderId')} {o.get('side')} {o.get('type')} qty={o.get('origQty')} "
            f"price={o.get('price')} executed={o.get('executedQty')} status={o.get('status')} time={o.get('time')}")


def _params(p: StrategyParams) -> str:
    d = msgspec.structs.asdict(p)
    default = {f.name: f.default for f in msgspec.structs.fields(type(p))}
    return "{" + ", ".join(f"{k}={v}" for k, v in d.items() if v != default[k]) + "}"


_COMMON = {"intent_id", "venue", "symbol", "msg_id", "ts_event", "ts_init", "correlation_id", "type"}


def _fields(m: Message) -> str:
    d = {k: v for k, v in msgspec.structs.asdict(m).items() if k not in _COMMON and v not in (None, "", (), [], {})}
    text = json.dumps(d, default=str, separators=(",", ":"))
    return text if len(text) < 260 else text[:257] + "..."


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def run_chaos(seed: int, workdir: Path, config: ChaosConfig | None = None) -> ChaosResult:
    """One seeded chaos run in `workdir` (logs stay there). Never raises for a broken invariant: the
    violations are in the result."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = ChaosRun(seed, workdir, config or ChaosConfig())
    started = time.monotonic()
    try:
        run.plan_intents()
        await run.start()
        run.event(f"seed {seed}: {len(run.intents)} intents over {run.config.submit_window_s}s, "
                  f"replicas {REPLICAS}, actor env {ACTOR_ENV}")
        chaos = asyncio.create_task(run.chaos())
        await run.submit_all()
        await chaos
        await run.wait_for_reports()
        await asyncio.gather(*run.restarts, return_exceptions=True)
        await run.check()
    except Exception as exc:
        import traceback

        run.result.errors.append(f"the run itself failed: {exc!r}\n{traceback.format_exc()}")
    finally:
        run.result.wall_s = time.monotonic() - started
        await run.stop()
    (workdir / "chaos_report.txt").write_text(run.result.full_report() + "\n")
    return run.result
