"""Listing KV keys by pattern on the server.

nats-py's `KeyValue.keys(filters=...)` reads every key of the bucket and filters by *substring* on the
client, so `member.placer.*` matches nothing and a large bucket is read whole. This asks the server for the
subjects matching a wildcard pattern instead (`STREAM.INFO`, paged)."""

from __future__ import annotations

import json

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

__all__ = ["list_keys", "live_value"]


async def list_keys(js: JetStreamContext, bucket: str, pattern: str) -> list[str]:
    """Keys of `bucket` matching the NATS wildcard `pattern`; may include deleted keys (see `live_value`).

    The server lists at most 100,000 subjects per answer and says how many there are in all (`total`):
    ask again from `offset` until every one is in (nats-py's `stream_info` asks only once)."""
    prefix = f"$KV.{bucket}."
    api = f"{js._prefix}.STREAM.INFO.KV_{bucket}"
    keys: list[str] = []
    while True:
        request = {"subjects_filter": prefix + pattern, "offset": len(keys)}
        reply = json.loads((await js._nc.request(api, json.dumps(request).encode(), timeout=5.0)).data)
        if "error" in reply:
            nats.js.errors.APIError.from_error(reply["error"])  # raises nats-py's own exception
        page = (reply.get("state") or {}).get("subjects") or {}
        keys += [s[len(prefix):] for s in page]
        if not page or len(keys) >= int(reply.get("total") or 0):
            return sorted(keys)


async def live_value(kv: KeyValue, key: str) -> bytes | None:
    """The key's value, or None when it is missing, deleted or purged."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:  # includes KeyDeletedError
        return None
    if entry.operation in ("DEL", "PURGE"):
        return None
    return entry.value or b""  # nats-py hands an empty value back as None
