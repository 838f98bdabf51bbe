"""create_app(settings): the FastAPI application with its parts built in the lifespan."""

from __future__ import annotations

import asyncio
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
from chatmem.api.routes import characters, health, sessions, users
from chatmem.api.routes.compat import chat_app, companion, simple_chat
from chatmem.api.routes.openai import completions as openai_compat
from chatmem.api.security_headers import SecurityHeadersMiddleware
from chatmem.auth import Authenticator, warn_if_exposed
from chatmem.auth_throttle import AuthThrottle
from chatmem.characters import CharacterRegistry
from chatmem.chat.service import ChatService
from chatmem.config import Settings
from chatmem.durability.outbox import OUTBOX_DIR, Outbox
from chatmem.metrics import Metrics
from chatmem.ops.embedded import EmbeddedRedis
from chatmem.providers.base import ChatProvider
from chatmem.providers.factory import make_provider
from chatmem.store.auth_failures import RedisFailureCounter
from chatmem.store.client import make_redis
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.locks import Coordinator

log = logging.getLogger("chatmem")
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


async def build_parts(
    settings: Settings, authenticator: Authenticator, provider: ChatProvider | None = None
) -> AppParts:
    embedded = None
    url = settings.redis.url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await asyncio.to_thread(embedded.start)
    try:
        return await _build_on(url, settings, authenticator, provider, embedded)
    except BaseException:
        # A start-up that fails leaves no redis-server behind.
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise


async def _build_on(
    url: str,
    settings: Settings,
    authenticator: Authenticator,
    provider: ChatProvider | None,
    embedded: EmbeddedRedis | None,
) -> AppParts:
    redis = make_redis(url, settings.redis)
    metrics = Metrics()
    mem = settings.memory
    store = RedisMemoryStore(
        redis,
        max_messages=mem.max_messages,
        default_ttl_s=mem.default_ttl_s,
        default_window=mem.window_size,
        on_op=metrics.observe_store_op,
        wait_replicas=settings.redis.wait_replicas,
        wait_timeout_ms=settings.redis.wait_timeout_ms,
        on_not_replicated=metrics.count_not_replicated,
        max_sessions_per_user=settings.limits.max_sessions_per_user,
        max_stored_bytes_per_user=settings.limits.max_stored_bytes_per_user,
    )
    characters = CharacterRegistry(redis, settings.characters_dir)
    lim = settings.limits
    coordinator = Coordinator(
        redis,
        lock_ttl_ms=lim.session_lock_ttl_ms,
        lock_wait_ms=lim.session_lock_wait_ms,
        turns_per_minute=lim.turns_per_minute,
        writes_per_minute=lim.writes_per_minute,
        streams_per_user=lim.streams_per_user,
    )
    provider = provider or make_provider(settings.llm)
    outbox = Outbox(settings.data_dir / OUTBOX_DIR)
    service = ChatService(settings, store, provider, characters, coordinator, metrics, outbox)
    # Replays outboxes that dead processes left in this data dir, and this one's later.
    await service.start()
    return AppParts(
        settings=settings,
        redis=redis,
        store=store,
        service=service,
        characters=characters,
        authenticator=authenticator,
        auth_throttle=AuthThrottle(
            RedisFailureCounter(redis),
            max_failures=settings.auth.max_failures,
            window_s=settings.auth.failure_window_s,
        ),
        metrics=metrics,
        embedded=embedded,
    )


async def close_parts(parts: AppParts) -> None:
    """Graceful shutdown, uvicorn having stopped accepting: the turns in flight finish (or
    are stored as interrupted), the outbox is flushed, and the embedded Redis goes last,
    since everything before may still write to it."""
    await parts.service.close()
    await parts.service.provider.aclose()
    await parts.redis.aclose()
    if parts.embedded is not None:
        await asyncio.to_thread(parts.embedded.stop)


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
        parts = await build_parts(settings, authenticator, provider)
        app.state.parts = parts
        try:
            yield
        finally:
            await close_parts(parts)

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
    for module in (health, sessions, users, characters, openai_compat):
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
