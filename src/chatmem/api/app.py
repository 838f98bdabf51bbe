"""create_app(settings): the FastAPI application; its service runs for the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from chatmem import __version__
from chatmem.api import errors
from chatmem.api.access_log import install_access_log_redaction
from chatmem.api.body_limit import BodyLimitMiddleware, route_limits
from chatmem.api.deps import AppParts
from chatmem.api.middleware import RequestIdMiddleware
from chatmem.api.routes import (
    characters,
    editing,
    health,
    memories,
    render,
    sessions,
    transfer,
    users,
)
from chatmem.api.routes.compat import chat_app, companion, simple_chat
from chatmem.api.routes.openai import completions as openai_compat
from chatmem.api.security_headers import SecurityHeadersMiddleware
from chatmem.auth import Authenticator, warn_if_exposed
from chatmem.auth_throttle import AuthThrottle
from chatmem.chat.runtime import running
from chatmem.config import Settings
from chatmem.providers.base import ChatProvider

log = logging.getLogger("chatmem")
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app(
    settings: Settings | None = None, *, provider: ChatProvider | None = None
) -> FastAPI:
    settings = settings or Settings()
    # Here, not in the lifespan: bad keys or a short JWT secret fail before anything
    # (the embedded Redis included) is started.
    authenticator = Authenticator(settings.auth)
    install_access_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warning = warn_if_exposed(settings.server.host, settings.auth)
        if warning:
            log.warning(warning)
        # Built in chat/runtime.py; leaving the block is the graceful shutdown (uvicorn
        # has stopped accepting by then).
        async with running(settings, provider) as runtime:
            service = runtime.service
            app.state.parts = AppParts(
                settings=settings,
                service=service,
                characters=service.characters,
                authenticator=authenticator,
                auth_throttle=AuthThrottle(
                    runtime.auth_failures,
                    max_failures=settings.auth.max_failures,
                    window_s=settings.auth.failure_window_s,
                ),
                metrics=service.metrics,
            )
            yield

    app = FastAPIOffline(
        title="chatmem",
        version=__version__,
        description="Chat backend with conversation memory in Redis.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, limit_for=route_limits(settings.limits))
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    errors.install(app)
    routers = (health, sessions, editing, users, characters, memories, render, transfer)
    for module in (*routers, openai_compat):
        app.include_router(module.router)
    app.include_router(simple_chat.router)
    app.include_router(chat_app.router)
    app.include_router(companion.router)
    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(WEB_DIR / "index.html")
    else:  # pragma: no cover - the page ships with the package

        @app.get("/", include_in_schema=False)
        async def docs_redirect() -> RedirectResponse:
            return RedirectResponse("/docs")

    return app
