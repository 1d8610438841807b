"""Bus settings: one frozen struct, filled from defaults, the environment or the CLI."""

from __future__ import annotations

import os

import msgspec

__all__ = ["BusSettings"]


class BusSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How execbus uses NATS. The defaults suit one machine; tests shorten the windows."""

    stream: str = "EXEC"
    """The JetStream stream that records every `exec.>` message (the system of record)."""
    partitions: int = 8
    """Intents are hashed into this many partitions; one replica of an actor owns a partition at a time."""
    duplicate_window_s: float = 120.0
    """JetStream drops a second message with the same `Nats-Msg-Id` inside this window."""
    max_age_s: float = 7 * 24 * 3600.0
    """How long the log keeps messages (replay horizon)."""
    lease_ttl_s: float = 10.0
    """A replica that stops renewing its partition leases loses them after this long. Renewal shares the
    event loop with the handlers, so under heavy load a short TTL makes a busy replica lose its own
    leases (seen in the benchmarks at 3 s); failover of a dead replica takes up to this long."""
    ack_wait_s: float = 10.0
    """Redelivery delay for a message taken but not acknowledged (a replica that died mid-message)."""
    max_deliveries: int = 5
    """A message whose handler fails this many times goes to the dead-letter subject."""
    state_bucket: str = "execbus_state"
    lease_bucket: str = "execbus_leases"
    control_bucket: str = "execbus_controls"
    """Trading states, risk limits, balance reservations and the order-rate budget (`bus.controls`)."""
    intent_bucket: str = "execbus_intents"
    """Every intent id ever accepted: the duplicate guard that outlives the stream's duplicate window."""
    replicas: int = 1
    """The EXEC stream and every KV bucket are kept on this many servers (JetStream replicas). 3 on a three-node
    cluster survives the loss of any one server; it must not exceed the cluster's size (JetStream refuses
    the stream otherwise); 1 on a single server. Changing it later rescales the existing stream and buckets
    at the next start (upward only: a process with fewer never scales the log down). On a cluster a lost leader is replaced in 4-10 s (sometimes a second round): a
    `lease_ttl_s` much shorter makes every actor lose its leases at each election of the lease bucket."""
    fetch_batch: int = 32
    """Per partition, how many of its messages a replica holds at most: pulled but not yet handled, plus the
    pull's outstanding credit (`bus.consumer.PullStream`). It is the back-pressure: what a busy replica cannot
    take yet waits in the log. With 8 partitions an actor holds up to 256, every actor of `execbus up` (one
    process) up to 1,536. In round two's throughput benchmark 256 still collapsed at 2,000 intents/s offered
    (thousands of handlers in the event loop; lease renewals and KV requests timed out behind them); 16 and
    32 ran clean, and 32 kept the closed-loop rate of 256 (16 lost a fifth of it)."""
    event_steps: int = 64
    """Per replica, how many steps that come from outside the log (venue events, timers, resumes after a
    takeover) run at once; the rest wait their turn. A venue reply listing a thousand fills, or ten thousand
    attempt timers due in one second, must not put a thousand steps into one turn of the event loop (in
    `bench scale`'s drain they did: lease renewals and KV requests timed out behind them)."""
    retired_state_ttl_s: float = 86_400.0
    """How long KV keeps what is left of a finished intent: the tracker's last state (so a late fill still
    finds its report) and the other actors' deletion markers. Then JetStream drops it (per-message TTL), so
    the state bucket does not grow with every intent ever run."""
    flush_delay_s: float = 0.02
    """How long an actor holds an intent's state write (and the acks of the messages that led to it) for
    more of that intent's steps, so a burst of messages costs one write. Published messages never wait.
    0 writes after every step (or run of queued steps)."""

    @classmethod
    def from_env(cls, **overrides: object) -> BusSettings:
        """`EXECBUS_PARTITIONS=16` etc. override the defaults; explicit `overrides` win."""
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            raw = os.environ.get(f"EXECBUS_{field.name.upper()}")
            if raw is not None:
                values[field.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return msgspec.convert(values, cls, strict=False)
