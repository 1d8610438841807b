"""JetStream layout: the `EXEC` stream (every `exec.>` message, partitioned by intent) and the KV buckets
actors keep their recoverable state, partition leases and the intent-id guard in.

Each is kept on `BusSettings.replicas` servers. A stream or bucket found with another replica count is
rescaled in place (JetStream moves the data itself), so going from one server to a cluster is a setting,
not a migration."""

from __future__ import annotations

import asyncio
import time

import nats.errors
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

WRITABLE_TIMEOUT_S = 10.0
"""How long a process waits for a stream it just created on several servers to take writes (see
`_until_writable`) before it goes on anyway, saying so."""


class Buckets:
    """The KV buckets one process uses."""

    def __init__(
        self, state: KeyValue, leases: KeyValue, intents: KeyValue, controls: KeyValue,
        shape: subjects.Shape = subjects.CURRENT_SHAPE,
    ) -> None:
        self.state = state
        self.leases = leases
        self.intents = intents
        self.controls = controls
        self.shape = shape
        """Where the `EXEC` stream puts the partition token in what it stores (messages/subjects.py)."""


def stream_config(settings: BusSettings, shape: subjects.Shape = subjects.CURRENT_SHAPE) -> StreamConfig:
    src, dest = subjects.partition_transform(settings.partitions, shape)
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
        num_replicas=settings.replicas,
    )


class LayoutNeedsOps(RuntimeError):
    """The layout exists but needs a change (more replicas, per-message TTL) this client's user may not make."""


async def _update(js: JetStreamContext, config: StreamConfig) -> None:
    """`update_stream`, saying what to do when this user may not: on a bus with users only ops may change the
    layout (the server answers nothing to a request it refuses, so the refusal arrives as a timeout)."""
    try:
        await js.update_stream(config)
    except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
        raise LayoutNeedsOps(
            f"stream {config.name} needs an update ({exc!r}) that only ops may make on a bus with users: "
            "start `execbus up` (it connects as ops) or run `nats stream edit` as ops, then this process again"
        ) from None


async def ensure_layout(js: JetStreamContext, settings: BusSettings, *, probe: bool = True) -> Buckets:
    """Create the stream and buckets if missing; idempotent, so every process may call it at start.

    `probe`: after creating a replicated stream, wait until it takes writes (`_until_writable`). Only for a
    user that may publish the probe subjects (ops, or a bus without users); others go on at once (a first
    write that races the new leader is retried like any bus failure)."""
    config = stream_config(settings)
    shape = subjects.CURRENT_SHAPE
    try:
        info = await js.stream_info(settings.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)
        log.info("stream_created", stream=settings.stream, partitions=settings.partitions, replicas=settings.replicas)
        if settings.replicas > 1 and probe:
            await _until_writable(js, settings.stream, subjects.subject("layout_probe", "execbus", "PROBE", "layout"))
    else:
        shape = _shape_of_existing(info.config, settings)
        if (info.config.num_replicas or 1) != settings.replicas:
            await _rescale(js, info.config, settings.replicas)
    replicas = settings.replicas
    state = await _bucket(
        js, probe, KeyValueConfig(bucket=settings.state_bucket, history=1, storage=StorageType.FILE, replicas=replicas)
    )
    leases = await _bucket(
        js, probe,
        # File storage: a memory bucket would vanish with a nats-server restart, and with it every lease.
        KeyValueConfig(bucket=settings.lease_bucket, history=1, ttl=settings.lease_ttl_s, storage=StorageType.FILE,
                       replicas=replicas),
    )
    intents = await _bucket(
        js, probe, KeyValueConfig(bucket=settings.intent_bucket, history=1, storage=StorageType.FILE, replicas=replicas)
    )
    controls = await _bucket(
        js, probe, KeyValueConfig(bucket=settings.control_bucket, history=1, storage=StorageType.FILE, replicas=replicas)
    )
    return Buckets(state, leases, intents, controls, shape)


def _shape_of_existing(config: StreamConfig, settings: BusSettings) -> subjects.Shape:
    """The shape an existing stream was made with. An older stream keeps its shape (partition last) and
    works as before, stalls included; it is never reshaped in place, since a log half in one shape and half
    in the other could not be read back by intent. Its operator moves to the new shape with a new store."""
    existing = config.subject_transform
    shape = subjects.shape_of(existing.dest if existing is not None else None)
    if shape is None or existing.dest != subjects.partition_transform(settings.partitions, shape)[1]:  # type: ignore[union-attr]
        raise RuntimeError(
            f"stream {settings.stream} was created with a different partition count "
            f"({existing.dest if existing else 'none'}); use the same EXECBUS_PARTITIONS everywhere"
        )
    if shape != subjects.CURRENT_SHAPE:
        log.warning(
            "stream_shape_old", stream=settings.stream, shape=shape, current=subjects.CURRENT_SHAPE,
            why="its file store stalls as the log grows (see messages/subjects.py); a new store takes the new "
                "shape once no intent is open on this one, which stays readable for replay",
        )
    return shape


async def _bucket(js: JetStreamContext, probe: bool, config: KeyValueConfig) -> KeyValue:
    try:
        kv = await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            kv = await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(config.bucket)  # another process created it first
        else:
            if config.replicas > 1 and probe:
                await _until_writable(js, f"KV_{config.bucket}", f"$KV.{config.bucket}._layout_probe")
            return kv
    await _align_bucket(js, config.bucket, config.replicas)
    return kv


async def _until_writable(js: JetStreamContext, stream: str, subject: str) -> None:
    """Wait until a write to `subject` reaches the stream just created on several servers.

    Its new leader answers the creation and, separately, tells the other servers it now listens on the
    stream's subjects; the answer can arrive first, and a write sent at once from a client on another server
    then finds nobody listening (503 "no responders": a few creations in a thousand on a loopback cluster,
    and it stopped `System.start`'s first write of the risk limits). The probe is a write the stream refuses unstored (it expects
    another stream's name); any answer from the stream means writes arrive. Core subscribers of `subject` do
    see the empty probe (only at creation)."""
    deadline = time.monotonic() + WRITABLE_TIMEOUT_S
    while True:
        try:
            await js._nc.request(subject, b"", timeout=1.0, headers={"Nats-Expected-Stream": "execbus-layout-probe"})
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            pass
        if time.monotonic() > deadline:
            log.warning("stream_not_writable_yet", stream=stream, waited_s=WRITABLE_TIMEOUT_S)
            return
        await asyncio.sleep(0.02)


async def _align_bucket(js: JetStreamContext, bucket: str, replicas: int | None) -> None:
    """An existing bucket's stream made to match what this process would have created, in one update:
    per-message TTL allowed (`_allow_message_ttl`) and, unless `replicas` is None, that many copies."""
    config = (await js.stream_info(f"KV_{bucket}")).config
    ttl_added = not config.allow_msg_ttl
    if ttl_added:
        config.allow_msg_ttl = True
        log.info("bucket_allows_message_ttl", bucket=bucket)
    if replicas is not None and (config.num_replicas or 1) < replicas:
        await _rescale(js, config, replicas, bucket=bucket)  # (the same update turns the TTL on)
    elif ttl_added:
        await _update(js, config)


async def _allow_message_ttl(js: JetStreamContext, bucket: str) -> None:
    """Finished intents' state expires by per-message TTL (`Nats-TTL`), which the bucket's stream must allow.
    nats-py sets that when it creates a bucket; a bucket made by an older client gets it here (the server
    lets a stream turn it on, never off)."""
    await _align_bucket(js, bucket, None)


async def _rescale(js: JetStreamContext, config: StreamConfig, replicas: int, **context: str) -> None:
    """Another process (or an earlier setting) made this stream with fewer replicas: scale it up rather than
    refuse to start (JetStream copies the data to the new peers by itself). Never down: a client started
    without `EXECBUS_REPLICAS` (an operator's `execbus submit`) must not strip the log of its copies; fewer
    copies is an operator's explicit `nats stream edit`."""
    was = config.num_replicas or 1
    if replicas < was:
        log.info("stream_keeps_replicas", stream=config.name, replicas=was, configured=replicas, **context)
        return
    config.num_replicas = replicas
    await _update(js, config)
    log.warning("stream_rescaled", stream=config.name, replicas=replicas, was=was, **context)
