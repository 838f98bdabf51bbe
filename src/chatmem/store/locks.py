"""Redis primitives that coordinate API processes: the per-session turn lock, the stop
signal, the per-user rate limit and the concurrent-stream cap.

They live in Redis, not in process memory, so any number of API processes behind one
Redis agree on them. Every key carries the user's hash tag. A Redis that cannot be
reached in time raises `StoreUnavailable` (client.redis_errors, as everywhere), so a turn can
degrade instead of failing.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence

from chatmem.errors import RateLimited, SessionBusy
from chatmem.store import keys
from chatmem.store.client import AnyRedis, redis_errors

# KEYS[1] - lock key
# ARGV[1] - the holder's token
# return 1 if the caller held the lock and released it, else 0
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] - counter key of the current window
# ARGV[1] - limit, ARGV[2] - window length in ms
# return 1 if the request is within the limit, else 0
_RATE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then return 0 end
return 1
"""

# KEYS[1] - the user's active-streams ZSET (member: stream token, score: expiry ms)
# ARGV[1] - now ms, ARGV[2] - cap, ARGV[3] - token, ARGV[4] - expiry ms
# Entries past their expiry belong to crashed processes and are dropped first.
# return 1 if the stream may start, else 0
_STREAM_ENTER = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) - tonumber(ARGV[1]))
return 1
"""


class Coordinator:
    def __init__(
        self,
        redis: AnyRedis,
        *,
        lock_ttl_ms: int,
        lock_wait_ms: int,
        requests_per_minute: int,
        streams_per_user: int,
    ) -> None:
        self.redis = redis
        self.lock_ttl_ms = lock_ttl_ms
        self.lock_wait_ms = lock_wait_ms
        self.requests_per_minute = requests_per_minute
        self.streams_per_user = streams_per_user
        self._release = redis.register_script(_RELEASE)
        self._rate = redis.register_script(_RATE)
        self._stream_enter = redis.register_script(_STREAM_ENTER)

    # --- one turn at a time per session ----------------------------------------------

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(12)

    async def acquire_turn(
        self,
        user_id: str,
        session_id: str,
        *,
        token: str | None = None,
        wait_ms: int | None = None,
    ) -> str:
        """Take the session's turn lock, waiting up to `wait_ms` (default lock_wait_ms);
        returns the token.

        A caller that passes its own `token` can still release the lock when this raises
        StoreUnavailable: the SET may have reached Redis before the connection failed.
        """
        key = keys.session_lock_key(user_id, session_id)
        token = token or self.new_token()
        wait_ms = self.lock_wait_ms if wait_ms is None else wait_ms
        deadline = time.monotonic() + wait_ms / 1000
        delay = 0.01
        while True:
            with redis_errors("acquire_turn"):
                taken = await self.redis.set(key, token, nx=True, px=self.lock_ttl_ms)
            if taken:
                return token
            if time.monotonic() + delay > deadline:
                raise SessionBusy()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def release_turn(self, user_id: str, session_id: str, token: str) -> None:
        with redis_errors("release_turn"):
            await self._release(keys=[keys.session_lock_key(user_id, session_id)], args=[token])

    # --- stop ------------------------------------------------------------------------

    async def request_stop(self, user_id: str, session_id: str) -> bool:
        """Ask whichever process streams this session's turn to stop it.

        Returns whether a turn was in progress.
        """
        with redis_errors("request_stop"):
            lock = await self.redis.get(keys.session_lock_key(user_id, session_id))
            if lock is None:
                return False
            await self.redis.set(keys.session_stop_key(user_id, session_id), lock, px=60_000)
        return True

    async def stops_requested(self, turns: Sequence[tuple[str, str, str]]) -> list[bool]:
        """For each (user id, session id, lock token): whether a stop names that turn.

        One round trip for all of them (a non-transactional pipeline, which Redis Cluster
        splits by node), so a process polls once however many turns it streams.
        """
        with redis_errors("stop_requested"):
            pipe = self.redis.pipeline(transaction=False)
            for user_id, session_id, _ in turns:
                pipe.get(keys.session_stop_key(user_id, session_id))
            values = await pipe.execute()
        return [value == token for (_, _, token), value in zip(turns, values, strict=True)]

    # --- limits ----------------------------------------------------------------------

    async def check_rate(self, user_id: str) -> None:
        if self.requests_per_minute <= 0:
            return
        window = int(time.time() // 60)
        with redis_errors("check_rate"):
            allowed = await self._rate(
                keys=[keys.user_rate_key(user_id, window)],
                args=[self.requests_per_minute, 61_000],
            )
        if not allowed:
            raise RateLimited(
                f"rate limit of {self.requests_per_minute} requests per minute reached",
                retry_after_s=max(1.0, (60 - time.time() % 60)),
            )

    async def enter_stream(self, user_id: str) -> str:
        token = secrets.token_hex(8)
        if self.streams_per_user <= 0:
            return token
        now = int(time.time() * 1000)
        with redis_errors("enter_stream"):
            ok = await self._stream_enter(
                keys=[keys.user_streams_key(user_id)],
                args=[now, self.streams_per_user, token, now + self.lock_ttl_ms],
            )
        if not ok:
            raise RateLimited(
                f"at most {self.streams_per_user} replies at a time per user",
                retry_after_s=1.0,
            )
        return token

    async def leave_stream(self, user_id: str, token: str) -> None:
        if self.streams_per_user > 0:
            with redis_errors("leave_stream"):
                await self.redis.zrem(keys.user_streams_key(user_id), token)
