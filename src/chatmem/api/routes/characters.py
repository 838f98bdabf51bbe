"""Characters: anyone lists and reads them; admins create, replace, delete and import."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from chatmem.api.deps import Admin, Caller, Parts
from chatmem.auth import Principal
from chatmem.errors import InvalidInput
from chatmem.models import Character

router = APIRouter(prefix="/v1/characters", tags=["characters"])


# A character's prompts can be an operator's work product: with auth on, only admins
# read them (in open mode every caller is the admin).
_PROMPT_FIELDS = {"system_prompt", "post_history_instructions", "extensions"}


def _public(ch: Character, caller: Principal) -> dict[str, Any]:
    return ch.model_dump(mode="json", exclude=None if caller.is_admin else _PROMPT_FIELDS)


@router.get("")
async def list_characters(caller: Caller, parts: Parts) -> dict[str, Any]:
    return {
        "characters": [_public(c, caller) for c in await parts.characters.list()],
        "default": parts.characters.default_id,
    }


@router.get("/{character_id}")
async def get_character(character_id: str, caller: Caller, parts: Parts) -> dict[str, Any]:
    return _public(await parts.characters.get(character_id), caller)


@router.post("", status_code=201)
async def create_character(body: Character, admin: Admin, parts: Parts) -> dict[str, Any]:
    return _public(await parts.characters.create(body), admin)


@router.put("/{character_id}")
async def replace_character(
    character_id: str, body: Character, admin: Admin, parts: Parts
) -> dict[str, Any]:
    if body.id != character_id:
        raise InvalidInput("the body's id must match the path", code="id_mismatch")
    return _public(await parts.characters.update(body), admin)


@router.delete("/{character_id}", status_code=204)
async def delete_character(character_id: str, _: Admin, parts: Parts) -> Response:
    await parts.characters.delete(character_id)
    return Response(status_code=204)


@router.post("/import", status_code=201)
async def import_card(
    card: Annotated[dict[str, Any], Body(description="a Character Card V2 JSON document")],
    admin: Admin,
    parts: Parts,
    character_id: str | None = None,
) -> dict[str, Any]:
    """Import a Character Card V2 (`spec: chara_card_v2`)."""
    return _public(await parts.characters.import_card(card, character_id=character_id), admin)
