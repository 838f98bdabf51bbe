"""The user-level half of RedisMemoryStore: erase a user, the users index, lifetime
totals, and the server's own figures (PING, INFO). Mixed into RedisMemoryStore
(conversations.py), whose `_run` / `_op` run each call with its Redis errors mapped."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from redis.commands.core import AsyncScript

from chatmem.errors import InvalidInput
from chatmem.models import Usage, UserTotals
from chatmem.store import keys
from chatmem.store.client import AnyRedis
from chatmem.store.memory_scripts import ERASE_MEMORIES_FIRST
from chatmem.store.profiles import ERASE_PROFILE_FIRST
from chatmem.store.scripts import DELETE_USER

_MAX_INDEX = 2**63 - 1
# One script: the user's profile (KEYS[4]) and memories (KEYS[3], ARGV[2]), then
# DELETE_USER (scripts.py).
DELETE_USER_AND_MEMORIES = ERASE_PROFILE_FIRST + ERASE_MEMORIES_FIRST + DELETE_USER


class UserQueries:
    redis: AnyRedis
    _totals: AsyncScript
    _delete_user: AsyncScript

    if TYPE_CHECKING:

        async def _run(
            self,
            name: str,
            script: AsyncScript,
            ks: list[str],
            args: list[Any],
            *,
            write: bool = False,
        ) -> Any: ...

        def _op(self, name: str) -> AbstractAsyncContextManager[None]: ...

    async def delete_user(self, user_id: str) -> int:
        """Erase all of a user's data (long-term memories and profile too); returns how many
        sessions were deleted.

        The rate-limit counters and stream slots of the user (short-lived coordination
        state, not conversation data) are left to expire on their own.
        """
        ks = [keys.user_sessions_key(user_id), keys.user_totals_key(user_id)]
        ks += [keys.user_memory_index_key(user_id), keys.user_profile_key(user_id)]
        args = [keys.session_prefix(user_id), keys.user_memories_prefix(user_id)]
        n: int = await self._run("delete_user", self._delete_user, ks, args, write=True)
        async with self._op("delete_user"):
            await self.redis.zrem(keys.USERS_INDEX_KEY, user_id)
        return n

    async def list_users(self, *, limit: int = 1000, offset: int = 0) -> list[str]:
        """Users with live data, newest first by their latest session creation.

        From the global index (never KEYS or SCAN); users whose data has expired are
        dropped from it here.
        """
        if limit < 0 or offset < 0:
            raise InvalidInput("limit and offset must not be negative")
        if limit == 0 or offset >= _MAX_INDEX:
            return []
        stop = min(offset + limit - 1, _MAX_INDEX)  # Redis indexes are 64-bit signed
        async with self._op("list_users"):
            users = [str(u) for u in await self.redis.zrevrange(keys.USERS_INDEX_KEY, offset, stop)]
            if not users:
                return []
            pipe = self.redis.pipeline(transaction=False)
            for uid in users:
                pipe.exists(keys.user_sessions_key(uid))
            live = await pipe.execute()
            gone = [u for u, alive in zip(users, live, strict=True) if not alive]
            if gone:
                await self.redis.zrem(keys.USERS_INDEX_KEY, *gone)
        return [u for u, alive in zip(users, live, strict=True) if alive]

    async def count_users(self) -> int:
        """Users in the global index (may include some whose data has just expired)."""
        async with self._op("count_users"):
            n: int = await self.redis.zcard(keys.USERS_INDEX_KEY)
        return n

    async def user_totals(self, user_id: str) -> UserTotals:
        """Lifetime totals of the user (clearing a session does not lower them)."""
        ks = [keys.user_sessions_key(user_id), keys.user_totals_key(user_id)]
        flat, n_sessions = await self._run(
            "user_totals", self._totals, ks, [keys.session_prefix(user_id)]
        )
        h = dict(zip(flat[::2], flat[1::2], strict=True))
        return UserTotals(
            user_id=user_id,
            message_count=int(h.get("count", 0)),
            total_tokens=int(h.get("tokens", 0)),
            usage=Usage(
                prompt_tokens=int(h.get("ptok", 0)),
                completion_tokens=int(h.get("ctok", 0)),
                cost_usd=float(h.get("cost", 0)),
            ),
            session_count=n_sessions,
            stored_bytes=max(0, int(h.get("bytes", 0))),
        )

    async def ping(self) -> bool:
        async with self._op("ping"):
            return bool(await self.redis.ping())

    async def server_info(self) -> dict[str, Any]:
        """Redis INFO: version, memory and clients (under Cluster, of one node)."""
        async with self._op("info"):
            info: dict[str, Any] = await self.redis.info()
        if info and all(isinstance(v, dict) for v in info.values()):
            info = next(iter(info.values()))  # RedisCluster answers node by node
        return {
            "redis_version": info.get("redis_version"),
            "used_memory_human": info.get("used_memory_human"),
            "connected_clients": info.get("connected_clients"),
        }
