"""`execbus` — the command line. Forms kept stable for scripts and operators:

    execbus demo                      embedded NATS + paper exchange + all actors; runs a few intents
    execbus up [--nats URL | --port N] [--store DIR] [--profile strict|binance] [--seed N] [--paper-config FILE]
               [--http PORT [--http-host ADDR]]
    execbus actor NAME [--nats URL]
    execbus venue paper [--nats URL] [--profile strict|binance] [--seed N] [--speed X] [--data FILE ...]
                        [--config FILE]
    execbus submit --symbol BTC/USDT --side buy --qty 0.01 [--venue paper] [--strategy market]
                   [--param key=value ...] [--intent-id ID] [--nats URL] [--json]
    execbus halt [--venue V [--symbol S]] [--cancel-working] [--reason TEXT] [--nats URL]
    execbus reduce [--venue V [--symbol S]] [--reason TEXT] [--nats URL]
    execbus resume [--venue V [--symbol S]] [--reason TEXT] [--nats URL]
    execbus state [--nats URL] [--json]
    execbus risk set KEY VALUE [--nats URL]
    execbus risk show [--nats URL] [--json]
    execbus cancel ID [--reason TEXT] [--wait] [--timeout S] [--report-timeout S] [--nats URL] [--json]
    execbus replay show|fills|export|import|redrive|plot ...
    execbus schema
    execbus bench NAME [--quick] [--out DIR] [-- bench options]
    execbus web [--nats URL] [--http PORT] [--host ADDR]

`execbus bench` is not defined here: commands of other packages plug in through the `execbus.commands`
entry points (`COMMANDS_GROUP`; `bench = "bench.cli:command"` in pyproject.toml), so the runtime and its
tools never import the benchmarks.

Exit codes: 0 done; 1 failed (an execution that failed, a server that cannot be reached); 2 rejected (an
intent, a cancel, an unknown intent id); 3 timed out waiting for an answer; 64 usage (bad flags or values).

Operator control (`halt`, `reduce`, `resume`, `state`, `risk`, `cancel`) writes the controls bucket or the log
and returns; the actors act on it. A scope is every venue (no `--venue`), one venue, or one venue's symbol:
`halt` accepts nothing new there (with `--cancel-working` the supervisors also cancel the intents accepted
before it), `reduce` accepts only intents that reduce the position, `resume` makes it ACTIVE again. The
strictest scope covering a market wins: resuming one venue does not lift a halt of every venue (the command
says so). `cancel` finds the intent in the log, publishes `CancelIntent` and waits for the supervisor's answer.

The long-running commands (`up`, `actor`, `venue paper`) stop on SIGTERM or SIGINT at any moment: while
they connect (a server that is not there yet is retried forever, but never past a stop), while they serve,
and while they reconnect. A stop drains gracefully for up to `STOP_BUDGET_S`, abandons what is left, and
exits 0; a second signal, or a process still alive `HARD_STOP_S` after the first, exits 1 at once.

The paper venue's configuration (`venues.config.PaperVenueConfig`) comes from a JSON file (`--config`,
`venue paper`, or `--paper-config`, `up`; default `$EXECBUS_PAPER_CONFIG`), then the flags override it:
`execbus venue paper --nats URL --profile binance --seed 7` is the venue as its own process, reproducible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from bus.connect import CredentialsMissing, CredentialsRefused
from bus.loop import run as run_loop
from bus.logging import configure_logging
from bus.ops.report import format_report, progress_line

__all__ = ["main"]

DEFAULT_URL = "nats://127.0.0.1:4222"

EXIT_OK, EXIT_FAILED, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_USAGE = 0, 1, 2, 3, 64

STOP_BUDGET_S = 2.5
"""After SIGTERM/SIGINT: how long a long-running command may spend shutting down gracefully (actors finish
what they took and hand their partitions back, the venue drains) before what is left is abandoned."""
HARD_STOP_S = 4.5
"""After the first signal the process exits (code 1) this much later whatever it is doing: a task that ignores
its cancellation, or a thread nobody can interrupt, must not keep a stopped process alive."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # The demo and the benchmarks print their own results; the actors' info logs would bury them.
    quiet = "warning" if getattr(args, "quiet", False) else None
    configure_logging(args.log_level or quiet)
    _client_identity(args)
    try:
        return int(run_loop(args.run(args)) or 0)
    except KeyboardInterrupt:
        return 130
    except (CredentialsRefused, CredentialsMissing) as exc:  # (bad input: said clearly, never a traceback)
        print(f"execbus {args.command}: {exc}. Credentials come from EXECBUS_AUTH_DIR, or EXECBUS_NATS_USER and "
              "EXECBUS_NATS_PASSWORD_FILE (see `execbus nats-config`)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        _Stop.disarm()


CLUSTER_LEASE_TTL_S = 15.0
DEFAULT_AUTH_DIR = os.path.join(".execbus", "auth")
"""Where `execbus up` keeps its users' passwords by default (under its default store); clients started in the
same directory find them there."""

#: The bus user each command connects as when credentials come from an auth dir (bus/ops/auth.py).
COMMAND_USERS = {"submit": "upstream", "cancel": "upstream", "watch": "monitor", "web": "monitor",
                 "replay": "monitor", "venue": "venue"}


def _client_identity(args: argparse.Namespace) -> None:
    """Tell `bus.connect.ClientAuth.from_env` who this command is: its user (`EXECBUS_NATS_ROLE`) and, when
    `EXECBUS_AUTH_DIR` is not set, the auth dir of an `execbus up` run from this directory."""
    command = getattr(args, "command", None)
    user = args.name if command == "actor" else COMMAND_USERS.get(command or "", "ops")
    if getattr(args, "run", None) is _replay_import:
        user = "ops"  # (it creates the EXEC_IMPORT stream)
    os.environ.setdefault("EXECBUS_NATS_ROLE", user)
    if command != "up" and "EXECBUS_AUTH_DIR" not in os.environ and os.path.isfile(
        os.path.join(DEFAULT_AUTH_DIR, "auth.conf")
    ):
        os.environ["EXECBUS_AUTH_DIR"] = os.path.abspath(DEFAULT_AUTH_DIR)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits `EXIT_USAGE` (argparse's own 2 is `EXIT_REJECTED` here)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="execbus", description="Order execution as a choreography of actors on NATS")
    parser.add_argument("--log-level", default=None, help="debug, info, warning (default: $EXECBUS_LOG_LEVEL or info)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a few intents on embedded NATS and the paper exchange")
    p.add_argument("--json", action="store_true", help="print each report as one JSON line")
    p.set_defaults(run=_demo, quiet=True)

    p = sub.add_parser("up", help="embedded NATS (unless --nats), the paper venue and every actor")
    p.add_argument("--nats", default=None, help="join this server instead of embedding one")
    p.add_argument("--port", type=int, default=4222, help="port of the embedded server (-1: any free port)")
    p.add_argument("--store", default=None, help="JetStream store directory (default: .execbus/ here)")
    p.add_argument("--no-venue", action="store_true", help="do not serve the paper venue from this process")
    p.add_argument("--http", type=int, default=None, metavar="PORT",
                   help="also serve the web page of executions on this port (see `execbus web`)")
    p.add_argument("--http-host", default="127.0.0.1", help="address of the web page (default 127.0.0.1)")
    p.add_argument("--cluster", type=int, default=1, metavar="N",
                   help="embed N nats-servers forming one JetStream cluster (3 survives losing one; default 1)")
    p.add_argument("--replicas", type=int, default=None,
                   help="copies of the log and buckets (default: 3 on a cluster of 3 or more, else 1)")
    p.add_argument("--no-auth", action="store_true",
                   help="no users on the bus (anyone reaching it may do anything): for experiments only")
    p.add_argument("--tls", action="store_true",
                   help="TLS between clients and servers and between cluster nodes, with a CA generated for the run")
    p.add_argument("--tls-ca", default=None, metavar="CERT", help="sign the server certificate with this CA (with --tls-ca-key)")
    p.add_argument("--tls-ca-key", default=None, metavar="KEY")
    _paper_options(p, config_flag="--paper-config")
    p.set_defaults(run=_up)

    p = sub.add_parser("nats-config", help="write the bus's users and permissions (and TLS files) for nats-server")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="auth.conf (the server's authorization block), users/<user>.password, nats.conf")
    p.add_argument("--tls", action="store_true", help="also a CA and server certificate under DIR/tls")
    p.add_argument("--tls-host", action="append", default=None, metavar="HOST",
                   help="a name or address clients dial (repeatable; default 127.0.0.1, localhost, ::1)")
    p.add_argument("--routes", default=None, metavar="HOST:PORT,...",
                   help="every node of a cluster: also write cluster.conf, the users plus a `cluster` block whose "
                        "routes log in with a generated password (the same file for every node)")
    p.add_argument("--json", action="store_true", help="print every user's permissions as JSON")
    p.set_defaults(run=_nats_config)

    p = sub.add_parser("actor", help="run one actor alone (scale by starting several)")
    p.add_argument("name", help="supervisor, pricer, placer, reconciler, tracker or market_fallback")
    p.add_argument("--nats", default=None)
    p.set_defaults(run=_actor)

    p = sub.add_parser("venue", help="serve a simulated venue on the bus")
    p.add_argument("kind", choices=["paper"])
    p.add_argument("--nats", default=None)
    _paper_options(p, config_flag="--config")
    p.add_argument("--speed", type=float, default=None,
                   help="replay speed over exchange time (default 1; 0: step-driven through the control API)")
    p.add_argument("--data", nargs="+", default=None, metavar="FILE",
                   help="recorded market files played in order as one market (default: the shipped sample)")
    p.set_defaults(run=_venue)

    from actors.strategies import STRATEGIES  # the registry: the one list of strategies

    p = sub.add_parser(
        "submit", help="publish an intent, follow it, print its report",
        epilog="strategies (--param KEY=VALUE sets their parameters, see `execbus schema`):\n"
        + "\n".join(f"  {name:<17} {s.summary}" for name, s in STRATEGIES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--symbol", required=True)
    p.add_argument("--side", required=True, choices=["buy", "sell"])
    p.add_argument("--qty", required=True)
    p.add_argument("--venue", default="paper")
    p.add_argument("--strategy", default="market", choices=list(STRATEGIES))
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--intent-id", default=None)
    p.add_argument("--nats", default=None)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the report")
    p.add_argument("--json", action="store_true", help="print only the ExecutionCompleted message as JSON")
    p.set_defaults(run=_submit)

    _replay_parser(sub)
    _control_parser(sub)

    p = sub.add_parser("schema", help="JSON Schema of every message")
    p.set_defaults(run=_schema)

    _plugin_commands(sub)
    return parser


COMMANDS_GROUP = "execbus.commands"
"""Entry-point group of the commands other packages add to `execbus` (`execbus bench` is one: see pyproject.toml)."""


def _plugin_commands(sub: Any) -> None:
    """Add the commands registered under `COMMANDS_GROUP`. Each entry point's name is the command; its object is
    called as `register(sub, name)` and adds the subparser `name` to `sub` (`sub.add_parser(name, ...)`), with
    `run` (an async function of the parsed arguments returning the exit code) set as a default, and optionally
    `quiet=True` (actors' info logs off unless --log-level says otherwise). A command that cannot be loaded is
    left out, with a note on stderr; it never takes a built-in command's name."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if ep.name in sub.choices:  # a built-in, or the same distribution seen twice on the path
            continue
        try:
            ep.load()(sub, ep.name)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not take the whole CLI down
            sub.choices.pop(ep.name, None)
            print(f"execbus: command {ep.name!r} ({ep.value}) is not available: {exc!r}", file=sys.stderr)


def _paper_options(p: argparse.ArgumentParser, *, config_flag: str) -> None:
    p.add_argument(config_flag, dest="paper_config", default=None, metavar="FILE",
                   help="paper venue configuration as JSON (venues.config.PaperVenueConfig fields; "
                        "default $EXECBUS_PAPER_CONFIG); the flags below override it")
    p.add_argument("--profile", choices=["strict", "binance"], default=None,
                   help="paper venue behaviour profile (default binance; see venues/README.md)")
    p.add_argument("--seed", type=int, default=None, help="paper venue RNG seed (default 0)")


def paper_config(args: argparse.Namespace) -> Any:
    """The paper venue's `PaperVenueConfig`: the JSON file (if any), then the command-line overrides. Decoded
    like the file itself, so unknown fields and bad values fail loudly (ValueError)."""
    from venues.config import PaperVenueConfig

    path = getattr(args, "paper_config", None) or os.environ.get("EXECBUS_PAPER_CONFIG") or None
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = msgspec.json.decode(Path(path).read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            raise ValueError(f"paper venue config {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"paper venue config {path}: expected a JSON object")
    for key in ("profile", "seed", "speed"):
        value = getattr(args, key, None)
        if value is not None:
            raw[key] = value
    data = getattr(args, "data", None)
    if data:
        raw["markets"] = [{"files": [str(Path(f).resolve()) for f in data]}]
    try:
        return msgspec.json.decode(msgspec.json.encode(raw), type=PaperVenueConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"paper venue config: {exc}") from None


def _url(args: argparse.Namespace) -> str:
    return args.nats or os.environ.get("NATS_URL") or DEFAULT_URL


class _Stopped(Exception):
    """A stop signal came while the command was still starting."""


class _Stop:
    """SIGINT/SIGTERM for a long-running command. Installed before anything starts, so that a signal that comes
    while it is still connecting or starting its actors stops it too (gracefully, never by a kill).

    `event` is set by the first signal; the command then has `STOP_BUDGET_S` for a graceful shutdown, after
    which `bounded` abandons what is still running. A second signal, or `HARD_STOP_S` after the first, exits
    the process at once (code 1), running the `on_hard_exit` hooks first (e.g. stop the embedded nats-server).
    """

    _armed: threading.Timer | None = None

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.on_hard_exit: list[Callable[[], None]] = []
        self._loop = asyncio.get_running_loop()
        self._deadline: float | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._signal, sig)

    def _signal(self, sig: signal.Signals) -> None:
        if self.event.is_set():
            self._hard_exit(f"second {sig.name}")
            return
        self._deadline = self._loop.time() + STOP_BUDGET_S
        timer = threading.Timer(HARD_STOP_S, self._hard_exit, args=(f"still running {HARD_STOP_S:g} s after {sig.name}",))
        timer.daemon = True
        timer.start()
        _Stop._armed = timer
        self.event.set()

    def _hard_exit(self, why: str) -> None:
        for hook in self.on_hard_exit:
            try:
                hook()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        try:
            sys.stderr.write(f"execbus: {why}: exiting now\n")
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(EXIT_FAILED)

    @classmethod
    def disarm(cls) -> None:
        """The event loop is gone (the command returned): nothing is left for the hard stop to cut short."""
        if cls._armed is not None:
            cls._armed.cancel()
            cls._armed = None

    def remaining(self, floor: float = 0.2) -> float:
        if self._deadline is None:
            return STOP_BUDGET_S
        return max(self._deadline - self._loop.time(), floor)

    async def unless_stopped(self, aw: Awaitable[Any], *, finish: bool | Callable[[], bool] = False) -> Any:
        """`await aw`, unless a stop comes first: then `aw` is cancelled and `_Stopped` raised. For start-up
        steps that may wait forever (connecting to a server that is not there: nats-py retries without end).
        `finish` (or `finish()` true when the stop comes): a stop lets `aw` complete within the stop budget first
        (a start that has taken resources is better finished and then undone gracefully than cut in the middle)."""
        if self.event.is_set() and not (finish() if callable(finish) else finish):
            if asyncio.iscoroutine(aw):
                aw.close()
            raise _Stopped
        task = asyncio.ensure_future(aw)
        waiter = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and (finish() if callable(finish) else finish):
                await asyncio.wait({task}, timeout=self.remaining())
        finally:
            waiter.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        raise _Stopped

    async def bounded(self, aw: Awaitable[Any], what: str, *, floor: float = 0.2) -> bool:
        """`await aw` for what is left of the stop budget (at least `floor` s); False if it had to be abandoned
        (cancelled), e.g. a drain that cannot reach a server that went away. Errors are logged, not raised:
        one failing step must not skip the rest of the shutdown."""
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task}, timeout=self.remaining(floor))
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
            print(f"{what} did not finish within the stop budget; abandoned", file=sys.stderr, flush=True)
            return False
        if not task.cancelled() and task.exception() is not None:
            print(f"{what} failed: {task.exception()!r}", file=sys.stderr, flush=True)
            return False
        return True


# -- commands ---------------------------------------------------------------------------------------------


async def _schema(args: argparse.Namespace) -> int:
    from messages import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


async def _up(args: argparse.Namespace) -> int:
    from bus.ops.startup import StartupReconciliationError
    from bus.ops.system import System, SystemConfig

    stop = _Stop()
    try:
        venue_config = paper_config(args) if not args.no_venue else None
    except ValueError as exc:
        print(f"execbus up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = args.store or os.path.join(os.getcwd(), ".execbus")
    if bool(args.tls_ca) != bool(args.tls_ca_key):
        print("execbus up: --tls-ca and --tls-ca-key go together", file=sys.stderr)
        return EXIT_USAGE
    if args.nats and (args.tls or args.tls_ca or args.cluster > 1):
        print("execbus up: --tls and --cluster make the embedded servers; joining --nats, trust its CA with "
              "EXECBUS_NATS_CA", file=sys.stderr)
        return EXIT_USAGE
    # Joining a server: its users are someone else's, and ours come from the environment (EXECBUS_AUTH_DIR).
    auth_dir = None if args.no_auth else (os.environ.get("EXECBUS_AUTH_DIR") if args.nats else os.path.join(store, "auth"))
    tls_dir = os.path.join(auth_dir or store, "tls") if args.tls or args.tls_ca else None
    settings = None
    if args.replicas is not None or args.cluster > 1:
        from bus.settings import BusSettings

        # On a cluster a lost leader is replaced in 4-10 s: leases trusted for less would all lapse at each
        # election of the lease bucket (every actor handing back every partition), so 15 s unless told.
        ttl = None if os.environ.get("EXECBUS_LEASE_TTL_S") or args.cluster <= 1 else CLUSTER_LEASE_TTL_S
        replicas = args.replicas or (None if os.environ.get("EXECBUS_REPLICAS") else min(3, args.cluster))
        settings = BusSettings.from_env(replicas=replicas, lease_ttl_s=ttl)
    system = System(SystemConfig(
        nats_url=args.nats, port=args.port, store_dir=store, paper_venue=not args.no_venue, paper_config=venue_config,
        http_port=args.http, http_host=args.http_host, cluster=args.cluster, auth_dir=auth_dir, tls_dir=tls_dir,
        tls_ca=(args.tls_ca, args.tls_ca_key) if args.tls_ca else None, settings=settings,
    ))
    stop.on_hard_exit.append(lambda: _terminate_server(system))
    try:
        try:
            # Cut short while still connecting; once connected, finished and then stopped gracefully.
            await stop.unless_stopped(system.start(), finish=lambda: system.bus is not None)
        except (StartupReconciliationError, ValueError) as exc:
            print(f"execbus up: refusing to run: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except _Stopped:
            return EXIT_OK
        web = f"  web at {system.web.url}" if system.web is not None else ""
        print(f"execbus up: NATS at {system.url}  (actors: {', '.join(system.hosts)}){web}", flush=True)
        if system.auth is not None:  # where clients find their credentials (the passwords are never printed)
            print(f"execbus up: users in {system.auth.path} (clients: EXECBUS_AUTH_DIR={system.auth.path})", flush=True)
        else:
            print("execbus up: no users on the bus (--no-auth): anyone who reaches it may trade", flush=True)
        await stop.event.wait()
        return EXIT_OK
    finally:
        await stop.bounded(system.stop(), "execbus up: shutdown")
        if system.server is not None:  # the shutdown was cut short: never leave our nats-server behind
            await stop.bounded(system.server.stop(), "execbus up: stopping nats-server", floor=1.0)


async def _nats_config(args: argparse.Namespace) -> int:
    from bus import tls
    from bus.ops.auth import write_auth_dir, write_private
    from bus.settings import BusSettings

    try:
        auth = write_auth_dir(args.out, BusSettings.from_env())
        text = 'include "auth.conf"\n'
        files = None
        if args.tls:
            files = tls.ensure(auth.path / "tls", hosts=tuple(args.tls_host) if args.tls_host else tls.DEFAULT_HOSTS)
            text += tls.server_block(files) + "\n"
            print(f"execbus nats-config: TLS: CA {files.ca_cert}, server certificate {files.cert}")
        write_private(auth.path / "nats.conf", text)
        if args.routes:
            from bus.ops.auth import cluster_block

            routes = [r.strip() for r in args.routes.split(",") if r.strip()]
            if not routes or any(":" not in r for r in routes):
                raise ValueError(f"--routes wants HOST:PORT,HOST:PORT,...; got {args.routes!r}")
            node = auth.config.read_text() + "\n"
            if files is not None:  # clients and routes over TLS (the certificate must name every node's host)
                node += tls.server_block(files) + "\n"
            node += cluster_block(routes, auth.route_password(), extra=tls.cluster_block(files) if files else "")
            write_private(auth.path / "cluster.conf", node)
            print(f"execbus nats-config: {auth.path / 'cluster.conf'} (each node: nats-server -c it --server_name NAME)")
    except (OSError, ValueError) as exc:
        print(f"execbus nats-config: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({u.name: {"role": u.role, "publish": u.permissions.publish, "subscribe": u.permissions.subscribe,
                                   "allow_responses": u.permissions.allow_responses} for u in auth.users}, indent=2))
        return EXIT_OK
    print(f"execbus nats-config: {auth.config} (include it, or run nats-server -c {auth.path / 'nats.conf'})")
    for user in auth.users:
        perms = user.permissions
        print(f"  {user.name:<16} {user.role:<9} publish {len(perms.publish):>3} subjects, subscribe "
              f"{len(perms.subscribe):>2}  password: {auth.password_file(user.name)}")
    print("clients: EXECBUS_AUTH_DIR=DIR (the command picks its user), or EXECBUS_NATS_USER and "
          "EXECBUS_NATS_PASSWORD_FILE")
    return EXIT_OK


def _terminate_server(system: Any) -> None:
    """Hard-exit hook: SIGTERM the embedded nats-server child (it flushes JetStream and exits on its own)."""
    proc = getattr(system.server, "_proc", None) if system.server is not None else None
    if proc is not None and proc.poll() is None:
        proc.terminate()


async def _actor(args: argparse.Namespace) -> int:
    from bus.bus import Bus
    from bus.runtime import ActorHost
    from bus.ops.system import build_actor
    from venues.gateway import VenuePool

    stop = _Stop()
    url = _url(args)
    venues = VenuePool(nats_url=url)
    try:
        actor = build_actor(args.name, venues)
    except ValueError as exc:
        print(f"execbus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bus: Any = None
    host: Any = None
    try:
        # A server that is not there is retried forever, but a stop ends the wait at once.
        bus = await stop.unless_stopped(Bus.connect(url, name=f"execbus-{args.name}"))
        # Started actors have taken partitions: let the start finish (within the budget) and hand them back.
        host = await stop.unless_stopped(ActorHost(bus, actor).start(), finish=True)
        if args.name == "reconciler":
            from bus.ops.startup import StartupReconciliationError, reconcile_with_venues

            try:
                await stop.unless_stopped(reconcile_with_venues(bus, venues), finish=True)
            except (StartupReconciliationError, ValueError) as exc:
                print(f"execbus actor reconciler: refusing to run: {exc}", file=sys.stderr)
                return EXIT_FAILED
        if not stop.event.is_set():
            print(f"execbus actor {args.name}: replica {host.replica} on {url}", flush=True)
            await stop.event.wait()
        return EXIT_OK
    except _Stopped:
        return EXIT_OK
    finally:
        if host is not None:
            await stop.bounded(host.stop(), f"execbus actor {args.name}: stopping the actor")
        await stop.bounded(venues.close(), f"execbus actor {args.name}: closing venue connections")
        if bus is not None:
            await stop.bounded(bus.close(), f"execbus actor {args.name}: closing the NATS connection")
            if not bus.nc.is_closed:  # drain abandoned (e.g. the server is away): close without it
                await stop.bounded(bus.nc.close(), f"execbus actor {args.name}: closing NATS", floor=0.5)


async def _venue(args: argparse.Namespace) -> int:
    from bus.connect import connect
    from venues.service import PaperVenueService
    from venues.simulator import PaperVenue

    stop = _Stop()
    url = _url(args)
    try:
        config = paper_config(args)
    except ValueError as exc:
        print(f"execbus venue paper: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"execbus venue paper on {url}", flush=True)
    nc: Any = None
    try:
        # `venues.service.run_paper_venue`, with a connection a stop can interrupt while it is still connecting.
        nc = await stop.unless_stopped(connect(url, name=f"execbus-paper-venue-{config.venue}"))
        venue = await stop.unless_stopped(asyncio.to_thread(PaperVenue, config))
        service = await stop.unless_stopped(PaperVenueService(nc, venue).start(), finish=True)
        try:
            if not stop.event.is_set():
                markets = ", ".join(venue.engine.markets)
                print(f"execbus venue paper: serving '{config.venue}' ({markets}; profile {config.profile}, "
                      f"seed {config.seed}, speed {config.speed:g})", flush=True)
                await venue.run(stop.event)
        finally:
            await stop.bounded(service.stop(), "execbus venue paper: stopping the service")
        return EXIT_OK
    except _Stopped:
        return EXIT_OK
    finally:
        if nc is not None:
            await stop.bounded(nc.drain(), "execbus venue paper: draining the NATS connection")
            if not nc.is_closed:
                await stop.bounded(nc.close(), "execbus venue paper: closing NATS", floor=0.5)


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
    from messages import SubmitIntent, params_for

    try:
        qty = Decimal(args.qty)
    except InvalidOperation:
        raise ValueError(f"--qty must be a decimal number, got {args.qty!r}") from None
    params = params_for(args.strategy, parse_params(args.param), strict=False)
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
    from bus.ops.client import execute
    from messages import ExecutionCompleted, IntentRejected, Message, encode

    try:
        intent = build_intent(args)
    except (ValueError, msgspec.ValidationError) as exc:
        print(f"execbus submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bus = await Bus.connect(_url(args), name="execbus-submit")

    async def follow(msg: Message) -> None:
        if not args.json:
            print(progress_line(msg), flush=True)

    try:
        final = await execute(bus, intent, timeout=args.timeout, on_message=follow, answers_only=True)
    except (asyncio.TimeoutError, TimeoutError):
        print(f"execbus submit: no report for {intent.intent_id} after {args.timeout}s", file=sys.stderr)
        return EXIT_TIMEOUT
    finally:
        await bus.close()
    if isinstance(final, IntentRejected):
        if args.json:
            print(encode(final).decode())
        else:
            print(f"rejected: {final.code or final.field}: {final.reason}", file=sys.stderr)
        return EXIT_REJECTED
    assert isinstance(final, ExecutionCompleted)
    print(encode(final).decode() if args.json else format_report(final), flush=True)
    return EXIT_FAILED if final.status == "failed" else EXIT_OK


def _replay_parser(sub: Any) -> None:
    replay = sub.add_parser("replay", help="read the message log: show, fills, export, import, redrive, plot")
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

    p = rsub.add_parser("plot", help="draw one intent's execution as a PNG (needs matplotlib: execbus[bench])")
    p.add_argument("intent_id")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="where to write the PNG")
    p.add_argument("--nats", default=None, help="read the log on this server (default $NATS_URL)")
    p.add_argument("--file", default=None, help="read an exported JSONL log instead of NATS")
    p.add_argument("--stream", default=None, help="stream to read (default EXEC; EXEC_IMPORT for imports)")
    p.set_defaults(run=_replay_plot)


async def _log_records(args: argparse.Namespace, live_filter: str, since: int | None = None, until: int | None = None) -> Any:
    from bus.bus import Bus
    from bus.ops.replay import read_file, read_stream

    if args.file:
        return [r for r in read_file(args.file, live_filter) if (since is None or r.time_ns >= since) and (until is None or r.time_ns <= until)]
    bus = await Bus.connect(_url(args), name="execbus-replay")
    try:
        return [r async for r in read_stream(bus, live_filter, stream=args.stream, since_ns=since, until_ns=until)]
    finally:
        await bus.close()


async def _replay_show(args: argparse.Namespace) -> int:
    from bus.ops.replay import format_diagram, format_timeline, timeline

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
    from bus.ops.replay import fill_rows, format_fills
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
    from bus.ops.replay import write_jsonl

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
    from bus.ops.replay import IMPORT_STREAM, import_records, read_file

    bus = await Bus.connect(_url(args), name="execbus-replay")
    try:
        count = await import_records(bus, read_file(args.log))
    finally:
        await bus.close()
    print(f"imported {count} records into {IMPORT_STREAM}; read them with --stream {IMPORT_STREAM}", file=sys.stderr)
    return EXIT_OK


async def _replay_redrive(args: argparse.Namespace) -> int:
    from bus.ops.redrive import redrive_file

    return await redrive_file(args.log, data=args.data, seed=args.seed, json_lines=args.json)


async def _replay_plot(args: argparse.Namespace) -> int:
    from bus.ops.picture import INSTALL_HINT, MatplotlibMissing, available, picture_of, plot_execution

    if not available():  # say so before reading a whole log for nothing
        print(f"execbus replay plot: drawing needs matplotlib, which is not installed: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_FAILED
    records = await _log_records(args, f"exec.*.*.*.{args.intent_id}")
    if not records:
        print(f"execbus replay: nothing logged for intent {args.intent_id}", file=sys.stderr)
        return EXIT_FAILED
    try:
        path = plot_execution(picture_of(records), args.output)
    except MatplotlibMissing as exc:
        print(f"execbus replay plot: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(path)
    return EXIT_OK


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


# -- operator control -------------------------------------------------------------------------------------

CONNECT_TIMEOUT_S = 10.0
"""An operator command gives up on a server it cannot reach after this long (and says nothing changed): a
halt that hangs silently is worse than one that fails loudly."""

CANCEL_ANSWER_TIMEOUT_S = 10.0
CANCEL_REPORT_TIMEOUT_S = 300.0

_SCOPE_COMMANDS = {
    "halt": ("HALTED", "accept nothing new in a scope (all venues, a venue, or a venue's symbol)"),
    "reduce": ("REDUCING", "accept only intents that reduce the position in a scope"),
    "resume": ("ACTIVE", "trade normally again in a scope"),
}


class _Unreachable(Exception):
    """No NATS server at the URL within `CONNECT_TIMEOUT_S`."""


def _control_parser(sub: Any) -> None:
    for name, (state, text) in _SCOPE_COMMANDS.items():
        p = sub.add_parser(name, help=text, description=f"{text}. Prints what changed.")
        p.add_argument("--venue", default=None, help="one venue: 'paper' or a ccxt exchange id (default: every venue)")
        p.add_argument("--symbol", default=None, help="one symbol of --venue, BASE/QUOTE such as BTC/USDT")
        if name == "halt":
            p.add_argument("--cancel-working", action="store_true",
                           help="the supervisors also cancel the intents accepted before the halt")
        p.add_argument("--reason", default="", help="why (kept with the state and in the log)")
        p.add_argument("--nats", default=None)
        p.set_defaults(run=_set_state, target_state=state, cancel_working=False)

    p = sub.add_parser("state", help="every scope that is not ACTIVE")
    p.add_argument("--nats", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=_state)

    risk = sub.add_parser("risk", help="the risk gate's limits: set, show")
    rsub = risk.add_subparsers(dest="risk_command", required=True)
    p = rsub.add_parser("set", help="change one limit (validated: a bad value changes nothing)")
    p.add_argument("key", help="a limit name (see `execbus risk show`)")
    p.add_argument("value")
    p.add_argument("--nats", default=None)
    p.set_defaults(run=_risk_set)
    p = rsub.add_parser("show", help="every limit, marking those at their default")
    p.add_argument("--nats", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=_risk_show)

    p = sub.add_parser("cancel", help="cancel one intent: stop its strategy and cancel its working orders")
    p.add_argument("intent_id", metavar="ID")
    p.add_argument("--reason", default="", help="why (carried in the CancelIntent)")
    p.add_argument("--wait", action="store_true", help="once accepted, wait for the final report and print it")
    p.add_argument("--timeout", type=float, default=CANCEL_ANSWER_TIMEOUT_S,
                   help=f"seconds to wait for the supervisor's answer (default {CANCEL_ANSWER_TIMEOUT_S:g})")
    p.add_argument("--report-timeout", type=float, default=CANCEL_REPORT_TIMEOUT_S,
                   help=f"with --wait: seconds to wait for the report (default {CANCEL_REPORT_TIMEOUT_S:g})")
    p.add_argument("--nats", default=None)
    p.add_argument("--json", action="store_true", help="print the answer (and the report) as JSON lines")
    p.set_defaults(run=_cancel)


def operator_id() -> str:
    """`user@host`: who changed a state or asked for a cancel."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        user = os.environ.get("USER") or "unknown"
    return f"{user}@{socket.gethostname()}"


def known_venue(venue: str) -> bool:
    """'paper' or a ccxt exchange id (checked without opening anything)."""
    if venue == "paper":
        return True
    import ccxt

    return venue in ccxt.exchanges


def parse_scope(venue: str | None, symbol: str | None) -> tuple[str, str]:
    """(venue, symbol) of a scope from `--venue`/`--symbol` ("" = every); `ValueError` with a clear message
    for a symbol without its venue, an unknown venue or a symbol that is not BASE/QUOTE."""
    from messages.base import Symbol

    if symbol is not None and venue is None:
        raise ValueError("--symbol needs --venue (a symbol's scope is on one venue)")
    if venue is not None and not known_venue(venue):
        raise ValueError(f"unknown scope: no venue {venue!r} (use 'paper' or a ccxt exchange id such as binance)")
    if symbol is not None:
        try:
            msgspec.convert(symbol, Symbol)
        except msgspec.ValidationError:
            raise ValueError(f"unknown scope: {symbol!r} is not a symbol (BASE/QUOTE, such as BTC/USDT)") from None
    return venue or "", symbol or ""


async def _connect(args: argparse.Namespace, name: str) -> Any:
    from bus.bus import Bus
    from bus.settings import BusSettings

    url = _url(args)
    try:
        return await asyncio.wait_for(Bus.connect(url, BusSettings.from_env(), name=name), CONNECT_TIMEOUT_S)
    except TimeoutError:
        raise _Unreachable(url) from None


async def _with_bus(args: argparse.Namespace, command: str, body: Callable[[Any], Awaitable[int]]) -> int:
    """Connect, run `body(bus)`, close. A server that cannot be reached is EXIT_FAILED, nothing done."""
    try:
        bus = await _connect(args, f"execbus-{command}")
    except _Unreachable as exc:
        print(f"execbus {command}: cannot reach NATS at {exc} within {CONNECT_TIMEOUT_S:g} s; nothing changed",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        return await body(bus)
    finally:
        await bus.close()


def _controls(bus: Any) -> Any:
    """The controls store without its watch (`bus.controls()` starts one): a one-shot command reads every
    value fresh, and has no watch to set up only to tear it down again a moment later."""
    from bus.controls import ControlStore

    return ControlStore(bus.buckets.controls, bus.acks)


def _iso(ns: int) -> str:
    from datetime import datetime, timezone

    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _scope_label(venue: str, symbol: str) -> str:
    from messages.controls import ScopeState

    return ScopeState(venue=venue, symbol=symbol, state="ACTIVE").label


async def _set_state(args: argparse.Namespace) -> int:
    command = args.command
    try:
        venue, symbol = parse_scope(args.venue, args.symbol)
    except ValueError as exc:
        print(f"execbus {command}: {exc}; nothing changed", file=sys.stderr)
        return EXIT_USAGE
    label = _scope_label(venue, symbol)
    state = args.target_state

    async def body(bus: Any) -> int:
        controls = _controls(bus)
        current = (await controls.trading()).find(venue, symbol)
        # A second `halt` without --cancel-working keeps the first one's cancel: it is never taken back.
        cancel_working = args.cancel_working or (
            state == "HALTED" and current is not None and current.state == "HALTED" and current.cancel_working)
        event = await controls.set_trading(
            bus.publish, venue=venue, symbol=symbol, state=state, reason=args.reason, by=operator_id(),
            cancel_working=cancel_working,
        )
        if event is None:
            print(f"{label}: already {state}{' (canceling working intents)' if cancel_working else ''}", flush=True)
        else:
            detail = f" ({args.reason})" if args.reason else ""
            if event.cancel_working:
                detail += "; the supervisors cancel the intents accepted before it"
            print(f"{label}: {event.previous} -> {event.state}{detail}", flush=True)
        effective = (await controls.trading()).effective(venue, symbol)
        if effective is not None and (effective.venue, effective.symbol) != (venue, symbol):
            from messages.controls import RESTRICTIVENESS

            if RESTRICTIVENESS[effective.state] > RESTRICTIVENESS[state]:
                why = f" ({effective.reason})" if effective.reason else ""
                print(f"note: {label} is still {effective.state} by the {effective.label} scope{why}; "
                      f"`execbus resume{_scope_flags(effective.venue, effective.symbol)}` lifts that", flush=True)
        return EXIT_OK

    return await _with_bus(args, command, body)


def _scope_flags(venue: str, symbol: str) -> str:
    return (f" --venue {venue}" if venue else "") + (f" --symbol {symbol}" if symbol else "")


async def _state(args: argparse.Namespace) -> int:
    async def body(bus: Any) -> int:
        states = await _controls(bus).trading()
        scopes = sorted(states.scopes, key=lambda s: (s.venue, s.symbol))
        if args.json:
            print(json.dumps({"scopes": [
                {"scope": s.label, "venue": s.venue, "symbol": s.symbol, "state": s.state, "reason": s.reason,
                 "changed": _iso(s.changed_ns), "changed_ns": s.changed_ns, "by": s.by,
                 "cancel_working": s.cancel_working}
                for s in scopes
            ]}), flush=True)
        elif not scopes:
            print("all ACTIVE", flush=True)
        else:
            for s in scopes:
                extra = "  cancel working" if s.cancel_working else ""
                reason = f"  reason: {s.reason}" if s.reason else ""
                print(f"{s.label}: {s.state}  since {_iso(s.changed_ns)}  by {s.by or '-'}{extra}{reason}", flush=True)
        return EXIT_OK

    return await _with_bus(args, "state", body)


def _limit_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


async def _risk_set(args: argparse.Namespace) -> int:
    from bus.controls import parse_limit
    from messages.controls import RiskLimits

    try:
        parse_limit(RiskLimits(), args.key, args.value)  # every limit is checked on its own: fail before connecting
    except ValueError as exc:
        print(f"execbus risk set: {exc}; nothing changed", file=sys.stderr)
        return EXIT_USAGE

    async def body(bus: Any) -> int:
        controls = _controls(bus)
        before = getattr(await controls.limits(fresh=True), args.key)
        try:
            after = getattr(await controls.set_limit(args.key, args.value), args.key)
        except ValueError as exc:
            print(f"execbus risk set: {exc}; nothing changed", file=sys.stderr)
            return EXIT_USAGE
        if after == before:
            print(f"{args.key}: {_limit_text(after)} (unchanged)", flush=True)
        else:
            print(f"{args.key}: {_limit_text(before)} -> {_limit_text(after)}", flush=True)
        return EXIT_OK

    return await _with_bus(args, "risk", body)


async def _risk_show(args: argparse.Namespace) -> int:
    from messages.controls import RiskLimits

    defaults = RiskLimits()

    async def body(bus: Any) -> int:
        limits = await _controls(bus).limits(fresh=True)
        names = [f.name for f in msgspec.structs.fields(RiskLimits)]
        rows = {name: (getattr(limits, name), getattr(limits, name) == getattr(defaults, name)) for name in names}
        if args.json:
            print(json.dumps({
                name: {"value": value if isinstance(value, bool | int) else str(value), "default": is_default}
                for name, (value, is_default) in rows.items()
            }), flush=True)
        else:
            width = max(map(len, names))
            for name, (value, is_default) in rows.items():
                print(f"{name:<{width}}  {_limit_text(value):<10}{'  (default)' if is_default else ''}".rstrip(),
                      flush=True)
        return EXIT_OK

    return await _with_bus(args, "risk", body)


async def find_intent(bus: Any, intent_id: str) -> tuple[str, str] | None:
    """(venue, symbol) of the intent's `SubmitIntent` in the log, or None if the log has none."""
    from contextlib import aclosing

    from bus.ops.replay import read_stream
    from messages import InvalidMessage, SubmitIntent, subjects

    async with aclosing(read_stream(bus, f"{subjects.PREFIX}.{SubmitIntent.kind}.*.*.{intent_id}")) as records:
        async for record in records:
            try:
                message = record.message()
            except InvalidMessage:
                message = None
            if isinstance(message, SubmitIntent):
                return message.venue, message.symbol
            parts = subjects.parse(record.subject)
            if parts is not None:
                return parts.venue, parts.symbol
    return None


async def _cancel(args: argparse.Namespace) -> int:
    from messages import CancelIntent, CancelIntentAccepted, CancelIntentRejected, ExecutionCompleted, encode, subjects
    from messages.base import IntentId

    if not args.timeout > 0 or not args.report_timeout > 0:
        print("execbus cancel: --timeout and --report-timeout take a number of seconds above 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        intent_id = msgspec.convert(args.intent_id, IntentId)
    except msgspec.ValidationError:
        print(f"execbus cancel: unknown intent ID {args.intent_id!r}: not an intent id "
              "(1-64 of A-Z a-z 0-9 _ -); nothing sent", file=sys.stderr)
        return EXIT_REJECTED

    async def body(bus: Any) -> int:
        found = await find_intent(bus, intent_id)
        if found is None:
            print(f"execbus cancel: unknown intent ID {intent_id}: no SubmitIntent for it in the log; nothing sent",
                  file=sys.stderr)
            return EXIT_REJECTED
        venue, symbol = found
        request = uuid.uuid4().hex[:16]
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        report: asyncio.Future[Any] = loop.create_future()

        async def on_message(msg: Any) -> None:
            if isinstance(msg, CancelIntentAccepted | CancelIntentRejected):
                if msg.request == request and not answer.done():
                    answer.set_result(msg)
            elif isinstance(msg, ExecutionCompleted) and not report.done():
                report.set_result(msg)

        # Subscribed (and the subscriptions known to the server) before the cancel goes out: no answer is missed.
        # Only the answers and the report: all an upstream user may read (bus/ops/auth.py).
        subs = [await bus.subscribe(pattern, on_message) for pattern in subjects.answer_filters(intent_id)]
        try:
            await bus.nc.flush()
            await bus.publish(CancelIntent(
                intent_id=intent_id, venue=venue, symbol=symbol, request=request, reason=args.reason,
                requested_by=operator_id(), ts_event=time.time_ns(),
            ))
            try:
                reply = await asyncio.wait_for(asyncio.shield(answer), args.timeout)
            except TimeoutError:
                print(f"execbus cancel: no answer for {intent_id} within {args.timeout:g} s (request {request}). "
                      "The cancel is in the log and will be acted on when a supervisor runs; "
                      f"follow it with `execbus replay show {intent_id}`", file=sys.stderr)
                return EXIT_TIMEOUT
            if isinstance(reply, CancelIntentRejected):
                if args.json:
                    print(encode(reply).decode(), flush=True)
                else:
                    print(f"execbus cancel: rejected for {intent_id} ({reply.status}): {reply.reason}", file=sys.stderr)
                return EXIT_REJECTED
            if args.json:
                print(encode(reply).decode(), flush=True)
            else:
                already = "; it was being canceled already" if reply.already else ""
                print(f"cancel of {intent_id} accepted (request {request}): phase {reply.phase}{already}", flush=True)
            if not args.wait:
                return EXIT_OK
            try:
                final = await asyncio.wait_for(asyncio.shield(report), args.report_timeout)
            except TimeoutError:
                print(f"execbus cancel: accepted, but no report for {intent_id} within {args.report_timeout:g} s; "
                      f"follow it with `execbus replay show {intent_id}`", file=sys.stderr)
                return EXIT_TIMEOUT
            print(encode(final).decode() if args.json else format_report(final), flush=True)
            return EXIT_FAILED if final.status == "failed" else EXIT_OK
        finally:
            for sub in subs:
                await sub.unsubscribe()

    return await _with_bus(args, "cancel", body)



async def _demo(args: argparse.Namespace) -> int:
    from bus.ops.demo import run_demo

    return await run_demo(json_lines=args.json)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
