"""The caller's own data (`/v1/me`) and the admin's view of users (`/v1/admin`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from chatmem.api.deps import Admin, Caller, Service
from chatmem.api.schemas import UpdateMe
from chatmem.ids import validate_id

router = APIRouter(tags=["users"])


@router.get("/v1/me")
async def me(caller: Caller, service: Service) -> dict[str, Any]:
    totals = await service.user_totals(caller.user_id)
    name = await service.display_name(caller.user_id)
    return {**totals.to_dict(), "is_admin": caller.is_admin, "display_name": name}


@router.patch("/v1/me")
async def update_me(body: UpdateMe, caller: Caller, service: Service) -> dict[str, Any]:
    """Change the caller's profile: `display_name` (the `{{user}}` of prompts and
    greetings; null: back to "User"). A body without it changes nothing."""
    if "display_name" in body.model_fields_set:
        await service.set_display_name(caller.user_id, body.display_name)
    return await me(caller, service)


@router.delete("/v1/me")
async def erase_me(caller: Caller, service: Service) -> dict[str, Any]:
    """Erase all of the caller's data."""
    n = await service.delete_user(caller.user_id)
    return {"user_id": caller.user_id, "deleted_sessions": n}


@router.get("/v1/admin/users")
async def list_users(
    _: Admin,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    users = await service.list_users(limit=limit, offset=offset)
    return {"users": users, "total": await service.count_users()}


@router.get("/v1/admin/users/{user_id}")
async def user_detail(user_id: str, _: Admin, service: Service) -> dict[str, Any]:
    validate_id(user_id, "user id")
    totals = await service.user_totals(user_id)
    sessions = await service.list_sessions(user_id)
    return {**totals.to_dict(), "sessions": [m.to_dict() for m in sessions]}


@router.delete("/v1/admin/users/{user_id}")
async def erase_user(user_id: str, _: Admin, service: Service) -> dict[str, Any]:
    n = await service.delete_user(validate_id(user_id, "user id"))
    return {"user_id": user_id, "deleted_sessions": n}


@router.get("/v1/admin/stats")
async def stats(_: Admin, service: Service) -> dict[str, Any]:
    """Users, Redis INFO, the provider and the replies being streamed now."""
    return await service.stats()
