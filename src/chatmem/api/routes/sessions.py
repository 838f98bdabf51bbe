"""Sessions, their messages, stop and context: `/v1/sessions…`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.responses import Response as StarletteResponse

from chatmem.api.deps import Caller, Service
from chatmem.api.schemas import CreateSession, SendMessage, UpdateSession
from chatmem.api.sse.events import done_payload, error_event, native_event
from chatmem.api.sse.response import sse_response
from chatmem.chat.inputs import check_metadata

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.post("", status_code=201)
async def create_session(body: CreateSession, caller: Caller, service: Service) -> dict[str, Any]:
    meta, greeting = await service.create_session(
        caller.user_id,
        body.character_id,
        title=body.title,
        ttl_s=body.ttl_s,
        window_size=body.window_size,
    )
    return {"session": meta.to_dict(), "greeting": greeting.to_dict() if greeting else None}


@router.get("")
async def list_sessions(
    caller: Caller, service: Service, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    metas = await service.store.list_sessions(caller.user_id, limit=limit)
    return {"sessions": [m.to_dict() for m in metas]}


@router.get("/{session_id}")
async def get_session(session_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    return (await service.store.get_meta(caller.user_id, session_id)).to_dict()


@router.patch("/{session_id}")
async def update_session(
    session_id: str, body: UpdateSession, caller: Caller, service: Service
) -> dict[str, Any]:
    meta = await service.store.update_session(
        caller.user_id,
        session_id,
        title=body.title,
        ttl_s=body.ttl_s,
        window_size=body.window_size,
        state=body.state,
    )
    return meta.to_dict()


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, caller: Caller, service: Service) -> Response:
    await service.store.delete_session(caller.user_id, session_id)
    return Response(status_code=204)


@router.get("/{session_id}/messages")
async def history(
    session_id: str,
    caller: Caller,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[int | None, Query(ge=1, description="seq cursor: older than this")] = None,
) -> dict[str, Any]:
    snap = await service.store.read(caller.user_id, session_id, last=limit, before_seq=before or 0)
    first = snap.messages[0].seq if snap.messages else None
    oldest_stored = snap.meta.message_count - snap.meta.stored_messages + 1
    return {
        "session_id": session_id,
        "messages": [m.to_dict() for m in snap.messages],
        "next_before": first if first is not None and first > oldest_stored else None,
        "stored_messages": snap.meta.stored_messages,
    }


@router.delete("/{session_id}/messages")
async def clear(session_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    await service.store.clear(caller.user_id, session_id)
    meta = await service.store.get_meta(caller.user_id, session_id)
    return {"session_id": session_id, "cleared": True, "stored_messages": meta.stored_messages}


@router.post(
    "/{session_id}/messages",
    response_model=None,
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
)
async def send_message(
    session_id: str,
    body: SendMessage,
    request: Request,
    caller: Caller,
    service: Service,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> StarletteResponse | dict[str, Any]:
    """Send a message: a JSON reply, or SSE when `stream` is true or Accept asks for it."""
    turn = await service.prepare_turn(
        caller.user_id,
        session_id,
        body.content,
        idempotency_key=idempotency_key or body.client_message_id,
        metadata=check_metadata(body.metadata, service.settings.limits.max_metadata_bytes),
    )
    wants_sse = body.stream or "text/event-stream" in request.headers.get("accept", "")
    if wants_sse:
        return sse_response(turn, native_event, error_event)
    return done_payload(await service.complete(turn))


@router.post("/{session_id}/stop")
async def stop(session_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    return {"session_id": session_id, "stopped": await service.stop(caller.user_id, session_id)}


@router.get("/{session_id}/context")
async def context(session_id: str, caller: Caller, service: Service) -> dict[str, Any]:
    """The exact messages the next turn would send (before its new message), with tokens."""
    view = await service.preview_context(caller.user_id, session_id, show_prompts=caller.is_admin)
    return {"session_id": session_id, **view}
