"""Where a user's keys live: the Redis node that serves them, for per-shard health.

Every key of a user carries the user's hash tag (keys.py), so under Redis Cluster all of
them live on the master that owns one slot. When that master dies, only the users of
its slots lose Redis; a process that called Redis "down" as a whole degraded everyone
(issue 16). `Placement.node_of(user)` names the node (as the client's slot table knows
it now); under a standalone or Sentinel-managed Redis there is one node, `ALL`.
"""

from __future__ import annotations

import logging

from redis.asyncio.cluster import RedisCluster

from chatmem.store import keys
from chatmem.store.client import AnyRedis, redis_errors

log = logging.getLogger(__name__)

# The one node of a standalone or Sentinel-managed Redis; under Cluster, "every node".
ALL = "*"


class Placement:
    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis

    @property
    def sharded(self) -> bool:
        return isinstance(self.redis, RedisCluster)

    def node_of(self, user_id: str) -> str:
        """The node that serves the user's keys (ALL when there is one, or when the
        client does not know the slot's owner yet)."""
        if not isinstance(self.redis, RedisCluster):
            return ALL
        try:
            node = self.redis.get_node_from_key(keys.user_totals_key(user_id))
        except Exception:  # no slot table yet, or the slot is not covered
            return ALL
        return node.name if node is not None else ALL

    async def answers(self, node_name: str) -> bool:
        """Whether the node answers a PING (StoreUnavailable if not). A node the
        cluster no longer lists as a master has handed its slots over: it counts as
        answering, its users' keys being served elsewhere."""
        redis = self.redis
        with redis_errors("ping"):
            if not isinstance(redis, RedisCluster) or node_name == ALL:
                return bool(await redis.ping())
            await redis.initialize()
            node = redis.get_node(node_name=node_name)
            if node is None or node not in redis.get_primaries():
                return True
            return bool(await redis.ping(target_nodes=node))
