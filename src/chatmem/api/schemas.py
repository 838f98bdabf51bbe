"""Request bodies of the native API (responses are the domain values' dicts).

Numbers and booleans are strict: `"window_size": true` or `"stream": "yes"` is a client's
mistake (400), not 1 or True."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatmem.chat.conversations import MAX_TTL_S, MIN_TTL_S, WINDOW_MAX, WINDOW_MIN
from chatmem.models import SessionState


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    character_id: str | None = Field(None, max_length=64)
    title: str = Field("", max_length=200)
    ttl_s: int | None = Field(None, ge=MIN_TTL_S, le=MAX_TTL_S, strict=True)
    window_size: int | None = Field(None, ge=WINDOW_MIN, le=WINDOW_MAX, strict=True)
    # The chat's own; null: the character's, else the server's.
    temperature: float | None = Field(None, ge=0.0, le=2.0, strict=True)


class UpdateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    ttl_s: int | None = Field(None, ge=MIN_TTL_S, le=MAX_TTL_S, strict=True)
    window_size: int | None = Field(None, ge=WINDOW_MIN, le=WINDOW_MAX, strict=True)
    state: SessionState | None = None
    # Null: back to the character's temperature (left out: unchanged).
    temperature: float | None = Field(None, ge=0.0, le=2.0, strict=True)


class UpdateMe(BaseModel):
    """`PATCH /v1/me`: `display_name` null goes back to "User" (checked by the store)."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(None, max_length=1000)


class SendMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Length is checked by the service so that the error carries its own code.
    content: str
    stream: bool = Field(False, strict=True)
    client_message_id: str | None = Field(None, min_length=1, max_length=128)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # A streamed reply goes on when its client disconnects (re-attach with
    # GET /v1/sessions/{sid}/stream); "stop" stops it instead, as the OpenAI route does.
    on_disconnect: Literal["continue", "stop"] = "continue"


class ChangeMessage(BaseModel):
    """`PATCH /v1/sessions/{sid}/messages/{mid}`: one of the two (SPEC §3b)."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    selected: int | None = Field(None, ge=0, strict=True)


class ForkSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: str = Field(min_length=1, max_length=128)
    title: str = Field("", max_length=200)


class Revise(BaseModel):
    """`POST /v1/sessions/{sid}/regenerate` and `/continue` (the body may be left out)."""

    model_config = ConfigDict(extra="forbid")

    stream: bool = Field(False, strict=True)
    on_disconnect: Literal["continue", "stop"] = "continue"
