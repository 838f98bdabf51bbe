"""The implicit conversations of the seed routes, mapped onto ordinary sessions.

Seeds 000/001 have one conversation per user and seed 004 one per (user, character);
neither has a "create" call, so their conversation is a session with a fixed id that
is created on first use. Those sessions start empty: the seeds' memories have no
greeting, and a greeting would show up in their message counts and rounds.

A turn on such a conversation first tries the session as it is (the hot path costs no
extra round trip); only a missing session is created, then the turn is retried once.
A request that names a TTL or window applies it to the session; one that does not
keeps the session's own (seed 000's bug was resetting the window on every request).
Seed 001's `POST /chat` takes any TTL of a second or more, as its document does (its own
expiry test uses 5 s); `PUT /ttl` and the native API keep the 60 s floor.

Seed 002's sessions are explicit, but its stream takes any session id: one the user does
not have yet is started (empty, with the turn's role) by the same path. A turn may name
its character (seed 002's `role`, per message: the session follows it) and seed 004's
context is up to 50 history messages within the token budget, not a window of rounds.
The routes (api/routes/compat/) keep only the seeds' HTTP shapes.
"""

from __future__ import annotations

from chatmem.chat.service import ChatService, Generation
from chatmem.errors import SessionNotFound, StoreUnavailable
from chatmem.models import SessionMeta
from chatmem.store.keys import MAX_TTL_S, MIN_TTL_S, WINDOW_MAX, WINDOW_MIN
from chatmem.store.rules import validate_ttl

__all__ = [
    "CHARACTER_SESSION_PREFIX",
    "DEFAULT_SESSION_ID",
    "MAX_TTL_S",
    "MIN_TTL_S",
    "SEED_CHAT_MIN_TTL_S",
    "SEED_COMPANION_HISTORY_MESSAGES",
    "WINDOW_MAX",
    "WINDOW_MIN",
    "character_session_id",
    "create_conversation",
    "prepare_conversation_turn",
    "validate_ttl",
]

# Seeds 000/001: the user's one conversation, with the default character.
DEFAULT_SESSION_ID = "default"
# Seed 004: one conversation per character; `char.<character id>` stays a valid id.
CHARACTER_SESSION_PREFIX = "char."
# Seed 001's `POST /chat`: its document takes any TTL (its expiry test: 5 s).
SEED_CHAT_MIN_TTL_S = 1
# Seed 004: `get_context_messages(max_messages=50)`, then its token budget.
SEED_COMPANION_HISTORY_MESSAGES = 50


def character_session_id(character_id: str) -> str:
    return CHARACTER_SESSION_PREFIX + character_id


async def create_conversation(
    service: ChatService,
    user_id: str,
    session_id: str,
    character_id: str,
    *,
    ttl_s: int | None = None,
    window_size: int | None = None,
    min_ttl_s: int = MIN_TTL_S,
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
        min_ttl_s=min_ttl_s,
        memory=False,  # the seeds' documents are window memories (SPEC §2b)
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
    min_ttl_s: int = MIN_TTL_S,
    stream: bool = False,
    turn_character: bool = False,
    history_messages: int | None = None,
    figures: bool = False,
) -> Generation:
    """Prepare a turn on an implicit conversation, creating its session if needed.

    `ttl_s` / `window_size` are what the request asked for (applied to the session, `ttl_s`
    at least `min_ttl_s`); `new_ttl_s` / `new_window_size` are the route's defaults for a
    session it creates, with `character_id`. `turn_character`: this turn talks to
    `character_id` even if the session talked to another (and the session follows);
    `history_messages`, `figures`: see `ChatService.prepare_turn`.
    """
    service.validate_content(content)
    if ttl_s is not None:
        validate_ttl(ttl_s, min_ttl_s)

    # What a session this turn creates starts with (also when its replay creates it).
    created_ttl_s = ttl_s if ttl_s is not None else new_ttl_s
    created_window = window_size if window_size is not None else new_window_size

    async def create() -> None:
        await create_conversation(
            service,
            user_id,
            session_id,
            character_id,
            ttl_s=created_ttl_s,
            window_size=created_window,
            min_ttl_s=min_ttl_s,
        )

    if ttl_s is not None or window_size is not None:
        try:
            await service.update_session(
                user_id, session_id, ttl_s=ttl_s, window_size=window_size, min_ttl_s=min_ttl_s
            )
        except SessionNotFound:
            await create()
        except StoreUnavailable:
            pass  # the turn itself degrades (outbox); its settings wait for Redis

    async def prepare() -> Generation:
        return await service.prepare_turn(
            user_id,
            session_id,
            content,
            stream=stream,
            character_id=character_id if turn_character else None,
            history_messages=history_messages,
            new_ttl_s=created_ttl_s,
            new_window_size=created_window,
            figures=figures,
        )

    try:
        return await prepare()
    except SessionNotFound:
        await create()
        return await prepare()
