"""WAIT after every write: the optional write concern (`CHATMEM_REDIS_WAIT_REPLICAS`).

Redis replicates asynchronously: a master that dies right after answering can take the
last writes with it, and a Sentinel failover then promotes a replica without them.
`WAIT n timeout_ms` blocks until n replicas have what the calling *connection* wrote, or
the timeout passes, and answers how many did. So the WAIT must travel on the connection
that ran the write script: both go in one non-transactional pipeline (one round trip),
and under Cluster on the connection to the master that owns the user's slot (redis-py
would send a keyless command to a random node).

A write that fewer replicas confirmed in time has still happened on the master: Redis
answers, so it is not an outage, and it must not be redone elsewhere (a turn's writes
take one path). `run_checked` says whether it was confirmed: a turn answers
`memory: "unconfirmed"` and keeps its messages in the outbox until a replica confirms
them (durability/replay.py). `run` — every other write — accepts an unconfirmed write,
unless `strict` (`CHATMEM_REDIS_WAIT_STRICT`), where it raises NotReplicated (a 503
`store_not_replicated`: the write is on the master all the same, and retrying is safe,
appends skipping message ids already stored). Each shortfall is counted through the
observer and logged, in a summary at most every SHORTFALL_LOG_INTERVAL_S.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from chatmem.errors import NotReplicated

log = logging.getLogger(__name__)

# Told the op's name whenever a write was not confirmed by enough replicas.
ShortfallObserver = Callable[[str], None]
# A replica outage makes every write fall short: log a summary at most this often.
SHORTFALL_LOG_INTERVAL_S = 10.0


class WriteConcern:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        replicas: int,
        timeout_ms: int,
        on_shortfall: ShortfallObserver | None = None,
        *,
        strict: bool = False,
    ) -> None:
        if replicas < 1:
            raise ValueError("a write concern waits for at least 1 replica")
        if timeout_ms < 1:
            # WAIT n 0 blocks until the replicas answer, however long that takes.
            raise ValueError("the WAIT timeout must be at least 1 ms")
        self.redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._on_shortfall = on_shortfall
        self.strict = strict
        self._unlogged = 0
        self._logged_at = -SHORTFALL_LOG_INTERVAL_S

    async def run(self, name: str, script: AsyncScript, ks: list[str], args: list[Any]) -> Any:
        """Run a write script and WAIT in one round trip; its result (NotReplicated for
        a shortfall when `strict`)."""
        result, confirmed = await self.run_checked(name, script, ks, args)
        if not confirmed and self.strict:
            raise NotReplicated(
                f"{name} was written on the Redis master, but fewer than {self.replicas} "
                f"replica(s) confirmed it within {self.timeout_ms} ms",
                wanted=self.replicas,
            )
        return result

    async def run_checked(
        self, name: str, script: AsyncScript, ks: list[str], args: list[Any]
    ) -> tuple[Any, bool]:
        """Run a write script and WAIT in one round trip: its result, and whether enough
        replicas confirmed it.

        Every write script writes something whenever it succeeds (at least the meta's
        expiry), so the WAIT covers this write and, the replication stream being one
        sequence, everything written before it by any connection.
        """
        for attempt in range(2):
            # EVALSHA by name: redis-py's pipelined scripts ask SCRIPT EXISTS first (one
            # more round trip), and its Cluster pipeline refuses `evalsha()`.
            evalsha = ("EVALSHA", script.sha, len(ks), *ks, *args)
            wait = ("WAIT", self.replicas, self.timeout_ms)
            if isinstance(self.redis, RedisCluster):
                result, acked = await self._cluster_round_trip(ks[0], evalsha, wait)
            else:
                pipe = self.redis.pipeline(transaction=False)
                pipe.execute_command(*evalsha)
                pipe.execute_command(*wait)
                result, acked = await pipe.execute(raise_on_error=False)
            if isinstance(result, redis.exceptions.NoScriptError) and attempt == 0:
                # It did not run (a new or restarted master): load it and go again.
                await self.redis.script_load(script.script)
                continue
            for value in (result, acked):
                if isinstance(value, BaseException):
                    raise value
            if int(acked) < self.replicas:
                self._shortfall(name, int(acked))
                return result, False
            return result, True
        raise AssertionError("unreachable")  # pragma: no cover

    async def _cluster_round_trip(
        self, key: str, evalsha: tuple[Any, ...], wait: tuple[Any, ...]
    ) -> list[Any]:
        assert isinstance(self.redis, RedisCluster)
        await self.redis.initialize()
        owner = self.redis.get_node_from_key(key)
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command(*evalsha)
        pipe.execute_command(*wait, target_nodes=owner)
        result, acked = await pipe.execute(raise_on_error=False)
        now_owner = self.redis.get_node_from_key(key)
        if now_owner is None or owner is None or now_owner.name != owner.name:
            # The slot moved meanwhile: the script may have been redirected to its new
            # owner, and this WAIT then proves nothing about it.
            acked = 0
        return [result, acked]

    def _shortfall(self, name: str, acked: int) -> None:
        if self._on_shortfall is not None:
            self._on_shortfall(name)
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= SHORTFALL_LOG_INTERVAL_S:
            log.warning(
                "%d write(s) not confirmed by %d replica(s) within %d ms, reported as "
                "unconfirmed (the last: %s, confirmed by %d)",
                self._unlogged,
                self.replicas,
                self.timeout_ms,
                name,
                acked,
            )
            self._unlogged = 0
            self._logged_at = now
