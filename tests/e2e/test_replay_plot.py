"""`execbus replay plot ID -o FILE.png`: one execution drawn from the message log, read from the EXEC stream
(`--nats`) or from an exported file (`--file`), for executions produced for real in virtual time: a market
order, an aggressive limit whose budget ran out into the market fallback, and a canceled one."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from bus.ops.picture import picture_json, picture_of
from bus.ops.replay import read_file, read_stream
from bus.ops.sim import Arrival, Simulation
from messages import AggressiveLimitParams, CancelIntent, ExecutionCompleted
from messages.base import routing
from tests.helpers import fast_settings, new_intent

ROOT = Path(__file__).resolve().parents[2]
NS = 1_000_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def _cli(*args: str, prelude: str = "") -> tuple[int, str, str]:
    code = f"import sys\n{prelude}\nfrom bus.ops.cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode(), err.decode()


def _arrivals(t0: int) -> list[Arrival]:
    fallback = new_intent(
        intent_id="plot-fallback", qty=Decimal("3"), side="sell", strategy="aggressive_limit",
        params=AggressiveLimitParams(total_timeout_seconds=Decimal("6"), max_retries=2, trigger_fill_price=Decimal("61900")),
    )
    # Rests above the market (the break-even bound) for a minute: the cancel 3 s later finds it working.
    canceled = new_intent(
        intent_id="plot-canceled", qty=Decimal("0.5"), side="sell", strategy="aggressive_limit",
        params=AggressiveLimitParams(attempt_timeout_seconds=Decimal("60"), total_timeout_seconds=Decimal("120"),
                                     max_retries=2, trigger_fill_price=Decimal("61900")),
    )
    return [
        Arrival(t0 + 1 * NS, new_intent(intent_id="plot-market", qty=Decimal("0.5"))),
        Arrival(t0 + 30 * NS, fallback),
        Arrival(t0 + 60 * NS, canceled),
        Arrival(t0 + 63 * NS, CancelIntent(**routing(canceled), request="r1", reason="signal went stale",  # type: ignore[arg-type]
                                           requested_by="test")),
    ]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert len(data) > 20_000, f"{path} is only {len(data)} bytes"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_replay_plot_draws_a_market_a_fallback_and_a_canceled_execution_from_the_stream_and_a_file(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    ids = ["plot-market", "plot-fallback", "plot-canceled"]
    export = tmp_path / "log.jsonl"
    async with Simulation(settings=fast_settings()) as sim:
        outcomes = await sim.run(_arrivals(sim.clock.now_ns()))
        url = sim.system.url
        records = [r async for r in read_stream(sim.system.bus)]
        from_stream = await asyncio.gather(
            *(_cli("replay", "plot", i, "-o", str(tmp_path / "stream" / f"{i}.png"), "--nats", url) for i in ids),
            _cli("replay", "export", "--nats", url, "-o", str(export)),
        )
    from_file = await asyncio.gather(
        *(_cli("replay", "plot", i, "-o", str(tmp_path / "file" / f"{i}.png"), "--file", str(export)) for i in ids)
    )

    reports = {k: v for k, v in outcomes.items() if isinstance(v, ExecutionCompleted)}
    assert {k: v.status for k, v in reports.items()} == {
        "plot-market": "filled", "plot-fallback": "filled", "plot-canceled": "canceled"}
    assert reports["plot-fallback"].fallback_used
    code, _, err = from_stream[-1]
    assert code == 0, err
    for source, results in (("stream", from_stream[:3]), ("file", from_file)):
        for intent_id, (code, out, err) in zip(ids, results, strict=True):
            png = tmp_path / source / f"{intent_id}.png"
            assert code == 0, err
            assert out.strip() == str(png)
            width, height = _png_size(png)
            assert 800 <= width <= 4000 and 400 <= height <= 3000, (width, height)
    # The exported file and the stream hold the same records, so they give the same picture.
    for intent_id in ids:
        mine = [r for r in records if r.subject.endswith("." + intent_id)]
        again = list(read_file(export, f"exec.*.*.*.{intent_id}"))
        assert picture_json(picture_of(mine)) == picture_json(picture_of(again))

    pictures = {i: picture_json(picture_of(list(read_file(export, f"exec.*.*.*.{i}")))) for i in ids}
    json.dumps(pictures)  # plain JSON
    market, fallback, canceled = (pictures[i] for i in ids)
    assert [o["kind"] for o in market["orders"]] == ["market"] and market["orders"][0]["price"] is None
    assert market["info"]["status"] == "filled" and {f["liquidity"] for f in market["fills"]} >= {"taker"}
    assert [(o["kind"], o["fallback"]) for o in fallback["orders"]] == [("limit", False), ("market", True)]
    assert fallback["orders"][-1]["client_order_id"] == "plot-fallback-F"
    assert "fallback" in {e["kind"] for e in fallback["events"]} and "timeout" in {e["kind"] for e in fallback["events"]}
    budget_out = next(e for e in fallback["events"] if e["kind"] == "fallback")
    assert budget_out["t_s"] == pytest.approx(6.0)  # the 6 s budget, in market time since acceptance
    assert "market fallback" in fallback["subtitle"] and "shortfall vs arrival mid" in fallback["subtitle"]
    assert canceled["info"]["status"] == "canceled" and canceled["fills"] == []
    assert [o["status"] for o in canceled["orders"]] == ["canceled"]
    cancel = next(e for e in canceled["events"] if e["kind"] == "canceled")
    assert cancel["t_s"] == pytest.approx(3.0) and "working" in cancel["label"]
    assert all("E" not in q["bid"] + q["ask"] for p in pictures.values() for q in p["quotes"])


async def test_replay_plot_of_an_unknown_intent_says_so(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    log = tmp_path / "empty.jsonl"
    log.write_text("")

    code, out, err = await _cli("replay", "plot", "no-such-intent", "-o", str(tmp_path / "x.png"), "--file", str(log))

    assert code == 1 and out == ""
    assert "nothing logged for intent no-such-intent" in err
    assert not (tmp_path / "x.png").exists()


async def test_replay_plot_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    log = tmp_path / "empty.jsonl"
    log.write_text("")

    code, out, err = await _cli("replay", "plot", "any", "-o", str(tmp_path / "x.png"), "--file", str(log),
                                prelude="sys.modules['matplotlib'] = None")

    assert code == 1 and out == ""
    assert "matplotlib" in err and "pip install 'execbus[bench]'" in err
