"""`POST /v1/render`: Markdown to safe HTML for the page (chatmem/rendering.py).

A render endpoint rather than an `html` field on every message: the API's messages
stay what was stored (any client, the terminal included, renders them its own way),
the page asks for a history page's worth in one request, and the renderer can change
without touching stored data or the SSE events.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from chatmem.api.deps import Caller
from chatmem.rendering import render_markdown

router = APIRouter(tags=["render"])

MAX_TEXTS = 100


class RenderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: Annotated[list[str], Field(max_length=MAX_TEXTS)]


class RenderOut(BaseModel):
    html: list[str]


@router.post("/v1/render")
async def render(body: RenderIn, _: Caller) -> RenderOut:
    """Each text's Markdown as sanitized HTML, in order (raw HTML shows as text)."""
    return RenderOut(html=[render_markdown(t) for t in body.texts])
