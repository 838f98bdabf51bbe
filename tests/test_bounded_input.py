"""Bounded input (SPEC §3.1, §8; issue 10 item 1): body sizes, metadata, character
fields, per-user caps — clean 4xx JSON past each, nothing stored, other users untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from chatmem.api.body_limit import BodyLimitMiddleware
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import RedisProcess

H = {"X-User-Id": "alice"}
KIB = 1024


@pytest.fixture
async def capped(
    redis_url: str, redis_client: Any, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    limits = {"max_sessions_per_user": 3, "max_stored_bytes_per_user": 40 * KIB}
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir, limits=limits)
    async with running_app(settings) as (_, http):
        yield http


async def new_session(client: httpx.AsyncClient, headers: dict[str, str] = H) -> str:
    r = await client.post("/v1/sessions", json={}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["session"]["session_id"])


async def history(client: httpx.AsyncClient, sid: str, headers: dict[str, str] = H) -> list[Any]:
    r = await client.get(f"/v1/sessions/{sid}/messages", headers=headers)
    return list(r.json()["messages"])


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == code


# --- request bodies -------------------------------------------------------------------


async def test_a_body_past_64_kib_is_a_413_and_nothing_is_stored(
    client: httpx.AsyncClient,
) -> None:
    """Request bodies had no size limit: a 12 MB body was read, parsed and stored."""
    sid = await new_session(client)
    before = await history(client, sid)
    big = {"content": "hi", "metadata": {"pad": "x" * (70 * KIB)}}
    r = await client.post(f"/v1/sessions/{sid}/messages", json=big, headers=H)
    assert_error(r, 413, "body_too_large")
    assert "x-request-id" in r.headers
    assert await history(client, sid) == before


async def test_a_chunked_body_is_counted_as_it_arrives(client: httpx.AsyncClient) -> None:
    """No Content-Length (chunked transfer): the limit must count what is received."""
    sid = await new_session(client)
    payload = orjson.dumps({"content": "hi", "metadata": {"pad": "x" * (200 * KIB)}})

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 8 * KIB):
            yield payload[i : i + 8 * KIB]

    r = await client.post(
        f"/v1/sessions/{sid}/messages",
        content=chunks(),
        headers={**H, "content-type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body_too_large")
    assert len(await history(client, sid)) == 1  # the greeting only


async def asgi_call(
    limit: int, body_parts: list[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[list[dict[str, Any]], int]:
    """Run the middleware around an app that reads the whole body and answers 200;
    returns what was sent and how many body bytes were taken from the server."""
    pulled = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RuntimeError("client went away")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    queue = [
        {"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1}
        for i, part in enumerate(body_parts)
    ]

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        message = queue.pop(0) if queue else {"type": "http.disconnect"}
        pulled += len(message.get("body", b""))
        return message

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
    await BodyLimitMiddleware(app, lambda _m, _p: limit)(scope, receive, send)
    return sent, pulled


async def test_a_content_length_that_lies_does_not_get_past_the_limit() -> None:
    sent, read = await asgi_call(
        100, [b"x" * 60, b"x" * 60, b"x" * 60], [(b"content-length", b"10")]
    )
    assert sent[0]["status"] == 413
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "body_too_large"
    assert read <= 120  # cut off at the chunk that passed the limit


async def test_a_declared_length_past_the_limit_is_refused_unread() -> None:
    sent, read = await asgi_call(100, [b"x" * 101], [(b"content-length", b"101")])
    assert sent[0]["status"] == 413 and read == 0
    sent, read = await asgi_call(100, [b"x" * 50, b"x" * 50], [])
    assert sent[0]["status"] == 200 and read == 100


async def test_imports_may_be_larger_up_to_1_mib(client: httpx.AsyncClient) -> None:
    book = {"entries": [{"content": "m" * (300 * KIB)}]}  # a lorebook: kept, not prompted
    card: dict[str, Any] = {
        "spec": "chara_card_v2",
        "data": {"name": "Big", "character_book": book},
    }
    r = await client.post("/v1/characters/import", json=card, headers=H)
    assert r.status_code == 201, r.text
    book["entries"][0]["content"] = "m" * (1100 * KIB)
    r = await client.post("/v1/characters/import", json=card, headers=H)
    assert_error(r, 413, "body_too_large")


# --- metadata and character fields ------------------------------------------------------


async def test_metadata_past_4_kib_is_a_413_and_nothing_is_stored(
    client: httpx.AsyncClient,
) -> None:
    """`metadata` had no size limit: one message could carry megabytes into Redis."""
    sid = await new_session(client)
    r = await client.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": "hi", "metadata": {"note": "x" * (5 * KIB)}},
        headers=H,
    )
    assert_error(r, 413, "metadata_too_large")
    assert len(await history(client, sid)) == 1
    ok = {"content": "hi", "metadata": {"note": "x" * (3 * KIB)}}
    r = await client.post(f"/v1/sessions/{sid}/messages", json=ok, headers=H)
    assert r.status_code == 200, r.text


async def test_character_extensions_are_bounded(client: httpx.AsyncClient) -> None:
    card = {"spec": "chara_card_v2", "data": {"name": "Lore", "extensions": {"book": []}}}
    card["data"]["extensions"]["book"] = ["entry " * 20] * 5000  # ~600 KiB
    r = await client.post("/v1/characters/import", json=card, headers=H)
    assert_error(r, 400, "invalid_card")
    assert "extensions" in r.json()["error"]["message"]
    body = {"id": "big", "name": "Big", "system_prompt": "p" * 50_001}
    assert (await client.post("/v1/characters", json=body, headers=H)).status_code == 422
    body = {"id": "t", "name": "T", "params": {"model": "m" * 201}}
    assert (await client.post("/v1/characters", json=body, headers=H)).status_code == 422


async def test_titles_are_bounded(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/sessions", json={"title": "t" * 201}, headers=H)
    assert r.status_code == 422
    sid = await new_session(client)
    r = await client.patch(f"/v1/sessions/{sid}", json={"title": "t" * 201}, headers=H)
    assert r.status_code == 422


async def test_numbers_and_booleans_are_not_guessed(client: httpx.AsyncClient) -> None:
    """`true` is no window size and "yes" no boolean: 422, nothing stored or sent."""
    for body in ({"window_size": True}, {"ttl_s": "3600"}, {"window_size": 2.0}):
        r = await client.post("/v1/sessions", json=body, headers=H)
        assert r.status_code == 422, (body, r.text)
    sid = await new_session(client)
    r = await client.patch(f"/v1/sessions/{sid}", json={"window_size": True}, headers=H)
    assert r.status_code == 422
    for body in ({"content": "hi", "stream": "yes"}, {"content": "hi", "stream": 1}):
        r = await client.post(f"/v1/sessions/{sid}/messages", json=body, headers=H)
        assert r.status_code == 422, (body, r.text)
    r = await client.post(f"/v1/sessions/{sid}/regenerate", json={"stream": "no"}, headers=H)
    assert r.status_code == 422
    r = await client.get(f"/v1/sessions/{sid}/messages", headers=H)
    assert [m["role"] for m in r.json()["messages"]] in ([], ["assistant"])  # the greeting


# --- per-user caps ------------------------------------------------------------------------


async def test_session_cap_is_a_409_too_many_sessions(capped: httpx.AsyncClient) -> None:
    sids = [await new_session(capped) for _ in range(3)]
    r = await capped.post("/v1/sessions", json={}, headers=H)
    assert_error(r, 409, "too_many_sessions")
    # Seed routes create sessions too, and meet the same cap.
    r = await capped.post("/chat/start", params={"user_id": "alice"}, headers=H)
    assert_error(r, 409, "too_many_sessions")
    await new_session(capped, {"X-User-Id": "bob"})
    assert (await capped.delete(f"/v1/sessions/{sids[0]}", headers=H)).status_code == 204
    await new_session(capped)


async def test_storage_cap_is_a_409_and_clear_frees_it(capped: httpx.AsyncClient) -> None:
    sid = await new_session(capped)
    turn = {"content": "x" * 3900, "metadata": {"note": "y" * 3900}}
    refused = None
    for _ in range(10):
        r = await capped.post(f"/v1/sessions/{sid}/messages", json=turn, headers=H)
        if r.status_code != 200:
            refused = r
            break
    assert refused is not None, "40 KiB of messages were stored without a refusal"
    assert_error(refused, 409, "storage_quota_exceeded")
    stored = len(await history(capped, sid))
    me = (await capped.get("/v1/me", headers=H)).json()
    assert 30 * KIB < me["stored_bytes"] <= 40 * KIB + 1000  # one reply may overshoot
    r = await capped.post(f"/v1/sessions/{sid}/messages", json=turn, headers=H)
    assert_error(r, 409, "storage_quota_exceeded")
    assert len(await history(capped, sid)) == stored
    assert (await capped.delete(f"/v1/sessions/{sid}/messages", headers=H)).status_code == 200
    r = await capped.post(f"/v1/sessions/{sid}/messages", json=turn, headers=H)
    assert r.status_code == 200, r.text


# --- the attack of issue 10 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A Redis sized as docs/operations.md recommends: maxmemory and volatile-ttl."""
    server = RedisProcess(
        tmp_path_factory.mktemp("capped"), "maxmemory 12mb", "maxmemory-policy volatile-ttl"
    ).start()
    yield server
    server.stop()


async def test_one_user_cannot_evict_another_users_sessions(
    capped_redis: RedisProcess, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    """With Redis capped and volatile-ttl, one user sending a few 12 MB-metadata messages
    evicted all of another user's sessions (issue 10 item 1)."""
    fake.default = Reply(text="ok")
    limits = {"max_stored_bytes_per_user": 2 * KIB * KIB}
    settings = make_test_settings(capped_redis.url, fake.base_url, tmp_data_dir, limits=limits)
    a, b = {"X-User-Id": "victim"}, {"X-User-Id": "attacker"}
    async with running_app(settings) as (_, client):
        victim_sids = [await new_session(client, a) for _ in range(3)]
        for sid in victim_sids:
            r = await client.post(
                f"/v1/sessions/{sid}/messages", json={"content": "mine"}, headers=a
            )
            assert r.status_code == 200
        victim_before = [await history(client, sid, a) for sid in victim_sids]

        target = await new_session(client, b)
        huge = {"content": "evict", "metadata": {"pad": "z" * (12 * KIB * KIB)}}
        for _ in range(6):
            r = await client.post(f"/v1/sessions/{target}/messages", json=huge, headers=b)
            assert_error(r, 413, "body_too_large")
        # Within the limits, as much as possible: the storage cap stops it.
        turn = {"content": "z" * 3900, "metadata": {"pad": "z" * 3900}}
        codes = set()
        for i in range(400):
            if i % 40 == 0:
                target = await new_session(client, b)
            r = await client.post(f"/v1/sessions/{target}/messages", json=turn, headers=b)
            codes.add(r.status_code)
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "storage_quota_exceeded"
                break
        assert codes <= {200, 409} and 409 in codes

        assert [await history(client, sid, a) for sid in victim_sids] == victim_before
        redis = Redis.from_url(capped_redis.url)
        try:
            assert (await redis.info("stats"))["evicted_keys"] == 0
        finally:
            await redis.aclose()
