"""`execbus` — the command line. Forms kept stable for scripts and operators:

    execbus demo                      embedded NATS + paper exchange + all actors; runs a few intents
    execbus up [--nats URL | --port N] [--store DIR]
    execbus actor NAME [--nats URL]
    execbus venue paper [--nats URL]
    execbus submit --symbol BTC/USDT --side buy --qty 0.01 [--venue paper] [--strategy market]
                   [--param key=value ...] [--intent-id ID] [--nats URL] [--json]
    execbus schema
    execbus bench NAME [--quick] [--out DIR] [-- bench options]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from bus.loop import run as run_loop
from bus.logging import configure_logging

__all__ = ["main"]

DEFAULT_URL = "nats://127.0.0.1:4222"

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_USAGE = 0, 1, 2, 3, 64


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # The demo and the benchmarks print their own results; the actors' info logs would bury them.
    quiet = "warning" if args.command in ("demo", "bench") else None
    configure_logging(args.log_level or quiet)
    try:
        return int(run_loop(args.run(args)) or 0)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="execbus", description="Order execution as a choreography of actors on NATS")
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default: $EXECBUS_LOG_LEVEL or info)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a few intents on embedded NATS and the paper exchange")
    p.add_argument("--json", action="store_true", help="print each report as one JSON line")
    p.set_defaults(run=_demo)

    p = sub.add_parser("up", help="embedded NATS (unless --nats), the paper venue and every actor")
    p.add_argument("--nats", default=None, help="join this server instead of embedding one")
    p.add_argument("--port", type=int, default=4222, help="port of the embedded server (-1: any free port)")
    p.add_argument("--store", default=None, help="JetStream store directory (default: .execbus/ here)")
    p.add_argument("--no-venue", action="store_true", help="do not serve the paper venue from this process")
    p.set_defaults(run=_up)

    p = sub.add_parser("actor", help="run one actor alone (scale by starting several)")
    p.add_argument("name", help="supervisor, pricer, placer, reconciler, tracker or market_fallback")
    p.add_argument("--nats", default=None)
    p.set_defaults(run=_actor)

    p = sub.add_parser("venue", help="serve a simulated venue on the bus")
    p.add_argument("kind", choices=["paper"])
    p.add_argument("--nats", default=None)
    p.set_defaults(run=_venue)

    p = sub.add_parser("submit", help="publish an intent, follow it, print its report")
    p.add_argument("--symbol", required=True)
    p.add_argument("--side", required=True, choices=["buy", "sell"])
    p.add_argument("--qty", required=True)
    p.add_argument("--venue", default="paper")
    p.add_argument("--strategy", default="market", choices=["market", "simple_limit", "aggressive_limit"])
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--intent-id", default=None)
    p.add_argument("--nats", default=None)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the report")
    p.add_argument("--json", action="store_true", help="print only the ExecutionCompleted message as JSON")
    p.set_defaults(run=_submit)

    p = sub.add_parser("bench", help="benchmarks: latency, throughput, scale, fills, quality, replay, replay_speed")
    p.add_argument("name", help="which benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="small smoke-test sizes (CI), under a minute")
    p.add_argument("--out", default=None, help="directory for the JSON result (default bench/results)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="options for the benchmark itself")
    p.set_defaults(run=_bench)

    _replay_parser(sub)

    p = sub.add_parser("schema", help="JSON Schema of every message")
    p.set_defaults(run=_schema)
    return parser


def _url(args: argparse.Namespace) -> str:
    return args.nats or os.environ.get("NATS_URL") or DEFAULT_URL


def _stop_on_signal() -> asyncio.Event:
    """Set on SIGINT/SIGTERM. Installed before anything starts: a signal that comes while the actors are
    still starting (their partitions already taken) must stop them gracefully, not kill the process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# -- commands ---------------------------------------------------------------------------------------------


async def _schema(args: argparse.Namespace) -> int:
    from messages import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


async def _up(args: argparse.Namespace) -> int:
    from bus.startup import StartupReconciliationError
    from bus.system import System, SystemConfig

    stop = _stop_on_signal()
    store = args.store or os.path.join(os.getcwd(), ".execbus")
    system = System(SystemConfig(nats_url=args.nats, port=args.port, store_dir=store, paper_venue=not args.no_venue))
    try:
        await system.start()
    except (StartupReconciliationError, ValueError) as exc:
        print(f"execbus up: refusing to run: {exc}", file=sys.stderr)
        await system.stop()
        return EXIT_FAILED
    print(f"execbus up: NATS at {system.url}  (actors: {', '.join(system.hosts)})", flush=True)
    try:
        await stop.wait()
    finally:
        await system.stop()
    return EXIT_OK


async def _actor(args: argparse.Namespace) -> int:
    from bus.bus import Bus
    from bus.runtime import ActorHost
    from bus.system import build_actor
    from venues.gateway import VenuePool

    stop = _stop_on_signal()
    url = _url(args)
    venues = VenuePool(nats_url=url)
    try:
        actor = build_actor(args.name, venues)
    except ValueError as exc:
        print(f"execbus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bus = await Bus.connect(url, name=f"execbus-{args.name}")
    host = await ActorHost(bus, actor).start()
    if args.name == "reconciler":
        from bus.startup import StartupReconciliationError, reconcile_with_venues

        try:
            await reconcile_with_venues(bus, venues)
        except (StartupReconciliationError, ValueError) as exc:
            print(f"execbus actor reconciler: refusing to run: {exc}", file=sys.stderr)
            await host.stop()
            await venues.close()
            await bus.close()
            return EXIT_FAILED
    print(f"execbus actor {args.name}: replica {host.replica} on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        await host.stop()
        await venues.close()
        await bus.close()
    return EXIT_OK


async def _venue(args: argparse.Namespace) -> int:
    from venues.config import PaperVenueConfig
    from venues.service import run_paper_venue

    stop = _stop_on_signal()
    print(f"execbus venue paper on {_url(args)}", flush=True)
    await run_paper_venue(_url(args), PaperVenueConfig(), stop=stop)
    return EXIT_OK


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs into intent params; values stay strings and the intent's types convert them."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes key=value, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def build_intent(args: argparse.Namespace) -> Any:
    from messages import ExecutionParams, SubmitIntent

    try:
        qty = Decimal(args.qty)
    except InvalidOperation:
        raise ValueError(f"--qty must be a decimal number, got {args.qty!r}") from None
    params = msgspec.convert(parse_params(args.param), ExecutionParams, strict=False)
    return SubmitIntent(
        intent_id=args.intent_id or f"cli-{uuid.uuid4().hex[:12]}",
        venue=args.venue,
        symbol=args.symbol,
        side=args.side,
        qty=qty,
        strategy=args.strategy,
        params=params,
    )


async def _submit(args: argparse.Namespace) -> int:
    from bus.bus import Bus
    from bus.client import execute
    from messages import ExecutionCompleted, IntentRejected, Message, encode

    try:
        intent = build_intent(args)
    except (ValueError, msgspec.ValidationError) as exc:
        print(f"execbus submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bus = await Bus.connect(_url(args), name="execbus-submit")

    async def follow(msg: Message) -> None:
        if not args.json:
            print(_progress_line(msg), flush=True)

    try:
        final = await execute(bus, intent, timeout=args.timeout, on_message=follow)
    except (asyncio.TimeoutError, TimeoutError):
        print(f"execbus submit: no report for {intent.intent_id} after {args.timeout}s", file=sys.stderr)
        return EXIT_TIMEOUT
    finally:
        await bus.close()
    if isinstance(final, IntentRejected):
        if args.json:
            print(encode(final).decode())
        else:
            print(f"rejected: {final.field}: {final.reason}", file=sys.stderr)
        return EXIT_REJECTED
    assert isinstance(final, ExecutionCompleted)
    print(encode(final).decode() if args.json else format_report(final), flush=True)
    return EXIT_FAILED if final.status == "failed" else EXIT_OK


def _progress_line(msg: Any) -> str:
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


def _replay_parser(sub: Any) -> None:
    replay = sub.add_parser("replay", help="read the message log: show, fills, export, import, redrive")
    rsub = replay.add_subparsers(dest="replay_command", required=True)

    def source(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nats", default=None, help="read the log on this server (default $NATS_URL)")
        p.add_argument("--file", default=None, help="read an exported JSONL log instead of NATS")
        p.add_argument("--stream", default=None, help="stream to read (default EXEC; EXEC_IMPORT for imports)")
        p.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    p = rsub.add_parser("show", help="one intent's whole timeline")
    p.add_argument("intent_id")
    p.add_argument("--diagram", action="store_true", help="who published and who consumed each message")
    source(p)
    p.set_defaults(run=_replay_show)

    p = rsub.add_parser("fills", help="fills in a time range, as a table or JSONL")
    p.add_argument("--since", default=None, help="ISO time, or a duration ago such as 15m, 2h, 1d")
    p.add_argument("--until", default=None)
    p.add_argument("--venue", default=None)
    p.add_argument("--symbol", default=None)
    source(p)
    p.set_defaults(run=_replay_fills)

    p = rsub.add_parser("export", help="write the log (or one intent) as portable JSONL")
    p.add_argument("--intent", default=None)
    p.add_argument("--since", default=None)
    p.add_argument("--until", default=None)
    p.add_argument("-o", "--output", default="-", help="file (default: standard output)")
    source(p)
    p.set_defaults(run=_replay_export)

    p = rsub.add_parser("import", help="load an exported JSONL log into EXEC_IMPORT (read-only, never executed)")
    p.add_argument("log")
    p.add_argument("--nats", default=None)
    p.set_defaults(run=_replay_import)

    p = rsub.add_parser("redrive", help="re-run a log's intents on a fresh simulated system; compare outcomes")
    p.add_argument("log", help="an exported JSONL log")
    p.add_argument("--data", nargs="*", default=None, help="recorded market files (default: the shipped sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_replay_redrive)


async def _log_records(args: argparse.Namespace, live_filter: str, since: int | None = None, until: int | None = None) -> Any:
    from bus.bus import Bus
    from bus.replay import read_file, read_stream

    if args.file:
        return [r for r in read_file(args.file, live_filter) if (since is None or r.time_ns >= since) and (until is None or r.time_ns <= until)]
    bus = await Bus.connect(_url(args), name="execbus-replay")
    try:
        return [r async for r in read_stream(bus, live_filter, stream=args.stream, since_ns=since, until_ns=until)]
    finally:
        await bus.close()


async def _replay_show(args: argparse.Namespace) -> int:
    from bus.replay import format_diagram, format_timeline, timeline

    records = await _log_records(args, f"exec.*.*.*.{args.intent_id}")
    if not records:
        print(f"execbus replay: nothing logged for intent {args.intent_id}", file=sys.stderr)
        return EXIT_FAILED
    rows = timeline(records)
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
    else:
        print(format_diagram(rows) if args.diagram else format_timeline(rows))
    return EXIT_OK


async def _replay_fills(args: argparse.Namespace) -> int:
    from bus.replay import fill_rows, format_fills
    from messages import subjects

    venue = args.venue or "*"
    symbol = subjects.symbol_token(args.symbol) if args.symbol else "*"
    since, until = parse_time(args.since), parse_time(args.until)
    rows = fill_rows(await _log_records(args, f"exec.order_filled.{venue}.{symbol}.*", since, until))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_fills(rows))
    return EXIT_OK


async def _replay_export(args: argparse.Namespace) -> int:
    from bus.replay import write_jsonl

    live_filter = f"exec.*.*.*.{args.intent}" if args.intent else "exec.>"
    records = await _log_records(args, live_filter, parse_time(args.since), parse_time(args.until))
    if args.output == "-":
        count = write_jsonl(records, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            count = write_jsonl(records, handle)
    print(f"exported {count} records", file=sys.stderr)
    return EXIT_OK


async def _replay_import(args: argparse.Namespace) -> int:
    from bus.bus import Bus
    from bus.replay import IMPORT_STREAM, import_records, read_file

    bus = await Bus.connect(_url(args), name="execbus-replay")
    try:
        count = await import_records(bus, read_file(args.log))
    finally:
        await bus.close()
    print(f"imported {count} records into {IMPORT_STREAM}; read them with --stream {IMPORT_STREAM}", file=sys.stderr)
    return EXIT_OK


async def _replay_redrive(args: argparse.Namespace) -> int:
    from bus.redrive import redrive_file

    return await redrive_file(args.log, data=args.data, seed=args.seed, json_lines=args.json)


def parse_time(text: str | None) -> int | None:
    """ISO 8601 (`2024-08-08T23:55:00Z`) or a duration ago (`15m`, `2h`, `1d`, `30s`) -> epoch ns."""
    if not text:
        return None
    import re
    import time
    from datetime import datetime

    ago = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if ago:
        seconds = float(ago.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ago.group(2)]
        return time.time_ns() - int(seconds * 1e9)
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        raise ValueError(f"give a time zone in {text!r} (e.g. a trailing Z)")
    return int(stamp.timestamp() * 1e9)


async def _bench(args: argparse.Namespace) -> int:
    from bench.cli import run_bench

    return await run_bench(args.name, quick=args.quick, out=args.out, extra=list(args.extra))


async def _demo(args: argparse.Namespace) -> int:
    from bus.demo import run_demo

    return await run_demo(json_lines=args.json)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
