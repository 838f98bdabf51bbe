"""FastAPI dependencies as Annotated aliases: the app's parts and the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from chatmem.auth import Authenticator, Principal, require_admin
from chatmem.auth_throttle import AuthThrottle
from chatmem.characters import CharacterRegistry
from chatmem.chat.service import ChatService
from chatmem.config import Settings
from chatmem.errors import Unauthenticated
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
    auth_throttle: AuthThrottle
    metrics: Metrics


# Dependencies are `async def` even when they await nothing: FastAPI runs a plain `def`
# one in its thread pool, two thread hops per request (~0.8 ms of CPU per turn).
async def get_parts(request: Request) -> AppParts:
    parts: AppParts = request.app.state.parts
    return parts


Parts = Annotated[AppParts, Depends(get_parts)]


async def get_service(parts: Parts) -> ChatService:
    return parts.service


Service = Annotated[ChatService, Depends(get_service)]


async def get_principal(
    request: Request,
    parts: Parts,
    authorization: Annotated[str | None, Header()] = None,
    x_user_id: Annotated[str | None, Header()] = None,
) -> Principal:
    authenticator = parts.authenticator
    if not authenticator.enabled:
        return authenticator.authenticate(authorization, x_user_id)
    # The peer as the server gives it; a proxy's X-Forwarded-For only when the server
    # was told to trust it (CHATMEM_SERVER_TRUSTED_PROXIES).
    address = request.client.host if request.client else "unknown"
    parts.auth_throttle.check(address)
    try:
        return authenticator.authenticate(authorization, x_user_id)
    except Unauthenticated:
        # A request without a credential guesses nothing: only wrong ones count.
        if authorization and authorization.strip():
            await parts.auth_throttle.failed(address)
        raise


Caller = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: Caller) -> Principal:
    require_admin(principal)
    return principal


Admin = Annotated[Principal, Depends(get_admin)]
