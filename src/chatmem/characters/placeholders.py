"""`{{char}}` and `{{user}}` in a character's prompts and greetings.

A character's texts keep the placeholders (an imported card's `<BOT>` / `<USER>` and any
case, `{{Char}}`, written as `{{char}}` / `{{user}}`); they are filled in when used: the
character's name for `{{char}}`, the user's display name (`USER_NAME` until they set
one, `PATCH /v1/me`) for `{{user}}`. Prompts are filled where the context is assembled
(chat/prompting.py), greetings when a session is created (chat/service.py).
"""

from __future__ import annotations

import re

# The display name of a user who has not set one.
USER_NAME = "User"

_CHAR_RE = re.compile(r"\{\{char\}\}|<bot>", re.IGNORECASE)
_USER_RE = re.compile(r"\{\{user\}\}|<user>", re.IGNORECASE)


def normalize(text: str) -> str:
    """The placeholders in their one spelling, `{{char}}` and `{{user}}`."""
    text = _CHAR_RE.sub("{{char}}", text)
    return _USER_RE.sub("{{user}}", text)


def mentions_user(*texts: str) -> bool:
    return any(_USER_RE.search(t) for t in texts if t)


_EITHER_RE = re.compile(r"\{\{(char|user)\}\}|<(bot|user)>", re.IGNORECASE)


def fill(text: str, char_name: str, user_name: str = USER_NAME) -> str:
    """Both in one pass: a name that holds a placeholder is not filled in again."""
    if "{" not in text and "<" not in text:
        return text  # the common case, on every turn: nothing to scan for

    # A callable, not a replacement string: a name may contain backslashes.
    def name(m: re.Match[str]) -> str:
        return char_name if (m[1] or m[2]).lower() in ("char", "bot") else user_name

    return _EITHER_RE.sub(name, text)
