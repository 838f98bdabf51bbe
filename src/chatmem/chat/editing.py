"""Editing a conversation (SPEC §3b): select an alternative, edit, delete, fork.

Each edit is one script (store/editing.py) that refuses while a turn holds the session's
lock; an edit that finds the session busy waits for it as a send does, up to
`session_lock_wait_ms`, then answers 409 `session_busy`.

Alternatives ("swipes") of an assistant message live in its metadata:
`alternatives` is a list of `{content, token_count, metadata}` and `selected` the index
of the one shown; the message's own content, token count and other metadata are the
selected one's, so history, the context and export see the selected one without
knowing about the others. At most MAX_ALTERNATIVES are kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chatmem.errors import InvalidInput, SessionBusy
from chatmem.models import Message, Role, SessionMeta, SessionSnapshot
from chatmem.store.editing import MessageEdits
from chatmem.tokens import count_tokens

MAX_ALTERNATIVES = 10
_OWN_KEYS = ("alternatives", "selected")

T = TypeVar("T")
Change = Callable[[Message], Message | None]


def alternative_of(msg: Message) -> dict[str, Any]:
    meta = {k: v for k, v in msg.metadata.items() if k not in _OWN_KEYS}
    return {"content": msg.content, "token_count": msg.token_count, "metadata": meta}


def alternatives_of(msg: Message) -> list[dict[str, Any]]:
    """The message's alternatives, the shown one included (one for a plain message)."""
    alts = msg.metadata.get("alternatives")
    if not alts:
        return [alternative_of(msg)]
    alts = list(alts)
    alts[msg.metadata.get("selected", 0)] = alternative_of(msg)
    return alts


def with_alternatives(msg: Message, alts: list[dict[str, Any]], selected: int) -> Message:
    """The message showing alternative `selected` of `alts` (kept with it when > 1)."""
    alt = alts[selected]
    metadata = dict(alt.get("metadata") or {})
    if len(alts) > 1:
        metadata["alternatives"] = alts
        metadata["selected"] = selected
    return Message(
        msg.role, alt["content"], alt["token_count"], msg.msg_id, msg.timestamp, metadata
    )


def add_alternative(msg: Message, new: Message) -> Message:
    """`msg` with `new`'s content as a new, selected alternative (the oldest unselected
    one goes past MAX_ALTERNATIVES)."""
    alts = alternatives_of(msg)
    alts.append(alternative_of(new))
    if len(alts) > MAX_ALTERNATIVES:
        del alts[0]
    return with_alternatives(msg, alts, len(alts) - 1)


def greeting_message(greetings: list[str]) -> Message:
    """A character's greeting, its Card V2 `alternate_greetings` as its alternatives."""
    first = greetings[0]
    msg = Message(Role.ASSISTANT, first, count_tokens(first), metadata={"greeting": True})
    if len(greetings) == 1:
        return msg
    alts = [
        {"content": g, "token_count": count_tokens(g), "metadata": {"greeting": True}}
        for g in greetings[:MAX_ALTERNATIVES]
    ]
    return with_alternatives(msg, alts, 0)


# "answer": a reply to the last user message, stored unanswered (the OpenAI route's
# retry after a failed turn); appended as a turn's reply is.
REVISIONS = ("regenerate", "continue", "answer")
# What a reply answers: the user's message, or a tool's result.
_ANSWERED = (Role.USER, Role.TOOL)


def revision_parts(
    revision: str, messages: list[Message]
) -> tuple[Message, Message | None, list[Message], Message]:
    """(user message, message revised, history, the context's last message) of a
    revision, from the newest stored messages (oldest first); InvalidInput when the
    session does not end with a reply to revise (or, to answer, a user message)."""
    if revision == "answer":
        # A tool's result too: the OpenAI route's agent loop (chat/reconcile.py).
        if not messages or messages[-1].role not in _ANSWERED:
            raise InvalidInput("nothing to answer", code="no_user_message")
        return messages[-1], None, messages[:-1], messages[-1]
    if not messages or messages[-1].role is not Role.ASSISTANT:
        raise InvalidInput(
            f"nothing to {revision}: the session does not end with a reply", code="no_reply"
        )
    target = messages[-1]
    if revision == "continue":
        # The model sees the reply as the last, unfinished message.
        user = messages[-2] if len(messages) > 1 else target
        return user, target, messages[:-1], target
    if len(messages) < 2 or messages[-2].role not in _ANSWERED:
        raise InvalidInput(
            "nothing to regenerate: the reply does not answer a user message", code="no_reply"
        )
    return messages[-2], target, messages[:-2], messages[-2]


def revised(revision: str, target: Message, reply: Message) -> Message:
    """The message that a revision's reply leaves in place of `target`."""
    if revision == "regenerate":
        out = add_alternative(target, reply)
    else:
        text = target.content + reply.content
        metadata = dict(target.metadata)
        metadata.update({k: v for k, v in reply.metadata.items() if k not in _OWN_KEYS})
        metadata["continued"] = True
        longer = Message(target.role, text, count_tokens(text), target.msg_id, target.timestamp)
        longer.metadata = {k: v for k, v in metadata.items() if k not in _OWN_KEYS}
        if "alternatives" in target.metadata:
            alts = alternatives_of(target)
            sel = target.metadata.get("selected", 0)
            alts[sel] = alternative_of(longer)
            out = with_alternatives(target, alts, sel)
        else:
            out = longer
    out.seq = target.seq
    return out


class Editing:
    def __init__(self, edits: MessageEdits, *, lock_wait_ms: int, validate: Callable[[str], str]):
        self.edits = edits
        self.lock_wait_ms = lock_wait_ms
        self.validate = validate

    async def _waiting(self, op: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.lock_wait_ms / 1000
        delay = 0.01
        while True:
            try:
                return await op()
            except SessionBusy:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def _change(
        self, user_id: str, session_id: str, msg_id: str, change: Change
    ) -> Message | None:
        result: list[Message | None] = []

        def apply(old: Message) -> Message | None:
            result.clear()
            new = change(old)
            result.append(new)
            return new

        await self._waiting(lambda: self.edits.change(user_id, session_id, msg_id, apply))
        return result[0]

    async def select(self, user_id: str, session_id: str, msg_id: str, selected: int) -> Message:
        """Show alternative `selected` of a message; nothing is lost."""

        def change(old: Message) -> Message:
            alts = alternatives_of(old)
            if not 0 <= selected < len(alts):
                raise InvalidInput(
                    f"selected must be between 0 and {len(alts) - 1}", code="invalid_selected"
                )
            return with_alternatives(old, alts, selected)

        new = await self._change(user_id, session_id, msg_id, change)
        assert new is not None
        return new

    async def edit(self, user_id: str, session_id: str, msg_id: str, content: str) -> Message:
        """Replace a message's content in place (the selected alternative's, for a reply
        with alternatives); its token count is counted again."""
        text = self.validate(content)

        def change(old: Message) -> Message:
            metadata = dict(old.metadata)
            metadata["edited"] = True
            n = count_tokens(text)
            edited = Message(old.role, text, n, old.msg_id, old.timestamp, metadata)
            if "alternatives" in old.metadata:
                alts = alternatives_of(old)
                sel = old.metadata.get("selected", 0)
                alts[sel] = alternative_of(edited)
                return with_alternatives(old, alts, sel)
            return edited

        new = await self._change(user_id, session_id, msg_id, change)
        assert new is not None
        return new

    async def delete(self, user_id: str, session_id: str, msg_id: str) -> None:
        await self._change(user_id, session_id, msg_id, lambda _old: None)

    async def fork(
        self, user_id: str, session_id: str, msg_id: str, *, title: str = ""
    ) -> tuple[SessionMeta, list[Message]]:
        """A new session of the same user and character with copies of the history up
        to `msg_id`; `forked_from` in its meta; the original is untouched."""
        return await self._waiting(
            lambda: self.edits.fork(user_id, session_id, msg_id, title=title)
        )

    async def diverge(
        self, user_id: str, session_id: str, stored: SessionSnapshot, keep: list[Message]
    ) -> str | None:
        """The OpenAI route's divergence (chat/reconcile.py), one script: the stored
        version (`stored`, as read) is kept as a fork (its id returned; None when nothing
        was stored), and the session holds `keep` instead. 409 `edit_conflict` when the
        session no longer holds what was read."""
        return await self._waiting(lambda: self.edits.diverge(user_id, session_id, stored, keep))
