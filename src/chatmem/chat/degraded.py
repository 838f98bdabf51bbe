"""Degraded mode: a turn without Redis, and the outbox it writes to (SPEC §7).

When Redis cannot be reached, a turn degrades instead of failing: the model gets the
character's system prompt and the new message only, the reply says `memory: "degraded"`,
and the turn's messages go to the local outbox (fsynced before the model is called, and
before the reply is acknowledged), which the replayer (durability/replay.py) stores in
Redis once it is back. `DegradedTurns` is that path of the turn service (chat/turns.py):
the degraded generation, the outbox writes (also of a turn whose writes no replica has
confirmed yet), the session's pending records stored first when Redis answers again,
and the sessions' characters it can still tell.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from chatmem.characters import CharacterRegistry
from chatmem.chat.generation import Generation, GenerationHost
from chatmem.chat.prompting import Prompter
from chatmem.chat.turn_shape import TurnRequest
from chatmem.config import Settings
from chatmem.durability.outbox import Outbox
from chatmem.durability.replay import OutboxReplayer
from chatmem.errors import StoreUnavailable
from chatmem.metrics import Metrics
from chatmem.models import Character, Message, SessionMeta, Usage

# Sessions whose character a degraded turn can still tell (else: the default character).
KNOWN_CHARACTERS_MAX = 10_000

SessionKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TurnParts:
    """What both paths of a turn work with (chat/turns.py and the degraded one here)."""

    settings: Settings
    characters: CharacterRegistry
    prompter: Prompter
    metrics: Metrics
    outbox: Outbox
    replayer: OutboxReplayer


class DegradedTurns:
    def __init__(self, parts: TurnParts) -> None:
        self.settings, self.characters = parts.settings, parts.characters
        self.prompter, self.metrics = parts.prompter, parts.metrics
        self.outbox, self.replayer = parts.outbox, parts.replayer
        self._known_characters: OrderedDict[SessionKey, Character] = OrderedDict()

    # --- the sessions' characters --------------------------------------------------------

    def remember_character(self, key: SessionKey, character: Character) -> None:
        known = self._known_characters
        known[key] = character
        known.move_to_end(key)
        if len(known) > KNOWN_CHARACTERS_MAX:
            known.popitem(last=False)

    async def character_of(self, key: SessionKey, character_id: str | None = None) -> Character:
        """The turn's character: the one it names, else the session's last known one,
        else the default (built in, so no Redis read)."""
        if character_id is not None:
            return await self.characters.get(character_id)
        character = self._known_characters.get(key)
        if character is None:
            character = await self.characters.get(self.characters.default_id)
        return character

    # --- a turn without Redis -------------------------------------------------------------

    async def turn(self, host: GenerationHost, req: TurnRequest) -> Generation:
        """A turn without Redis: no history, no lock, its messages kept in the outbox."""
        character = await self.character_of(req.key, req.shape.character_id)
        window = req.shape.new_window_size or self.settings.memory.window_size
        meta = SessionMeta(req.session_id, req.user_id, character.id, window_size=window)
        limits = self.prompter.limits_for(meta, character)
        gen = Generation(
            host=host,
            user_id=req.user_id,
            meta=meta,
            character=character,
            user_message=req.user_msg,
            context=self.prompter.assemble(character, [], req.user_msg, limits),
            params=self.prompter.params(character),
            lock_token="",
            reply_id=req.reply_id,
            generation_id=req.reply_id,
            degraded=True,
            **req.opts,
        )
        # Durable before the model is called, as in Redis (SPEC §3.3).
        await self.keep(gen, [req.user_msg], None)
        self.metrics.degradations.labels("store_unavailable").inc()
        return gen

    async def keep(
        self,
        gen: Generation,
        messages: Sequence[Message],
        usage: Usage | None,
        *,
        applied: bool = False,
    ) -> None:
        """Write the turn's messages to the outbox (StoreUnavailable if the disk refuses),
        with its ordinal and its route's settings; `applied`: they are in Redis already,
        kept until a replica confirms them."""
        try:
            await self.outbox.add(
                gen.user_id,
                gen.session_id,
                gen.character.id,
                messages,
                usage,
                ordinal=gen.ordinal,
                ttl_s=gen.shape.new_ttl_s,
                window_size=gen.shape.new_window_size,
                lock_token=gen.lock_token,
                applied=applied,
            )
        except OSError as exc:
            raise StoreUnavailable(
                f"redis is unavailable and the local outbox cannot be written: {exc}"
            ) from exc

    async def keep_turn(
        self, gen: Generation, reply: Message | None, usage: Usage, *, in_redis: bool
    ) -> None:
        """Keep a finished turn that Redis does not hold for sure. `in_redis`: stored on
        the master, unconfirmed by a replica (kept until one confirms it: a failover
        that loses it has it stored again, where it began). Else its finish failed: the
        reply is kept, with its user message if that went to Redis (a failover may lose
        it; stored again, it is skipped where it is not lost)."""
        ids = [m for m in (gen.user_message, reply) if m is not None and m.msg_id]
        if in_redis:
            await self.keep(gen, ids, usage, applied=True)
        elif reply is not None:
            await self.keep(gen, [reply] if gen.degraded else ids, usage)

    # --- back to Redis -------------------------------------------------------------------

    async def replay_first(
        self, user_id: str, session_id: str, *, applied_too: bool = False
    ) -> None:
        """The session's earlier messages are still in the outbox: they are stored first,
        each where its turn began, so that this turn's context has them. `applied_too`:
        also those stored already (a failover may have lost them)."""
        await self.replayer.replay_session(user_id, session_id, applied_too=applied_too)
