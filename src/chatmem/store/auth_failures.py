"""The Redis `FailureCounter` of `chatmem.auth_throttle`: one count per client address,
shared by every process, expiring with its window."""

from __future__ import annotations

from chatmem.store import keys
from chatmem.store.client import AnyRedis, redis_errors

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
        # StoreUnavailable or StoreFull: the throttle then counts in the process.
        with redis_errors("add_failure"):
            count, left_ms = await self._add_failure(
                keys=[keys.auth_failures_key(address)], args=[window_ms]
            )
        return int(count), int(left_ms)
