"""Editing a conversation (SPEC §3b): `/v1/sessions/{sid}/regenerate` and `/continue`
(answered like a send), `/messages/{mid}` (select, edit, delete) and `/fork`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.responses import Response as StarletteResponse

from chatmem.api.deps import Caller, Service
from chatmem.api.routes.sessions import turn_response
from chatmem.api.schemas import ChangeMessage, ForkSession, Revise
from chatmem.errors import InvalidInput

router = APIRouter(prefix="/v1/sessions", tags=["editing"])


_TURN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "text/event-stream": {}}}
}


async def _revise(
    revision: str, session_id: str, body: Revise, request: Request, caller: Caller, service: Service
) -> StarletteResponse | dict[str, Any]:
    wants_sse = body.stream or "text/event-stream" in request.headers.get("accept", "")
    gen = await service.prepare_revision(
        caller.user_id,
        session_id,
        revision,
        stream=wants_sse,
        on_disconnect=body.on_disconnect,
    )
    return await turn_response(gen, wants_sse, service)


@router.post("/{session_id}/regenerate", response_model=None, responses=_TURN_RESPONSES)
async def regenerate(
    session_id: str, request: Request, caller: Caller, service: Service, body: Revise | None = None
) -> StarletteResponse | dict[str, Any]:
    """A new reply to the last user message, kept as a new alternative of the last reply
    (at most 10; the new one selected)."""
    return await _revise("regenerate", session_id, body or Revise(), request, caller, service)


@router.post("/{session_id}/continue", response_model=None, responses=_TURN_RESPONSES)
async def continue_reply(
    session_id: str, request: Request, caller: Caller, service: Service, body: Revise | None = None
) -> StarletteResponse | dict[str, Any]:
    """More of the last reply: the model sees it as its last, unfinished message."""
    return await _revise("continue", session_id, body or Revise(), request, caller, service)


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
