"""The caller's long-term memories (SPEC §2b): `/v1/memories`.

Memories belong to (user, character); the caller only ever sees and changes their own
(the user id is the caller's, never a parameter). An unknown memory id is 404, bad
input 4xx with `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from chatmem.api.deps import Caller, Service

router = APIRouter(tags=["memories"])

_TEXT = Field(min_length=1, max_length=500)


class NewMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    character_id: str = Field(min_length=1, max_length=64)
    text: str = _TEXT


class EditMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = _TEXT


@router.get("/v1/memories")
async def list_memories(
    caller: Caller,
    service: Service,
    character_id: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """All of the caller's memories (grouped by character id), or those with one
    character; within a character, the most recently updated first."""
    return {"memories": await service.memories.list_for(caller.user_id, character_id)}


@router.post("/v1/memories", status_code=201)
async def add_memory(body: NewMemory, caller: Caller, service: Service) -> dict[str, Any]:
    return await service.memories.add(caller.user_id, body.character_id, body.text)


@router.patch("/v1/memories/{memory_id}")
async def edit_memory(
    memory_id: str, body: EditMemory, caller: Caller, service: Service
) -> dict[str, Any]:
    return await service.memories.edit(caller.user_id, memory_id, body.text)


@router.delete("/v1/memories/{memory_id}", status_code=204)
async def delete_memory(memory_id: str, caller: Caller, service: Service) -> Response:
    await service.memories.delete(caller.user_id, memory_id)
    return Response(status_code=204)
