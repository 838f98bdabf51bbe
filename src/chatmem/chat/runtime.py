"""The composition root: settings in, a running ChatService out, and closed again.

`running(settings)` is what the app's lifespan uses (and so the in-process CLI):

    redis-server (embedded, when no CHATMEM_REDIS_URL)  ─┐
    redis client ─ RedisMemoryStore, Coordinator, CharacterStore
    provider (its warm-up started in the background)     ├─ ChatService (+ outbox replay)
    metrics, outbox                                     ─┘
    redis client ─ RedisFailureCounter                   ── for the API's auth throttle

Everything is closed in the reverse order, also when a later part fails to start, so a
failed start-up leaves no redis-server behind. `open_store(settings)` is the same Redis,
for tools that work on the stored conversations only (export, import).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from chatmem.auth_throttle import FailureCounter
from chatmem.characters import CharacterRegistry
from chatmem.chat.service import ChatService
from chatmem.config import Settings
from chatmem.durability.outbox import OUTBOX_DIR, Outbox
from chatmem.metrics import Metrics
from chatmem.ops.embedded import EmbeddedRedis
from chatmem.providers.base import ChatProvider
from chatmem.providers.factory import make_provider, suggested_character
from chatmem.store.auth_failures import RedisFailureCounter
from chatmem.store.characters import CharacterStore
from chatmem.store.client import AnyRedis, make_redis
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.locks import Coordinator

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What runs for an app's lifetime: the service, and the Redis-backed counter of
    failed authentications (the API's throttle, auth_throttle.py, counts with it)."""

    service: ChatService
    auth_failures: FailureCounter


async def _connect(settings: Settings, stack: AsyncExitStack) -> AnyRedis:
    url = settings.redis.url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        url = await asyncio.to_thread(embedded.start)
        # Last to stop: everything closed before it may still write to it.
        stack.push_async_callback(asyncio.to_thread, embedded.stop)
    redis = make_redis(url, settings.redis)
    stack.push_async_callback(redis.aclose)
    return redis


def _store(redis: AnyRedis, settings: Settings, metrics: Metrics | None) -> RedisMemoryStore:
    mem = settings.memory
    store = RedisMemoryStore(
        redis,
        max_messages=mem.max_messages,
        default_ttl_s=mem.default_ttl_s,
        default_window=mem.window_size,
        on_op=metrics.observe_store_op if metrics else None,
        wait_replicas=settings.redis.wait_replicas,
        wait_timeout_ms=settings.redis.wait_timeout_ms,
        on_not_replicated=metrics.count_not_replicated if metrics else None,
        max_sessions_per_user=settings.limits.max_sessions_per_user,
        max_stored_bytes_per_user=settings.limits.max_stored_bytes_per_user,
    )
    if store.write_concern is not None:
        store.write_concern.strict = settings.redis.wait_strict
    return store


def character_registry(redis: AnyRedis, settings: Settings) -> CharacterRegistry:
    """The characters the server would offer: built-ins, the directory, Redis."""
    return CharacterRegistry(
        CharacterStore(redis),
        settings.characters_dir,
        preferred_default=settings.default_character or suggested_character(settings.llm),
    )


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[RedisMemoryStore]:
    """The memory store the server would use: the configured Redis, or the embedded one."""
    async with AsyncExitStack() as stack:
        yield _store(await _connect(settings, stack), settings, None)


def _warm_up_in_background(provider: ChatProvider, stack: AsyncExitStack) -> None:
    """Load the model ahead of the first turn (the local provider has `warm_up`), without
    holding up start-up or readiness: a turn that comes first simply waits for the load."""
    warm_up: Callable[[], Awaitable[None]] | None = getattr(provider, "warm_up", None)
    if warm_up is None:
        return

    async def run() -> None:
        try:
            await warm_up()
        except Exception:
            log.exception("the model's warm-up failed; it loads on the first turn instead")

    task = asyncio.create_task(run(), name="provider warm-up")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


@asynccontextmanager
async def running(
    settings: Settings, provider: ChatProvider | None = None
) -> AsyncIterator[Runtime]:
    """A started ChatService on the settings' Redis and provider; on exit, a graceful
    shutdown: turns in flight finish (or are stored as interrupted), the outbox is
    flushed, then the provider, the Redis client and the embedded redis-server close."""
    async with AsyncExitStack() as stack:
        redis = await _connect(settings, stack)
        metrics = Metrics()
        store = _store(redis, settings, metrics)
        characters = character_registry(redis, settings)
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
        stack.push_async_callback(provider.aclose)
        _warm_up_in_background(provider, stack)
        outbox = Outbox(settings.data_dir / OUTBOX_DIR)
        service = ChatService(settings, store, provider, characters, coordinator, metrics, outbox)
        # Replays outboxes that dead processes left in this data dir, and this one's later.
        await service.start()
        stack.push_async_callback(service.close)
        yield Runtime(service, RedisFailureCounter(redis))
