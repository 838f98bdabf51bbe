"""Editing a conversation (SPEC §3b): `/v1/sessions/{sid}/messages/{mid}` and `/fork`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from chatmem.api.deps import Caller, Service
from chatmem.api.schemas import ChangeMessage, ForkSession
from chatmem.errors import InvalidInput

router = APIRouter(prefix="/v1/sessions", tags=["editing"])


@router.patch("/{session_id}/messages/{message_id}")
async def change_message(
    session_id: str, message_id: str, body: ChangeMessage, caller: Caller, service: Service
) -> dict[str, Any]:
    """`{selected}` shows another alternative of a reply; `{content}` edits in place."""
    if (body.content is None) == (body.selected is None):
        raise InvalidInput("give either content or selected", code="invalid_edit")
    if body.selected is not None:
        msg = await service.editing.select(caller.user_id, session_id, message_id, body.selected)
    else:
        assert body.content is not None
        msg = await service.editing.edit(caller.user_id, session_id, message_id, body.content)
    return {"message": msg.to_dict()}


@router.delete("/{session_id}/messages/{message_id}", status_code=204)
async def delete_message(
    session_id: str, message_id: str, caller: Caller, service: Service
) -> Response:
    await service.editing.delete(caller.user_id, session_id, message_id)
    return Response(status_code=204)


@router.post("/{session_id}/fork", status_code=201)
async def fork_session(
    session_id: str, body: ForkSession, caller: Caller, service: Service
) -> dict[str, Any]:
    meta, messages = await service.editing.fork(
        caller.user_id, session_id, body.message_id, title=body.title
    )
    return {"session": meta.to_dict(), "messages": [m.to_dict() for m in messages]}
