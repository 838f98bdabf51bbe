"""A chat's title until a better one exists: its first user message, made short.

A new session is titled with its character's name; its first user message replaces
that placeholder (22 chats titled "Luna" tell a user nothing), and after the first
exchange a background job asks the model for a short title (`TitleWriter`). A title the
user gave is never replaced.
"""

from __future__ import annotations

import logging
import re

from chatmem.characters import CharacterRegistry
from chatmem.chat.background import complete_text
from chatmem.chat.prompting import Prompter
from chatmem.errors import SessionNotFound
from chatmem.memory_prompts import title_prompt
from chatmem.metrics import Metrics
from chatmem.models import Role
from chatmem.providers.base import GenerationParams
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.jobs import Job
from chatmem.store.summaries import SummaryStore

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 60
# Markdown's line openers (heading, quote, list item) and emphasis say nothing in a title.
_LINE_OPENER = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+]\s+|\d+[.)]\s+)+")


def title_from_message(content: str) -> str:
    """The first non-blank line of `content`, one-spaced, cut at a word to at most
    MAX_TITLE_CHARS characters (with an ellipsis when cut); "" if there is no text."""
    line = next((ln for ln in content.splitlines() if ln.strip()), "")
    text = " ".join(_LINE_OPENER.sub("", line).replace("*", "").replace("`", "").split())
    if len(text) <= MAX_TITLE_CHARS:
        return text
    cut = text[: MAX_TITLE_CHARS - 1]
    space = cut.rfind(" ")
    if space >= MAX_TITLE_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def is_placeholder(title: str, character_name: str, message_count: int) -> bool:
    """Whether a session's title is the creation-time placeholder and the turn just
    begun carries its first user message (the greeting, if any, and this message)."""
    return title == character_name and message_count <= 2


TITLE_JOB = "title"


class TitleWriter:
    """The `title` job (SPEC §4 "auto titles"): after a session's first exchange the
    model names the chat. Until then its first user message is its title; a title the
    user set (neither the character's name nor the first message's) is never replaced,
    also when the user renames the chat while the model is writing (compare and swap)."""

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

    async def run(self, job: Job) -> None:
        uid, sid = job.args["user_id"], job.args["session_id"]
        try:
            snap = await self.store.read(uid, sid, last=4)
        except SessionNotFound:
            return
        meta = snap.meta
        character = await self.characters.get(meta.character_id)
        first = next((m for m in snap.messages if m.role == Role.USER), None)
        if first is None or meta.title not in (character.name, title_from_message(first.content)):
            return  # the user named it
        exchange = [m for m in snap.messages if m.role in (Role.USER, Role.ASSISTANT)][:2]
        mem = self.prompter.settings.memory
        params = GenerationParams(
            model=mem.background_model or self.prompter.params(character).model,
            temperature=0.2,
            max_tokens=24,
        )
        prompt = title_prompt(exchange, character=character.name)
        text, spent = await complete_text(self.prompter.provider, prompt, params)
        self.metrics.background_tokens.labels(TITLE_JOB).inc(spent)
        title = title_from_message(text.strip().strip("\"'“”«»").rstrip("."))
        if not title:
            self.metrics.memory_invalid.labels(TITLE_JOB).inc()
            log.warning("session %s: the model gave no title; the first message stays", sid)
            return
        await self.summaries.set_title_if(uid, sid, meta.title, title)
