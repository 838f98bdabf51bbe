"""What a turn sends the model: the validated message, its context limits, generation
parameters and the assembled context (pure assembly in context.py; this adds the
settings, the memory policy, the memories read and a cache).

The memory policy (SPEC §2b) of a session is its character's `memory` (summary,
memories), both off for the seed routes' implicit sessions (`SessionMeta.memory_on`) and
with `jobs.enabled` off. With memories on, the turn's begin script reads them in its own
round trip (`memories_read`): no character whose policy this process has seen without
memories pays for them; one it has not seen yet costs the read of its (usually empty)
memories inside the script.

`{{char}}` and `{{user}}` in the character's prompts are filled in here, in `assemble`
(characters/placeholders.py): `{{user}}` is the user's display name, read through the
profile store's per-process cache and only for a character whose prompts have `{{user}}`.

Generation parameters: the session's `temperature` over the character's over the
configured one (a request's own, on the OpenAI route, goes over all of them).
"""

from __future__ import annotations

import logging
import unicodedata

from chatmem.characters.card import greetings_of
from chatmem.characters.placeholders import USER_NAME, fill, mentions_user
from chatmem.config import Settings
from chatmem.context import AssembledContext, ContextLimits, MemoryBlock, assemble_context
from chatmem.errors import InvalidInput, StoreUnavailable
from chatmem.models import Character, MemoryPolicy, Message, SessionMeta
from chatmem.providers.base import ChatProvider, GenerationParams
from chatmem.store.keys import user_memories_prefix
from chatmem.store.memories import Memory, MemoryStore
from chatmem.store.profiles import ProfileStore
from chatmem.store.turns import MemoriesRead
from chatmem.tokens import count_tokens

log = logging.getLogger(__name__)
OFF = MemoryPolicy(summary=False, memories=False)

# System prompts whose token counts are cached (they are counted once, not per turn).
SYSTEM_TOKENS_CACHED = 1024


class Prompter:
    def __init__(
        self,
        settings: Settings,
        provider: ChatProvider,
        memories: MemoryStore | None = None,
        profiles: ProfileStore | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.memories = memories
        self.profiles = profiles
        self._system_tokens: dict[str, int] = {}
        # Characters seen with a policy without memories: their turns read none.
        self._without_memories: set[str] = set()

    def policy(self, meta: SessionMeta, character: Character) -> MemoryPolicy:
        """Off for the seed routes' sessions, and with background jobs off (nothing
        would keep summaries or memories: the context is the pure window)."""
        on = meta.memory_on and self.settings.jobs.enabled
        return character.memory if on else OFF

    def memories_read(self, user_id: str, character_id: str | None) -> MemoriesRead | None:
        """What a turn's begin reads of the memories (None: nothing, jobs are off)."""
        if self.memories is None or not self.settings.jobs.enabled:
            return None
        return MemoriesRead(
            user_memories_prefix(user_id),
            self.memories.ttl_ms,
            character_id or "",
            frozenset(self._without_memories),
        )

    def note(self, character: Character) -> None:
        """Remember whether `character`'s policy has memories (for `memories_read`)."""
        if character.memory.memories:
            self._without_memories.discard(character.id)
        elif len(self._without_memories) < SYSTEM_TOKENS_CACHED:
            self._without_memories.add(character.id)

    def validate_content(self, content: str) -> str:
        """The message as stored: trimmed, not empty (nor only invisible characters:
        zero-width spaces, NULs), within `max_message_chars`."""
        text = content.strip() if isinstance(content, str) else ""
        if not text or not any(unicodedata.category(ch)[0] not in "ZC" for ch in text):
            raise InvalidInput("message must not be empty", code="empty_message")
        limit = self.settings.memory.max_message_chars
        if len(text) > limit:
            raise InvalidInput(
                f"message is {len(text)} characters; the limit is {limit}",
                code="message_too_long",
            )
        return text

    def limits_for(
        self, meta: SessionMeta, character: Character, history_messages: int | None = None
    ) -> ContextLimits:
        """The session's limits; with `history_messages`, up to that many history messages
        instead of its window of rounds (the system prompt, the new message and
        post-history instructions come on top), still within the token budget."""
        mem = self.settings.memory
        window_size, max_messages = meta.window_size, mem.max_context_messages
        if history_messages is not None:
            window_size = (history_messages + 1) // 2
            fixed = 1 + bool(character.system_prompt) + bool(character.post_history_instructions)
            max_messages = history_messages + fixed
        return ContextLimits(
            window_size=window_size,
            max_context_messages=max_messages,
            max_context_tokens=mem.max_context_tokens,
            model_context_window=self.provider.info.context_window,
            reply_tokens=self.params(character).max_tokens or self.settings.llm.max_tokens,
        )

    def params(self, character: Character, meta: SessionMeta | None = None) -> GenerationParams:
        p = character.params
        llm = self.settings.llm
        temperature = meta.temperature if meta is not None else None
        if temperature is None:
            temperature = p.temperature if p.temperature is not None else llm.temperature
        return GenerationParams(
            model=p.model or llm.model,
            temperature=temperature,
            max_tokens=p.max_tokens or llm.max_tokens,
        )

    async def user_name(self, user_id: str, character: Character) -> str:
        """What `{{user}}` becomes in this character's prompts for this user."""
        prompts = (character.system_prompt, character.post_history_instructions)
        return await self._name_for(user_id, *prompts)

    async def greetings(self, user_id: str, character: Character) -> list[str]:
        """The character's greetings for a new session of this user, filled in."""
        texts = greetings_of(character)
        name = await self._name_for(user_id, *texts)
        return [fill(t, character.name, name) for t in texts]

    async def _name_for(self, user_id: str, *texts: str) -> str:
        """The user's display name if `texts` have `{{user}}` (no read otherwise: the
        cached profile), "User" without one or if Redis fails."""
        if self.profiles is None or not mentions_user(*texts):
            return USER_NAME
        try:
            return await self.profiles.cached_name(user_id) or USER_NAME
        except StoreUnavailable as exc:
            log.warning("display name unavailable for this turn: %s", exc)
            return USER_NAME

    async def prompt_tokens(self, user_id: str, character: Character) -> tuple[int, int]:
        """Tokens of the character's system prompt and post-history instructions as this
        user's turns send them (placeholders filled in)."""
        name = await self.user_name(user_id, character)
        return (
            self.count_cached(fill(character.system_prompt, character.name, name)),
            self.count_cached(fill(character.post_history_instructions, character.name, name)),
        )

    def count_cached(self, text: str) -> int:
        n = self._system_tokens.get(text)
        if n is None:
            if len(self._system_tokens) > SYSTEM_TOKENS_CACHED:
                self._system_tokens.clear()
            n = self._system_tokens[text] = count_tokens(text)
        return n

    async def assemble_turn(
        self,
        meta: SessionMeta,
        character: Character,
        history: list[Message],
        new_message: Message | None,
        limits: ContextLimits,
        memories: list[Memory] | None = None,
    ) -> AssembledContext:
        """The context with what the session's memory policy adds: its long-term
        memories (`memories` as the begin read them, else one read; skipped, logged, if
        Redis fails it) and its summary."""
        policy = self.policy(meta, character)
        if not policy.memories:
            memories = []
        elif memories is None and self.memories is not None:
            try:
                memories = await self.memories.read(meta.user_id, character.id)
            except StoreUnavailable as exc:
                log.warning("memories unavailable for this turn: %s", exc)
        return self.assemble(
            character,
            history,
            new_message,
            limits,
            extra=self.block(meta, policy, memories or []),
            user_name=await self.user_name(meta.user_id, character),
        )

    def block(self, meta: SessionMeta, policy: MemoryPolicy, memories: list[Memory]) -> MemoryBlock:
        mem = self.settings.memory
        summary = meta.summary if policy.summary else None
        return MemoryBlock(
            memories=[(m.text, m.tokens) for m in memories],
            memories_max_tokens=mem.memories_max_tokens,
            summary=summary.text if summary is not None else "",
            summary_tokens=summary.tokens if summary is not None else 0,
            summary_max_tokens=mem.summary_max_tokens,
            summary_through_seq=summary.through_seq(meta) if summary is not None else 0,
        )

    def assemble(
        self,
        character: Character,
        history: list[Message],
        new_message: Message | None,
        limits: ContextLimits,
        extra: MemoryBlock | None = None,
        user_name: str = USER_NAME,
    ) -> AssembledContext:
        system = fill(character.system_prompt, character.name, user_name)
        post_history = fill(character.post_history_instructions, character.name, user_name)
        return assemble_context(
            system_prompt=system,
            system_tokens=self.count_cached(system),
            history=history,
            new_message=new_message,
            limits=limits,
            post_history=post_history,
            post_history_tokens=self.count_cached(post_history),
            extra=extra,
        )
