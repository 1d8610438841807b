"""Least privilege on a real nats-server (bus/ops/auth.py): a user publishing what its job does not include is
refused by the server and nothing comes of it; strangers and wrong passwords are refused at once; upstream
submits and cancels from the command line, a monitor reads; `execbus up` as configured by default runs every
strategy without one violation and keeps the passwords off command lines; `execbus up --tls` refuses plain
text and serves the CLI over TLS.

The system runs in the test process (with `auth_dir`), or as `execbus up` where the command line matters. A
command line client gets an auth dir holding only the password of the user it should connect as: a command
that picked another user could not read its password, and would fail."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from bus.bus import Bus, subject_of
from bus.connect import ClientAuth, CredentialsRefused, connect, connect_options
from bus.msglog import read_stream
from bus.ops.actors import ACTORS, actor_class
from bus.ops.auth import AuthDir, write_auth_dir
from bus.ops.system import System
from bus.server import EmbeddedNats
from messages import (
    CancelIntentAccepted,
    ExecutionCompleted,
    IntentAccepted,
    Message,
    OrderFilled,
    OrderPlaced,
    PlaceOrder,
    SimpleLimitParams,
    SubmitIntent,
    TradingStateChanged,
    decode,
    encode,
    headers_for,
    subjects,
)
from messages.base import routing
from tests.e2e.conftest import Running, stop_running, system_config
from tests.helpers import Recorder, assert_invariants, fast_settings, new_intent, wait_until
from tests.unit.factories import make
from venues.gateway import fetch_order_by_client_id
from venues.paper import PaperExchange

pytestmark = [pytest.mark.timeout(90)]

SYMBOL = "BTC/USDT"


# -- helpers: processes ------------------------------------------------------------------------------------------


def client_env(**extra: str) -> dict[str, str]:
    """The test's environment without any NATS credentials or server of its own, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EXECBUS_NATS_", "EXECBUS_AUTH_DIR", "EXECBUS_BINANCE_")) and k != "NATS_URL"}
    env.update(extra)
    return env


async def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 45) -> tuple[int, str, str]:
    """Run `execbus ARGS` to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.ops.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=cwd, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def only(auth_dir: Path, user: str, dest: Path) -> str:
    """An auth dir holding `user`'s password alone (and the run's CA, if any): a command connecting as anyone
    else cannot read a password and fails."""
    (dest / "users").mkdir(parents=True, mode=0o700)
    shutil.copy2(AuthDir(auth_dir).password_file(user), dest / "users" / f"{user}.password")
    ca = auth_dir / "tls" / "ca.pem"
    if ca.is_file():
        (dest / "tls").mkdir()
        shutil.copy2(ca, dest / "tls" / "ca.pem")
    return str(dest)


class Up:
    """`execbus up --port -1 --store DIR [FLAGS]` as a subprocess, its output in files (a debug log would
    fill a pipe nobody reads)."""

    def __init__(self, workdir: Path, *flags: str, log_level: str = "warning", env: dict[str, str] | None = None):
        self.workdir = workdir
        self.store = workdir / "store"
        self.stdout = workdir / "up.stdout"
        self.stderr = workdir / "up.stderr"
        self.args = ["--log-level", log_level, "up", "--port", "-1", "--store", str(self.store), *flags]
        self.env = env if env is not None else client_env()
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.auth_dir = Path()

    async def __aenter__(self) -> Up:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bus.ops.cli", *self.args, stdout=out, stderr=err, cwd=self.workdir, env=self.env)

        def started() -> tuple[str, str] | None:
            assert self.proc is not None
            text = self.stdout.read_text()
            if self.proc.returncode is not None:
                raise AssertionError(f"execbus up exited {self.proc.returncode}: {text}{self.stderr.read_text()[-3000:]}")
            url = re.search(r"NATS at (nats://\S+)", text)
            users = re.search(r"users in (\S+) \(clients: EXECBUS_AUTH_DIR=(\S+)\)", text)
            return (url.group(1), users.group(2)) if url and users else None

        try:
            self.url, auth_dir = await wait_until(started, timeout=30, interval=0.05)
        except BaseException:
            await self.__aexit__()
            raise
        self.auth_dir = Path(auth_dir)
        return self

    def server_pid(self) -> int:
        """The embedded nats-server's pid, from its ports file (`nats-server_<pid>.ports`)."""
        (ports,) = (self.store / "ports").glob("nats-server_*.ports")
        return int(ports.stem.rsplit("_", 1)[1])

    @property
    def server_log(self) -> Path:
        return self.store / "nats-server.log"

    async def stop(self) -> int:
        """SIGTERM, and the exit code once it has drained."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 20)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# -- helpers: the bus ------------------------------------------------------------------------------------------


class RawClient:
    """A bare nats-py connection as one user (its own inbox prefix included), recording what the server
    sends its error callback."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.nc: Client | None = None

    async def connect(self, url: str, auth: ClientAuth) -> RawClient:
        async def on_error(exc: Exception) -> None:
            self.errors.append(exc)

        self.nc = await nats.connect(**connect_options(url, auth), error_cb=on_error, allow_reconnect=False,
                                     connect_timeout=5)
        return self

    async def publish(self, msg: Message) -> str:
        """`msg` on its subject (core NATS, as any client may), flushed; returns the subject."""
        assert self.nc is not None
        subject = subject_of(msg)
        await self.nc.publish(subject, encode(msg), headers=headers_for(msg))
        await self.nc.flush()
        return subject

    async def refused(self, subject: str, action: str = "publish") -> str:
        """The server's permissions violation for `subject`, once it came (fails the test if it does not)."""
        wanted = f'permissions violation for {action} to "{subject}"'.lower()

        def found() -> str | None:
            return next((str(e) for e in self.errors if wanted in str(e).lower()), None)

        return await wait_until(found, timeout=5)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


def violations(log: Path, kind: str = "Violation") -> list[str]:
    return [line for line in log.read_text().splitlines() if kind in line] if log.exists() else []


async def stored(bus: Bus, intent_id: str) -> list[Message]:
    """Every message of `intent_id` in the log."""
    return [record.message() async for record in read_stream(bus, f"exec.*.*.*.{intent_id}")]


def resting(**overrides: Any) -> SubmitIntent:
    """A buy limit 5% under the touch: it rests until canceled."""
    values: dict[str, Any] = {"strategy": "simple_limit",
                              "params": SimpleLimitParams(price_offset_pct=Decimal("5"), timeout_seconds=Decimal("60"))}
    values.update(overrides)
    return new_intent(**values)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """The whole system in this process with users: every actor, the venue and the system's own bus (ops)
    connect as themselves; the test's recorder and exchange as ops."""
    system = System(system_config(auth_dir=str(tmp_path / "auth"), store_dir=str(tmp_path / "store")))
    try:
        await asyncio.wait_for(system.start(), 30)
        assert system.bus is not None and system.server is not None
        recorder = await Recorder().attach(system.bus)
        exchange = PaperExchange({"options": {"natsUrl": system.url, "natsAuth": system.credentials("ops")}})
        await exchange.load_markets()
    except BaseException:
        await system.stop()
        raise
    r = Running(system, recorder, exchange)
    try:
        yield r
    finally:
        await stop_running(r)


def server_log(running: Running) -> Path:
    assert running.system.server is not None
    return running.system.server.log_path


def auth_path(running: Running) -> Path:
    return Path(running.system.auth.path)


@pytest.fixture
async def users_server(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, AuthDir]]:
    """A bare nats-server with the users' authorization block (no actors)."""
    auth = write_auth_dir(tmp_path / "auth", fast_settings())
    async with EmbeddedNats(config_file=str(auth.config)) as server:
        yield server, auth


# -- 1. an actor publishing what it does not produce ---------------------------------------------------------------


async def test_the_pricer_publishing_a_place_order_is_refused_and_nothing_is_placed(running: Running) -> None:
    intent = resting()
    await running.bus.publish(intent)
    await running.recorder.wait_for(OrderPlaced, intent.intent_id)  # a working intent the placer knows
    forged = PlaceOrder(**routing(intent), client_order_id=f"{intent.intent_id}-forged", attempt=9, side="buy",
                        order_type="market", qty=intent.qty)
    pricer = await RawClient().connect(running.system.url, running.system.credentials("pricer"))
    try:
        subject = await pricer.publish(forged)

        error = await pricer.refused(subject)
        line = await wait_until(lambda: [ln for ln in violations(server_log(running), "Publish Violation")
                                         if '"$G/user:pricer"' in ln and f'Subject "{subject}"' in ln], timeout=5)
        logged = await stored(running.bus, intent.intent_id)
        placed = await fetch_order_by_client_id(running.exchange, forged.client_order_id, SYMBOL)
        open_orders = await running.exchange.fetch_open_orders(SYMBOL)
    finally:
        await pricer.close()

    assert "permissions violation" in error.lower()
    assert len(line) == 1
    assert [m for m in logged if isinstance(m, PlaceOrder) and m.client_order_id == forged.client_order_id] == []
    assert [m.client_order_id for m in logged if isinstance(m, PlaceOrder)] == [f"{intent.intent_id}-1"]
    assert placed is None
    assert forged.client_order_id not in [o.get("clientOrderId") for o in open_orders]
    assert running.recorder.of(PlaceOrder, intent.intent_id) == [m for m in logged if isinstance(m, PlaceOrder)]


# -- 2. strangers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["no credentials", "a wrong password", "another user's password", "an unknown user"])
async def test_a_client_without_valid_credentials_is_refused_at_once(
    users_server: tuple[EmbeddedNats, AuthDir], who: str
) -> None:
    server, auth = users_server
    upstream = auth.auth("upstream").password
    assert upstream
    credentials = {
        "no credentials": ClientAuth(),
        "a wrong password": ClientAuth(user="upstream", password=upstream[::-1]),
        "another user's password": ClientAuth(user="ops", password=upstream),
        "an unknown user": ClientAuth(user="stranger", password=upstream),
    }[who]
    started = time.monotonic()

    with pytest.raises(CredentialsRefused) as refused:
        await asyncio.wait_for(connect(server.url, auth=credentials), 10)  # a retrying client would time out here

    assert time.monotonic() - started < 3
    assert "refused" in str(refused.value)
    assert upstream not in str(refused.value) and upstream[::-1] not in str(refused.value)
    ok = await asyncio.wait_for(connect(server.url, auth=auth.auth("upstream")), 10)  # (the server is fine)
    await ok.close()


async def test_the_command_line_with_a_wrong_password_fails_at_once_saying_so(
    users_server: tuple[EmbeddedNats, AuthDir], tmp_path: Path
) -> None:
    server, auth = users_server
    client_dir = Path(only(auth.path, "upstream", tmp_path / "client"))
    wrong = client_dir / "users" / "upstream.password"
    wrong.write_text("not-the-password\n")
    started = time.monotonic()

    code, out, err = await cli("submit", "--symbol", SYMBOL, "--side", "buy", "--qty", "0.01", "--nats", server.url,
                               "--json", env=client_env(EXECBUS_AUTH_DIR=str(client_dir)), cwd=tmp_path, timeout=20)

    assert code == 1, (out, err)
    assert "refused user 'upstream'" in err and "Traceback" not in err
    assert "not-the-password" not in err + out
    assert time.monotonic() - started < 10


# -- 3. upstream -----------------------------------------------------------------------------------------------


async def test_upstream_submits_from_the_command_line_and_reads_its_report(running: Running, tmp_path: Path) -> None:
    client = only(auth_path(running), "upstream", tmp_path / "client")

    code, out, err = await cli("submit", "--symbol", SYMBOL, "--side", "buy", "--qty", "0.02", "--nats",
                               running.system.url, "--json", "--timeout", "30",
                               env=client_env(EXECBUS_AUTH_DIR=client), cwd=tmp_path)

    assert code == 0, err
    report = decode(out.strip().splitlines()[-1].encode())
    assert isinstance(report, ExecutionCompleted) and report.status == "filled", report
    assert report.filled_qty == Decimal("0.02")
    await assert_invariants(report, running.recorder, running.exchange)
    assert violations(server_log(running)) == []


async def test_upstream_cancels_a_working_limit_intent_from_the_command_line(running: Running, tmp_path: Path) -> None:
    client = only(auth_path(running), "upstream", tmp_path / "client")
    env = client_env(EXECBUS_AUTH_DIR=client)
    intent_id = f"cancel-{time.time_ns() % 10**9}"
    submit = asyncio.ensure_future(cli(
        "submit", "--symbol", SYMBOL, "--side", "buy", "--qty", "0.01", "--strategy", "simple_limit",
        "--param", "price_offset_pct=5", "--param", "timeout_seconds=60", "--intent-id", intent_id,
        "--nats", running.system.url, "--json", "--timeout", "40", env=env, cwd=tmp_path,
    ))
    try:
        await running.recorder.wait_for(OrderPlaced, intent_id, timeout=20)

        code, out, err = await cli("cancel", intent_id, "--wait", "--json", "--timeout", "10", "--report-timeout", "20",
                                   "--reason", "desk asked", "--nats", running.system.url, env=env, cwd=tmp_path)
        submitted = await asyncio.wait_for(submit, 40)
    finally:
        if not submit.done():
            submit.cancel()

    assert code == 0, (out, err, violations(server_log(running)))
    answer, final = (decode(line.encode()) for line in out.strip().splitlines())
    assert isinstance(answer, CancelIntentAccepted) and answer.intent_id == intent_id
    assert isinstance(final, ExecutionCompleted) and final.status == "canceled" and final.filled_qty == 0
    submit_code, submit_out, submit_err = submitted
    assert submit_code == 0, submit_err
    assert decode(submit_out.strip().splitlines()[-1].encode()) == final
    await assert_invariants(final, running.recorder, running.exchange)
    assert violations(server_log(running)) == []


@pytest.mark.parametrize("kind", [PlaceOrder, IntentAccepted, OrderFilled, TradingStateChanged], ids=lambda k: k.kind)
async def test_upstream_publishing_anything_but_intents_and_cancels_is_refused(
    users_server: tuple[EmbeddedNats, AuthDir], kind: type[Message]
) -> None:
    server, auth = users_server
    ops = await Bus.connect(server.url, fast_settings(), auth=auth.auth("ops"))  # (makes the layout)
    upstream = await RawClient().connect(server.url, auth.auth("upstream"))
    try:
        intent_id = f"up-{kind.kind[:12]}-{time.time_ns() % 10**9}"
        subject = await upstream.publish(make(kind, intent_id=intent_id))
        error = await upstream.refused(subject)
        allowed = new_intent(intent_id=f"{intent_id}-ok")
        await upstream.publish(allowed)  # the same connection's intent is taken: the check below would see one
        kept = await wait_until(lambda: stored(ops, allowed.intent_id), timeout=5)
        refused_kept = await stored(ops, intent_id)
    finally:
        await upstream.close()
        await ops.close()

    assert "permissions violation" in error.lower()
    assert refused_kept == []
    assert kept == [allowed]
    await wait_until(lambda: [ln for ln in violations(server.log_path, "Publish Violation")
                              if '"$G/user:upstream"' in ln and subject in ln], timeout=5)


# -- 4. monitor -------------------------------------------------------------------------------------------------


async def test_a_monitor_reads_live_messages_the_board_and_the_log(running: Running, tmp_path: Path) -> None:
    monitor = await RawClient().connect(running.system.url, running.system.credentials("monitor"))
    seen: list[Message] = []
    try:
        assert monitor.nc is not None

        async def keep(msg: Any) -> None:
            seen.append(decode(msg.data))

        await monitor.nc.subscribe("exec.>", cb=keep)
        await monitor.nc.flush()
        intent = new_intent(qty=Decimal("0.01"))
        await running.bus.publish(intent)
        await wait_until(lambda: [m for m in seen if isinstance(m, ExecutionCompleted) and m.intent_id == intent.intent_id],
                         timeout=20)
    finally:
        await monitor.close()
    client = only(auth_path(running), "monitor", tmp_path / "client")
    env = client_env(EXECBUS_AUTH_DIR=client)

    watched = await cli("watch", "--once", "--json", "--nats", running.system.url, env=env, cwd=tmp_path)
    replayed = await cli("replay", "show", intent.intent_id, "--json", "--nats", running.system.url, env=env, cwd=tmp_path)

    kinds = {type(m).__name__ for m in seen if m.intent_id == intent.intent_id}
    assert {"SubmitIntent", "IntentAccepted", "PlaceOrder", "OrderPlaced", "OrderFilled", "ExecutionCompleted"} <= kinds
    assert monitor.errors == []
    code, out, err = watched
    assert code == 0, err
    board = json.loads(out)
    (row,) = [r for r in board["finished"] if r["intent_id"] == intent.intent_id]
    assert row["status"] == "filled"
    code, out, err = replayed
    assert code == 0, err
    types = [json.loads(line)["type"] for line in out.strip().splitlines()]
    assert types[0] == "SubmitIntent" and "OrderFilled" in types and "ExecutionCompleted" in types
    assert violations(server_log(running)) == []


async def test_a_monitor_sees_every_actors_status_on_the_watch_screen(running: Running, tmp_path: Path) -> None:
    client = only(auth_path(running), "monitor", tmp_path / "client")

    code, out, err = await cli("watch", "--once", "--nats", running.system.url,
                               env=client_env(EXECBUS_AUTH_DIR=client, COLUMNS="200"), cwd=tmp_path)

    assert code == 0, err
    partitions = running.system.settings.partitions  # type: ignore[union-attr]
    for actor in ACTORS:
        (line,) = [ln for ln in out.splitlines() if re.search(rf"● {actor} +1 replica", ln)]
        assert "reported" not in line and f"partitions {partitions}" in line, line  # its status answered too
    assert violations(server_log(running)) == []


async def test_a_monitor_publishing_an_intent_is_refused_and_it_never_executes(running: Running) -> None:
    monitor = await RawClient().connect(running.system.url, running.system.credentials("monitor"))
    intent = new_intent()
    try:
        subject = await monitor.publish(intent)
        error = await monitor.refused(subject)
    finally:
        await monitor.close()
    # A barrier: an intent submitted after it has gone all the way through the system.
    after = new_intent()
    await running.bus.publish(after)
    await running.recorder.wait_for(ExecutionCompleted, after.intent_id, timeout=20)

    assert "permissions violation" in error.lower()
    assert await stored(running.bus, intent.intent_id) == []
    assert running.recorder.kinds(intent.intent_id) == []
    assert await fetch_order_by_client_id(running.exchange, f"{intent.intent_id}-1", SYMBOL) is None
    lines = violations(server_log(running))
    assert len(lines) == 1 and '"$G/user:monitor"' in lines[0] and "Publish Violation" in lines[0]


# -- 5. `execbus up` as configured by default ---------------------------------------------------------------------


async def test_execbus_up_runs_every_strategy_without_a_violation_and_no_password_on_a_command_line(
    tmp_path: Path,
) -> None:
    async with Up(tmp_path / "run") as up:
        passwords = [f.read_text().strip() for f in (up.auth_dir / "users").glob("*.password")]
        assert len(passwords) >= 10 and up.auth_dir == up.store / "auth"
        server_pid = up.server_pid()
        assert up.proc is not None
        cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    for pid in (server_pid, up.proc.pid)}
        exchange = PaperExchange({"options": {"natsUrl": up.url, "natsAuth": AuthDir(up.auth_dir).auth("ops")}})
        try:
            ask = Decimal(str((await exchange.fetch_order_book(SYMBOL, 5))["asks"][0][0]))
        finally:
            await exchange.close()
        crossing = (ask * Decimal("1.01")).quantize(Decimal("0.01"))
        env = client_env(EXECBUS_AUTH_DIR=only(up.auth_dir, "upstream", tmp_path / "client"))
        runs = {
            "market": ["--strategy", "market"],
            "simple_limit": ["--strategy", "simple_limit", "--param", "price_offset_pct=-0.5"],
            "simple_limit-rests": ["--strategy", "simple_limit", "--param", "price_offset_pct=5",
                                   "--param", "timeout_seconds=1"],
            "aggressive_limit": ["--strategy", "aggressive_limit", "--param", "total_timeout_seconds=2"],
            "twap": ["--strategy", "twap", "--param", "horizon_seconds=2", "--param", "slices=2"],
            "iceberg": ["--strategy", "iceberg", "--param", "display_qty=0.01", "--param", f"limit_price={crossing}"],
        }
        results = await asyncio.gather(*(
            cli("submit", "--symbol", SYMBOL, "--side", "buy", "--qty", "0.02", *argv, "--nats", up.url, "--json",
                "--timeout", "45", env=env, cwd=tmp_path)
            for argv in runs.values()
        ))
        code = await up.stop()
        log = up.server_log.read_text()

    reports = {}
    for name, (exit_code, out, err) in zip(runs, results):
        assert exit_code == 0, (name, out, err)
        reports[name] = decode(out.strip().splitlines()[-1].encode())
        assert isinstance(reports[name], ExecutionCompleted), (name, reports[name])
    assert {n: r.strategy for n, r in reports.items()} == {n: n.split("-")[0] for n in runs}
    assert {n: r.status for n, r in reports.items() if n != "simple_limit-rests"} == {
        n: "filled" for n in runs if n != "simple_limit-rests"}
    assert reports["simple_limit-rests"].status == "unfilled" and reports["simple_limit-rests"].orders
    assert reports["iceberg"].orders and len(reports["iceberg"].orders) >= 2
    assert code == 0
    assert "Server is ready" in log
    assert [line for line in log.splitlines() if "Violation" in line] == []
    assert "nats-server" in cmdlines[server_pid] and str(up.store) in cmdlines[server_pid]
    assert "bus.ops.cli" in cmdlines[up.proc.pid]
    for pid, cmdline in cmdlines.items():
        assert [p for p in passwords if p in cmdline] == [], pid


# -- 6. `execbus up --tls` --------------------------------------------------------------------------------------


async def test_execbus_up_with_tls_refuses_plain_text_and_serves_the_command_line_over_tls(tmp_path: Path) -> None:
    async with Up(tmp_path / "run", "--tls") as up:
        ca = up.auth_dir / "tls" / "ca.pem"
        host, port = up.url.removeprefix("nats://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            info = json.loads((await asyncio.wait_for(reader.readline(), 5)).split(b" ", 1)[1])
            writer.write(b'CONNECT {"verbose":false,"pedantic":false,"user":"ops"}\r\nPING\r\n')
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)  # up to EOF: the server hangs up
        finally:
            writer.close()
        try:
            plain = await nats.connect(up.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3,
                                       **{k: v for k, v in connect_options(up.url, AuthDir(up.auth_dir).auth("ops")).items()
                                          if k in ("user", "password")})
        except Exception as exc:
            untrusted: BaseException | None = exc
        else:
            await plain.close()
            untrusted = None
        nc = await asyncio.wait_for(connect(up.url, auth=AuthDir(up.auth_dir).auth("ops", ca_file=str(ca))), 10)
        try:
            account = await nc.jetstream().account_info()
            stream = await nc.jetstream().stream_info("EXEC")
        finally:
            await nc.close()
        env = client_env(EXECBUS_AUTH_DIR=only(up.auth_dir, "upstream", tmp_path / "client"))
        submitted = await cli("submit", "--symbol", SYMBOL, "--side", "buy", "--qty", "0.01", "--nats", up.url, "--json",
                              "--timeout", "30", env=env, cwd=tmp_path)
        code = await up.stop()

    assert info["tls_required"] is True
    assert answer == b"", f"the server answered plain text with {answer!r}"
    assert untrusted is not None and "certificate verify failed" in str(untrusted)
    assert account.limits is not None and stream.config.name == "EXEC"
    submit_code, out, err = submitted
    assert submit_code == 0, err
    report = decode(out.strip().splitlines()[-1].encode())
    assert isinstance(report, ExecutionCompleted) and report.status == "filled"
    assert code == 0
    assert violations(up.server_log) == []


# -- 7. what a review found users could do through JetStream, KV, the venue and responses ---------------------------


async def test_no_user_may_pull_from_acknowledge_redefine_or_delete_another_actors_durable_consumer(
    running: Running,
) -> None:
    url, stream = running.system.url, running.system.settings.stream
    for user in ("pricer", "monitor", "upstream"):
        client = await RawClient().connect(url, running.system.credentials(user))
        try:
            assert client.nc is not None
            for subject in (f"$JS.API.CONSUMER.MSG.NEXT.{stream}.placer-p0",
                            f"$JS.API.CONSUMER.DELETE.{stream}.placer-p1",
                            f"$JS.API.CONSUMER.CREATE.{stream}.placer-p2.exec.nothing.*.*.*.2",
                            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.placer-p3"):
                await client.nc.publish(subject, b'{"batch": 5}', reply=client.nc.new_inbox())
                await client.nc.flush()
                await client.refused(subject)
        finally:
            await client.close()
    ops = running.system.bus
    assert ops is not None
    placer = actor_class("placer")
    for p in range(4):  # every durable is still there, with exactly the placer's filters
        info = await ops.js.consumer_info(stream, f"placer-p{p}")
        assert set(info.config.filter_subjects or []) == {subjects.partition_filter(k.kind, p) for k in placer.consumes}


async def test_an_actor_writes_only_the_shared_keys_it_declares(running: Running) -> None:
    controls, intents = running.system.settings.control_bucket, running.system.settings.intent_bucket
    client = await RawClient().connect(running.system.url, running.system.credentials("pricer"))
    try:
        assert client.nc is not None
        for subject in (f"$KV.{controls}.trading", f"$KV.{controls}.risk", f"$KV.{intents}.intent.I-pre-claimed"):
            await client.nc.publish(subject, b"{}")
            await client.nc.flush()
            await client.refused(subject)
    finally:
        await client.close()


@pytest.mark.parametrize("method", ["create_order", "cancel_order"])
async def test_only_actors_that_move_money_may_ask_the_venue_to(running: Running, method: str) -> None:
    for user in ("pricer", "supervisor"):
        client = await RawClient().connect(running.system.url, running.system.credentials(user))
        try:
            assert client.nc is not None
            subject = f"venue.paper.rpc.{method}"
            await client.nc.publish(subject, b'{"account": "main", "symbol": "BTC/USDT"}', reply=client.nc.new_inbox())
            await client.nc.flush()
            await client.refused(subject)
        finally:
            await client.close()
    assert await running.exchange.fetch_open_orders("BTC/USDT") == []


async def test_a_request_whose_reply_subject_is_in_the_log_writes_nothing_there(running: Running) -> None:
    """Responders answer on their askers' inboxes only: a monitor cannot use an actor's status answer, or the
    venue's, to put a message into the log."""
    bus = running.system.bus
    assert bus is not None
    before = (await bus.js.stream_info(running.system.settings.stream)).state.messages
    client = await RawClient().connect(running.system.url, running.system.credentials("monitor"))
    try:
        assert client.nc is not None
        forged = "exec.submit_intent.paper.BTC-USDT.forged-reply"
        await client.nc.publish("execbus.ctl.pricer.status", b"", reply=forged)
        await client.nc.publish("$SRV.PING", b"", reply=forged)
        # An answer that reaches its asker proves the responders are up and answering meanwhile.
        answer = await client.nc.request("execbus.ctl.pricer.status", b"", timeout=5)
        assert b"replica" in answer.data
    finally:
        await client.close()
    assert (await bus.js.stream_info(running.system.settings.stream)).state.messages == before
    assert any("Publish Violation" in line and "forged-reply" in line for line in violations(server_log(running)))
