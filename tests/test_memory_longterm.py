"""Long-term memories (SPEC §2b): extraction with validated operations, the API (own
memories only), in the context, surviving sessions, erased with the user, export/import,
and the seed routes' sessions keeping their pure window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from chatmem.context import MEMORIES_HEADING
from chatmem.ops.transfer import export_sessions, import_sessions, parse_memories
from chatmem.store import keys
from chatmem.store.client import AnyRedis
from chatmem.store.conversations import RedisMemoryStore
from tests.api_support import TEST_AUTH_KEYS, bearer, make_test_settings, running_app
from tests.fake_openai import FakeOpenAI
from tests.memory_model import MemoryModel
from tests.support import eventually
from tests.test_memory_summary import FAST_JOBS, metric

ALICE, BOB, ADMIN = bearer("alice"), bearer("bob"), bearer("root")


@pytest.fixture
def model(fake: FakeOpenAI) -> MemoryModel:
    m = MemoryModel()
    fake.respond = m
    return m


@pytest.fixture
async def client(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, model: MemoryModel, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    mem = {"extract_every_rounds": 1, "summary_batch_rounds": 20}
    settings = make_test_settings(
        redis_url, fake.base_url, tmp_data_dir, auth_keys=TEST_AUTH_KEYS, memory=mem, jobs=FAST_JOBS
    )
    async with running_app(settings) as (_, http):
        yield http


async def chat(client: httpx.AsyncClient, text: str, h: dict[str, str] = ALICE) -> str:
    r = await client.post("/v1/sessions", json={"character_id": "luna"}, headers=h)
    sid = str(r.json()["session"]["session_id"])
    await say(client, sid, text, h)
    return sid


async def say(client: httpx.AsyncClient, sid: str, text: str, h: dict[str, str] = ALICE) -> None:
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=h)
    assert r.status_code == 200, r.text


async def memories(client: httpx.AsyncClient, h: dict[str, str] = ALICE) -> list[dict[str, Any]]:
    r = await client.get("/v1/memories?character_id=luna", headers=h)
    assert r.status_code == 200, r.text
    return list(r.json()["memories"])


def ops(*items: dict[str, str]) -> str:
    return orjson.dumps({"ops": list(items)}).decode()


async def test_extracted_memories_go_into_the_next_turns_context(
    client: httpx.AsyncClient, model: MemoryModel
) -> None:
    model.extract = ops({"op": "add", "text": "Has a sister called Mei"})
    sid = await chat(client, "My sister Mei visits tomorrow.")
    mems = await eventually(lambda: memories(client), "the extracted memory")
    assert [m["text"] for m in mems] == ["Has a sister called Mei"]
    assert mems[0]["source_msg_ids"] and mems[0]["character_id"] == "luna"

    model.extract = ops(
        {"op": "update", "id": "m1", "text": "Has a sister called Mei, a doctor"},
        {"op": "add", "text": "Prefers tea"},
    )
    await say(client, sid, "She is a doctor. And I prefer tea.")

    async def two() -> list[dict[str, Any]]:
        got = await memories(client)
        return got if len(got) == 2 else []

    texts = {m["text"] for m in await eventually(two, "the update and the add")}
    assert texts == {"Has a sister called Mei, a doctor", "Prefers tea"}

    await say(client, sid, "What do you know about me?")
    sent = model.chat_bodies()[-1]["messages"]
    assert sent[0]["role"] == "system"  # the system prompt first, never dropped
    assert sent[1]["content"].startswith(MEMORIES_HEADING) and "Prefers tea" in sent[1]["content"]
    ctx = (await client.get(f"/v1/sessions/{sid}/context", headers=ALICE)).json()
    assert ctx["memory"]["memories_in_context"] == 2 and ctx["tokens"]["memories"] > 0


@pytest.mark.parametrize(
    ("output", "invalid"),
    [
        ("Sure! The user has a sister.", 1),  # not JSON: dropped whole
        ('{"ops": "add everything"}', 1),  # not a list of operations
        (ops({"op": "add", "text": ""}, {"op": "delete", "id": "m9"}, {"op": "shout"}), 3),
    ],
)
async def test_invalid_model_output_stores_nothing_and_is_counted(
    client: httpx.AsyncClient, model: MemoryModel, output: str, invalid: int
) -> None:
    model.extract = output
    await chat(client, "I live in Lisbon.")
    await eventually(lambda: model.calls["extract"] >= 1, "the extraction")

    async def counted() -> float:
        text = (await client.get("/metrics")).text
        return metric(text, 'chatmem_memory_invalid_output_total{kind="memories"}')

    assert await eventually(counted, "the invalid output counted") == invalid
    assert await memories(client) == []


async def test_a_mix_keeps_the_valid_operations_only(
    client: httpx.AsyncClient, model: MemoryModel
) -> None:
    model.extract = ops({"op": "add", "text": "Lives in Lisbon"}, {"op": "update", "id": "x"})
    await chat(client, "I live in Lisbon.")
    mems = await eventually(lambda: memories(client), "the valid operation")
    assert [m["text"] for m in mems] == ["Lives in Lisbon"]


async def test_the_api_is_the_callers_own_and_refuses_bad_input(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/v1/memories", json={"character_id": "luna", "text": "Likes cats"}, headers=ALICE
    )
    assert r.status_code == 201, r.text
    mid = r.json()["memory_id"]
    assert [m["text"] for m in await memories(client)] == ["Likes cats"]
    assert await memories(client, BOB) == []
    for method in ("patch", "delete"):
        kwargs: dict[str, Any] = {"json": {"text": "hacked"}} if method == "patch" else {}
        r = await client.request(method.upper(), f"/v1/memories/{mid}", headers=BOB, **kwargs)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.patch(f"/v1/memories/{mid}", json={"text": "Likes dogs"}, headers=ALICE)
    assert r.status_code == 200 and r.json()["text"] == "Likes dogs"

    bad = [
        ({"character_id": "luna", "text": ""}, 422),
        ({"character_id": "luna", "text": "x" * 501}, 422),
        ({"character_id": "luna"}, 422),
        ({"character_id": "luna", "text": "ok", "user_id": "bob"}, 422),
        ({"character_id": "nobody", "text": "ok"}, 404),
        ({"character_id": "bad}id", "text": "ok"}, 400),
    ]
    for body, status in bad:
        r = await client.post("/v1/memories", json=body, headers=ALICE)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()["error"]) >= {"code", "message"}
    r = await client.patch(f"/v1/memories/{mid}", json={"text": "   "}, headers=ALICE)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_memory"
    assert (await client.get("/v1/memories", headers={})).status_code == 401
    assert [m["text"] for m in await memories(client)] == ["Likes dogs"]
    assert (await client.delete(f"/v1/memories/{mid}", headers=ALICE)).status_code == 204
    assert await memories(client) == []
    assert (await client.delete(f"/v1/memories/{mid}", headers=ALICE)).status_code == 404


async def test_memories_survive_the_session_and_vanish_with_the_user(
    client: httpx.AsyncClient, redis_client: AnyRedis
) -> None:
    sid = await chat(client, "Hello")
    body = {"character_id": "luna", "text": "Plays the cello"}
    assert (await client.post("/v1/memories", json=body, headers=ALICE)).status_code == 201
    assert (await client.delete(f"/v1/sessions/{sid}", headers=ALICE)).status_code == 204
    assert [m["text"] for m in await memories(client)] == ["Plays the cello"]
    ttl = await redis_client.pttl(keys.memories_key("alice", "luna"))
    assert 89 * 24 * 3600_000 < ttl <= 90 * 24 * 3600_000  # their own sliding TTL

    assert (await client.delete("/v1/me", headers=ALICE)).status_code == 200
    assert await memories(client) == []
    assert not await redis_client.exists(
        keys.memories_key("alice", "luna"), keys.user_memory_index_key("alice")
    )
    # The admin's erase too.
    assert (await client.post("/v1/memories", json=body, headers=BOB)).status_code == 201
    assert (await client.delete("/v1/admin/users/bob", headers=ADMIN)).status_code == 200
    assert await memories(client, BOB) == []


async def test_memories_round_trip_through_export_and_import(
    client: httpx.AsyncClient, store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    await chat(client, "Hello")
    body = {"character_id": "luna", "text": "Grew up in Osaka"}
    created = (await client.post("/v1/memories", json=body, headers=ALICE)).json()
    metas = await store.list_sessions("alice")
    doc = await export_sessions(store, metas)
    assert [m["text"] for m in doc["memories"]] == ["Grew up in Osaka"]

    await redis_client.flushall()
    report = await import_sessions(store, doc["sessions"], memories=parse_memories(doc))
    assert report.memories_added == 1
    again = await import_sessions(store, doc["sessions"], memories=parse_memories(doc))
    assert again.memories_added == 0  # idempotent
    assert await memories(client) == [created]


async def test_seed_route_sessions_keep_their_pure_window(
    client: httpx.AsyncClient, model: MemoryModel, redis_client: AnyRedis
) -> None:
    for text in ("one", "two", "three", "four"):
        r = await client.post("/chat", json={"user_id": "alice", "message": text}, headers=ALICE)
        assert r.status_code == 200, r.text
    r = await client.post(
        "/api/v1/chat/stream", json={"character_id": "luna", "message": "hi"}, headers=ALICE
    )
    assert r.status_code == 200
    meta = (await client.get("/v1/sessions/default", headers=ALICE)).json()
    assert meta["memory"] is False
    ctx = (await client.get("/v1/sessions/default/context", headers=ALICE)).json()
    assert ctx["memory"]["summary"] is None and ctx["memory"]["policy"]["memories"] is False
    assert await redis_client.xlen(keys.JOBS_STREAM_KEY) == 0
    assert model.calls["extract"] == model.calls["summary"] == model.calls["title"] == 0


async def test_a_seed_sessions_policy_survives_export_and_import(
    client: httpx.AsyncClient, store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    r = await client.post("/chat", json={"user_id": "alice", "message": "hi"}, headers=ALICE)
    assert r.status_code == 200
    doc = await export_sessions(store, await store.list_sessions("alice"))
    await redis_client.flushall()
    await import_sessions(store, doc["sessions"], memories=parse_memories(doc))
    assert (await store.get_meta("alice", "default")).memory_on is False
