"""CharacterStore: the characters created through the API, kept in Redis.

One HASH (`keys.characters_key()`) maps a character id to its JSON, so that every API
process sees the same ones. The registry (characters/registry.py) merges them with the
built-in and directory characters and decides what may be stored; this module only
reads and writes the HASH.
"""

from __future__ import annotations

from typing import Any

from chatmem.store import keys
from chatmem.store.client import AnyRedis, redis_errors

# KEYS[1] - the characters HASH
# ARGV[1] - character id
# ARGV[2] - the character's new JSON
# return 1 if it was replaced, 0 if there is no such character (nothing written)
REPLACE_CHARACTER = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CharacterStore:
    def __init__(self, redis: AnyRedis) -> None:
        self._redis = redis
        self._key = keys.characters_key()
        self._replace = redis.register_script(REPLACE_CHARACTER)

    async def get(self, character_id: str) -> str | None:
        """The stored JSON of the character, or None."""
        with redis_errors("character get"):
            raw = await self._redis.hget(self._key, character_id)
        return None if raw is None else _text(raw)

    async def add(self, character_id: str, doc: str) -> bool:
        """Store a new character; False (nothing written) if the id is taken."""
        with redis_errors("character create"):
            return bool(await self._redis.hsetnx(self._key, character_id, doc))

    async def replace(self, character_id: str, doc: str) -> bool:
        """Replace a stored character; False (nothing written) if there is none."""
        with redis_errors("character update"):
            return bool(await self._replace(keys=[self._key], args=[character_id, doc]))

    async def delete(self, character_id: str) -> bool:
        with redis_errors("character delete"):
            return bool(await self._redis.hdel(self._key, character_id))

    async def all(self) -> dict[str, str]:
        """Every stored character: id → JSON."""
        with redis_errors("character list"):
            raw: dict[Any, Any] = await self._redis.hgetall(self._key)
        return {_text(k): _text(v) for k, v in raw.items()}
