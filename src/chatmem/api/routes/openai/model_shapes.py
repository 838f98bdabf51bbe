"""`GET /v1/models`: the characters as OpenAI's `model` objects (pure: no I/O)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from chatmem.models import Character

OWNED_BY = "chatmem"


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    name: str = Field(description="chatmem: the character's display name")
    character_id: str = Field(description="chatmem: the character this model id talks to")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


def model_entry(character: Character, *, model_id: str | None = None) -> dict[str, Any]:
    """A `model` object: a character, under its own id or under `model_id`."""
    return {
        "id": model_id or character.id,
        "object": "model",
        # Characters carry no creation time; 0 keeps the field an integer, as clients expect.
        "created": 0,
        "owned_by": OWNED_BY,
        "name": character.name,
        "character_id": character.id,
    }


def model_list(
    characters: list[Character], *, default: Character, configured_model: str | None
) -> dict[str, Any]:
    """Every character as a model, then the configured model name (the default character)."""
    data = [model_entry(ch) for ch in characters]
    if configured_model and all(ch.id != configured_model for ch in characters):
        data.append(model_entry(default, model_id=configured_model))
    return {"object": "list", "data": data}
