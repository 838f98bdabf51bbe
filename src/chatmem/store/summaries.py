"""A session's rolling summary in its meta HASH (SPEC §2b; fields: memory_scripts.py).

Stored with the session, so it shares its TTL and its reads: the turn's begin and the
context read get it with the meta at no extra round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatmem.store import keys, memory_scripts
from chatmem.store.conversations import RedisMemoryStore


@dataclass(frozen=True, slots=True)
class Stored:
    outcome: str  # "stored", "gone" (session), "raced" (another summary), "moved" (message)
    covers: int = 0
    lost: int = 0  # messages trimmed uncovered since the last store (to report)


class SummaryStore:
    def __init__(self, store: RedisMemoryStore) -> None:
        self.store = store
        self._put = store.redis.register_script(memory_scripts.STORE_SUMMARY)
        self._title = store.redis.register_script(memory_scripts.SET_TITLE_IF)

    async def set_title_if(self, user_id: str, session_id: str, old: str, new: str) -> bool:
        """Set a generated title unless the title is no longer `old` (the user's)."""
        ks = [keys.session_meta_key(user_id, session_id)]
        return bool(await self.store.run_write("generated_title", self._title, ks, [old, new]))

    async def put(
        self,
        user_id: str,
        session_id: str,
        *,
        version: int,
        through_id: str,
        text: str,
        tokens: int,
        folded: int,
        rebuild: bool,
    ) -> Stored:
        """Store a summary made from `version`, covering up to message `through_id`."""
        ks = keys.session_keys(user_id, session_id)[:2]
        keys.validate_id(through_id, "message id")
        args = [version, through_id, text, tokens, folded, "1" if rebuild else "0"]
        res = await self.store.run_write("store_summary", self._put, ks, args)
        if res is None:
            return Stored("gone")
        if res[0] == -1:
            return Stored("raced")
        if res[0] == -2:
            return Stored("moved")
        return Stored("stored", int(res[1]), int(res[2]))
