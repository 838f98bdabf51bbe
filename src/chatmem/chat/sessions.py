"""Sessions, history, users and the admin's figures: the part of ChatService that is not
a turn (service.py has the turns; ChatService is both, the one facade of routes and CLI).

Each method is one call (or a few) to the memory store, with its Redis errors already
mapped (store/client.py): a route gets NotFound, InvalidInput, StoreUnavailable or
StoreFull, never a redis-py error.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chatmem.characters import USER_NAME, CharacterRegistry
from chatmem.config import Settings
from chatmem.durability.replay import OutboxReplayer
from chatmem.metrics import Metrics
from chatmem.models import (
    UNCHANGED,
    SessionMeta,
    SessionSnapshot,
    SessionState,
    Unchanged,
    UserTotals,
)
from chatmem.providers.base import ChatProvider
from chatmem.store.conversations import MIN_TTL_S, RedisMemoryStore
from chatmem.store.locks import Coordinator
from chatmem.store.profiles import ProfileStore

# Per-user reads in flight at once when counting every user's messages (well under the
# connection pool).
STATS_BATCH = 16


class SessionMethods:
    """Mixed into ChatService, which sets these attributes."""

    settings: Settings
    store: RedisMemoryStore
    provider: ChatProvider
    characters: CharacterRegistry
    metrics: Metrics
    replayer: OutboxReplayer
    profiles: ProfileStore
    coordinator: Coordinator

    # --- sessions --------------------------------------------------------------------

    async def list_sessions(self, user_id: str, *, limit: int = 100) -> list[SessionMeta]:
        """The user's live sessions, most recently active first, with previews."""
        return await self.store.list_sessions(user_id, limit=limit)

    async def get_session(self, user_id: str, session_id: str) -> SessionMeta:
        return await self.store.get_meta(user_id, session_id)

    async def update_session(
        self,
        user_id: str,
        session_id: str,
        *,
        title: str | None = None,
        ttl_s: int | None = None,
        window_size: int | None = None,
        state: SessionState | None = None,
        min_ttl_s: int = MIN_TTL_S,
        temperature: float | Unchanged | None = UNCHANGED,
    ) -> SessionMeta:
        """`min_ttl_s`: the floor of `ttl_s` (60 s but on seed 001's `POST /chat`);
        `temperature` None: back to the character's (or the server's)."""
        return await self.store.update_session(
            user_id,
            session_id,
            title=title,
            ttl_s=ttl_s,
            window_size=window_size,
            state=state,
            min_ttl_s=min_ttl_s,
            temperature=temperature,
        )

    async def delete_session(self, user_id: str, session_id: str) -> None:
        await self.store.delete_session(user_id, session_id)

    async def clear_session(self, user_id: str, session_id: str) -> None:
        """Remove the session's messages; the session, its usage and seqs stay."""
        await self.store.clear(user_id, session_id)

    async def read_history(
        self, user_id: str, session_id: str, *, last: int | None = None, before_seq: int = 0
    ) -> SessionSnapshot:
        """Meta and the newest `last` messages (default: all that are stored), oldest
        first; `before_seq` pages back (those older than that seq)."""
        last = self.store.max_messages if last is None else last
        return await self.store.read(user_id, session_id, last=last, before_seq=before_seq)

    # --- users -----------------------------------------------------------------------

    async def user_totals(self, user_id: str) -> UserTotals:
        return await self.store.user_totals(user_id)

    async def delete_user(self, user_id: str) -> int:
        """Erase all of a user's data; how many sessions were deleted."""
        n = await self.store.delete_user(user_id)
        self.profiles.forget(user_id)
        return n

    async def display_name(self, user_id: str) -> str:
        """The user's name for `{{user}}` ("User" until they set one)."""
        return await self.profiles.display_name(user_id) or USER_NAME

    async def set_display_name(self, user_id: str, name: str | None) -> str:
        """Set the name (1-64 characters, trimmed) or, with None, go back to "User";
        a write of the user's `writes_per_minute`, as creating a session is."""
        await self.coordinator.check_write_rate(user_id)
        return await self.profiles.set_display_name(user_id, name) or USER_NAME

    async def list_users(self, *, limit: int = 1000, offset: int = 0) -> list[str]:
        return await self.store.list_users(limit=limit, offset=offset)

    async def count_users(self) -> int:
        return await self.store.count_users()

    # --- figures and health ----------------------------------------------------------

    async def count_messages(self, users: list[str]) -> int:
        """Stored messages of these users, all sessions (the users' session indexes)."""
        total = 0
        for start in range(0, len(users), STATS_BATCH):
            batch = users[start : start + STATS_BATCH]
            listed = await asyncio.gather(*(self.store.list_sessions(u) for u in batch))
            total += sum(m.stored_messages for metas in listed for m in metas)
        return total

    async def redis_info(self) -> dict[str, Any]:
        """`redis_version`, `used_memory_human` and `connected_clients` from Redis INFO."""
        return await self.store.server_info()

    async def stats(self) -> dict[str, Any]:
        """The admin's figures: users, Redis INFO, the provider, replies being streamed."""
        info = await self.store.server_info()
        return {
            "total_users": await self.store.count_users(),
            **info,
            "provider": self.provider.info.name,
            "active_streams": self.metrics.active_streams_now(),
        }

    async def health(self) -> tuple[bool, int]:
        """(Redis answers, users in the index): never raises, for liveness checks."""
        try:
            return await self.store.ping(), await self.store.count_users()
        except Exception:
            return False, 0

    async def readiness(self) -> dict[str, bool | int]:
        """Whether Redis answers, and what the outbox holds (OutboxReplayer.readiness)."""
        return await self.replayer.readiness()
