"""make_redis: the client a URL describes, and what closing it closes."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

from chatmem.config import RedisSettings
from chatmem.store.client import make_redis


def sentinel_ports(url: str) -> list[int]:
    return [int(hp.rpartition(":")[2]) for hp in urlsplit(url).netloc.split(",")]


def connected_clients(port: int) -> int:
    """Clients connected to the Sentinel on `port`, but for the other Sentinels (which
    name their links) and the one asking."""
    with redis.Redis(port=port) as probe:
        return sum(not c.get("name") for c in probe.client_list()) - 1


async def test_closing_a_sentinel_client_closes_its_sentinel_connections(
    sentinel_redis_url: str,
) -> None:
    """Regression: the clients make_redis opened to the Sentinels themselves (to ask who
    the master is) were never closed, only the master's pool: every Sentinel-backed client
    leaked a connection to a Sentinel, found once warnings became errors in the tests."""
    ports = sentinel_ports(sentinel_redis_url)
    before = [connected_clients(p) for p in ports]
    client = make_redis(sentinel_redis_url, RedisSettings(url=sentinel_redis_url))
    await client.set("probe", "1")  # asks a Sentinel for the master, then writes
    assert sum(connected_clients(p) for p in ports) > sum(before)
    await client.aclose()
    assert [connected_clients(p) for p in ports] == before
