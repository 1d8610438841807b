"""JetStream layout: the `EXEC` stream (every `exec.>` message, partitioned by intent) and the KV buckets
actors keep their recoverable state, partition leases and the intent-id guard in."""

from __future__ import annotations

import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.kv import KeyValue

from bus.settings import BusSettings
from messages import subjects

__all__ = ["ensure_layout", "Buckets"]

log = structlog.get_logger("execbus.bus")


class Buckets:
    """The KV buckets one process uses."""

    def __init__(self, state: KeyValue, leases: KeyValue, intents: KeyValue, controls: KeyValue) -> None:
        self.state = state
        self.leases = leases
        self.intents = intents
        self.controls = controls


def stream_config(settings: BusSettings) -> StreamConfig:
    src, dest = subjects.partition_transform(settings.partitions)
    return StreamConfig(
        name=settings.stream,
        description="execbus message log: every intent, command and event",
        subjects=[subjects.STREAM_SUBJECTS],
        subject_transform=SubjectTransform(src=src, dest=dest),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.max_age_s,
        duplicate_window=settings.duplicate_window_s,
    )


async def ensure_layout(js: JetStreamContext, settings: BusSettings) -> Buckets:
    """Create the stream and buckets if missing; idempotent, so every process may call it at start."""
    config = stream_config(settings)
    try:
        info = await js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        log.info("stream_created", stream=settings.stream, partitions=settings.partitions)
    else:
        existing = info.config.subject_transform
        if existing is None or existing.dest != config.subject_transform.dest:  # type: ignore[union-attr]
            raise RuntimeError(
                f"stream {settings.stream} was created with a different partition count "
                f"({existing.dest if existing else 'none'}); use the same EXECBUS_PARTITIONS everywhere"
            )
    state = await _bucket(js, KeyValueConfig(bucket=settings.state_bucket, history=1, storage=StorageType.FILE))
    leases = await _bucket(
        js,
        # File storage: a memory bucket would vanish with a nats-server restart, and with it every lease.
        KeyValueConfig(bucket=settings.lease_bucket, history=1, ttl=settings.lease_ttl_s, storage=StorageType.FILE),
    )
    intents = await _bucket(
        js, KeyValueConfig(bucket=settings.intent_bucket, history=1, storage=StorageType.FILE)
    )
    controls = await _bucket(
        js, KeyValueConfig(bucket=settings.control_bucket, history=1, storage=StorageType.FILE)
    )
    return Buckets(state, leases, intents, controls)


async def _bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        kv = await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(config.bucket)  # another process created it first
    await _allow_message_ttl(js, config.bucket)
    return kv


async def _allow_message_ttl(js: JetStreamContext, bucket: str) -> None:
    """Finished intents' state expires by per-message TTL (`Nats-TTL`), which the bucket's stream must allow.
    nats-py sets that when it creates a bucket; a bucket made by an older client gets it here (the server
    lets a stream turn it on, never off)."""
    info = await js.stream_info(f"KV_{bucket}")
    if not info.config.allow_msg_ttl:
        info.config.allow_msg_ttl = True
        await js.update_stream(info.config)
        log.info("bucket_allows_message_ttl", bucket=bucket)
