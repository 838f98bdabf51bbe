"""Redis primitives that coordinate API processes: the per-session turn lock (taken by
the begin script, renewed here, released by the finish script — store/turns.py), the
stop signal, and the per-user rate limits.

They live in Redis, not in process memory, so any number of API processes behind one
Redis agree on them. Every key carries the user's hash tag. A Redis that cannot be
reached in time raises `StoreUnavailable` (client.redis_errors, as in every store
module), so that a turn can degrade instead of failing.

`tick()` is the one periodic round trip of a process: for all of its generations at
once it appends the coalesced deltas to their event streams, polls their stop flags and
renews the locks that are due (chat/inflight.py calls it).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from chatmem.errors import RateLimited
from chatmem.store import keys, turn_scripts
from chatmem.store.client import AnyRedis, redis_errors

# A stop request names the lock token it is meant for; it lasts this long.
STOP_TTL_MS = 60_000


# KEYS[1] - lock key, KEYS[2] - the session's generation event stream
# ARGV[1] - the holder's token, ARGV[2] - the stream's expiry once ended, ms
# A generation whose turn was taken by the outbox (Redis went away before its finish)
# has its event stream ended here, when its lock is released late: else the next turn
# would take it for the generation of a dead process and store a partial reply under
# the id the outbox's full reply will be replayed with.
# return 1 if the caller held the lock and released it, else 0
_RELEASE = """
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if #first == 1 then
  local f, token = first[1][2], nil
  for i = 1, #f, 2 do if f[i] == 'k' then token = f[i + 1] end end
  if token == ARGV[1] then
    local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1][2]
    local ended = false
    for i = 1, #last, 2 do if last[i] == 't' and last[i + 1] == 'e' then ended = true end end
    if not ended then
      redis.call('XADD', KEYS[2], '*', 't', 'e', 'p',
        '{"code":"store_unavailable","message":"the reply was kept in the outbox"}')
      redis.call('PEXPIRE', KEYS[2], ARGV[2])
    end
  end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(slots=True)
class TickItem:
    """One generation's share of a tick: what to append, whether to poll or renew."""

    user_id: str
    session_id: str
    token: str
    generation_id: str
    append: tuple[int, str] | None = None  # (offset, text) for its event stream
    poll: bool = False
    renew: bool = False


@dataclass(slots=True)
class TickResult:
    stop: bool = False
    lost_lock: bool = False


class Coordinator:
    def __init__(
        self,
        redis: AnyRedis,
        *,
        lock_ttl_ms: int,
        lock_wait_ms: int,
        turns_per_minute: int,
        writes_per_minute: int,
        streams_per_user: int,
    ) -> None:
        self.redis = redis
        self.lock_ttl_ms = lock_ttl_ms
        self.lock_wait_ms = lock_wait_ms
        self.turns_per_minute = turns_per_minute
        self.writes_per_minute = writes_per_minute
        self.streams_per_user = streams_per_user
        self._release = redis.register_script(_RELEASE)
        self._rate = redis.register_script(turn_scripts.SLIDING_RATE)

    # --- the turn lock outside a turn: a release deferred while Redis was away --------

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(12)

    async def release_turn(self, user_id: str, session_id: str, token: str) -> None:
        with redis_errors("release_turn"):
            await self._release(
                keys=[
                    keys.session_lock_key(user_id, session_id),
                    keys.session_events_key(user_id, session_id),
                ],
                args=[token, keys.EVENTS_TTL_AFTER_END_MS],
            )

    # --- stop ------------------------------------------------------------------------

    async def request_stop(self, user_id: str, session_id: str) -> bool:
        """Ask whichever process runs this session's generation to stop it.

        Returns whether a generation was running (its lock held).
        """
        with redis_errors("request_stop"):
            lock = await self.redis.get(keys.session_lock_key(user_id, session_id))
            if lock is None:
                return False
            await self.redis.set(keys.session_stop_key(user_id, session_id), lock, px=STOP_TTL_MS)
        return True

    # --- the process's periodic round trip -------------------------------------------

    async def tick(self, items: Sequence[TickItem]) -> list[TickResult]:
        """Stream appends, stop polls and lock renewals of many generations, in one
        non-transactional pipeline (Redis Cluster splits it by node)."""
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        slots: list[tuple[int, str]] = []
        for i, it in enumerate(items):
            if it.append is not None:
                offset, text = it.append
                pipe.xadd(
                    keys.session_events_key(it.user_id, it.session_id),
                    {"t": "d", "o": offset, "x": text},
                    maxlen=keys.EVENTS_MAXLEN,
                )
                slots.append((i, "append"))
            if it.renew:
                # EVAL, not EVALSHA: a cluster pipeline does not load scripts (NOSCRIPT),
                # and a renewal is rare (every lock_ttl / 3 per generation).
                pipe.eval(
                    turn_scripts.RENEW_TURN,
                    2,
                    keys.session_lock_key(it.user_id, it.session_id),
                    keys.user_streams_key(it.user_id),
                    it.token,
                    self.lock_ttl_ms,
                    now,
                    it.generation_id,
                )
                slots.append((i, "renew"))
            if it.poll:
                pipe.get(keys.session_stop_key(it.user_id, it.session_id))
                slots.append((i, "poll"))
        results = [TickResult() for _ in items]
        if not slots:
            return results
        with redis_errors("tick"):
            values = await pipe.execute()
        for (i, kind), value in zip(slots, values, strict=True):
            if kind == "renew" and not value:
                results[i].lost_lock = True
            elif kind == "poll" and value == items[i].token:
                results[i].stop = True
        return results

    # --- limits ----------------------------------------------------------------------

    async def check_write_rate(self, user_id: str) -> None:
        """Count one write other than a turn (creating a session, say) against the
        user's `writes_per_minute` over a sliding minute; RateLimited past it. Turns
        are counted by the begin script against `turns_per_minute`."""
        if self.writes_per_minute <= 0:
            return
        with redis_errors("check_rate"):
            wait_ms = await self._rate(
                keys=[keys.user_rate_key(user_id, "writes")],
                args=[
                    int(time.time() * 1000),
                    self.writes_per_minute,
                    keys.RATE_WINDOW_MS,
                    secrets.token_hex(6),
                ],
            )
        if wait_ms:
            raise RateLimited(
                f"rate limit of {self.writes_per_minute} writes per minute reached",
                retry_after_s=wait_ms / 1000,
            )
