"""What a turn sends the model: the validated message, its context limits, generation
parameters and the assembled context (pure assembly in context.py; this adds the
settings and a cache)."""

from __future__ import annotations

from chatmem.config import Settings
from chatmem.context import AssembledContext, ContextLimits, assemble_context
from chatmem.errors import InvalidInput
from chatmem.models import Character, Message, SessionMeta
from chatmem.providers.base import ChatProvider, GenerationParams
from chatmem.tokens import count_tokens

# System prompts whose token counts are cached (they are counted once, not per turn).
SYSTEM_TOKENS_CACHED = 1024


class Prompter:
    def __init__(self, settings: Settings, provider: ChatProvider) -> None:
        self.settings = settings
        self.provider = provider
        self._system_tokens: dict[str, int] = {}

    def validate_content(self, content: str) -> str:
        """The message as stored: trimmed, not empty, within `max_message_chars`."""
        text = content.strip() if isinstance(content, str) else ""
        if not text:
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

    def params(self, character: Character) -> GenerationParams:
        p = character.params
        llm = self.settings.llm
        return GenerationParams(
            model=p.model or llm.model,
            temperature=p.temperature if p.temperature is not None else llm.temperature,
            max_tokens=p.max_tokens or llm.max_tokens,
        )

    def count_cached(self, text: str) -> int:
        n = self._system_tokens.get(text)
        if n is None:
            if len(self._system_tokens) > SYSTEM_TOKENS_CACHED:
                self._system_tokens.clear()
            n = self._system_tokens[text] = count_tokens(text)
        return n

    def assemble(
        self,
        character: Character,
        history: list[Message],
        new_message: Message | None,
        limits: ContextLimits,
    ) -> AssembledContext:
        return assemble_context(
            system_prompt=character.system_prompt,
            system_tokens=self.count_cached(character.system_prompt),
            history=history,
            new_message=new_message,
            limits=limits,
            post_history=character.post_history_instructions,
            post_history_tokens=self.count_cached(character.post_history_instructions),
        )
