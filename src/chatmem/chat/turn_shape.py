"""What a seed route asks of one turn beyond a native one (SPEC §4 "Seed-compatible API").

- `character_id`: the turn talks to that character (its system prompt and parameters)
  and the session follows it from then on — seed 002's page picks the role per message.
- `history_messages`: the context holds up to that many history messages, within the
  token budget, instead of the session's window of rounds — seed 004's context.
- `new_ttl_s`, `new_window_size`: what the route gives a conversation it creates (seed
  `/chat`: 1,800 s and 5), kept with a degraded turn so that its replay creates the
  session with them too.

And what the OpenAI route (chat/reconcile.py) asks of a turn it planned from a read:
- `before`: the client's messages appended under the turn's lock, in its begin script,
  ahead of its user message (tool results), so no other turn comes in between.
- `expect_head`: the id of the newest stored message the plan was made from ('' none);
  the begin refuses (409 `history_changed`, nothing written) if it is not any more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from chatmem.errors import SessionNotFound, StoreUnavailable
from chatmem.models import Character, Message, SessionMeta
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.keys import WINDOW_MAX

log = logging.getLogger(__name__)

# A turn reads enough history for the widest window, plus the new message.
TURN_READ_MESSAGES = 2 * WINDOW_MAX + 1


@dataclass(frozen=True, slots=True)
class TurnShape:
    character_id: str | None = None
    history_messages: int | None = None
    new_ttl_s: int | None = None
    new_window_size: int | None = None
    before: tuple[Message, ...] = ()
    expect_head: str | None = None
    # Seed `POST /chat`: the session's figures after the turn (its stats), returned by
    # the finish round trip (`TurnDone.figures`).
    figures: bool = False

    @property
    def read_messages(self) -> int:
        """Messages the turn's begin reads back: the history it may use and the new one."""
        return max(TURN_READ_MESSAGES, (self.history_messages or 0) + 1)


@dataclass(slots=True)
class TurnRequest:
    """One turn on its way in (chat/turns.py, chat/degraded.py): whose, its user message
    (id '' for a revision), its reply's id, and the Generation's fields it starts with."""

    user_id: str
    session_id: str
    user_msg: Message
    reply_id: str
    idempotent: bool
    opts: dict[str, Any]
    shape: TurnShape

    @property
    def key(self) -> tuple[str, str]:
        return (self.user_id, self.session_id)


async def follow_character(
    store: RedisMemoryStore, meta: SessionMeta, character: Character
) -> None:
    """Make the session talk to `character` from now on. Called under the turn's lock, so
    no other turn of the session reads the old one meanwhile; the turn goes on with its
    character even if the switch cannot be stored."""
    if character.id == meta.character_id:
        return
    try:
        await store.update_session(meta.user_id, meta.session_id, character_id=character.id)
        meta.character_id = character.id
    except (StoreUnavailable, SessionNotFound) as exc:
        log.warning("session %s keeps its character: %s", meta.session_id, exc)
