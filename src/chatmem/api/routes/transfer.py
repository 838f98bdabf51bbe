"""Export and import over HTTP (`GET /v1/export`, `POST /v1/import`): the same document
as `chatmem export` / `chatmem import` (ops/transfer.py), for the page and for the CLI's
`--url`. A user exports their own sessions, an admin anyone's. Import is for admins (in
open mode, everyone), as `chatmem import` is: it writes sessions as they were, usage
figures included, outside the per-user caps a turn is held to.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from chatmem.api.deps import Admin, Caller, Service
from chatmem.auth import resolve_user
from chatmem.errors import Forbidden, SessionNotFound
from chatmem.ops.transfer import (
    check_characters,
    export_sessions,
    import_sessions,
    parse_export,
    parse_memories,
    parse_profiles,
    sessions_to_export,
)

router = APIRouter(tags=["transfer"])


@router.get("/v1/export")
async def export(
    caller: Caller,
    service: Service,
    user_id: Annotated[str | None, Query(max_length=128)] = None,
    all_users: Annotated[bool, Query(alias="all")] = False,
    session_id: Annotated[str | None, Query(max_length=128)] = None,
) -> dict[str, Any]:
    """The caller's sessions with their messages (or only `session_id`); an admin may
    name a user, or ask for everyone's (`all=true`)."""
    if all_users and not caller.is_admin:
        raise Forbidden("exporting every user's sessions needs an admin credential")
    user = None if all_users else resolve_user(caller, user_id or caller.user_id)
    metas = await sessions_to_export(service.store, user)
    if session_id is not None:
        metas = [m for m in metas if m.session_id == session_id]
        if not metas:
            raise SessionNotFound(f"session {session_id[:64]!r} not found")
        return await export_sessions(service.store, metas)
    # A user's long-term memories go with their sessions (everyone's: with their sessions).
    memory_users = [user] if user else sorted({m.user_id for m in metas})
    return await export_sessions(service.store, metas, None, memory_users)


@router.post("/v1/import")
async def import_(
    doc: Annotated[dict[str, Any], Body(description="a document made by an export")],
    _: Admin,
    service: Service,
) -> dict[str, Any]:
    """Import an export (admin): ids kept, what is already there skipped (idempotent);
    every session is checked before anything is stored."""
    sessions = parse_export(doc)
    memories = parse_memories(doc)
    profiles = parse_profiles(doc)
    await check_characters(sessions, service.characters)
    report = await import_sessions(service.store, sessions, None, memories, profiles)
    return {
        "sessions": report.sessions,
        "messages_added": report.messages_added,
        "messages_skipped": report.messages_skipped,
        "memories_added": report.memories_added,
    }
