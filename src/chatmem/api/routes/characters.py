"""Characters: anyone lists and reads them; admins create, replace, delete and import."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response

from chatmem.api.deps import Admin, Caller, Parts
from chatmem.auth import Principal
from chatmem.characters.png_card import card_from_png
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


_CARD_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": True}
_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _CARD_SCHEMA},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/import", status_code=201, openapi_extra=_IMPORT_BODY)
async def import_card(
    request: Request,
    admin: Admin,
    parts: Parts,
    character_id: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Import a Character Card V2 or V3: its JSON (`chara_card_v2` / `chara_card_v3`), or
    a PNG image carrying it in a `ccv3` or `chara` text chunk (`Content-Type: image/png`)."""
    body = await request.body()
    if request.headers.get("content-type", "").split(";")[0].strip() == "image/png":
        card = card_from_png(body)
    else:
        try:
            card = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"the card is not JSON ({exc})", code="invalid_card") from exc
    return _public(await parts.characters.import_card(card, character_id=character_id), admin)
