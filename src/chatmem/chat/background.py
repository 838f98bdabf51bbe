"""Calling the model for background work (summaries, memory extraction, titles): the
whole reply as text, with what it cost in tokens, counted per job kind."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar

from chatmem.characters import CharacterRegistry
from chatmem.chat.prompting import Prompter
from chatmem.memory_prompts import PROMPTS_VERSION
from chatmem.metrics import Metrics
from chatmem.models import Character
from chatmem.providers.base import ChatProvider, GenerationParams
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.summaries import SummaryStore
from chatmem.tokens import count_tokens

log = logging.getLogger(__name__)


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


async def ask_model(
    prompter: Prompter,
    metrics: Metrics,
    kind: str,
    prompt: Sequence[Mapping[str, str]],
    character: Character,
    *,
    temperature: float,
    max_tokens: int,
) -> str:
    """The reply of the background model (`memory.background_model`, else the
    character's chat model) to `prompt`; its tokens are counted under the job `kind`."""
    model = prompter.settings.memory.background_model or prompter.params(character).model
    params = GenerationParams(model=model, temperature=temperature, max_tokens=max_tokens)
    text, spent = await complete_text(prompter.provider, prompt, params)
    metrics.background_tokens.labels(kind).inc(spent)
    return text


def drop_output(metrics: Metrics, kind: str, session_id: str, what: str, n: int = 1) -> None:
    """Count `n` pieces of the model's output to a `kind` job dropped as invalid, and log
    it with the prompts' version: which wording the model failed."""
    metrics.memory_invalid.labels(kind).inc(n)
    log.warning(
        "%s job, session %s: %s, dropped (prompts v%s)", kind, session_id, what, PROMPTS_VERSION
    )


class SessionJob:
    """The handler of a background job that asks the model about one session and writes
    the answer to its meta (the summary and the title jobs)."""

    kind: ClassVar[str]

    def __init__(
        self,
        store: RedisMemoryStore,
        summaries: SummaryStore,
        characters: CharacterRegistry,
        prompter: Prompter,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.summaries = summaries
        self.characters = characters
        self.prompter = prompter
        self.metrics = metrics

    async def ask(
        self, prompt: Sequence[Mapping[str, str]], character: Character, *, max_tokens: int
    ) -> str:
        return await ask_model(
            self.prompter,
            self.metrics,
            self.kind,
            prompt,
            character,
            temperature=0.2,
            max_tokens=max_tokens,
        )
