"""FastAPI dependencies as Annotated aliases: the app's parts and the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from chatmem.auth import Authenticator, Principal, require_admin
from chatmem.characters import CharacterRegistry
from chatmem.chat.service import ChatService
from chatmem.config import Settings
from chatmem.metrics import Metrics


@dataclass
class AppParts:
    """What the routes use: the service (sessions, turns, users, figures) and the
    characters, the caller's authentication, the metrics. No Redis: that is below
    the service (chat/runtime.py builds it)."""

    settings: Settings
    service: ChatService
    characters: CharacterRegistry
    authenticator: Authenticator
    metrics: Metrics


def get_parts(request: Request) -> AppParts:
    parts: AppParts = request.app.state.parts
    return parts


Parts = Annotated[AppParts, Depends(get_parts)]


def get_service(parts: Parts) -> ChatService:
    return parts.service


Service = Annotated[ChatService, Depends(get_service)]


async def get_principal(
    parts: Parts,
    authorization: Annotated[str | None, Header()] = None,
    x_user_id: Annotated[str | None, Header()] = None,
) -> Principal:
    return parts.authenticator.authenticate(authorization, x_user_id)


Caller = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: Caller) -> Principal:
    require_admin(principal)
    return principal


Admin = Annotated[Principal, Depends(get_admin)]
