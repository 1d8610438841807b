"""Listing KV keys by pattern on the server.

nats-py's `KeyValue.keys(filters=...)` reads every key of the bucket and filters by *substring* on the
client, so `member.placer.*` matches nothing and a large bucket is read whole. This asks the server for the
subjects matching a wildcard pattern instead (one `STREAM.INFO` request)."""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

__all__ = ["list_keys", "live_value"]


async def list_keys(js: JetStreamContext, bucket: str, pattern: str) -> list[str]:
    """Keys of `bucket` matching the NATS wildcard `pattern`; may include deleted keys (see `live_value`)."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + pattern)
    subjects = info.state.subjects or {}
    return sorted(s[len(prefix):] for s in subjects)


async def live_value(kv: KeyValue, key: str) -> bytes | None:
    """The key's value, or None when it is missing, deleted or purged."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:  # includes KeyDeletedError
        return None
    if entry.operation in ("DEL", "PURGE"):
        return None
    return entry.value or b""  # nats-py hands an empty value back as None
