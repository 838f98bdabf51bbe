"""Build the redis.asyncio client that the settings describe.

`redis://`, `rediss://` and `unix://` URLs give a standalone client; `cluster=true`
(or `?cluster=true` on the URL) a RedisCluster; `redis+sentinel://host:port,host:port/
master` a Sentinel-managed master. Every client gets the configured socket, connect and
pool timeouts so that no call hangs longer than they allow.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from chatmem.config import RedisSettings
from chatmem.store.conversations import AnyRedis


def _wants_cluster(url: str, settings: RedisSettings) -> bool:
    query = parse_qs(urlsplit(url).query)
    return settings.cluster or query.get("cluster", ["false"])[0].lower() in ("1", "true", "yes")


def _strip_query(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = "&".join(kv for kv in parts.query.split("&") if kv and not kv.startswith(f"{name}="))
    return parts._replace(query=query).geturl()


class _SentinelMaster(Redis):
    """The master a Sentinel names. Closing it closes the Sentinel's own clients too:
    redis-py leaves them to the caller, and left open their connections leaked."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                await self.sentinel_manager.aclose()


def make_redis(url: str, settings: RedisSettings) -> AnyRedis:
    timeouts = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "decode_responses": True,
    }
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        hosts = []
        for hp in parts.netloc.split("@")[-1].split(","):
            host, _, port = hp.rpartition(":")
            hosts.append((host or "127.0.0.1", int(port or 26379)))
        master = parts.path.strip("/") or settings.sentinel_master
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts,
            sentinel_kwargs={"password": settings.sentinel_password, **timeouts},
            password=parts.password,
            **timeouts,
        )
        client: _SentinelMaster = sentinel.master_for(master, redis_class=_SentinelMaster)
        client.sentinel_manager = sentinel
        return client
    if _wants_cluster(url, settings):
        return RedisCluster.from_url(
            _strip_query(url, "cluster"), max_connections=settings.max_connections, **timeouts
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout_s,
        **timeouts,
    )
    # from_pool: closing the client also closes its pool (no connections left at exit).
    return Redis.from_pool(pool)
