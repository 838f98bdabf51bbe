"""A chat's title until a better one exists: its first user message, made short.

A new session is titled with its character's name; its first user message replaces
that placeholder (22 chats titled "Luna" tell a user nothing), and after the first
exchange a background job asks the model for a short title (`TitleWriter`). A title the
user gave is never replaced.
"""

from __future__ import annotations

import re
import unicodedata

from chatmem.chat.background import SessionJob, drop_output
from chatmem.errors import SessionNotFound
from chatmem.memory_prompts import title_prompt
from chatmem.models import Role
from chatmem.store.jobs import Job
from chatmem.store.rules import without_title_controls

MAX_TITLE_CHARS = 60
MAX_TITLE_WORDS = 8
# Markdown's line openers (heading, quote, list item) and emphasis say nothing in a title.
_LINE_OPENER = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+]\s+|\d+[.)]\s+)+")
_QUOTES = "\"'“”‘’«»„`"
# Who speaks, as small models write it before their answer ("Luna: …", "Title: …").
_SPEAKERS = ("title", "chat title", "chat", "assistant", "ai", "bot", "answer", "user")
# Titles that name no chat (the 135M model echoes its prompt's "Chat:" as the title).
_GENERIC = {"chat", "a chat", "new chat", "chat title", "title", "conversation", "untitled"}
_SENTENCE_ENDS = (".", "!", "?")
# Joiners and presentation selectors of emoji sequences (the emoji are category So).
_EMOJI_PARTS = {"\u200d", "\ufe0e", "\ufe0f", "\u20e3"}


def title_from_message(content: str) -> str:
    """The first non-blank line of `content`, one-spaced, cut at a word to at most
    MAX_TITLE_CHARS characters (with an ellipsis when cut); "" if there is no text."""
    line = next((ln for ln in content.splitlines() if ln.strip()), "")
    line = without_title_controls(line)
    text = " ".join(_LINE_OPENER.sub("", line).replace("*", "").replace("`", "").split())
    if len(text) <= MAX_TITLE_CHARS:
        return text
    cut = text[: MAX_TITLE_CHARS - 1]
    space = cut.rfind(" ")
    if space >= MAX_TITLE_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def _is_noise(ch: str) -> bool:
    return (
        ch in _EMOJI_PARTS
        or unicodedata.category(ch) in ("So", "Cs", "Co")
        or (
            "\U0001f3fb" <= ch <= "\U0001f3ff"  # skin tones
        )
    )


def _first_sentence(words: list[str]) -> list[str]:
    """The words up to the first sentence's end (a chatty answer goes on after it), at
    most MAX_TITLE_WORDS; an end after one word ("Dr.", "U.S.") is an abbreviation."""
    for i, word in enumerate(words[:MAX_TITLE_WORDS]):
        if i >= 1 and word.rstrip(_QUOTES + ")").endswith(_SENTENCE_ENDS):
            return words[: i + 1]
    return words[:MAX_TITLE_WORDS]


def clean_title(text: str, character_name: str) -> str:
    """A generated title made usable: the first sentence of the first non-blank line,
    without markdown, quotes, emoji or a speaker's prefix ("Luna:", "Title:"), at most
    MAX_TITLE_WORDS words and MAX_TITLE_CHARS characters (cut at a word); "" when
    nothing usable is left (the character's name alone is no title either)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = "".join(" " if _is_noise(ch) else ch for ch in without_title_controls(line))
    line = _LINE_OPENER.sub("", line).replace("*", "").replace("__", "")
    speakers = {*_SPEAKERS, character_name.casefold()}
    while True:
        head, colon, rest = line.partition(":")
        if not colon or head.strip(_QUOTES + " ").casefold() not in speakers:
            break
        line = rest
    words = _first_sentence(line.strip(_QUOTES + " ").split())
    if words and len(words[0]) > MAX_TITLE_CHARS:  # one unbroken word longer than a title
        words = [words[0][:MAX_TITLE_CHARS]]
    while len(" ".join(words)) > MAX_TITLE_CHARS:
        words.pop()
    title = " ".join(words).strip(_QUOTES + " ,.;:-–—!。，！")
    if not any(ch.isalnum() for ch in title) or title.casefold() in {
        *_GENERIC,
        character_name.casefold(),
    }:
        return ""
    return title


def is_placeholder(title: str, character_name: str, message_count: int) -> bool:
    """Whether a session's title is the creation-time placeholder and the turn just
    begun carries its first user message (the greeting, if any, and this message)."""
    return title == character_name and message_count <= 2


TITLE_JOB = "title"


class TitleWriter(SessionJob):
    """The `title` job (SPEC §4 "auto titles"): after a session's first exchange the
    model names the chat. Until then its first user message is its title; a title the
    user set (neither the character's name nor the first message's) is never replaced,
    also when the user renames the chat while the model is writing (compare and swap)."""

    kind = TITLE_JOB

    async def run(self, job: Job) -> None:
        uid, sid = job.args["user_id"], job.args["session_id"]
        try:
            # The first messages (greeting, user, reply), however many turns came since.
            snap = await self.store.read(uid, sid, last=4, before_seq=5)
        except SessionNotFound:
            return
        meta = snap.meta
        character = await self.characters.get(meta.character_id)
        first = next((m for m in snap.messages if m.role == Role.USER), None)
        if first is None or meta.title not in (character.name, title_from_message(first.content)):
            return  # the user named it
        # From the first user message on: the character's greeting says nothing of the
        # chat (the model copied it: "Luna: Hey, it's Luna! How's your day going?").
        spoken = [m for m in snap.messages if m.role in (Role.USER, Role.ASSISTANT)]
        exchange = spoken[spoken.index(first) :][:2]
        prompt = title_prompt(exchange, character=character.name)
        text = await self.ask(prompt, character, max_tokens=24)
        title = clean_title(text, character.name)
        if not title:
            drop_output(self.metrics, TITLE_JOB, sid, f"no usable title in {text[:200]!r}")
            title = title_from_message(first.content)
        if title and title != meta.title:
            await self.summaries.set_title_if(uid, sid, meta.title, title)
