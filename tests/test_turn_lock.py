"""One turn at a time per session, with Redis up (its turn lock) and down (the process's
own reservation, which is all there is while Redis cannot be reached)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from chatmem.store.conversations import AnyRedis
from tests.api_support import FAST_FAILING_REDIS, make_test_settings, new_session, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import RedisProcess

H = {"X-User-Id": "alice"}


async def send(client: httpx.AsyncClient, sid: str, content: str) -> httpx.Response:
    return await client.post(f"/v1/sessions/{sid}/messages", json={"content": content}, headers=H)


async def test_concurrent_sends_to_one_session_get_409(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    limits = {"session_lock_wait_ms": 200}
    settings = make_test_settings(redis_url, fake.base_url, tmp_path, limits=limits)
    async with running_app(settings) as (_, client):
        sid = await new_session(client)
        fake.script(Reply(text="slow " * 10, delay_s=0.1))
        first = asyncio.create_task(send(client, sid, "a"))
        await fake.wait_requests(1)  # the first turn holds the session
        second = await send(client, sid, "b")
        assert second.status_code == 409
        assert second.json()["error"]["code"] == "session_busy"
        assert (await first).status_code == 200


async def test_one_turn_at_a_time_per_session_while_redis_is_down(
    redis_server: RedisProcess, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """With Redis down there is no Redis lock: the service's reservation is what keeps a
    second turn out (a reservation that did nothing passed every other test)."""
    settings = make_test_settings(
        redis_server.url,
        fake.base_url,
        tmp_path / "data",
        redis=FAST_FAILING_REDIS,
        limits={"session_lock_wait_ms": 200},
    )
    async with running_app(settings) as (_, client):
        sid = await new_session(client)
        other = await new_session(client)
        redis_server.kill()
        fake.script(Reply(text="slow " * 10, delay_s=0.1))
        first = asyncio.create_task(send(client, sid, "first"))
        await fake.wait_requests(1)  # the first turn is under way, degraded

        second = await send(client, sid, "second")
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "session_busy"
        # Only that session is held: another one of the same user has its turn.
        elsewhere = await send(client, other, "meanwhile")
        assert elsewhere.status_code == 200 and elsewhere.json()["memory"] == "degraded"

        done = await first
        assert done.status_code == 200 and done.json()["memory"] == "degraded"
        # The first turn over, the session is free again.
        again = await send(client, sid, "third")
        assert again.status_code == 200 and again.json()["memory"] == "degraded"
        assert fake.request_count == 3
