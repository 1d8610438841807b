"""The long-running commands (`actor`, `venue paper`, `up`) stop promptly and cleanly on SIGTERM/SIGINT at any
moment: while connecting to a server that is not there, and while reconnecting to one that went away. And
`venue paper` takes its configuration (profile, seed, speed, data, a JSON file) so it can run as its own process.

Every wait is on a condition (a line the process prints, the process exiting), each with a bound."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import nats
import pytest

from bus.connect import connect
from bus.ops import cli
from bus.ops.auth import AuthDir
from bus.server import EmbeddedNats

ROOT = Path(__file__).resolve().parents[2]

STOP_BOUND_S = 5.0
"""A stopped command must have exited this long after the signal."""


def _closed_port() -> int:
    """A localhost port nothing listens on (bound, then released: nothing else here takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "EXECBUS_LOG_LEVEL": "info", "EXECBUS_LOG_JSON": "1"}
    env.pop("NATS_URL", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.ops.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env=env,
    )


async def _line_with(stream: asyncio.StreamReader | None, needle: str, timeout: float = 30.0) -> str:
    """Read lines until one contains `needle` (bounded); fails with what was read."""
    assert stream is not None
    seen: list[str] = []

    async def read() -> str:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"stream ended before {needle!r}; read:\n" + "".join(seen))
            line = raw.decode(errors="replace")
            seen.append(line)
            if needle in line:
                return line

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {needle!r} within {timeout} s; read:\n" + "".join(seen)) from None


async def _stop_and_wait(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> tuple[int, float, str]:
    """Signal, wait (bounded) for the exit; (exit code, seconds it took, the rest of stderr)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), STOP_BOUND_S + 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"still running {STOP_BOUND_S + 5} s after {signal.Signals(sig).name}") from None
    assert proc.returncode is not None
    return proc.returncode, time.monotonic() - t0, err.decode(errors="replace")


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


COMMANDS = {
    "actor": ["actor", "placer"],
    "venue": ["venue", "paper"],
    "up": ["up", "--store", "{store}"],  # joins --nats, serves its own paper venue there
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", list(COMMANDS))
async def test_a_stop_signal_ends_a_command_still_connecting_to_an_unreachable_server(
        command: str, sig: int, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    args = [a.format(store=tmp_path / "store") for a in COMMANDS[command]]
    proc = await _spawn(*args, "--nats", url)
    try:
        # The first failed attempt is logged: the process is in nats-py's endless connect loop (and its signal
        # handlers are installed, they come before the connect).
        await _line_with(proc.stderr, '"nats_error"')
        code, took, err = await _stop_and_wait(proc, sig)
    finally:
        await _reap(proc)
    assert code == cli.EXIT_OK, err
    assert took < STOP_BOUND_S, f"took {took:.1f} s to stop"
    assert "abandoned" not in err and "exiting now" not in err, err


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_sigterm_ends_a_command_whose_server_went_away_while_it_reconnects(command: str, tmp_path: Path) -> None:
    ready = {"actor": "execbus actor placer: replica", "venue": "execbus venue paper: serving", "up": "execbus up: NATS at"}
    server = await EmbeddedNats(store_dir=tmp_path / "nats").start()
    proc = None
    try:
        args = [a.format(store=tmp_path / "store") for a in COMMANDS[command]]
        proc = await _spawn(*args, "--nats", server.url)
        await _line_with(proc.stdout, ready[command])
        await server.stop()
        await _line_with(proc.stderr, '"nats_disconnected"')  # it is reconnecting now
        code, took, err = await _stop_and_wait(proc)
    finally:
        if proc is not None:
            await _reap(proc)
        await server.stop()
        server.cleanup()
    assert code == cli.EXIT_OK, err
    assert took < STOP_BOUND_S, f"took {took:.1f} s to stop"
    assert "exiting now" not in err, err


async def test_the_venue_runs_as_its_own_process_with_the_given_profile_and_seed(nats_server: EmbeddedNats,
                                                                                 tmp_path: Path) -> None:
    config = tmp_path / "paper.json"
    config.write_text(json.dumps({"seed": 1, "profile": "strict", "order_rate_limit": 7, "loop": False}))
    proc = await _spawn("venue", "paper", "--nats", nats_server.url, "--config", str(config),
                        "--profile", "binance", "--seed", "7", "--speed", "0")
    nc = await nats.connect(nats_server.url)
    try:
        line = await _line_with(proc.stdout, "execbus venue paper: serving")
        assert "profile binance" in line and "seed 7" in line and "speed 0" in line, line
        reply = await nc.request("venue.paper.ctl.stats", json.dumps({"account": "t"}).encode(), timeout=10)
        stats = json.loads(reply.data)["ok"]
        # The flags win over the file; what the flags do not name comes from the file.
        assert stats["profile"]["profile"] == "binance"
        assert stats["profile"]["order_rate_limit"] == 7
        code, _took, err = await _stop_and_wait(proc)
        assert code == cli.EXIT_OK, err
    finally:
        await nc.close()
        await _reap(proc)


def test_paper_config_reads_the_file_then_the_flags_and_refuses_unknown_fields(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli._parser()
    monkeypatch.delenv("EXECBUS_PAPER_CONFIG", raising=False)
    default = cli.paper_config(parser.parse_args(["venue", "paper"]))
    assert default.profile == "binance" and default.seed == 0 and default.speed == 1.0

    path = tmp_path / "p.json"
    path.write_text(json.dumps({"seed": 3, "maker_fee": "0.0002", "profile": "binance"}))
    monkeypatch.setenv("EXECBUS_PAPER_CONFIG", str(path))
    from_env = cli.paper_config(parser.parse_args(["venue", "paper", "--profile", "strict"]))
    assert (from_env.seed, str(from_env.maker_fee), from_env.profile) == (3, "0.0002", "strict")

    up = cli.paper_config(parser.parse_args(["up", "--paper-config", str(path), "--seed", "9"]))
    assert (up.seed, up.profile) == (9, "binance")

    data = cli.paper_config(parser.parse_args(["venue", "paper", "--data", "a.gz", "b.gz"]))
    assert [Path(f).name for f in data.markets[0].files] == ["a.gz", "b.gz"]

    path.write_text(json.dumps({"seeed": 3}))
    with pytest.raises(ValueError, match="seeed"):
        cli.paper_config(parser.parse_args(["venue", "paper"]))
    with pytest.raises(SystemExit):  # argparse: not a profile
        parser.parse_args(["venue", "paper", "--profile", "kraken"])


async def test_up_passes_the_profile_to_its_paper_venue(tmp_path: Path) -> None:
    proc = await _spawn("up", "--port", "-1", "--store", str(tmp_path / "store"), "--profile", "strict",
                        "--seed", "5")
    try:
        line = await _line_with(proc.stdout, "execbus up: NATS at")
        url = line.split("NATS at ")[1].split()[0]
        # (users on the bus by default: the operator's credentials are in the store's auth dir)
        nc = await connect(url, auth=AuthDir(tmp_path / "store" / "auth").auth("ops"))
        try:
            reply = await nc.request("venue.paper.ctl.stats", json.dumps({"account": "t"}).encode(), timeout=10)
        finally:
            await nc.close()
        assert json.loads(reply.data)["ok"]["profile"]["profile"] == "strict"
        code, took, err = await _stop_and_wait(proc)
    finally:
        await _reap(proc)
    assert code == cli.EXIT_OK, err
    assert took < STOP_BOUND_S, f"took {took:.1f} s to stop"
