"""The per-user rate limit: what a client sees (429, Retry-After, the error code) and that
waiting as told is enough. Not the window's shape (fixed or sliding): that may change."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from chatmem.api.errors import error_response
from chatmem.errors import RateLimited
from chatmem.store.conversations import AnyRedis
from tests.api_support import make_test_settings, new_session, running_app
from tests.fake_openai import FakeOpenAI

LIMIT = 3  # turns a minute


async def send(client: httpx.AsyncClient, user: str, sid: str, content: str) -> httpx.Response:
    return await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": content}, headers={"X-User-Id": user}
    )


@pytest.mark.slow
async def test_over_the_limit_is_429_with_retry_after_and_passes_again_after_it(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    limits = {"turns_per_minute": LIMIT}
    settings = make_test_settings(redis_url, fake.base_url, tmp_path, limits=limits)
    async with running_app(settings) as (_, client):
        sid = await new_session(client, "alice")
        for i in range(LIMIT):
            r = await send(client, "alice", sid, f"turn {i}")
            assert r.status_code == 200, r.text

        refused = await send(client, "alice", sid, "one too many")
        refused_at = time.monotonic()
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["message"]
        retry_after = int(refused.headers["Retry-After"])  # delay-seconds (RFC 9110 §10.2.3)
        assert 1 <= retry_after <= 60
        assert fake.request_count == LIMIT  # the model was not called

        # Another user's budget is their own.
        bob = await new_session(client, "bob")
        assert (await send(client, "bob", bob, "hello")).status_code == 200

        # A client that waits as told gets through (the wait is what is under test here,
        # not an ordering of events).
        await asyncio.sleep(refused_at + retry_after - time.monotonic())
        again = await send(client, "alice", sid, "after waiting")
        assert again.status_code == 200, again.text
        history = await client.get(f"/v1/sessions/{sid}/messages", headers={"X-User-Id": "alice"})
        users = [m["content"] for m in history.json()["messages"] if m["role"] == "user"]
        assert users == [*(f"turn {i}" for i in range(LIMIT)), "after waiting"]


@pytest.mark.parametrize(("wait_s", "header"), [(12.2, "13"), (59.99, "60"), (0.2, "1"), (1, "1")])
def test_retry_after_is_never_earlier_than_the_wait(wait_s: float, header: str) -> None:
    """Retry-After was the wait rounded to the nearest second: up to half a second early,
    a client that obeyed it came back inside the same window and got another 429."""
    response = error_response(RateLimited("slow down", retry_after_s=wait_s))
    assert response.status_code == 429 and response.headers["Retry-After"] == header
