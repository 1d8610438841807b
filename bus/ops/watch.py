"""`execbus watch` — the live terminal view of the running system.

    execbus watch [--nats URL] [--venue V] [--symbol S] [--intent ID] [--since MINUTES] [--once [--json]]

It follows the message log from `--since` minutes ago (default 10) with `bus.msglog.follow_stream`, so it starts
from what is in flight: the `Board` (`bus.ops.board`) folds the history, then every message as it is logged.
The screen (a rich `Live`, redrawn `REFRESH_HZ` times a second, not per message) shows the executions in flight
(progress, attempt, our working price against the touch, time left in the budget), a tape of recent fills, the
finished executions (status, average price, shortfall against the arrival mid, fees) and one health line per
actor kind from the control plane (`HealthPoller`: replicas answering `$SRV.PING`, their `status` endpoints;
polled every `HEALTH_EVERY_S` with a short timeout; an actor that does not answer is shown as such).

`--once --json` prints one `BoardSnapshot` as JSON (Decimals as strings) after reading the log up to now and
exits 0; `--once` alone prints the screen once. A server that cannot be reached: one line on stderr, exit 1.
SIGINT/SIGTERM end it cleanly (exit 0).

`render(board, health, now_ns)` is pure (no terminal, no clock), so it is tested as text and `save_screenshot`
writes the SVG the README shows (`bus/ops/web/screenshots/watch.svg`).

The command is an `execbus.commands` entry point (`watch = "bus.ops.watch:command"` in pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import io
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console, Group, RenderableType
from rich import box
from rich.table import Table
from rich.text import Text

from bus.ops.board import Board, BoardSnapshot, ExecutionRow, FillRow

__all__ = [
    "command",
    "render",
    "ActorHealth",
    "HealthPoller",
    "ACTOR_KINDS",
    "log_filter",
    "snapshot_json",
    "sample_view",
    "save_screenshot",
    "SCREENSHOT",
]

ACTOR_KINDS = ("supervisor", "pricer", "placer", "reconciler", "tracker", "market_fallback")
"""The actor kinds of `bus.ops.system.ACTORS`, in the order of their health lines."""
KEY_COUNTERS: dict[str, tuple[str, ...]] = {
    "supervisor": ("accepted", "rejected"),
    "pricer": ("quoted", "unavailable"),
    "placer": ("created", "rejected", "canceled", "risk_denied"),
    "reconciler": ("fills", "finalized", "watched", "orphans"),
    "tracker": ("completed", "late_fills"),
    "market_fallback": ("executed", "refused_late"),
}
"""The counters of each actor's `status` shown on its health line (summed over the replicas that answered)."""
RUNTIME_COUNTERS = ("handled", "failed", "dead_lettered")
"""The runtime's counters every actor has; `failed` and `dead_lettered` are red when above 0."""
BAD_COUNTERS = {"failed", "dead_lettered", "orphans", "unavailable", "risk_denied", "late_fills", "refused_late"}

REFRESH_HZ = 4.0
HEALTH_EVERY_S = 2.0
HEALTH_TIMEOUT_S = 0.5
"""How long one health query waits for the replicas' answers."""
HEALTH_STALE_S = 3 * HEALTH_EVERY_S
"""A replica's last status is kept this long between queries (a queue group answers each request from one
replica, so a round may miss one)."""
DEFAULT_SINCE_MIN = 10.0
INTENT_WIDTH = 14
"""The intent column never gets narrower than this: it is what a person looks for."""

SCREENSHOT = Path(__file__).resolve().parent / "web" / "screenshots" / "watch.svg"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 64


# -- health of the actors ---------------------------------------------------------------------------------


@dataclass
class ActorHealth:
    """One actor kind as the control plane answered: how many replicas, and their summed status."""

    actor: str
    replicas: int = 0
    """Replicas that answered the ping."""
    reported: int = 0
    """Replicas whose `status` we have (at most `HEALTH_STALE_S` old)."""
    partitions: int = 0
    in_flight: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def answering(self) -> bool:
        return self.replicas > 0 or self.reported > 0


async def _collect(nc: Any, subject: str, *, requests: int, timeout: float, enough: Any = None,
                   settle: float = 0.05) -> list[bytes]:
    """Publish `requests` requests to `subject` and gather the answers under one inbox: until
    `enough(answers)` is true (`requests` more go out every `settle` s meanwhile: a queue group answers each
    from one member picked at random), or `settle` s after the first answer when `enough` is None (every
    subscriber of a ping answers at once), or `timeout`. Empty answers (the server's "no responders") are
    dropped.

    Each request has its own reply subject (`<inbox>.<n>`): a responder on a bus with users may answer a
    request once (`allow_responses`), so a second request to the same replica with the same reply subject
    would get no answer, only a permissions violation."""
    inbox = nc.new_inbox()
    sent = itertools.count()
    answers: list[bytes] = []
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        if msg.data:
            got.put_nowait(msg.data)

    sub = await nc.subscribe(f"{inbox}.*", cb=on_msg)
    try:
        for _ in range(requests):
            await nc.publish(subject, b"", reply=f"{inbox}.{next(sent)}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        resend = loop.time() + settle
        while True:
            now = loop.time()
            if now >= deadline:
                break
            if enough is not None and now >= resend:
                for _ in range(requests):
                    await nc.publish(subject, b"", reply=f"{inbox}.{next(sent)}")
                resend = now + settle
            wait = deadline - now if enough is None else min(deadline, resend) - now
            try:
                answers.append(await asyncio.wait_for(got.get(), max(wait, 0.001)))
            except TimeoutError:
                continue
            if enough is not None and enough(answers):
                break
            if enough is None:
                deadline = min(deadline, loop.time() + settle)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return answers


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class HealthPoller:
    """Queries the control plane for every actor kind: `$SRV.PING.execbus-<actor>` (every replica answers) and
    `execbus.ctl.<actor>.status` (a queue group: each request is answered by one replica, so a few requests go
    out per replica and the answers are told apart by their `replica` field). Never raises: an actor that does
    not answer, or a query that fails, is an `ActorHealth` that says so."""

    def __init__(self, nc: Any, actors: Iterable[str] = ACTOR_KINDS, *, timeout: float = HEALTH_TIMEOUT_S) -> None:
        self._nc = nc
        self._actors = tuple(actors)
        self._timeout = timeout
        self._seen: dict[str, dict[str, tuple[float, dict[str, Any]]]] = {a: {} for a in self._actors}

    async def poll(self) -> dict[str, ActorHealth]:
        results = await asyncio.gather(*(self._one(a) for a in self._actors), return_exceptions=True)
        out: dict[str, ActorHealth] = {}
        for actor, result in zip(self._actors, results):
            out[actor] = result if isinstance(result, ActorHealth) else ActorHealth(actor, error=repr(result))
        return out

    async def _one(self, actor: str) -> ActorHealth:
        service = f"execbus-{actor.replace('_', '-')}"
        pings = [_json(raw) for raw in await _collect(self._nc, f"$SRV.PING.{service}", requests=1,
                                                      timeout=self._timeout)]
        replicas = len({p.get("id") for p in pings if p is not None})
        seen = self._seen[actor]
        now = time.monotonic()
        if replicas:
            from messages import subjects

            def enough(answers: list[bytes]) -> bool:
                return len({(_json(a) or {}).get("replica") for a in answers}) >= replicas

            for raw in await _collect(self._nc, subjects.control(actor, "status"), requests=2 * replicas,
                                      timeout=self._timeout, enough=enough):
                status = _json(raw)
                if status is not None:
                    seen[str(status.get("replica", ""))] = (now, status)
        for replica in [r for r, (at, _) in seen.items() if now - at > HEALTH_STALE_S]:
            del seen[replica]
        # Never more statuses than replicas answering the ping (one that stopped goes at once): the freshest stay.
        for replica in sorted(seen, key=lambda r: seen[r][0], reverse=True)[replicas:]:
            del seen[replica]
        statuses = [status for _, status in seen.values()]
        counters: dict[str, int] = {}
        for name in (*KEY_COUNTERS.get(actor, ()), *RUNTIME_COUNTERS):
            values = [s.get(name) for s in statuses]
            if any(isinstance(v, int) for v in values):
                counters[name] = sum(v for v in values if isinstance(v, int))
        return ActorHealth(
            actor=actor,
            replicas=replicas,
            reported=len(statuses),
            partitions=sum(len(s.get("partitions") or ()) for s in statuses),
            in_flight=sum(int(s.get("intents_in_flight") or 0) for s in statuses),
            counters=counters,
        )


# -- rendering (pure) -------------------------------------------------------------------------------------


SIDE_STYLE = {"buy": "green", "sell": "red"}
STATUS_STYLE = {
    "filled": "bold green", "partially_filled": "yellow", "unfilled": "red", "failed": "bold red",
    "canceled": "magenta", "rejected": "red",
}
PHASE_STYLE = {"submitted": "dim", "working": "cyan", "fallback": "yellow", "finishing": "blue", "canceling": "magenta"}


def _num(value: Decimal | None, places: int | None = None) -> str:
    if value is None:
        return "-"
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = format(value, "f")
    if "." in text and places is None:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _fee(value: Decimal) -> str:
    """Fees are small (a taker's fee in the base currency is 1e-5 BTC): 4 places from 1 up, 8 below, no trailing
    zeros."""
    return _num(value.quantize(Decimal("1e-4") if abs(value) >= 1 else Decimal("1e-8")).normalize())


def _clock(ns: int) -> str:
    if not ns:
        return "-"
    stamp = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"


def _duration(ns: int) -> str:
    seconds = ns / 1e9
    if abs(seconds) < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(abs(seconds)), 60)
    return f"{'-' if seconds < 0 else ''}{minutes}m{rest:02d}s"


def _bar(progress: float, width: int = 12) -> Text:
    progress = min(max(progress, 0.0), 1.0)
    full = int(round(progress * width))
    bar = Text("█" * full, style="green" if progress >= 1 else "cyan")
    bar.append("░" * (width - full), style="grey35")
    bar.append(f" {progress * 100:3.0f}%")
    return bar


def _left(row: ExecutionRow, now_ns: int) -> Text:
    if not row.deadline_ns:
        return Text("-", style="dim")
    left = row.deadline_ns - now_ns
    if left < 0:
        return Text(f"over {_duration(-left)}", style="bold red")
    return Text(_duration(left), style="yellow" if left < 5_000_000_000 else "")


def _working(row: ExecutionRow) -> Text:
    if row.working_price is not None:
        text = Text(_num(row.working_price))
        touch = row.bid if row.side == "buy" else row.ask
        if touch is not None and row.working_price != touch:
            # Buying above the bid (or selling below the ask) is crossing towards the other side: bold.
            inside = (row.working_price > touch) if row.side == "buy" else (row.working_price < touch)
            text.stylize("bold" if inside else "dim")
        return text
    if row.working_order:
        return Text("market", style="yellow")
    return Text("-", style="dim")


def _in_flight_table(rows: list[ExecutionRow], now_ns: int, limit: int) -> Table:
    table = Table(title=f"In flight ({len(rows)})", title_justify="left", expand=True, header_style="bold",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("intent", no_wrap=True, min_width=INTENT_WIDTH)
    table.add_column("market", no_wrap=True)
    table.add_column("side", no_wrap=True)
    table.add_column("strategy", no_wrap=True)
    table.add_column("phase", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("filled / qty", justify="right", no_wrap=True)
    table.add_column("att", justify="right", no_wrap=True)
    table.add_column("ours", justify="right", no_wrap=True)
    table.add_column("bid / ask", justify="right", no_wrap=True)
    table.add_column("left", justify="right", no_wrap=True)
    ordered = sorted(rows, key=lambda r: r.started_ns, reverse=True)
    for row in ordered[:limit]:
        touch = f"{_num(row.bid)} / {_num(row.ask)}" if row.bid is not None else "-"
        table.add_row(
            row.intent_id, f"{row.venue} {row.symbol}", Text(row.side or "-", style=SIDE_STYLE.get(row.side, "")),
            row.strategy or "-", Text(row.phase, style=PHASE_STYLE.get(row.phase, "")), _bar(row.progress),
            f"{_num(row.filled)} / {_num(row.qty)}", str(row.attempt), _working(row), touch, _left(row, now_ns),
        )
    if len(ordered) > limit:
        table.add_row(Text(f"… {len(ordered) - limit} more", style="dim"))
    if not ordered:
        table.add_row(Text("nothing in flight", style="dim"))
    return table


def _tape_table(fills: list[FillRow], limit: int) -> Table:
    table = Table(title=f"Fills (latest {min(len(fills), limit)} of {len(fills)})", title_justify="left", expand=True,
                  header_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("intent", no_wrap=True, min_width=INTENT_WIDTH)
    table.add_column("market", no_wrap=True)
    table.add_column("side", no_wrap=True)
    table.add_column("qty", justify="right", no_wrap=True)
    table.add_column("price", justify="right", no_wrap=True)
    table.add_column("liq", no_wrap=True)
    table.add_column("fee", justify="right", no_wrap=True)
    table.add_column("order", no_wrap=True, style="dim")
    for fill in fills[:limit]:
        table.add_row(
            _clock(fill.logged_ns), fill.intent_id, f"{fill.venue} {fill.symbol}",
            Text(fill.side, style=SIDE_STYLE.get(fill.side, "")), _num(fill.qty), _num(fill.price),
            fill.liquidity, f"{_fee(fill.fee)} {fill.fee_currency}", fill.client_order_id,
        )
    if not fills:
        table.add_row(Text("no fills yet", style="dim"))
    return table


def _finished_table(rows: list[ExecutionRow], limit: int) -> Table:
    table = Table(title=f"Finished ({len(rows)})", title_justify="left", expand=True, header_style="bold",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("done", no_wrap=True)
    table.add_column("intent", no_wrap=True, min_width=INTENT_WIDTH)
    table.add_column("market", no_wrap=True)
    table.add_column("side", no_wrap=True)
    table.add_column("strategy", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("filled / qty", justify="right", no_wrap=True)
    table.add_column("avg price", justify="right", no_wrap=True)
    table.add_column("vs arrival", justify="right", no_wrap=True)
    table.add_column("fees", justify="right", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    for row in rows[:limit]:
        bps = row.slippage_bps
        shortfall = Text("-", style="dim") if bps is None else Text(
            f"{_num(bps, 2)} bps", style="red" if bps > 0 else "green")
        took = _duration(row.finished_ns - row.started_ns) if row.finished_ns and row.started_ns else "-"
        status = Text(row.status, style=STATUS_STYLE.get(row.status, ""))
        table.add_row(
            _clock(row.finished_ns)[:8], row.intent_id, f"{row.venue} {row.symbol}",
            Text(row.side or "-", style=SIDE_STYLE.get(row.side, "")), row.strategy or "-",
            status, f"{_num(row.filled)} / {_num(row.qty)}", _num(row.live_avg_price()), shortfall,
            f"{_fee(row.fees)} {row.fee_currency}".strip() if row.fee_currency or row.fees else "-", took,
        )
    if len(rows) > limit:
        table.add_row("", Text(f"… {len(rows) - limit} more", style="dim"))
    if not rows:
        table.add_row(Text("nothing finished yet", style="dim"))
    return table


def _health_line(actor: str, health: ActorHealth | None) -> Text:
    line = Text()
    if health is None:
        line.append("… ", style="dim")
        line.append(f"{actor:<16}", style="bold")
        line.append("asking", style="dim")
        return line
    if not health.answering:
        line.append("○ ", style="bold red")
        line.append(f"{actor:<16}", style="bold")
        line.append("no answer" + (f" ({health.error})" if health.error else ""), style="red")
        return line
    line.append("● ", style="bold green")
    line.append(f"{actor:<16}", style="bold")
    line.append(f"{health.replicas} replica{'s' if health.replicas != 1 else ''}")
    if health.reported < health.replicas:
        line.append(f" ({health.reported} reported)", style="yellow")
    line.append(f"  partitions {health.partitions}  in flight {health.in_flight}")
    for name, value in health.counters.items():
        line.append("  ")
        line.append(f"{name} {value}", style="red" if value and name in BAD_COUNTERS else "")
    return line


def _health(health: Mapping[str, ActorHealth] | None) -> Group:
    actors = list(ACTOR_KINDS) + [a for a in (health or {}) if a not in ACTOR_KINDS]
    title = Text("Actors", style="italic")
    if health is None:
        return Group(title, *(_health_line(a, None) for a in actors))
    return Group(title, *(_health_line(a, health.get(a) or ActorHealth(a)) for a in actors))


def render(
    board: Board,
    health: Mapping[str, ActorHealth] | None,
    now_ns: int,
    *,
    source: str = "",
    note: str = "",
    in_flight_rows: int = 20,
    fill_rows: int = 8,
    finished_rows: int = 10,
) -> RenderableType:
    """The whole screen for `board` at `now_ns` (the time left in each budget is counted from it), with the
    actors' `health` (None: not asked yet). Pure: the same arguments give the same picture."""
    in_flight, finished, fills = board.in_flight(), board.finished(), list(board.fills)
    head = Text()
    head.append("execbus watch", style="bold")
    if source:
        head.append(f"  {source}", style="dim")
    head.append(f"  as of {_clock(now_ns)} UTC")
    head.append(f"  ·  {len(in_flight)} in flight  ·  {len(finished)} finished  ·  {len(fills)} fills")
    filters = board.filters()
    if filters:
        head.append("  ·  " + " ".join(f"{k}={v}" for k, v in filters.items()), style="yellow")
    if note:
        head.append(f"\n{note}", style="bold red")
    return Group(
        head,
        _in_flight_table(in_flight, now_ns, in_flight_rows),
        _tape_table(fills, fill_rows),
        _finished_table(finished, finished_rows),
        _health(health),
    )


# -- JSON -------------------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder(decimal_format="string")


def snapshot_json(snapshot: BoardSnapshot) -> bytes:
    return _encoder.encode(snapshot)


# -- the command ------------------------------------------------------------------------------------------


def log_filter(venue: str | None, symbol: str | None, intent: str | None) -> str:
    """The live-subject filter that reads only what the board will show."""
    from messages import subjects

    return ".".join((subjects.PREFIX, "*", venue or "*", subjects.symbol_token(symbol) if symbol else "*", intent or "*"))


def command(sub: Any, name: str = "watch") -> argparse.ArgumentParser:
    """Add `execbus watch` to the CLI's subcommands (the `execbus.commands` entry point `watch`)."""
    p = sub.add_parser(name, help="live terminal view: executions in flight, fills, finished, actors' health",
                       description="Follow the message log and show what every execution is doing, live.")
    p.add_argument("--nats", default=None, help="server URL (default $NATS_URL or nats://127.0.0.1:4222)")
    p.add_argument("--venue", default=None, help="only this venue")
    p.add_argument("--symbol", default=None, help="only this symbol, BASE/QUOTE such as BTC/USDT")
    p.add_argument("--intent", default=None, help="only this intent id")
    p.add_argument("--since", type=float, default=DEFAULT_SINCE_MIN, metavar="MINUTES",
                   help=f"start from the log this many minutes ago (default {DEFAULT_SINCE_MIN:g})")
    p.add_argument("--once", action="store_true", help="read the log up to now, print once, exit")
    p.add_argument("--json", action="store_true", help="with --once: one BoardSnapshot as JSON")
    p.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                   help="give up on an unreachable server after this long (default: the CLI's bound)")
    p.set_defaults(run=_run, quiet=True)
    return p


def _url(args: argparse.Namespace) -> str:
    from bus.ops import cli

    return args.nats or os.environ.get("NATS_URL") or cli.DEFAULT_URL


async def _run(args: argparse.Namespace) -> int:
    from bus.bus import Bus
    from bus.ops import cli
    from bus.settings import BusSettings

    if args.json and not args.once:
        print("execbus watch: --json needs --once (the live view is for a terminal)", file=sys.stderr)
        return EXIT_USAGE
    if args.since < 0:
        print("execbus watch: --since takes minutes, 0 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.symbol is not None:
        try:
            cli.parse_scope(args.venue or "paper", args.symbol)
        except ValueError as exc:
            print(f"execbus watch: {exc}", file=sys.stderr)
            return EXIT_USAGE
    _quiet_logs(args)
    url = _url(args)
    bound = args.connect_timeout if args.connect_timeout is not None else cli.CONNECT_TIMEOUT_S
    # Installed first: a stop while still connecting (or reading the log for --once) ends it too, exit 0.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        connecting = asyncio.ensure_future(Bus.connect(url, BusSettings.from_env(), name="execbus-watch"))
        finished, why = await _unless_stopped(connecting, stop, bound)
        if not finished:
            if stop.is_set():
                return EXIT_OK
            print(f"execbus watch: cannot reach NATS at {url} within {bound:g} s", file=sys.stderr)
            return EXIT_FAILED
        if why is not None:
            print(f"execbus watch: cannot reach NATS at {url}: {why}", file=sys.stderr)
            return EXIT_FAILED
        bus = connecting.result()
        board = Board(venue=args.venue, symbol=args.symbol, intent_id=args.intent)
        since_ns = time.time_ns() - int(args.since * 60e9)
        live_filter = log_filter(args.venue, args.symbol, args.intent)
        try:
            if args.once:
                once = asyncio.ensure_future(_once(bus, board, live_filter, since_ns, json_out=args.json, source=url))
                finished, error = await _unless_stopped(once, stop, None)
                if error is not None:
                    raise error
                return once.result() if finished else EXIT_OK
            return await _live(bus, board, live_filter, since_ns, stop, source=url)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.close(), 2.0)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _unless_stopped(task: asyncio.Future[Any], stop: asyncio.Event,
                          timeout: float | None) -> tuple[bool, BaseException | None]:
    """Wait for `task` until `stop` or `timeout`: (finished, its exception). Not finished: it is cancelled."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        return False, None
    return True, task.exception()


def _quiet_logs(args: argparse.Namespace) -> None:
    """Errors only, unless `--log-level` or `$EXECBUS_LOG_LEVEL` says otherwise: the live view owns the terminal
    (a log line would tear the screen), and an unreachable server is one line, not one per retry."""
    import logging

    import structlog

    if getattr(args, "log_level", None) is None and not os.environ.get("EXECBUS_LOG_LEVEL"):
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def _fold(board: Board, record: Any) -> None:
    from messages import InvalidMessage

    try:
        message = record.message()
    except InvalidMessage:
        return  # (someone else's bad input; the actors dead-letter it)
    board.apply(message, record.time_ns)


async def _once(bus: Any, board: Board, live_filter: str, since_ns: int, *, json_out: bool, source: str) -> int:
    from bus.msglog import read_stream

    async with contextlib.aclosing(read_stream(bus, live_filter, since_ns=since_ns)) as records:
        async for record in records:
            _fold(board, record)
    now = time.time_ns()
    if json_out:
        sys.stdout.buffer.write(snapshot_json(board.snapshot(now)) + b"\n")
        sys.stdout.flush()
        return EXIT_OK
    health = await HealthPoller(bus.nc).poll()
    Console().print(render(board, health, now, source=source))
    return EXIT_OK


async def _live(bus: Any, board: Board, live_filter: str, since_ns: int, stop: asyncio.Event, *, source: str) -> int:
    from rich.live import Live

    from bus.msglog import follow_stream

    state: dict[str, Any] = {"health": None, "note": ""}

    async def pump() -> None:
        try:
            async with contextlib.aclosing(follow_stream(bus, live_filter, since_ns=since_ns)) as records:
                async for record in records:
                    _fold(board, record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the view stays up and says so
            state["note"] = f"the log feed stopped: {exc!r}"

    async def poll() -> None:
        poller = HealthPoller(bus.nc)
        while True:
            try:
                state["health"] = await poller.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                state["note"] = f"health query failed: {exc!r}"
            await asyncio.sleep(HEALTH_EVERY_S)

    console = Console()

    def screen() -> RenderableType:
        height = console.size.height
        # Room for the header, the four titles and table heads, and the health lines: the rest goes to rows.
        spare = max(height - 6 - 3 * 4 - len(ACTOR_KINDS) - 1, 6)
        in_flight_rows = max(3, spare // 2)
        fill_rows = max(2, spare // 4)
        finished_rows = max(2, spare - in_flight_rows - fill_rows)
        note = state["note"] if bus.nc.is_connected else "NATS connection lost: reconnecting (what is shown may be stale)"
        return render(board, state["health"], time.time_ns(), source=source, note=note,
                      in_flight_rows=in_flight_rows, fill_rows=fill_rows, finished_rows=finished_rows)

    tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(poll())]
    try:
        # Redrawn from this loop (auto_refresh off): rich's refresh thread would read the board while it changes.
        with Live(screen(), console=console, auto_refresh=False, transient=False, vertical_overflow="crop") as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0 / REFRESH_HZ)
                live.update(screen(), refresh=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=1.0)
    return EXIT_OK


# -- a sample view (the README's screenshot) --------------------------------------------------------------


def sample_view(now_ns: int = 1_732_713_612_000_000_000) -> tuple[Board, dict[str, ActorHealth]]:
    """A board and health as a small running system would show them: two executions working, three finished."""
    from messages import (
        ExecutionCompleted,
        IntentAccepted,
        OrderFilled,
        OrderPlaced,
        PlaceOrder,
        PriceQuoted,
        SubmitIntent,
    )

    board = Board()
    events: list[tuple[int, Any]] = []  # (logged_ns, message): folded in log order at the end

    def log(msg: Any, ns: int) -> None:
        events.append((ns, msg))

    s = 1_000_000_000
    t0 = now_ns - 40 * s

    def base(intent: str) -> dict[str, Any]:
        return {"intent_id": intent, "venue": "paper", "symbol": "BTC/USDT"}

    def run(intent: str, side: str, qty: str, strategy: str, at: int, fills: list[tuple[str, str, str]],
            bid: str, ask: str, price: str | None, budget_s: int, report: dict[str, Any] | None = None) -> None:
        q = Decimal(qty)
        params = {"display_qty": "0.3"} if strategy == "iceberg" else None
        log(SubmitIntent(**base(intent), side=side, qty=q, strategy=strategy, params=params), at)
        log(IntentAccepted(**base(intent), side=side, qty=q, strategy=strategy,
                                   deadline_ns=at + budget_s * s), at + 2_000_000)
        log(PriceQuoted(**base(intent), attempt=0, side=side, mode="arrival",
                                price=Decimal(price or bid), bid=Decimal(bid), ask=Decimal(ask),
                                tick_size=Decimal("0.01")), at + 4_000_000)
        for n, (attempt, fqty, fprice) in enumerate(fills, 1):
            cid = f"{intent}-{attempt}"
            order_type = "market" if price is None else "limit"
            log(PlaceOrder(**base(intent), client_order_id=cid, attempt=int(attempt), side=side,
                                   order_type=order_type, qty=q, price=Decimal(price) if price else None),
                        at + n * s)
            log(OrderPlaced(**base(intent), client_order_id=cid, order_id=f"paper-{n:06d}",
                                    attempt=int(attempt), side=side, order_type=order_type, qty=q,
                                    price=Decimal(price) if price else None), at + n * s + 3_000_000)
            log(OrderFilled(**base(intent), client_order_id=cid, order_id=f"paper-{n:06d}",
                                    trade_id=f"t-{intent}-{n}", attempt=int(attempt), side=side, qty=Decimal(fqty),
                                    price=Decimal(fprice), fee=Decimal(fqty) * Decimal(fprice) * Decimal("0.001"),
                                    fee_currency="USDT", liquidity="maker" if price else "taker"),
                        at + n * s + 40_000_000)
        if report is not None:
            filled = sum((Decimal(f[1]) for f in fills), Decimal(0))
            notional = sum((Decimal(f[1]) * Decimal(f[2]) for f in fills), Decimal(0))
            mid = (Decimal(bid) + Decimal(ask)) / 2
            avg = notional / filled if filled else None
            slip = None if avg is None else (((avg - mid) if side == "buy" else (mid - avg)) / mid * 10_000).quantize(
                Decimal("0.01"))
            log(ExecutionCompleted(
                **base(intent), status=report.get("status", "filled"), side=side, strategy=strategy, qty=q,
                filled_qty=filled, avg_price=avg, notional=notional, fees=(notional * Decimal("0.001")),
                fee_currency="USDT", arrival_mid=mid, slippage_bps=slip, attempts=len(fills) or 1,
                fallback_used=False, fills=len(fills), orders=tuple(f"{intent}-{f[0]}" for f in fills),
                reason=report.get("reason", ""), started_ns=at, completed_ns=at + report["took_s"] * s,
                duration_ms=Decimal(report["took_s"] * 1000)), at + report["took_s"] * s + 100_000_000)

    run("twap-btc-7", "buy", "0.40", "twap", t0, [("1", "0.05", "61840.10"), ("2", "0.05", "61841.00"),
                                                   ("3", "0.05", "61839.70")],
        "61839.50", "61839.60", "61839.50", 120)
    run("ice-sell-3", "sell", "1.2", "iceberg", t0 + 9 * s, [("1", "0.3", "61845.20")],
        "61838.90", "61839.00", "61839.00", 60)
    run("mkt-7f3a", "buy", "0.01", "market", t0 - 30 * s, [("1", "0.01", "61837.63")],
        "61837.62", "61837.63", None, 20, {"took_s": 1})
    run("agg-lim-42", "sell", "0.25", "aggressive_limit", t0 - 20 * s,
        [("1", "0.1", "61836.00"), ("2", "0.15", "61835.50")], "61836.10", "61836.20", "61836.00", 30,
        {"took_s": 6})
    run("lim-11", "buy", "0.5", "simple_limit", t0 - 12 * s, [("1", "0.2", "61830.00")], "61830.00", "61830.10",
        "61830.00", 10, {"status": "partially_filled", "reason": "budget spent", "took_s": 10})
    for ns, msg in sorted(events, key=lambda e: e[0]):
        board.apply(msg, ns)
    health = {
        "supervisor": ActorHealth("supervisor", 2, 2, 8, 2, {"accepted": 5, "rejected": 0, "handled": 61, "failed": 0,
                                                            "dead_lettered": 0}),
        "pricer": ActorHealth("pricer", 1, 1, 8, 2, {"quoted": 9, "unavailable": 0, "handled": 9, "failed": 0,
                                                    "dead_lettered": 0}),
        "placer": ActorHealth("placer", 2, 2, 8, 2, {"created": 8, "rejected": 0, "canceled": 2, "risk_denied": 0,
                                                    "handled": 10, "failed": 0, "dead_lettered": 0}),
        "reconciler": ActorHealth("reconciler", 1, 1, 8, 2, {"fills": 8, "finalized": 6, "watched": 2, "orphans": 0,
                                                            "handled": 30, "failed": 0, "dead_lettered": 0}),
        "tracker": ActorHealth("tracker", 1, 1, 8, 2, {"completed": 3, "late_fills": 0, "handled": 40, "failed": 0,
                                                      "dead_lettered": 0}),
        "market_fallback": ActorHealth("market_fallback"),
    }
    return board, health


def save_screenshot(path: str | Path = SCREENSHOT, *, width: int = 150) -> Path:
    """Render `sample_view` and save it as an SVG (rich's `Console(record=True).save_svg`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = 1_732_713_612_000_000_000
    board, health = sample_view(now)
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(render(board, health, now, source="nats://127.0.0.1:4222"))
    console.save_svg(str(path), title="execbus watch")
    return path


if __name__ == "__main__":  # pragma: no cover - `python -m bus.ops.watch` rewrites the README's screenshot
    print(save_screenshot())
