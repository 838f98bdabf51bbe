"""Seed 004: the AI companion's chat, one conversation per (user, character).

    POST   /api/v1/chat/stream {character_id, message}
           event: message  data: {"content": "…", "done": false}
           …
           event: message  data: {"content": "", "done": true}
           event: error    data: {"error": "…", "code": "…"}
    DELETE /api/v1/chat/history?character_id=  → {"message": "历史已清空", "character_id"}

Its context follows the document: the character's system prompt, up to 50 history
messages (`get_context_messages(max_messages=50)`) within the token budget, and the new
message — not the native sessions' window of rounds.

The user is the caller (the credential with auth on, `X-User-Id` in open mode), never
the body. The conversation is the session `char.<character_id>`, created empty on the
first message and living by the server's default TTL (24 h, as in the seed).

Clearing is idempotent, as in the seed: a conversation that does not exist (never
started, or expired) is already clear. An unknown character is a 404.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from chatmem.api.deps import Caller, Service
from chatmem.api.sse.response import sse_response, subscribe
from chatmem.chat.conversations import (
    SEED_COMPANION_HISTORY_MESSAGES,
    character_session_id,
    prepare_conversation_turn,
)
from chatmem.chat.service import Delta, TurnEvent
from chatmem.errors import SessionNotFound

router = APIRouter(prefix="/api/v1/chat", tags=["seed 004: companion"])

HISTORY_CLEARED = "历史已清空"


class CompanionChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    character_id: str = Field(max_length=64, description="the character to talk to")
    message: str = Field(max_length=2000, description="the user's message")


def _data(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def message_frame(event: TurnEvent) -> dict[str, str]:
    if isinstance(event, Delta):
        return {"event": "message", "data": _data({"content": event.text, "done": False})}
    return {"event": "message", "data": _data({"content": "", "done": True})}


def error_frame(code: str, message: str) -> dict[str, str]:
    return {"event": "error", "data": _data({"error": message, "code": code})}


@router.post("/stream")
async def chat_stream(
    body: CompanionChatRequest, caller: Caller, service: Service
) -> EventSourceResponse:
    """Send a message to the character and stream the reply."""
    character = await service.characters.get(body.character_id)
    gen = await prepare_conversation_turn(
        service,
        caller.user_id,
        character_session_id(character.id),
        character.id,
        body.message,
        stream=True,
        history_messages=SEED_COMPANION_HISTORY_MESSAGES,
    )
    frames = subscribe(gen, message_frame, error_frame)
    return sse_response(gen, frames, grace_s=service.settings.server.shutdown_grace_s)


@router.delete("/history")
async def clear_history(character_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    """Forget the conversation with the character (the session stays, empty)."""
    character = await service.characters.get(character_id)
    with contextlib.suppress(SessionNotFound):
        await service.clear_session(caller.user_id, character_session_id(character.id))
    return {"message": HISTORY_CLEARED, "character_id": character.id}
