"""Run the chaos scenario (tests/e2e/chaos_helpers.py) for several seeds and print one summary line each.

    .venv/bin/python tests/e2e/run_chaos_seeds.py --seeds 5            # seeds DEFAULT_SEED .. +4
    .venv/bin/python tests/e2e/run_chaos_seeds.py 1 2 3 --verbose      # these seeds; print each failure

Each run keeps its logs in its own directory (printed at the end of its line). Exit status 1 if any seed
broke an invariant.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus.logging import configure_logging  # noqa: E402
from tests.e2e.chaos_helpers import DEFAULT_SEED, ChaosConfig, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seed", nargs="*", type=int, help="seeds to run (default: --seeds consecutive ones)")
    parser.add_argument("--seeds", type=int, default=3, help="how many consecutive seeds from --first")
    parser.add_argument("--first", type=int, default=DEFAULT_SEED)
    parser.add_argument("--dir", default=None, help="parent directory of the per-seed log dirs")
    parser.add_argument("--kill-events", type=int, default=ChaosConfig.actor_kill_events,
                        help="actor kill events per run (some kill two processes)")
    parser.add_argument("--double", type=float, default=ChaosConfig.double_kill_probability,
                        help="probability that a kill event kills two processes at once")
    parser.add_argument("--per-variant", type=int, default=ChaosConfig.per_variant, help="intents per variant")
    parser.add_argument("--any-victim", action="store_true",
                        help="may kill the last live replica of an actor too (default: keep one of each)")
    parser.add_argument("--verbose", action="store_true", help="print each failing run's failure message")
    args = parser.parse_args()
    configure_logging("error")  # this process's own client logs (reconnects while nats-server is down)
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    seeds = args.seed or list(range(args.first, args.first + args.seeds))
    parent = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="execbus-chaos-"))
    failed = 0
    for n, seed in enumerate(seeds, 1):
        config = ChaosConfig(actor_kill_events=args.kill_events, double_kill_probability=args.double,
                             per_variant=args.per_variant, keep_one_replica=not args.any_victim)
        result = asyncio.run(run_chaos(seed, parent / f"{n:02d}-seed-{seed}", config))
        print(("OK   " if result.ok else "FAIL ") + result.summary(), flush=True)
        for finding in result.findings:
            print(f"     finding: {finding}", flush=True)
        if not result.ok:
            failed += 1
            if args.verbose:
                print(result.failure_message(), flush=True)
    print(f"{len(seeds) - failed}/{len(seeds)} seeds kept every invariant; logs under {parent}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
