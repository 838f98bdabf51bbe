"""Export and import conversations as JSON, straight from and to the memory store.

    {"format": "chatmem-export", "version": 1, "exported_at": 1700000000.0,
     "sessions": [{"meta": {...SessionMeta.to_dict()}, "messages": [{...}, ...]}]}

Alternatives of a reply travel in its metadata and a fork's `forked_from` in its meta,
so both come back as they were. Import keeps session and message ids: a session that
exists is kept as it is (`create_session(..., ensure=True)`) and messages whose ids it
already holds are skipped by the store, so importing the same file twice changes
nothing. Usage and cost travel with the first batch of a session's messages, which the
store counts only if that batch brought something new (a session exported without
messages brings none). Times of creation and last activity restart at the import. The
store is the server's own (`chat.runtime.open_store`: the configured Redis, or the
embedded one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from chatmem.errors import InvalidInput, SessionNotFound
from chatmem.models import Message, Role, SessionMeta, SessionState, Usage
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.keys import MAX_APPEND_MESSAGES

FORMAT = "chatmem-export"
VERSION = 1
USERS_PAGE = 1000
MAX_SESSIONS_PER_USER = 100_000

Progress = Callable[[int], None]
_STATES = {s.value for s in SessionState}


async def _all_users(store: RedisMemoryStore) -> list[str]:
    users: list[str] = []
    while True:
        page = await store.list_users(limit=USERS_PAGE, offset=len(users))
        users += page
        if len(page) < USERS_PAGE:
            return users


async def sessions_to_export(store: RedisMemoryStore, user: str | None) -> list[SessionMeta]:
    users = [user] if user else await _all_users(store)
    metas: list[SessionMeta] = []
    for uid in users:
        metas += await store.list_sessions(uid, limit=MAX_SESSIONS_PER_USER)
    return metas


async def export_sessions(
    store: RedisMemoryStore, metas: Iterable[SessionMeta], on_session: Progress | None = None
) -> dict[str, Any]:
    """The export document of these sessions (those that expire meanwhile are left out)."""
    out: list[dict[str, Any]] = []
    for meta in metas:
        try:
            snap = await store.read(
                meta.user_id, meta.session_id, last=max(meta.stored_messages, 1)
            )
        except SessionNotFound:
            continue
        out.append(
            {
                "meta": snap.meta.to_dict(),
                "messages": [m.to_dict() for m in snap.messages],
            }
        )
        if on_session is not None:
            on_session(1)
    return {"format": FORMAT, "version": VERSION, "exported_at": time.time(), "sessions": out}


@dataclass(slots=True)
class ImportReport:
    sessions: int = 0
    messages_added: int = 0
    messages_skipped: int = 0


def parse_export(doc: Any) -> list[dict[str, Any]]:
    """The sessions of an export document; InvalidInput says what is wrong with it."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InvalidInput(f"not a chatmem export (expected format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise InvalidInput(f"unsupported export version {doc.get('version')!r}")
    sessions = doc.get("sessions")
    if not isinstance(sessions, list):
        raise InvalidInput("the export has no 'sessions' list")
    for n, item in enumerate(sessions, start=1):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("meta"), dict)
            and isinstance(item.get("messages"), list)
        ):
            raise InvalidInput(f"session #{n}: expected {{'meta': {{…}}, 'messages': […]}}")
    return sessions


def _message(raw: dict[str, Any], where: str) -> Message:
    try:
        return Message(
            role=Role(raw["role"]),
            content=str(raw["content"]),
            token_count=int(raw.get("token_count", 0)),
            msg_id=str(raw["msg_id"]),
            timestamp=float(raw.get("timestamp", 0.0)),
            metadata=dict(raw.get("metadata") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{where}: bad message ({exc})") from exc


def _usage(raw: Any) -> Usage:
    u = raw if isinstance(raw, dict) else {}
    return Usage(
        int(u.get("prompt_tokens", 0)),
        int(u.get("completion_tokens", 0)),
        float(u.get("cost_usd", 0.0)),
    )


def _fork_of(meta: dict[str, Any]) -> tuple[str, str] | None:
    if not meta.get("forked_from"):
        return None
    return str(meta["forked_from"]), str(meta.get("forked_at") or "")


async def import_sessions(
    store: RedisMemoryStore,
    sessions: list[dict[str, Any]],
    on_session: Progress | None = None,
) -> ImportReport:
    report = ImportReport()
    for n, item in enumerate(sessions, start=1):
        meta = item["meta"]
        where = f"session #{n}"
        try:
            user_id, session_id = str(meta["user_id"]), str(meta["session_id"])
            character_id = str(meta["character_id"])
        except KeyError as exc:
            raise InvalidInput(f"{where}: the meta lacks {exc}") from exc
        messages = [_message(m, f"{where}, message #{i}") for i, m in enumerate(item["messages"])]
        created = await store.create_session(
            user_id,
            character_id,
            session_id=session_id,
            title=str(meta.get("title") or ""),
            ttl_s=int(meta["ttl_s"]) if meta.get("ttl_s") else None,
            window_size=int(meta["window_size"]) if meta.get("window_size") else None,
            ensure=True,
            forked_from=_fork_of(meta),
        )
        usage: Usage | None = _usage(meta.get("usage"))
        for start in range(0, len(messages), MAX_APPEND_MESSAGES):
            batch = messages[start : start + MAX_APPEND_MESSAGES]
            res = await store.append(user_id, session_id, batch, usage=usage)
            usage = None
            report.messages_added += res.appended
            report.messages_skipped += len(res.duplicate_ids)
        state = meta.get("state")
        if state != created.state.value and state in _STATES:
            await store.update_session(user_id, session_id, state=SessionState(state))
        report.sessions += 1
        if on_session is not None:
            on_session(1)
    return report
