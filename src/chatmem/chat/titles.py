"""A chat's title until a better one exists: its first user message, made short.

A new session is titled with its character's name; its first user message replaces
that placeholder (22 chats titled "Luna" tell a user nothing). A title the user gave
is never replaced.
"""

from __future__ import annotations

import re

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
