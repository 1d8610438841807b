"""Every replica uses the lease bucket's TTL, whatever its own setting says: one that trusted its lease for
80 % of a longer TTL than the bucket keeps keys would share a partition with the next owner."""

from __future__ import annotations

from bus.bus import Bus
from bus.server import EmbeddedNats
from tests.helpers import fast_settings


async def test_a_process_configured_with_another_lease_ttl_follows_the_bucket(nats_server: EmbeddedNats) -> None:
    first = await Bus.connect(nats_server.url, fast_settings(lease_ttl_s=10.0))
    later = await Bus.connect(nats_server.url, fast_settings(lease_ttl_s=15.0))
    try:
        info = await later.js.stream_info(f"KV_{later.settings.lease_bucket}")

        assert info.config.max_age == 10.0  # nobody changed the bucket
        assert first.settings.lease_ttl_s == later.settings.lease_ttl_s == 10.0
    finally:
        await later.close()
        await first.close()
