"""No secret in any log: `execbus up` at debug level with a live venue's API key and secret in its environment,
intents on the paper venue and one on `binance` (which opens the live venue with the key; without a network
it fails, which is fine: it ends with a failed report, within its 2 s budget), then every line the run wrote
— its stdout and stderr, the command-line clients' output, the nats-server log — is searched for the key, the
secret and every NATS password."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from messages import ExecutionCompleted, decode
from tests.e2e.test_auth import Up, cli, client_env, only

pytestmark = [pytest.mark.timeout(90)]


async def test_no_api_key_secret_or_nats_password_appears_in_any_output(tmp_path: Path) -> None:
    key = f"KEY{secrets.token_hex(16)}"
    secret = f"SEC{secrets.token_hex(24)}"
    debug = {"EXECBUS_LOG_LEVEL": "debug", "EXECBUS_LOG_JSON": "1"}
    venue_env = client_env(EXECBUS_BINANCE_API_KEY=key, EXECBUS_BINANCE_SECRET=secret, **debug)
    outputs: dict[str, str] = {}

    async with Up(tmp_path / "run", log_level="debug", env=venue_env) as up:
        passwords = {f.stem: f.read_text().strip() for f in (up.auth_dir / "users").glob("*.password")}
        upstream = client_env(EXECBUS_AUTH_DIR=only(up.auth_dir, "upstream", tmp_path / "upstream"), **debug)
        monitor = client_env(EXECBUS_AUTH_DIR=only(up.auth_dir, "monitor", tmp_path / "monitor"), **debug)
        common = ["--log-level", "debug", "submit", "--symbol", "BTC/USDT", "--side", "buy", "--qty", "0.01",
                  "--nats", up.url, "--json", "--timeout", "40"]
        paper, limit, live = await asyncio.gather(
            cli(*common, "--intent-id", "paper-market", env=upstream, cwd=tmp_path),
            cli(*common, "--intent-id", "paper-limit", "--strategy", "simple_limit", "--param", "price_offset_pct=-0.5",
                env=upstream, cwd=tmp_path),
            cli(*common, "--intent-id", "live-binance", "--venue", "binance", "--strategy", "simple_limit",
                "--param", "timeout_seconds=2", env=upstream, cwd=tmp_path),
        )
        replayed = await cli("--log-level", "debug", "replay", "show", "live-binance", "--json", "--nats", up.url,
                             env=monitor, cwd=tmp_path)
        watched = await cli("--log-level", "debug", "watch", "--once", "--json", "--nats", up.url, env=monitor,
                            cwd=tmp_path)
        code = await up.stop()
        outputs["up stdout"] = up.stdout.read_text()
        outputs["up stderr"] = up.stderr.read_text()
        outputs["nats-server log"] = up.server_log.read_text()
    for name, (_, out, err) in {"paper": paper, "limit": limit, "binance": live, "replay": replayed,
                                "watch": watched}.items():
        outputs[f"{name} stdout"], outputs[f"{name} stderr"] = out, err

    # The run did what it had to, so the search covers the code that handles the key.
    assert code == 0, outputs["up stderr"][-3000:]
    for name, (exit_code, out, err) in {"paper": paper, "limit": limit}.items():
        report = decode(out.strip().splitlines()[-1].encode())
        assert exit_code == 0 and isinstance(report, ExecutionCompleted) and report.status == "filled", (name, err)
    exit_code, out, err = live
    report = decode(out.strip().splitlines()[-1].encode())
    assert isinstance(report, ExecutionCompleted), err
    assert report.venue == "binance" and report.status == "failed" and report.filled_qty == 0, report
    assert exit_code == 1
    assert "binance" in report.reason
    timeline = [json.loads(line) for line in replayed[1].strip().splitlines()]
    assert replayed[0] == 0 and timeline[-1]["type"] == "ExecutionCompleted", replayed[2]
    assert watched[0] == 0, watched[2]
    assert "live-binance" in outputs["up stderr"]  # the supervisor's debug log of the live intent
    assert len(passwords) >= 10 and all(len(p) >= 32 for p in passwords.values())

    secrets_of_the_run = {"the API key": key, "the API secret": secret,
                          **{f"the password of {user}": p for user, p in passwords.items()}}
    for what, value in secrets_of_the_run.items():
        # Also a prefix: a secret cut short in a log line is still a leak.
        for needle in (value, value[:16]):
            leaks = [f"{name}: {line[:200]}" for name, text in outputs.items() for line in text.splitlines()
                     if needle in line]
            assert leaks == [], f"{what} appears in the output"
