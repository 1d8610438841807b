"""A client that knows only NATS and JSON: no execbus import. It submits one intent the way a Node or Go
service would and prints every message of that intent it receives, one JSON object per line."""

import asyncio
import json
import sys

import nats


async def main(url: str, intent_id: str) -> int:
    nc = await nats.connect(url)
    done = asyncio.Event()

    async def on_message(msg):  # type: ignore[no-untyped-def]
        body = json.loads(msg.data)
        print(json.dumps({"subject": msg.subject, "body": body}), flush=True)
        if body.get("type") in ("ExecutionCompleted", "IntentRejected"):
            done.set()

    await nc.subscribe(f"exec.*.*.*.{intent_id}", cb=on_message)
    intent = {
        "type": "SubmitIntent",
        "intent_id": intent_id,
        "venue": "paper",
        "symbol": "BTC/USDT",
        "side": "buy",
        "qty": "0.02",
        "strategy": "market",
    }
    await nc.publish(f"exec.submit_intent.paper.BTC-USDT.{intent_id}", json.dumps(intent).encode())
    try:
        await asyncio.wait_for(done.wait(), 20)
    finally:
        await nc.drain()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
