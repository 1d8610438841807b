"""`execbus bench NAME [--quick] [--out DIR] [bench options]`: run one benchmark, print its tables, write
its JSON result (`bench/results/<name>.json`, or `<name>-quick.json`).

A benchmark is a module with `async def run(quick: bool, args: list[str]) -> BenchResult` (see
`bench.common`); this module adds the machine description and the wall time, prints and writes.

`execbus bench` itself comes from here: `command` is registered as an `execbus.commands` entry point
(pyproject.toml), which the `execbus` CLI (`bus.ops.cli`) loads; `bus/` never imports `bench/`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import traceback
from typing import Any

from bench.common import BenchResult, Table, Target, format_table, machine, write_result

__all__ = ["BENCHES", "run_bench", "command"]

BENCHES: dict[str, str] = {
    "latency": "bench.latency",
    "throughput": "bench.throughput",
    "scale": "bench.scale",
    "fills": "bench.fills",
    "replay_speed": "bench.cli:_replay_speed",
    "quality": "bench.quality",
    "replay": "bench.replay",
    "clients": "bench.clients",
}
"""Name -> module (with `run`) or `module:function`."""


async def _replay_speed(quick: bool, args: list[str]) -> BenchResult:
    """Adapter for `bench/replay_speed.py` (issue 3), whose `run(quick)` is synchronous and runs its own loop."""
    from bench import replay_speed

    out: dict[str, Any] = await asyncio.to_thread(replay_speed.run, quick)
    rows = [[k, v] for k, v in out.items() if not isinstance(v, (list, dict))]
    return BenchResult(
        params={"target_speed": out.get("target_speed"), "data": out.get("data"), "mode": out.get("mode")},
        results=out,
        tables=[Table("replay speed of the paper venue", ["measure", "value"], rows)],
        targets=[Target("real-time replay keeps up with the target speed-up", f">= 0.95 x {out.get('target_speed')}",
                        f"{out.get('achieved_speed')}x", bool(out.get("kept_up")))],
    )


def _own_options(quick: bool, out: str | None, extra: list[str]) -> tuple[bool, str | None, list[str]]:
    """argparse's REMAINDER hands everything after NAME to the benchmark, `--quick` and `--out` included
    (`execbus bench latency --quick`): take ours back. After a `--`, everything is the benchmark's."""
    rest: list[str] = []
    i = 0
    while i < len(extra):
        arg = extra[i]
        if arg == "--":
            rest += extra[i + 1:]
            break
        if arg == "--quick":
            quick = True
        elif arg == "--out" and i + 1 < len(extra):
            out = extra[i + 1]
            i += 1
        elif arg.startswith("--out="):
            out = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return quick, out, rest


def _resolve(name: str) -> Any:
    target = BENCHES[name]
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "run")


async def run_bench(name: str, *, quick: bool = False, out: str | None = None, extra: list[str] | None = None) -> int:
    """Run benchmark `name`; 0 on success, 2 for an unknown or unavailable benchmark, 1 if it failed.
    A missed target is reported in the table and the JSON, not by the exit code."""
    quick, out, extra = _own_options(quick, out, list(extra or []))
    if name not in BENCHES:
        print(f"execbus bench: unknown benchmark {name!r}; one of {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    try:
        fn = _resolve(name)
    except (ImportError, AttributeError) as exc:
        print(f"execbus bench: {name} is not available: {exc}", file=sys.stderr)
        return 2
    started = time.time()
    desc = machine()
    print(f"execbus bench {name}{' --quick' if quick else ''} on {desc['cpu_model']} x{desc['cpu_cores']}, "
          f"{desc['nats_server']}, Python {desc['python']}", flush=True)
    try:
        result: BenchResult = await fn(quick, extra)
    except SystemExit as exc:  # argparse on bad bench options
        return int(exc.code or 2)
    except Exception:
        traceback.print_exc()
        return 1
    for table in result.tables:
        print()
        print(format_table(table))
    if result.targets:
        print()
        print(format_table(Table("targets", ["target", "wanted", "measured", "met"],
                                 [[t.name, t.target, t.measured, "-" if t.met is None else t.met]
                                  for t in result.targets])))
    for note in result.notes:
        print(f"  note: {note}")
    path = write_result(name, result, quick=quick, out_dir=out, started=started, machine_desc=desc)
    print(f"\n{name}: {time.time() - started:.1f} s; result written to {path}", flush=True)
    return 0


def command(sub: Any, name: str = "bench") -> argparse.ArgumentParser:
    """Add `execbus bench` to the CLI's subcommands `sub` (the `execbus.commands` entry point `bench`)."""
    p = sub.add_parser(name, help=f"benchmarks: {', '.join(BENCHES)}",
                       description="Run one benchmark, print its tables and write its JSON result "
                                   "(bench/results/NAME.json, or NAME-quick.json with --quick).")
    p.add_argument("name", help=f"which benchmark: {', '.join(BENCHES)} (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="small smoke-test sizes (CI), under a minute")
    p.add_argument("--out", default=None, help="directory for the JSON result (default bench/results)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="options for the benchmark itself")
    p.set_defaults(run=_command, quiet=True)
    return p


async def _command(args: argparse.Namespace) -> int:
    return await run_bench(args.name, quick=args.quick, out=args.out, extra=list(args.extra))
