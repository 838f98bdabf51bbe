"""Seeds 000 and 001: one conversation per user, `POST /chat` and friends.

Both seeds answer `POST /chat`, so it takes the union of their fields (`user_id`,
`message`, `window_size`, `ttl`) and answers the union (`response`, `user_id`,
`timestamp`, `stats`, `ttl_remaining`). The conversation is the user's `default`
session with the default character, created on first use with the seeds' defaults
(window 5 rounds, TTL 1800 s); a request without `window_size` or `ttl` keeps the
session's own. `GET /health` is shared with the native API (routes/health.py).

Where the seeds differ from chatmem, on purpose:
- `PUT /ttl` refuses a TTL below 60 s as seed 001 does; `POST /chat` takes any `ttl` of
  1 s or more, as the document does (its expiry test sends 5); above a year, or below
  1 s, both answer 400 `invalid_ttl`;
- `DELETE /history` keeps the conversation with zero messages (seed 000); seed 001
  deleted it;
- `GET /stats` walks the users index and each user's sessions index, never `KEYS`
  (it counts every stored message of each user, not only this conversation's); with
  auth on it is for admins, and `GET /users` shows other users only to admins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from chatmem.api.deps import Caller, Service
from chatmem.auth import Principal, require_admin, resolve_user
from chatmem.chat.conversations import (
    DEFAULT_SESSION_ID,
    SEED_CHAT_MIN_TTL_S,
    WINDOW_MAX,
    WINDOW_MIN,
    prepare_conversation_turn,
    validate_ttl,
)
from chatmem.chat.service import ChatService
from chatmem.config import Settings
from chatmem.errors import StoreUnavailable, UserNotFound
from chatmem.models import SessionSnapshot
from chatmem.tokens import price_for

router = APIRouter(tags=["seed 000/001: one conversation per user"])

SEED_WINDOW_SIZE = 5
SEED_TTL_S = 1800
USERS_PAGE = 10_000


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(description="the user (with auth on: the caller, or any if admin)")
    message: str = Field(description="the user's message")
    window_size: int | None = Field(
        None,
        ge=WINDOW_MIN,
        le=WINDOW_MAX,
        description="rounds of history sent to the model; kept if omitted",
    )
    ttl: int | None = Field(None, description="seconds the conversation lives; kept if omitted")


def iso_time(timestamp_s: float) -> str:
    """The seeds' timestamps: local time, ISO 8601 (`datetime.now().isoformat()`)."""
    return datetime.fromtimestamp(timestamp_s).isoformat()


def _snapshot_stats(snap: SessionSnapshot, settings: Settings) -> dict[str, Any]:
    """Seed 000's stats: counts, and the tokens (and their price) of the window's history."""
    meta = snap.meta
    window = snap.messages[-2 * meta.window_size :] if meta.window_size else []
    tokens = sum(m.token_count for m in window)
    return _stats(meta.stored_messages, meta.window_size, tokens, settings)


def _stats(stored: int, window_size: int, tokens: int, settings: Settings) -> dict[str, Any]:
    prices = settings.llm.prices
    per_token_35 = price_for("gpt-3.5-turbo", prices).input_per_1m / 1e6
    per_token_4 = price_for("gpt-4", prices).input_per_1m / 1e6
    return {
        "total_messages": stored,
        "total_rounds": stored // 2,
        "window_size": window_size,
        "tokens": tokens,
        "cost_gpt35": tokens * per_token_35,
        "cost_gpt4": tokens * per_token_4,
    }


async def _read(service: ChatService, user_id: str, *, last: int | None) -> SessionSnapshot:
    return await service.read_history(user_id, DEFAULT_SESSION_ID, last=last)


@router.post("/chat")
async def chat(body: ChatRequest, caller: Caller, service: Service) -> dict[str, Any]:
    """Send a message to the user's conversation and get the whole reply."""
    user_id = resolve_user(caller, body.user_id)
    turn = await prepare_conversation_turn(
        service,
        user_id,
        DEFAULT_SESSION_ID,
        service.characters.default_id,
        body.message,
        ttl_s=body.ttl,
        window_size=body.window_size,
        new_ttl_s=SEED_TTL_S,
        new_window_size=SEED_WINDOW_SIZE,
        min_ttl_s=SEED_CHAT_MIN_TTL_S,
        figures=True,  # the stats come back with the reply's write
    )
    done = await service.complete(turn)
    reply = {
        "response": done.message.content,
        "user_id": user_id,
        "timestamp": iso_time(done.message.timestamp),
        "memory": done.memory,
    }
    if done.figures is not None:
        f = done.figures
        stats = _stats(f.stored, f.window_size, f.window_tokens, service.settings)
        return {**reply, "stats": stats, "ttl_remaining": f.ttl_remaining_s}
    try:
        snap = await _read(service, user_id, last=2 * WINDOW_MAX)
    except StoreUnavailable:
        # The turn was kept (in the outbox): answer it, with stats we cannot know zeroed,
        # rather than a 503 that would make the client send it again.
        empty = dict.fromkeys(("total_messages", "total_rounds", "tokens"), 0)
        stats = {
            **empty,
            "window_size": body.window_size or SEED_WINDOW_SIZE,
            "cost_gpt35": 0.0,
            "cost_gpt4": 0.0,
        }
        return {**reply, "stats": stats, "ttl_remaining": 0}
    return {
        **reply,
        "stats": _snapshot_stats(snap, service.settings),
        "ttl_remaining": snap.meta.ttl_remaining_s,
    }


@router.get("/history/{user_id}")
async def history(user_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    """The conversation's messages; 404 once it expired."""
    uid = resolve_user(caller, user_id)
    snap = await _read(service, uid, last=None)
    meta = snap.meta
    return {
        "user_id": uid,
        "messages": [
            {"role": m.role.value, "content": m.content, "timestamp": iso_time(m.timestamp)}
            for m in snap.messages
        ],
        "total_messages": meta.stored_messages,
        "total_rounds": meta.stored_messages // 2,
        "window_size": meta.window_size,
        "ttl_remaining": meta.ttl_remaining_s,
    }


@router.delete("/history/{user_id}")
async def clear_history(user_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    uid = resolve_user(caller, user_id)
    await service.clear_session(uid, DEFAULT_SESSION_ID)
    return {"message": "History cleared", "user_id": uid}


@router.delete("/user/{user_id}")
async def delete_user(user_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    """Erase all of the user's data (every session, not only this conversation)."""
    uid = resolve_user(caller, user_id)
    if await service.delete_user(uid) == 0:
        raise UserNotFound(f"user {uid!r} not found")
    return {"message": "User deleted", "user_id": uid}


@router.get("/stats/{user_id}")
async def user_stats(user_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    uid = resolve_user(caller, user_id)
    snap = await _read(service, uid, last=2 * WINDOW_MAX)
    return {"user_id": uid, **_snapshot_stats(snap, service.settings)}


@router.put("/window-size/{user_id}")
async def update_window_size(
    user_id: str, new_size: int, caller: Caller, service: Service
) -> dict[str, Any]:
    """Rounds of history sent to the model: 1-20, else 400."""
    uid = resolve_user(caller, user_id)
    meta = await service.update_session(uid, DEFAULT_SESSION_ID, window_size=new_size)
    return {"message": "Window size updated", "user_id": uid, "new_size": meta.window_size}


@router.put("/ttl/{user_id}")
async def update_ttl(
    user_id: str, new_ttl: int, caller: Caller, service: Service
) -> dict[str, Any]:
    """Seconds the conversation lives after its last write: at least 60, else 400."""
    uid = resolve_user(caller, user_id)
    validate_ttl(new_ttl)
    meta = await service.update_session(uid, DEFAULT_SESSION_ID, ttl_s=new_ttl)
    return {
        "message": "TTL updated",
        "user_id": uid,
        "new_ttl": meta.ttl_s,
        "ttl_remaining": meta.ttl_remaining_s,
    }


async def _visible_users(caller: Principal, service: ChatService) -> tuple[list[str], int]:
    if caller.is_admin:
        users = await service.list_users(limit=USERS_PAGE)
        total = len(users) if len(users) < USERS_PAGE else await service.count_users()
        return users, total
    own = await service.list_sessions(caller.user_id, limit=1)
    return ([caller.user_id], 1) if own else ([], 0)


@router.get("/users")
async def list_users(caller: Caller, service: Service) -> dict[str, Any]:
    """Users with live conversations (with auth on, a non-admin sees only itself)."""
    users, total = await _visible_users(caller, service)
    return {"total_users": total, "users": users}


@router.get("/stats")
async def global_stats(
    caller: Caller,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=USERS_PAGE)] = USERS_PAGE,
) -> dict[str, Any]:
    """Users and their stored messages (from the users and sessions indexes) and Redis INFO."""
    require_admin(caller)
    info = await service.redis_info()
    users = await service.list_users(limit=limit)
    total_messages = await service.count_messages(users)
    return {
        "total_users": len(users) if len(users) < limit else await service.count_users(),
        "total_messages": total_messages,
        **info,
    }
