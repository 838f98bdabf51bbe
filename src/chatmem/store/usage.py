"""Usage spent outside any session (the OpenAI route without a session, SPEC §4): added
to the user's totals, in one script."""

from __future__ import annotations

import time
from typing import Any

from chatmem.models import Usage
from chatmem.store import keys
from chatmem.store.client import redis_errors
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.quota_lua import _EXTEND

# KEYS[1] - the user's totals HASH
# ARGV[1] - prompt tokens, ARGV[2] - completion tokens, ARGV[3] - cost
# ARGV[4] - the totals' expiry, ms (extended, never shortened: sessions may outlive it)
# return 1
ADD_USAGE = (
    _EXTEND
    + """
redis.call('HINCRBY', KEYS[1], 'ptok', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'ctok', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[3])
extend(KEYS[1], tonumber(ARGV[4]))
return 1
"""
)


class UsageLedger:
    def __init__(self, store: RedisMemoryStore) -> None:
        self.store = store
        self._add = store.redis.register_script(ADD_USAGE)

    async def add(self, user_id: str, usage: Usage) -> None:
        ks = [keys.user_totals_key(user_id)]
        args: list[Any] = [usage.prompt_tokens, usage.completion_tokens, repr(usage.cost_usd)]
        args.append(self.store.default_ttl_s * 1000)
        start = time.perf_counter()
        try:
            with redis_errors("add_usage"):
                await self._add(keys=ks, args=args)
        finally:
            self.store.observe("add_usage", time.perf_counter() - start)
