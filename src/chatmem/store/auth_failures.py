"""The Redis `FailureCounter` of `chatmem.auth_throttle`: one count per client address,
shared by every process, expiring with its window."""

from __future__ import annotations

import redis.exceptions

from chatmem.errors import StoreUnavailable
from chatmem.store import keys
from chatmem.store.conversations import AnyRedis

# KEYS[1] - the address's failure counter
# ARGV[1] - window length in ms (the window starts at the first failure)
# return {failures in the window, ms left in it}
_ADD_FAILURE = """
local n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if n == 1 or left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {n, left}
"""


class RedisFailureCounter:
    def __init__(self, redis: AnyRedis) -> None:
        self._add_failure = redis.register_script(_ADD_FAILURE)

    async def add_failure(self, address: str, window_ms: int) -> tuple[int, int]:
        try:
            count, left_ms = await self._add_failure(
                keys=[keys.auth_failures_key(address)], args=[window_ms]
            )
        # Any failure, a full Redis included: the throttle then counts in the process.
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"redis unavailable during add_failure: {exc}") from exc
        return int(count), int(left_ms)
