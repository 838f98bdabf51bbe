"""The user's profile: their display name, the `{{user}}` of prompts and greetings.

One HASH per user (`keys.user_profile_key`, field `name`) under the user's hash tag, with
no TTL; erased with the user, in the same script (`ERASE_PROFILE_FIRST`, store/users.py).

Turns read it through a per-process cache (`cached_name`, `NAME_CACHE_TTL_S`) and only
when the character's prompt has `{{user}}` in it (chat/prompting.py): the turn's own
round trips stay what they were, and a chat with such a character costs one small read
every `NAME_CACHE_TTL_S` at most. A change made here clears this process's entry at
once; other processes see it within `NAME_CACHE_TTL_S`.
"""

from __future__ import annotations

import time
import unicodedata

from chatmem.errors import InvalidInput
from chatmem.store import keys
from chatmem.store.client import AnyRedis, redis_errors

NAME_FIELD = "name"
NAME_CACHE_TTL_S = 10.0
NAME_CACHE_MAX = 10_000

# A fragment run first by the erase-user script: KEYS[4] - the user's profile HASH.
ERASE_PROFILE_FIRST = """
redis.call('DEL', KEYS[4])
"""


# Control and format characters, surrogates, line and paragraph separators: a name is
# one line of visible text in a prompt.
_REFUSED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def validate_display_name(name: str) -> str:
    """The name as stored: trimmed, 1–64 characters, no control characters."""
    text = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(text) <= keys.DISPLAY_NAME_MAX_CHARS:
        raise InvalidInput(
            f"display_name must be 1-{keys.DISPLAY_NAME_MAX_CHARS} characters "
            "(spaces around it do not count)",
            code="invalid_display_name",
        )
    if any(unicodedata.category(c) in _REFUSED for c in text):
        raise InvalidInput(
            "display_name must not contain control or format characters",
            code="invalid_display_name",
        )
    return text


class ProfileStore:
    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self._names: dict[str, tuple[float, str | None]] = {}

    async def display_name(self, user_id: str) -> str | None:
        """The name the user set (None: none), read now."""
        with redis_errors("profile_read"):
            raw = await self.redis.hget(keys.user_profile_key(user_id), NAME_FIELD)
        name = None if raw is None else str(raw)
        self._remember(user_id, name)
        return name

    async def cached_name(self, user_id: str) -> str | None:
        """`display_name`, at most `NAME_CACHE_TTL_S` old."""
        hit = self._names.get(user_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return await self.display_name(user_id)

    async def set_display_name(self, user_id: str, name: str | None) -> str | None:
        """Set (validated, see `validate_display_name`) or, with None, clear the name."""
        key = keys.user_profile_key(user_id)
        value = None if name is None else validate_display_name(name)
        with redis_errors("profile_write"):
            if value is None:
                await self.redis.hdel(key, NAME_FIELD)
            else:
                await self.redis.hset(key, NAME_FIELD, value)
        self._remember(user_id, value)
        return value

    def forget(self, user_id: str) -> None:
        """Drop the cached name (the user was erased)."""
        self._names.pop(user_id, None)

    def _remember(self, user_id: str, name: str | None) -> None:
        if len(self._names) >= NAME_CACHE_MAX:
            self._names.clear()
        self._names[user_id] = (time.monotonic() + NAME_CACHE_TTL_S, name)
