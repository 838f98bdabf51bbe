"""The door to Redis: the client the settings describe, and the one error mapping.

`redis://`, `rediss://` and `unix://` URLs give a standalone client; `cluster=true`
(or `?cluster=true` on the URL) a RedisCluster; `redis+sentinel://host:port,host:port/
master` a Sentinel-managed master. Every client gets the configured socket, connect and
pool timeouts so that no call hangs longer than they allow, and (but under Cluster)
the leaner command packer of packing.py.

Every store module runs its Redis calls inside `redis_errors(op)`, which turns redis-py's
errors into the domain's (errors.py), so that no caller above `store/` sees redis-py:

    redis-py error                                      domain error
    ConnectionError (incl. timeouts of the pool, busy   StoreUnavailable: a turn degrades
    loading, auth, Sentinel's MasterNotFoundError),     (outbox), a route answers 503
    TimeoutError, ClusterError (ClusterDownError, "TTL  `store_unavailable`
    exhausted" after a MOVED storm), TryAgainError,
    MovedError / AskError (a slot moving), ReadOnly-
    Error (a demoted master), SlotNotCoveredError,
    "Redis Cluster cannot be connected", and the
    torn connection of a failover: RuntimeError
    "... TCPTransport closed ... handler is closed" and
    AttributeError "'NoneType' object has no attribute
    'writelines'" raised inside redis-py (its
    connection's transport closed under a command)
    OutOfMemoryError, or an error that says "OOM        StoreFull: 503 `store_full` (Redis
    command not allowed" (a script's write refused)     at maxmemory with noeviction)
    anything else (a bug: a bad script, a wrong type)   left as it is (a 500, logged)

Only those RuntimeError and AttributeError messages, and only when raised from redis-py's
own code, are "unavailable": any other RuntimeError or AttributeError is a bug.
"""

from __future__ import annotations

import os
import re
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import redis
import redis.exceptions as rex
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from chatmem.config import RedisSettings
from chatmem.errors import ChatmemError, StoreFull, StoreUnavailable
from chatmem.store.packing import fast_packing

AnyRedis = Redis | RedisCluster

# What "Redis cannot be reached in time, or cannot take this now" looks like from redis-py
# (MasterNotFoundError is a ConnectionError, MasterDownError a ClusterDownError, both a
# ClusterError).
UNAVAILABLE: tuple[type[Exception], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterError,
    rex.TryAgainError,
    rex.AskError,  # MovedError too
    rex.SlotNotCoveredError,
    rex.ReadOnlyError,
)
# A RedisClusterException (not a RedisError) that means no node answered.
_CLUSTER_UNREACHABLE = "Redis Cluster cannot be connected"
# A connection torn down under a command (a node killed, the client reconnecting).
_TORN: tuple[tuple[type[Exception], re.Pattern[str]], ...] = (
    (RuntimeError, re.compile(r"TCPTransport closed|closed transport|handler is closed")),
    (AttributeError, re.compile(r"'NoneType' object has no attribute 'writelines?'")),
)
_REDIS_PY = os.path.dirname(redis.__file__) + os.sep
# Redis < 7 reports a script's refused write as a script error that quotes the OOM reply.
_OOM_TEXT = "OOM command not allowed"


def _raised_in_redis_py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_REDIS_PY):
            return True
        tb = tb.tb_next
    return False


def is_torn_connection(exc: BaseException) -> bool:
    """A failover's torn connection as redis-py lets it through: one of the `_TORN`
    messages, raised from redis-py's own code (anywhere else it is a bug of ours)."""
    return any(
        isinstance(exc, kind) and pattern.search(str(exc)) is not None for kind, pattern in _TORN
    ) and _raised_in_redis_py(exc)


def store_error(exc: BaseException, op: str) -> ChatmemError | None:
    """The domain error for a redis-py error raised during `op`; None for anything else
    (a bug, which should surface as one)."""
    if isinstance(exc, rex.OutOfMemoryError) or (
        isinstance(exc, rex.ResponseError) and _OOM_TEXT in str(exc)
    ):
        return StoreFull(f"the memory store is full; {op} was refused")
    if (
        isinstance(exc, UNAVAILABLE)
        or (isinstance(exc, rex.RedisClusterException) and _CLUSTER_UNREACHABLE in str(exc))
        or is_torn_connection(exc)
    ):
        return StoreUnavailable(f"redis unavailable during {op}: {type(exc).__name__}: {exc}")
    return None


class redis_errors:
    """Run Redis calls (awaited inside) with their errors mapped by `store_error`.

    `with redis_errors("read"): await ...`; `async with` works the same.
    """

    def __init__(self, op: str) -> None:
        self.op = op

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, Exception):
            mapped = store_error(exc, self.op)
            if mapped is not None:
                raise mapped from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)


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
        pool = client.connection_pool
        pool.connection_class = fast_packing(pool.connection_class)
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
    pool.connection_class = fast_packing(pool.connection_class)
    # from_pool: closing the client also closes its pool (no connections left at exit).
    return Redis.from_pool(pool)
