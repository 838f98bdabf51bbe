"""Failed authentication throttled per client address (SPEC §8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from chatmem.api.app import create_app
from chatmem.auth_throttle import AuthThrottle, LocalFailureCounter
from chatmem.errors import RateLimited, StoreUnavailable
from chatmem.store.conversations import AnyRedis
from tests.api_support import make_test_settings
from tests.fake_openai import FakeOpenAI

ALICE_KEY = "alice-key-0123456789abcdef"
WRONG = {"Authorization": "Bearer wrong-key-0123456789abcdef"}
RIGHT = {"Authorization": f"Bearer {ALICE_KEY}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Unreachable:
    async def add_failure(self, address: str, window_ms: int) -> tuple[int, int]:
        raise StoreUnavailable("redis unavailable during add_failure: refused")


async def test_throttle_blocks_past_the_limit_until_the_window_ends() -> None:
    clock = Clock()
    throttle = AuthThrottle(LocalFailureCounter(clock), max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        throttle.check("1.2.3.4")
        await throttle.failed("1.2.3.4")  # the first three are plain failures (401)
    with pytest.raises(RateLimited) as info:
        throttle.check("1.2.3.4")
    assert info.value.retry_after_s == 60
    throttle.check("5.6.7.8")  # another address is not affected
    clock.now += 45
    with pytest.raises(RateLimited) as info:
        throttle.check("1.2.3.4")
    assert info.value.retry_after_s == 15
    clock.now += 15
    throttle.check("1.2.3.4")
    await throttle.failed("1.2.3.4")  # a new window


async def test_a_failure_past_the_limit_seen_by_another_process_is_refused() -> None:
    clock = Clock()
    shared = LocalFailureCounter(clock)  # stands for Redis: one count, two processes
    one = AuthThrottle(shared, max_failures=2, window_s=60, clock=clock)
    two = AuthThrottle(shared, max_failures=2, window_s=60, clock=clock)
    await one.failed("a")
    await one.failed("a")
    two.check("a")  # `two` has not seen a failure past the limit yet
    with pytest.raises(RateLimited):
        await two.failed("a")
    with pytest.raises(RateLimited):
        two.check("a")


async def test_failures_are_counted_in_the_process_while_redis_is_unreachable() -> None:
    throttle = AuthThrottle(Unreachable(), max_failures=2, window_s=60)
    await throttle.failed("a")
    await throttle.failed("a")
    with pytest.raises(RateLimited):
        throttle.check("a")


async def test_zero_turns_the_throttle_off() -> None:
    throttle = AuthThrottle(Unreachable(), max_failures=0, window_s=60)
    for _ in range(100):
        await throttle.failed("a")
    throttle.check("a")


@asynccontextmanager
async def app_running(
    redis_url: str, fake: FakeOpenAI, data_dir: Path, max_failures: int
) -> AsyncIterator[FastAPI]:
    settings = make_test_settings(
        redis_url,
        fake.base_url,
        data_dir,
        auth_keys=f"{ALICE_KEY}=alice",
        auth={"max_failures": max_failures, "failure_window_s": 60},
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_from(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://chatmem.test")


async def test_wrong_keys_are_throttled_per_address(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    """2,000 wrong API keys from one address in 28 s were all answered 401, none slowed:
    a key could be guessed at full speed. Now, past 5 failures in the window, 429."""
    async with (
        app_running(redis_url, fake, tmp_data_dir, 5) as app,
        client_from(app, "203.0.113.7") as attacker,
        client_from(app, "198.51.100.1") as other,
    ):
        for _ in range(5):
            r = await attacker.get("/v1/sessions", headers=WRONG)
            assert r.status_code == 401
        r = await attacker.get("/v1/sessions", headers=WRONG)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limited"
        assert 50 <= int(r.headers["Retry-After"]) <= 60
        # Blocked means blocked: the right key from that address is refused too.
        assert (await attacker.get("/v1/sessions", headers=RIGHT)).status_code == 429
        # Another address is not affected, and a missing credential guesses nothing.
        assert (await other.get("/v1/sessions", headers=RIGHT)).status_code == 200
        for _ in range(10):
            assert (await other.get("/v1/sessions")).status_code == 401
        assert (await other.get("/v1/sessions", headers=RIGHT)).status_code == 200
        # The OpenAI-compatible route answers it in OpenAI's shape, with Retry-After.
        r = await attacker.get("/v1/models", headers=RIGHT)
        assert r.status_code == 429 and "Retry-After" in r.headers


async def test_the_count_is_shared_by_every_process(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    """Two apps on one Redis stand for two processes: failures add up across them."""
    async with (
        app_running(redis_url, fake, tmp_data_dir, 4) as one,
        app_running(redis_url, fake, tmp_data_dir, 4) as two,
        client_from(one, "203.0.113.9") as via_one,
        client_from(two, "203.0.113.9") as via_two,
    ):
        for c in (via_one, via_two, via_one, via_two):
            assert (await c.get("/v1/sessions", headers=WRONG)).status_code == 401
        assert (await via_two.get("/v1/sessions", headers=WRONG)).status_code == 429
        assert (await via_two.get("/v1/sessions", headers=RIGHT)).status_code == 429
        assert (await via_one.get("/v1/sessions", headers=WRONG)).status_code == 429
        assert (await via_one.get("/v1/sessions", headers=RIGHT)).status_code == 429
