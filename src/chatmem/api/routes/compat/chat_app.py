"""Seeds 002/003: the chat app with explicit sessions, roles and an SSE stream.

    POST   /chat/start?user_id=[&role=]       → {session_id, message, welcome_message}
    GET    /chat/stream?user_id=&session_id=&message=[&role=]
           data: {"content": "…", "type": "chunk"} … data: {"type": "end", "session_id"}
           data: {"type": "error", "content": "…", "code": "…"} if the turn fails midway
    GET    /chat/history?user_id=&session_id=  → {session_id, messages, total}
    GET    /chat/sessions?user_id=             → {user_id, sessions, total}
    GET    /roles                              → {roles: {id: {name, prompt, description}}}
           (prompt: only admins see it, others a placeholder and `prompt_tokens`)
    DELETE /chat/session/{session_id}?user_id=

Roles are characters; the seeds' three are built in. The role is chosen per message, as
the document's page sends it: a turn with `role` uses that role's system prompt, and the
session follows the role last used (its character, shown by `/chat/sessions`); without
`role`, the session's own. An unknown role is a 400 `unsupported_role` as in the seed.
A stream for a session id the user does not have yet starts it (empty, with the turn's
role, default `assistant`), and the history of such an id is empty (200), as in the
document; deleting one is a 404. Errors found before the stream starts (empty message,
busy session, a malformed id) are ordinary JSON errors with their status, not SSE frames.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from sse_starlette import EventSourceResponse

from chatmem.api.deps import Caller, Service
from chatmem.api.sse.response import sse_response, subscribe
from chatmem.auth import resolve_user
from chatmem.chat.conversations import prepare_conversation_turn
from chatmem.chat.prompts import role_view
from chatmem.chat.service import ChatService, Delta, TurnEvent
from chatmem.errors import CharacterNotFound, InvalidInput, SessionNotFound
from chatmem.models import Character, SessionMeta

router = APIRouter(tags=["seed 002/003: chat app"])

SESSION_CREATED = "聊天会话已创建"
SESSION_DELETED = "会话已删除"
DEFAULT_ROLE = "assistant"

UserId = Annotated[str, Query(description="the user (with auth on: the caller, or any if admin)")]
SessionId = Annotated[str, Query(description="a session from /chat/start")]


def _data(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def chunk_frame(event: TurnEvent, session_id: str) -> dict[str, str]:
    """The seed's SSE frames: unnamed events whose data says its `type`."""
    if isinstance(event, Delta):
        return {"data": _data({"content": event.text, "type": "chunk"})}
    return {"data": _data({"type": "end", "session_id": session_id})}


def error_frame(code: str, message: str) -> dict[str, str]:
    return {"data": _data({"type": "error", "content": message, "code": code})}


async def _role(service: ChatService, role: str) -> Character:
    try:
        return await service.characters.get(role)
    except CharacterNotFound as exc:
        raise InvalidInput(f"unsupported role {role[:64]!r}", code="unsupported_role") from exc


def _session_row(meta: SessionMeta) -> dict[str, Any]:
    return {
        "session_id": meta.session_id,
        "role": meta.character_id,
        "title": meta.title,
        "last_message": meta.preview,
        "last_timestamp": meta.last_active_at,
        "message_count": meta.stored_messages,
        "created_at": meta.created_at,
    }


@router.post("/chat/start")
async def start_chat(
    user_id: UserId, caller: Caller, service: Service, role: str = DEFAULT_ROLE
) -> dict[str, Any]:
    """A new session with the role's character; its greeting is the first message."""
    uid = resolve_user(caller, user_id)
    character = await _role(service, role)
    meta, greeting = await service.create_session(uid, character.id, memory=False)
    return {
        "session_id": meta.session_id,
        "message": SESSION_CREATED,
        "welcome_message": greeting.content if greeting else "",
        "role": meta.character_id,
    }


@router.get("/chat/stream")
async def chat_stream(
    user_id: UserId,
    session_id: SessionId,
    message: Annotated[str, Query(description="the user's message")],
    caller: Caller,
    service: Service,
    role: Annotated[
        str | None, Query(description="this message's role (the session follows it)")
    ] = None,
) -> EventSourceResponse:
    """Send a message and stream the reply as the seed's SSE frames."""
    uid = resolve_user(caller, user_id)
    character = await _role(service, role or DEFAULT_ROLE)
    gen = await prepare_conversation_turn(
        service,
        uid,
        session_id,
        character.id,
        message,
        stream=True,
        turn_character=role is not None,
    )
    sid = gen.session_id
    frames = subscribe(gen, lambda event: chunk_frame(event, sid), error_frame)
    return sse_response(
        gen,
        frames,
        grace_s=service.settings.server.shutdown_grace_s,
    )


@router.get("/chat/history")
async def chat_history(
    user_id: UserId, session_id: SessionId, caller: Caller, service: Service
) -> dict[str, Any]:
    """The session's stored messages, oldest first (none for an id not started yet)."""
    uid = resolve_user(caller, user_id)
    try:
        snap = await service.read_history(uid, session_id)
    except SessionNotFound:
        return {"session_id": session_id, "messages": [], "total": 0}
    return {
        "session_id": session_id,
        "messages": [
            {"role": m.role.value, "content": m.content, "timestamp": m.timestamp}
            for m in snap.messages
        ],
        "total": len(snap.messages),
    }


@router.get("/chat/sessions")
async def chat_sessions(user_id: UserId, caller: Caller, service: Service) -> dict[str, Any]:
    """The user's sessions, most recently active first, with a last-message preview."""
    uid = resolve_user(caller, user_id)
    metas = await service.list_sessions(uid)
    return {"user_id": uid, "sessions": [_session_row(m) for m in metas], "total": len(metas)}


@router.get("/roles")
async def roles(caller: Caller, service: Service) -> dict[str, Any]:
    """Every character, as the seed's `AI_ROLES`: id → name and prompt (with auth on, the
    prompt is a placeholder with its token count for non-admins)."""
    return {
        "roles": {
            ch.id: role_view(ch, show_prompts=caller.is_admin)
            for ch in await service.characters.list()
        }
    }


@router.delete("/chat/session/{session_id}")
async def delete_session(
    session_id: str, user_id: UserId, caller: Caller, service: Service
) -> dict[str, Any]:
    uid = resolve_user(caller, user_id)
    await service.delete_session(uid, session_id)
    return {"message": SESSION_DELETED, "session_id": session_id}
