"""Chaos: every actor in its own process (two replicas of most), the paper venue in its own process replaying
the recording in real time, 200 intents of every strategy over ~10 s, and a seeded schedule of SIGKILLs of
random actor processes (some two at once, each restarted) and one SIGKILL + restart of nats-server on the same
store. Then, from the venue's own records and the EXEC log: every intent has exactly one report and no
rejection, no client order id was created twice, nothing is left open, and per intent the venue's traded
quantity equals the report's filled_qty and never exceeds the intent's qty.

The seed comes from `EXECBUS_CHAOS_SEED` (default `chaos_helpers.DEFAULT_SEED`) and is printed first; the
summary line is printed last and starts the assertion message. The actor, venue and nats-server logs, the
chaos timeline (`chaos_events.log`) and the full evidence (`chaos_report.txt`) stay in the test's tmp dir.
Many seeds: `python tests/e2e/run_chaos_seeds.py --seeds 5`. See `chaos_helpers` for how it works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CHAOS_SUMMARIES
from tests.e2e.chaos_helpers import run_chaos, seed_from_env

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(170)
async def test_chaos_kills_under_load_keep_every_invariant(tmp_path: Path) -> None:
    seed = seed_from_env()
    print(f"\nchaos seed={seed} (set EXECBUS_CHAOS_SEED to rerun another); logs in {tmp_path}", flush=True)
    CHAOS_SUMMARIES.append(f"chaos seed={seed}: running (logs in {tmp_path})")
    result = await run_chaos(seed, tmp_path)
    CHAOS_SUMMARIES[-1] = result.summary()
    print(result.summary(), flush=True)
    assert result.ok, result.failure_message()
    assert result.kills >= 10 and result.nats_restarts == 1, result.summary()
    assert result.wall_s < 120, f"too slow: {result.summary()}"
