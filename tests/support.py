"""What every kind of test needs: a free port, waiting for a condition, a clean environment.

Tests never sleep to order events: they wait for the event itself, polling a condition
with a deadline (`wait_until`, `eventually`), or on a hook that says it happened.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar, cast

from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.locks import Coordinator
from chatmem.store.turns import TurnStore

T = TypeVar("T")

POLL_S = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], T],
    what: str,
    *,
    timeout_s: float = 10.0,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Poll `check` until it returns something true (returned), or fail after `timeout_s`.

    Exceptions of the `ignore` types count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if result := check():
                return result
        except ignore:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    what: str,
    *,
    timeout_s: float = 10.0,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """`wait_until` in a test's event loop (which it never blocks): `check` may be a
    coroutine function or a plain one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return cast(T, result)
        except ignore:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def next_millisecond() -> None:
    """Return once the wall clock has moved on to a later millisecond (at most one away):
    what is stamped in ms after this call sorts after what was stamped before it."""
    start = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 <= start:
        pass


ENV_PREFIX = "CHATMEM_"


NO_JOBS = {"CHATMEM_JOBS_ENABLED": "false"}


def scrubbed_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any CHATMEM_ setting (a developer's own would leak in) but
    `NO_JOBS`."""
    environ = os.environ if environ is None else environ
    # Background jobs (summaries, titles) would ask the fake model too: a test of them
    # turns them on (tests/test_jobs_processes.py).
    return {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)} | NO_JOBS


def process_env(redis_url: str | None, llm_base_url: str) -> dict[str, str]:
    """The environment of a `python -m chatmem serve` process on `redis_url` (None: its
    embedded Redis) that asks the fake model at `llm_base_url`, once (no retries), with
    nothing inherited (`scrubbed_env`: background jobs off). Tests add their settings."""
    redis = {"CHATMEM_REDIS_URL": redis_url} if redis_url else {}
    return (
        scrubbed_env()
        | redis
        | {
            "CHATMEM_LLM_PROVIDER": "openai",
            "CHATMEM_LLM_BASE_URL": llm_base_url,
            "CHATMEM_LLM_API_KEY": "test-key",
            "CHATMEM_LLM_MODEL": "fake-model",
            "CHATMEM_LLM_MAX_RETRIES": "0",
        }
    )


def unlimited_turns(store: RedisMemoryStore, *, lock_ttl_ms: int = 30_000) -> TurnStore:
    """The turn store over `store` for store-level tests: no rate limits, no stream cap,
    and a busy session's lock is not waited for."""
    coordinator = Coordinator(
        store.redis,
        lock_ttl_ms=lock_ttl_ms,
        lock_wait_ms=0,
        turns_per_minute=0,
        writes_per_minute=0,
        streams_per_user=0,
    )
    return TurnStore(store, coordinator)
