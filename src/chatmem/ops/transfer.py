"""Export and import conversations as JSON, straight from and to the memory store.

    {"format": "chatmem-export", "version": 1, "exported_at": 1700000000.0,
     "sessions": [{"meta": {...SessionMeta.to_dict()}, "messages": [{...}, ...]}],
     "memories": [{...memory, with user_id and character_id}, ...],
     "profiles": [{"user_id": ..., "display_name": ...}, ...]}

Alternatives of a reply travel in its metadata and a fork's `forked_from` in its meta,
so both come back as they were. Import keeps session and message ids: a session that
exists is kept as it is (`create_session(..., ensure=True)`) and messages whose ids it
already holds are skipped by the store, so importing the same file twice changes
nothing. Usage and cost travel with the first batch of a session's messages, which the
store counts only if that batch brought something new (a session exported without
messages brings none). Times of creation and last activity restart at the import. The
store is the server's own (`chat.runtime.open_store`: the configured Redis, or the
embedded one).

Long-term memories (SPEC §2b) travel as a list of their own (they outlive sessions):
those of every exported user. Import keeps their ids; one that exists is kept as it is,
so importing twice changes nothing there either. A file without `memories` (made before
they existed) imports as before.

Users' profiles (their display name, `PATCH /v1/me`) travel the same way, for the same
users, as `profiles` (only users who set a name); import sets a name only where the
user has none, and a file without `profiles` imports as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from chatmem.characters import CharacterRegistry
from chatmem.errors import CharacterNotFound, InvalidInput, SessionNotFound
from chatmem.models import Message, Role, SessionMeta, SessionState, Usage
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.keys import MAX_APPEND_MESSAGES, validate_id
from chatmem.store.memories import Memory, MemoryOp, MemoryStore
from chatmem.store.profiles import ProfileStore, validate_display_name
from chatmem.store.rules import (
    validate_temperature,
    validate_title,
    validate_ttl,
    validate_window,
)

FORMAT = "chatmem-export"
VERSION = 1
USERS_PAGE = 1000
MAX_SESSIONS_PER_USER = 100_000
# Memories imported get this sliding TTL (the server's default `memory.memory_ttl_s`).
IMPORTED_MEMORY_TTL_S = 90 * 24 * 3600

# An imported message is held to these (a turn holds a user's message to
# `memory.max_message_chars`; a reply, its alternatives and tool calls can be longer).
MAX_IMPORTED_CHARS = 100_000
MAX_IMPORTED_METADATA_BYTES = 256 * 1024

Progress = Callable[[int], None]
_STATES = {s.value for s in SessionState}
# A session holds no system message (the character's prompt is not stored with it): one
# imported would land in the middle of the model's context.
_ROLES = {role.value for role in Role} - {Role.SYSTEM.value}


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
    store: RedisMemoryStore,
    metas: Iterable[SessionMeta],
    on_session: Progress | None = None,
    memory_users: Iterable[str] = (),
) -> dict[str, Any]:
    """The export document of these sessions (those that expire meanwhile are left out),
    with the memories of their users and of `memory_users`."""
    metas = list(metas)
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
    users = sorted({m.user_id for m in metas} | set(memory_users))
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": time.time(),
        "sessions": out,
        "memories": await export_memories(store, users),
        "profiles": await export_profiles(store, users),
    }


async def export_profiles(store: RedisMemoryStore, users: Iterable[str]) -> list[dict[str, Any]]:
    profiles = ProfileStore(store.redis)
    out: list[dict[str, Any]] = []
    for uid in users:
        if (name := await profiles.display_name(uid)) is not None:
            out.append({"user_id": uid, "display_name": name})
    return out


def parse_profiles(doc: Any) -> list[tuple[str, str]]:
    """The (user id, display name) pairs of an export document, checked (none in one
    made before profiles existed)."""
    raw = doc.get("profiles", []) if isinstance(doc, dict) else []
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise InvalidInput("the export's 'profiles' must be a list of objects")
    out = []
    for n, item in enumerate(raw, start=1):
        uid, name = item.get("user_id"), item.get("display_name")
        if not isinstance(uid, str) or not isinstance(name, str):
            raise InvalidInput(f"profile #{n}: user_id and display_name must be strings")
        out.append((validate_id(uid, "user id"), validate_display_name(name)))
    return out


async def import_profiles(store: RedisMemoryStore, profiles: list[tuple[str, str]]) -> None:
    """Set each user's display name unless they have one already."""
    names = ProfileStore(store.redis)
    for uid, name in profiles:
        if await names.display_name(uid) is None:
            await names.set_display_name(uid, name)


async def export_memories(store: RedisMemoryStore, users: Iterable[str]) -> list[dict[str, Any]]:
    memories = MemoryStore(store, ttl_s=IMPORTED_MEMORY_TTL_S)
    out: list[dict[str, Any]] = []
    for uid in users:
        for cid in await memories.characters(uid):
            for mem in await memories.read(uid, cid, touch=False):
                out.append({"user_id": uid, **mem.to_dict(cid)})
    return out


ImportedMemory = tuple[str, str, Memory]  # user id, character id, the memory


def parse_memories(doc: Any) -> list[ImportedMemory]:
    """The memories of an export document (none in one made before they existed), each
    checked before anything is stored."""
    raw = doc.get("memories", []) if isinstance(doc, dict) else []
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise InvalidInput("the export's 'memories' must be a list of objects")
    out = []
    for n, item in enumerate(raw, start=1):
        try:
            uid = validate_id(str(item["user_id"]), "user id")
            cid = validate_id(str(item["character_id"]), "character id")
            mem = Memory(
                text=str(item["text"]),
                memory_id=validate_id(str(item["memory_id"]), "memory id"),
                source_ids=[str(s) for s in item.get("source_msg_ids") or []],
                created_at=float(item.get("created_at", 0.0)),
                updated_at=float(item.get("updated_at", 0.0)),
                tokens=int(item.get("token_count", 0)),
            )
        except KeyError as exc:
            raise InvalidInput(f"memory #{n}: it lacks {exc}") from None
        except InvalidInput as exc:
            raise InvalidInput(f"memory #{n}: {exc.message}", code=exc.code) from None
        except (TypeError, ValueError):
            raise InvalidInput(f"memory #{n}: not a memory of an export") from None
        out.append((uid, cid, mem))
    return out


async def import_memories(
    store: RedisMemoryStore, parsed: list[ImportedMemory], *, ttl_s: int = IMPORTED_MEMORY_TTL_S
) -> int:
    """Add the memories whose ids are not there yet; returns how many were added."""
    memories = MemoryStore(store, ttl_s=ttl_s)
    added = 0
    for uid, cid, mem in parsed:
        added += await memories.apply(uid, cid, [MemoryOp("new", mem.memory_id, mem)]) or 0
    return added


@dataclass(slots=True)
class ImportReport:
    sessions: int = 0
    messages_added: int = 0
    messages_skipped: int = 0
    memories_added: int = 0


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
        _check(n, item)
    return sessions


def _check(n: int, item: dict[str, Any]) -> None:
    """What would fail, or be stored broken, half-way through an import, found before
    anything is stored: an import is refused whole or done whole. The values go through
    the store's own rules (store/rules.py), after a type check (an import is JSON)."""
    meta, where = item["meta"], f"session #{n}"
    for name in ("user_id", "session_id", "character_id"):
        validate_id(meta.get(name), f"{where}: {name}")
    ttl, window, title = meta.get("ttl_s"), meta.get("window_size"), meta.get("title") or ""
    if (ttl and type(ttl) is not int) or (window and type(window) is not int):
        raise InvalidInput(f"{where}: ttl_s and window_size must be whole numbers")
    if not isinstance(title, str):
        raise InvalidInput(f"{where}: title must be text")
    try:
        if ttl:  # 0 or null: the server's default; 1 s and up, as seed 001's sessions have
            validate_ttl(ttl, minimum_s=1)
        if window:
            validate_window(window)
        validate_temperature(meta.get("temperature"))
        validate_title(title)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}", code=exc.code) from None
    if meta.get("state") is not None and meta["state"] not in _STATES:
        raise InvalidInput(f"{where}: state must be one of {sorted(_STATES)}")
    for name in ("forked_from", "forked_at"):
        if meta.get(name) is not None and not isinstance(meta[name], str):
            raise InvalidInput(f"{where}: {name} must be a message or session id")
    _check_usage(meta.get("usage"), where)
    for i, msg in enumerate(item["messages"]):
        _check_message(msg, f"{where}, message #{i}")


def _check_usage(usage: Any, where: str) -> None:
    """Whole token counts and a cost in dollars, none negative (or no usage at all)."""
    if usage is None:
        return
    if not isinstance(usage, dict):
        raise InvalidInput(f"{where}: usage must be an object")
    for name in ("prompt_tokens", "completion_tokens"):
        n = usage.get(name, 0)
        if type(n) is not int or not 0 <= n < 2**53:
            raise InvalidInput(f"{where}: usage.{name} must be a whole number of tokens")
    cost = usage.get("cost_usd", 0.0)
    if type(cost) not in (int, float) or not 0 <= cost < 1e12:
        raise InvalidInput(f"{where}: usage.cost_usd must be a number of dollars")


def _check_message(msg: Any, where: str) -> None:
    if not (
        isinstance(msg, dict)
        and msg.get("role") in _ROLES
        and isinstance(msg.get("content"), str)
        and type(msg.get("token_count", 0)) is int
        and type(msg.get("timestamp", 0.0)) in (int, float)
        and isinstance(msg.get("metadata") or {}, dict)
    ):
        raise InvalidInput(f"{where}: not a message of an export")
    validate_id(msg.get("msg_id", ""), f"{where}: msg_id")
    if len(msg["content"]) > MAX_IMPORTED_CHARS:
        raise InvalidInput(f"{where}: longer than {MAX_IMPORTED_CHARS} characters")
    try:
        size = len(orjson.dumps(msg.get("metadata") or {}))
    except orjson.JSONEncodeError:
        raise InvalidInput(f"{where}: its metadata cannot be stored") from None
    if size > MAX_IMPORTED_METADATA_BYTES:
        raise InvalidInput(f"{where}: metadata over {MAX_IMPORTED_METADATA_BYTES} bytes")


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


async def check_characters(sessions: list[dict[str, Any]], registry: CharacterRegistry) -> None:
    """Each session's character must exist here: a session without one cannot take a turn."""
    for n, item in enumerate(sessions, start=1):
        character_id = item["meta"]["character_id"]
        try:
            await registry.get(character_id)
        except CharacterNotFound:
            raise InvalidInput(
                f"session #{n}: character {character_id!r} does not exist on this server "
                "(create it first)",
                code="unknown_character",
            ) from None


async def import_sessions(
    store: RedisMemoryStore,
    sessions: list[dict[str, Any]],
    on_session: Progress | None = None,
    memories: list[ImportedMemory] | None = None,
    profiles: list[tuple[str, str]] | None = None,
) -> ImportReport:
    report = ImportReport()
    if memories:
        report.memories_added = await import_memories(store, memories)
    if profiles:
        await import_profiles(store, profiles)
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
            memory=meta.get("memory") is not False,  # a seed route's session stays off
            temperature=meta.get("temperature"),
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
