"""Every benchmark runs in `--quick` mode (shrunk further here) and writes a well-formed result file.

No timing is asserted: these only prove the benchmarks still run end to end against the current code.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from bench.cli import BENCHES, run_bench

# Smaller than --quick so the suite stays fast; the code paths are the same.
TINY: dict[str, list[str]] = {
    "latency": ["--n", "20", "--block", "10", "--warmup", "5"],
    "throughput": ["--window", "16", "--warmup", "0.5", "--duration", "1", "--open-duration", "1",
                   "--profile", "0.5"],
    "scale": ["--n", "20"],
    "fills": ["--modes", "events:5,poll0.1:3"],
    # Every strategy of the quality benchmark runs in tests/bench/test_quality_smoke.py; here one beside the
    # baseline, two intents a size, is enough to prove the result file well formed.
    "quality": ["--n", "2", "--strategies", "aggressive_limit"],
}


def _available(name: str) -> bool:
    module = BENCHES[name].partition(":")[0]
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(BENCHES))
async def test_bench_runs_in_quick_mode_and_writes_a_well_formed_result(name: str, tmp_path: Path) -> None:
    if not _available(name):
        pytest.skip(f"bench {name} is not written yet")

    extra = TINY.get(name, []) + (["--plot", str(tmp_path / "sample.png")] if name == "quality" else [])
    code = await run_bench(name, quick=True, out=str(tmp_path), extra=extra)

    assert code == 0
    files = list(tmp_path.glob(f"{name}*-quick.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())
    assert doc["bench"] == name and doc["quick"] is True
    if doc["results"].get("skipped"):  # (a bench that needs what this machine lacks says so, and why)
        pytest.skip(doc["results"]["skipped"])
    for key in ("cpu_model", "cpu_cores", "ram_gb", "python", "nats_server", "platform"):
        assert doc["machine"].get(key), key
    assert isinstance(doc["params"], dict) and isinstance(doc["results"], dict) and doc["results"]
    assert all({"name", "target", "measured", "met"} <= set(t) for t in doc["targets"])
    assert doc["tables"] and all(t["headers"] and isinstance(t["rows"], list) for t in doc["tables"])
