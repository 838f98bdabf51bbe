"""Calling the model for background work (summaries, memory extraction, titles): the
whole reply as text, with what it cost in tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chatmem.providers.base import ChatProvider, GenerationParams
from chatmem.tokens import count_tokens


async def complete_text(
    provider: ChatProvider, messages: Sequence[Mapping[str, str]], params: GenerationParams
) -> tuple[str, int]:
    """The model's reply to `messages`, stripped, and the tokens it cost (prompt and
    completion, as the provider reports them, else counted)."""
    parts: list[str] = []
    reported = 0
    async for chunk in provider.stream(messages, params):
        parts.append(chunk.text)
        if chunk.usage is not None:
            reported = chunk.usage.prompt_tokens + chunk.usage.completion_tokens
    text = "".join(parts).strip()
    if not reported:
        reported = sum(count_tokens(m["content"]) for m in messages) + count_tokens(text)
    return text, reported
