"""MessageEdits: the store's side of editing a conversation (SPEC §3b).

Each edit is one read of the session's stored messages and one script (edit_scripts.py)
that applies the change only if what was read is still stored and no turn holds the
session's lock. What the change is (new content, an alternative selected) is the
caller's: it gets the stored `Message` and returns its replacement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chatmem.errors import Conflict, NotFound, SessionBusy, SessionNotFound
from chatmem.models import Message, SessionMeta, SessionSnapshot, new_id
from chatmem.store import edit_scripts, keys
from chatmem.store.client import redis_errors
from chatmem.store.codec import decode_message, decode_meta, encode_message
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.rules import over_quota, preview_of, too_many_sessions, validate_title

# An edit whose read went stale (another edit came in between) is read and tried again.
EDIT_ATTEMPTS = 3

Change = Callable[[Message], Message | None]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session {session_id!r} not found")


def message_not_found(msg_id: str) -> NotFound:
    return NotFound(f"message {msg_id!r} not found", code="message_not_found")


class MessageEdits:
    def __init__(self, store: RedisMemoryStore) -> None:
        self.store = store
        self._edit = store.redis.register_script(edit_scripts.EDIT_MESSAGE)
        self._fork = store.redis.register_script(edit_scripts.FORK_SESSION)
        self._diverge = store.redis.register_script(edit_scripts.DIVERGE_SESSION)

    async def _run(self, name: str, script: Any, ks: list[str], args: list[Any]) -> Any:
        return await self.store.run_write(name, script, ks, args)

    async def _stored(self, user_id: str, session_id: str) -> list[Any]:
        """The session's stored messages, encoded, newest first ([]: none or no session)."""
        key = keys.session_messages_key(user_id, session_id)
        start = time.perf_counter()
        try:
            with redis_errors("edit_read"):
                items: list[Any] = await self.store.redis.lrange(key, 0, -1)
        finally:
            self.store.observe("edit_read", time.perf_counter() - start)
        return items

    async def change(self, user_id: str, session_id: str, msg_id: str, change: Change) -> Message:
        """Replace (or, when `change` returns None, delete) one message; the stored
        message as it was before is returned."""
        keys.validate_id(msg_id, "message id")
        ks = keys.session_keys(user_id, session_id)
        ks.append(keys.session_lock_key(user_id, session_id))
        for _ in range(EDIT_ATTEMPTS):
            items = await self._stored(user_id, session_id)
            found = _find(items, msg_id)
            if found is None:
                await self.store.get_meta(user_id, session_id)  # SessionNotFound first
                raise message_not_found(msg_id)
            index, raw, old = found
            new = change(old)
            if new is None:
                nxt = decode_message(items[1]) if index == 0 and len(items) > 1 else None
                encoded, tokens = "", -old.token_count
                preview, role = (preview_of(nxt), nxt.role.value) if nxt else ("", "")
            else:
                encoded, tokens = encode_message(new), new.token_count - old.token_count
                preview, role = preview_of(new), new.role.value
            args = [session_id, _now_ms(), raw, encoded, tokens, preview, role]
            args += [self.store.max_stored_bytes_per_user, keys.session_prefix(user_id)]
            res = await self._run("edit_message", self._edit, ks, args)
            if res is None:
                raise _not_found(session_id)
            if res[0] == -1:
                raise SessionBusy()
            if res[0] == -3:
                raise over_quota(self.store.max_stored_bytes_per_user)
            if res[0] >= 0:
                return old
        raise Conflict("the message changed while it was edited: try again", code="edit_conflict")

    async def fork(
        self, user_id: str, session_id: str, msg_id: str, *, title: str
    ) -> tuple[SessionMeta, list[Message]]:
        """A new session holding copies of the history up to `msg_id` (included)."""
        keys.validate_id(msg_id, "message id")
        source = await self.store.get_meta(user_id, session_id)
        items = await self._stored(user_id, session_id)
        found = _find(items, msg_id)
        if found is None:
            raise message_not_found(msg_id)
        index = found[0]
        copies_raw = items[index:][::-1]  # oldest first
        copies = [decode_message(raw) for raw in copies_raw]
        sid = new_id()
        ks = [
            keys.session_messages_key(user_id, session_id),
            keys.session_meta_key(user_id, session_id),
            keys.session_lock_key(user_id, session_id),
            keys.session_messages_key(user_id, sid),
            keys.session_meta_key(user_id, sid),
            keys.session_ids_key(user_id, sid),
            keys.user_sessions_key(user_id),
            keys.user_totals_key(user_id),
        ]
        last = copies[-1]
        fields: dict[str, Any] = {
            "uid": user_id,
            "cid": source.character_id,
            "title": validate_title(title or f"{source.title} (fork)"[: keys.MAX_TITLE_CHARS]),
            "window": source.window_size,
            "fork": session_id,
            "forkmsg": msg_id,
            "count": len(copies),
            "tokens": sum(m.token_count for m in copies),
            "seq": len(copies),
            "preview": preview_of(last),
            "prole": last.role.value,
        }
        args: list[Any] = [sid, _now_ms(), source.ttl_s or self.store.default_ttl_s]
        args += [self.store.max_sessions_per_user, self.store.max_stored_bytes_per_user]
        args += [keys.session_prefix(user_id), len(copies_raw), *copies_raw]
        for name, value in fields.items():
            args += [name, value]
        res = await self._run("fork_session", self._fork, ks, args)
        self._check_copy(res, session_id, "the session changed while it was forked")
        flat, pttl, stored = res
        for seq, msg in enumerate(copies, 1):
            msg.seq = seq
        return decode_meta(sid, flat, pttl_ms=pttl, stored=stored), copies

    async def diverge(
        self, user_id: str, session_id: str, read: SessionSnapshot, keep: list[Message]
    ) -> str | None:
        """One script: the session's messages, as `read` (all of them; refused with 409
        `edit_conflict` if it holds others now: another length or newest message), are
        kept in a new session (a fork, whose id is returned; None when there were none),
        then the session holds `keep` instead."""
        sid = new_id()
        ks = keys.session_keys(user_id, session_id)
        ks.append(keys.session_lock_key(user_id, session_id))
        ks += [
            keys.session_messages_key(user_id, sid),
            keys.session_meta_key(user_id, sid),
            keys.session_ids_key(user_id, sid),
        ]
        head = read.messages[-1] if read.messages else None
        last = keep[-1] if keep else None
        title = "(before an edit)"
        held = read.meta.stored_messages
        args: list[Any] = [session_id, _now_ms(), self.store.max_messages, held]
        args += [keys.validate_id(head.msg_id, "message id") if head else ""]
        args += [self.store.max_sessions_per_user, self.store.max_stored_bytes_per_user]
        args += [keys.session_prefix(user_id), sid, title]
        args += [preview_of(head), head.role.value] if head else ["", ""]
        args += [preview_of(last), last.role.value] if last else ["", ""]
        args += [encode_message(m) for m in keep]
        res = await self._run("diverge_session", self._diverge, ks, args)
        self._check_copy(res, session_id, "the session changed meanwhile")
        return sid if res[0] == 1 else None

    def _check_copy(self, res: Any, session_id: str, changed: str) -> None:
        """The refusals of the scripts that copy a session into a new one (fork,
        diverge), each with nothing written, as errors."""
        if res is None:
            raise _not_found(session_id)
        if res[0] == -1:
            raise SessionBusy()
        if res[0] == -2:
            raise Conflict(f"{changed}: try again", code="edit_conflict")
        if res[0] == -3:
            raise too_many_sessions(self.store.max_sessions_per_user)
        if res[0] == -4:
            raise over_quota(self.store.max_stored_bytes_per_user)


def _find(items: list[Any], msg_id: str) -> tuple[int, Any, Message] | None:
    prefix = ('{"i":"' + msg_id + '"').encode()
    for index, raw in enumerate(items):
        head = raw if isinstance(raw, bytes) else raw.encode()
        if head.startswith(prefix):
            return index, raw, decode_message(raw)
    return None
