"""The operator's forms: `execbus up` serves and drains on SIGTERM; `execbus actor` hands its partitions
back when stopped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from bus.bus import Bus
from bus.kv import list_keys, live_value
from bus.server import EmbeddedNats
from tests.helpers import fast_settings, wait_until

ROOT = Path(__file__).resolve().parents[2]


async def _spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bus.ops.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env={**os.environ, **(env or {})},
    )


async def test_execbus_up_serves_intents_and_drains_on_sigterm(tmp_path: Path) -> None:
    up = await _spawn("--log-level", "warning", "up", "--port", "-1", "--store", str(tmp_path / "store"))
    try:
        assert up.stdout is not None
        line = (await asyncio.wait_for(up.stdout.readline(), 30)).decode()
        url = re.search(r"NATS at (nats://\S+)", line)
        assert url, line
        users = (await asyncio.wait_for(up.stdout.readline(), 30)).decode()
        auth_dir = re.search(r"users in (\S+)", users)
        assert auth_dir, users  # users on the bus by default

        submit = await _spawn("submit", "--symbol", "BTC/USDT", "--side", "buy", "--qty", "0.01", "--nats", url.group(1), "--json",
                              env={"EXECBUS_AUTH_DIR": auth_dir.group(1)})
        out, err = await asyncio.wait_for(submit.communicate(), 30)
        assert submit.returncode == 0, err.decode()
        assert '"status":"filled"' in out.decode()

        up.send_signal(signal.SIGTERM)
        await asyncio.wait_for(up.wait(), 30)
        assert up.returncode == 0
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()


async def test_a_stopped_actor_process_hands_back_its_partitions_at_once(nats_server: EmbeddedNats) -> None:
    bus = await Bus.connect(nats_server.url, fast_settings(lease_ttl_s=30.0))
    actor = await _spawn("actor", "tracker", "--nats", nats_server.url, env={"EXECBUS_LEASE_TTL_S": "30"})
    try:
        async def leases() -> list[str]:
            keys = await list_keys(bus.js, bus.settings.lease_bucket, "lease.tracker.*")
            return [k for k in keys if await live_value(bus.buckets.leases, k) is not None]

        async def all_held() -> bool:
            return len(await leases()) == bus.settings.partitions

        await wait_until(all_held, timeout=20)
        actor.send_signal(signal.SIGTERM)
        await asyncio.wait_for(actor.wait(), 20)

        assert actor.returncode == 0
        assert await leases() == []  # released, not left to expire after the 30 s TTL
    finally:
        if actor.returncode is None:
            actor.kill()
            await actor.wait()
        await bus.close()
