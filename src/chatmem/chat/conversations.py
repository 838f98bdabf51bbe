"""The implicit conversations of the seed routes, mapped onto ordinary sessions.

Seeds 000/001 have one conversation per user and seed 004 one per (user, character);
neither has a "create" call, so their conversation is a session with a fixed id that
is created on first use. Those sessions start empty: the seeds' memories have no
greeting, and a greeting would show up in their message counts and rounds.

A turn on such a conversation first tries the session as it is (the hot path costs no
extra round trip); only a missing session is created, then the turn is retried once.
A request that names a TTL or window applies it to the session; one that does not
keeps the session's own (seed 000's bug was resetting the window on every request).
The routes (api/routes/compat/) keep only the seeds' HTTP shapes.
"""

from __future__ import annotations

from chatmem.chat.service import ChatService, Generation
from chatmem.errors import InvalidInput, SessionNotFound, StoreUnavailable
from chatmem.models import SessionMeta
from chatmem.store.keys import WINDOW_MAX
from chatmem.store.rules import validate_ttl

__all__ = [
    "CHARACTER_SESSION_PREFIX",
    "DEFAULT_SESSION_ID",
    "MAX_TTL_S",
    "WINDOW_MAX",
    "character_session_id",
    "check_ttl",
    "create_conversation",
    "prepare_conversation_turn",
]

# Seeds 000/001: the user's one conversation, with the default character.
DEFAULT_SESSION_ID = "default"
# Seed 004: one conversation per character; `char.<character id>` stays a valid id.
CHARACTER_SESSION_PREFIX = "char."
# Beyond a year a TTL is a mistake, and Redis refuses expiries past 64-bit milliseconds.
MAX_TTL_S = 365 * 24 * 3600


def character_session_id(character_id: str) -> str:
    return CHARACTER_SESSION_PREFIX + character_id


def check_ttl(ttl_s: int) -> int:
    validate_ttl(ttl_s)
    if ttl_s > MAX_TTL_S:
        raise InvalidInput(f"ttl must be at most {MAX_TTL_S} seconds", code="invalid_ttl")
    return ttl_s


async def create_conversation(
    service: ChatService,
    user_id: str,
    session_id: str,
    character_id: str,
    *,
    ttl_s: int | None = None,
    window_size: int | None = None,
) -> SessionMeta:
    """Create the conversation's session without a greeting (kept if it already exists)."""
    character = await service.characters.get(character_id)
    return await service.store.create_session(
        user_id,
        character.id,
        session_id=session_id,
        title=character.name,
        ttl_s=ttl_s,
        window_size=window_size,
        ensure=True,
    )


async def prepare_conversation_turn(
    service: ChatService,
    user_id: str,
    session_id: str,
    character_id: str,
    content: str,
    *,
    ttl_s: int | None = None,
    window_size: int | None = None,
    new_ttl_s: int | None = None,
    new_window_size: int | None = None,
    stream: bool = False,
) -> Generation:
    """Prepare a turn on an implicit conversation, creating its session if needed.

    `ttl_s` / `window_size` are what the request asked for (applied to the session);
    `new_ttl_s` / `new_window_size` are the route's defaults for a session it creates.
    """
    service.validate_content(content)
    if ttl_s is not None:
        check_ttl(ttl_s)

    async def create() -> None:
        await create_conversation(
            service,
            user_id,
            session_id,
            character_id,
            ttl_s=ttl_s if ttl_s is not None else new_ttl_s,
            window_size=window_size if window_size is not None else new_window_size,
        )

    if ttl_s is not None or window_size is not None:
        try:
            await service.update_session(user_id, session_id, ttl_s=ttl_s, window_size=window_size)
        except SessionNotFound:
            await create()
        except StoreUnavailable:
            pass  # the turn itself degrades (outbox); its settings wait for Redis
    try:
        return await service.prepare_turn(user_id, session_id, content, stream=stream)
    except SessionNotFound:
        await create()
        return await service.prepare_turn(user_id, session_id, content, stream=stream)
