"""Seeds 000/001 (`POST /chat`, history, stats, window, TTL, users) against the real app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.store import keys
from chatmem.store.conversations import AnyRedis
from tests.api_support import TEST_AUTH_KEYS, bearer, make_test_settings, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import expire_now

LONG = "x" * 4001
WIDE = {"user_id": "u", "message": "hi", "window_size": 21}
SYSTEM_PROMPT = "你是一个友善、专业的AI助手，能够帮助用户解答各种问题。请保持礼貌和耐心。"


async def chat(http: httpx.AsyncClient, user_id: str, message: str, **extra: Any) -> Any:
    resp = await http.post("/chat", json={"user_id": user_id, "message": message, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


def error_code(resp: httpx.Response) -> str:
    code: str = resp.json()["error"]["code"]
    return code


async def test_seed000_script_flow(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    """The seed's own test script: chat → history → stats → clear → list users."""
    first = await chat(client, "user_001", "我叫张三", window_size=3)
    assert first["response"] == "Hello from the fake model."
    assert first["user_id"] == "user_001"
    assert first["timestamp"][:2] == "20"
    assert first["stats"]["total_messages"] == 2
    assert first["stats"]["window_size"] == 3
    second = await chat(client, "user_001", "我叫什么名字？")
    assert second["stats"] | {"tokens": 0, "cost_gpt35": 0, "cost_gpt4": 0} == {
        "total_messages": 4,
        "total_rounds": 2,
        "window_size": 3,
        "tokens": 0,
        "cost_gpt35": 0,
        "cost_gpt4": 0,
    }
    # The model saw the first exchange: the memory is real.
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"]] == [
        SYSTEM_PROMPT,
        "我叫张三",
        "Hello from the fake model.",
        "我叫什么名字？",
    ]
    await chat(client, "user_002", "我叫李四")
    other = await chat(client, "user_002", "我叫什么名字？")
    assert other["stats"]["window_size"] == 5  # the seed's default window
    assert "我叫张三" not in str(fake.chat_bodies[-1]["messages"])

    history = (await client.get("/history/user_001")).json()
    assert history["user_id"] == "user_001"
    assert history["total_messages"] == 4
    assert history["total_rounds"] == 2
    assert history["window_size"] == 3
    assert 1700 < history["ttl_remaining"] <= 1800
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "我叫张三"),
        ("assistant", "Hello from the fake model."),
        ("user", "我叫什么名字？"),
        ("assistant", "Hello from the fake model."),
    ]

    stats = (await client.get("/stats/user_001")).json()
    assert stats["user_id"] == "user_001"
    assert stats["total_messages"] == 4
    assert stats["total_rounds"] == 2
    assert stats["window_size"] == 3
    assert stats["tokens"] > 0
    assert stats["cost_gpt35"] == pytest.approx(stats["tokens"] * 0.5e-6)
    assert stats["cost_gpt4"] == pytest.approx(stats["tokens"] * 30e-6)

    cleared = await client.delete("/history/user_001")
    assert cleared.json() == {"message": "History cleared", "user_id": "user_001"}
    after = await client.get("/history/user_001")
    assert after.status_code == 200
    assert after.json()["total_messages"] == 0

    users = (await client.get("/users")).json()
    assert users["total_users"] == 2
    assert sorted(users["users"]) == ["user_001", "user_002"]


async def test_context_holds_exactly_the_window(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    for n in range(5):
        await chat(client, "win", f"message {n}", window_size=2)
    sent = fake.chat_bodies[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", SYSTEM_PROMPT),
        ("user", "message 2"),
        ("assistant", "Hello from the fake model."),
        ("user", "message 3"),
        ("assistant", "Hello from the fake model."),
        ("user", "message 4"),
    ]
    stats = (await client.get("/stats/win")).json()
    assert stats["total_messages"] == 10
    assert stats["window_size"] == 2


async def test_request_without_window_size_keeps_the_sessions_window(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    """Seed 000 reset the window to its default 5 on every request that did not name one."""
    await chat(client, "keep", "one", window_size=1)
    put = await client.put("/window-size/keep", params={"new_size": 1})
    assert put.json() == {"message": "Window size updated", "user_id": "keep", "new_size": 1}
    await chat(client, "keep", "two")
    reply = await chat(client, "keep", "three")
    assert reply["stats"]["window_size"] == 1
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]] == [
        "two",
        "Hello from the fake model.",
        "three",
    ]


async def test_seed001_ttl_flow(client: httpx.AsyncClient, redis_client: AnyRedis) -> None:
    first = await chat(client, "user_redis_001", "我叫张三", ttl=60)
    assert 55 <= first["ttl_remaining"] <= 60
    # A request without `ttl` keeps the conversation's TTL (the seed reset it to 1800).
    second = await chat(client, "user_redis_001", "我叫什么名字？")
    assert 55 <= second["ttl_remaining"] <= 60
    history = (await client.get("/history/user_redis_001")).json()
    assert history["total_messages"] == 4
    assert 55 <= history["ttl_remaining"] <= 60

    updated = await client.put("/ttl/user_redis_001", params={"new_ttl": 300})
    assert updated.status_code == 200
    body = updated.json()
    assert body["message"] == "TTL updated"
    assert body["new_ttl"] == 300
    assert 295 <= body["ttl_remaining"] <= 300

    too_short = await client.put("/ttl/user_redis_001", params={"new_ttl": 59})
    assert too_short.status_code == 400
    assert error_code(too_short) == "invalid_ttl"
    assert (await client.put("/ttl/nobody", params={"new_ttl": 300})).status_code == 404

    # Expiry: shorten the TTL of every key of the session in Redis itself.
    await expire_now(redis_client, *keys.session_keys("user_redis_001", "default")[:3])
    gone = await client.get("/history/user_redis_001")
    assert gone.status_code == 404
    assert error_code(gone) == "session_not_found"
    assert (await client.get("/stats/user_redis_001")).status_code == 404
    # A new message starts a new conversation, with the default TTL of these routes.
    fresh = await chat(client, "user_redis_001", "又来了")
    assert fresh["stats"]["total_messages"] == 2
    assert 1790 <= fresh["ttl_remaining"] <= 1800


async def test_chat_takes_a_ttl_of_a_few_seconds(
    client: httpx.AsyncClient, redis_client: AnyRedis
) -> None:
    """Regression: `POST /chat` with `ttl: 5` was a 400 `invalid_ttl`, so seed 001's own
    expiry test printed its failure; the document checks >= 60 on `PUT /ttl` only."""
    short = await chat(client, "user_ttl_test", "测试TTL", ttl=5)
    assert 1 <= short["ttl_remaining"] <= 5
    assert (await client.get("/history/user_ttl_test")).status_code == 200
    session_keys = keys.session_keys("user_ttl_test", "default")[:3]
    for key in session_keys:
        assert 0 < await redis_client.pttl(key) <= 5000
    # (seed 001's own script waits the 6 s: tests/test_seed_clients.py)
    await expire_now(redis_client, *session_keys)
    gone = await client.get("/history/user_ttl_test")
    assert gone.status_code == 404
    assert error_code(gone) == "session_not_found"
    # PUT /ttl keeps the document's floor of 60 s.
    await chat(client, "user_ttl_test", "again", ttl=1)
    refused = await client.put("/ttl/user_ttl_test", params={"new_ttl": 5})
    assert refused.status_code == 400
    assert error_code(refused) == "invalid_ttl"


@pytest.mark.parametrize("ttl", [0, -5, 10**30])
async def test_chat_refuses_a_ttl_below_a_second_or_past_a_year(
    client: httpx.AsyncClient, ttl: int
) -> None:
    resp = await client.post("/chat", json={"user_id": "short", "message": "hi", "ttl": ttl})
    assert resp.status_code == 400
    assert error_code(resp) == "invalid_ttl"
    assert (await client.get("/history/short")).status_code == 404


async def test_global_stats_and_health(client: httpx.AsyncClient) -> None:
    await chat(client, "a", "one")
    await chat(client, "a", "two")
    await chat(client, "b", "three")
    stats = (await client.get("/stats")).json()
    assert stats["total_users"] == 2
    assert stats["total_messages"] == 6
    assert stats["redis_version"]
    assert stats["used_memory_human"]
    assert stats["connected_clients"] >= 1
    health = (await client.get("/health")).json()
    assert health["status"] == "healthy"
    assert health["redis"] == "connected"
    assert health["total_users"] == 2
    assert health["timestamp"][:2] == "20"


async def test_delete_user(client: httpx.AsyncClient) -> None:
    await chat(client, "gone", "hello")
    deleted = await client.delete("/user/gone")
    assert deleted.json() == {"message": "User deleted", "user_id": "gone"}
    assert (await client.get("/history/gone")).status_code == 404
    again = await client.delete("/user/gone")
    assert again.status_code == 404
    assert error_code(again) == "user_not_found"
    assert (await client.get("/users")).json() == {"total_users": 0, "users": []}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("post", "/chat", {"json": {"user_id": "u", "message": "   "}}, 400, "empty_message"),
        ("post", "/chat", {"json": {"user_id": "u", "message": LONG}}, 400, "message_too_long"),
        ("post", "/chat", {"json": {"user_id": "u"}}, 422, "invalid_request"),
        ("post", "/chat", {"json": WIDE}, 422, "invalid_request"),
        ("post", "/chat", {"json": {"user_id": "a:b}", "message": "hi"}}, 400, "invalid_id"),
        ("post", "/chat", {"content": b"not json"}, 422, "invalid_request"),
        ("get", "/history/nobody", {}, 404, "session_not_found"),
        ("get", "/history/bad*id", {}, 400, "invalid_id"),
        ("delete", "/history/nobody", {}, 404, "session_not_found"),
        ("get", "/stats/nobody", {}, 404, "session_not_found"),
        ("put", "/window-size/nobody", {"params": {"new_size": 0}}, 400, "invalid_window"),
        ("put", "/window-size/nobody", {"params": {"new_size": 21}}, 400, "invalid_window"),
        ("put", "/window-size/nobody", {"params": {"new_size": 4}}, 404, "session_not_found"),
        ("put", "/window-size/nobody", {"params": {"new_size": "x"}}, 422, "invalid_request"),
        ("put", "/ttl/nobody", {"params": {"new_ttl": 10}}, 400, "invalid_ttl"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_4xx_with_a_code(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    resp = await client.request(method.upper(), path, **kwargs)
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code


async def test_with_auth_a_user_id_must_be_the_callers(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    settings = make_test_settings(
        redis_url,
        fake.base_url,
        tmp_data_dir,
        auth_keys=TEST_AUTH_KEYS,
    )
    alice, root = bearer("alice"), bearer("root")
    async with running_app(settings) as (_, http):
        ok = await http.post("/chat", json={"user_id": "alice", "message": "hi"}, headers=alice)
        assert ok.status_code == 200
        theft = await http.post("/chat", json={"user_id": "bob", "message": "hi"}, headers=alice)
        assert theft.status_code == 404
        assert (await http.get("/history/bob", headers=alice)).status_code == 404
        assert (await http.delete("/user/root", headers=alice)).status_code == 404
        assert (await http.get("/history/alice", headers=root)).json()["total_messages"] == 2
        assert (await http.get("/users", headers=alice)).json() == {
            "total_users": 1,
            "users": ["alice"],
        }
        assert (await http.get("/stats", headers=alice)).status_code == 403
        assert (await http.get("/stats", headers=root)).json()["total_users"] == 1
        assert (await http.get("/history/alice")).status_code == 401


async def test_a_model_failure_is_a_5xx_and_the_message_is_kept(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.script(Reply(status=503, error_message="overloaded"))
    resp = await client.post("/chat", json={"user_id": "u", "message": "are you there?"})
    assert resp.status_code in (502, 503)
    assert error_code(resp).startswith("provider")
    history = (await client.get("/history/u")).json()
    assert [(m["role"], m["content"]) for m in history["messages"]] == [("user", "are you there?")]
    # The next turn works, and the model sees the unanswered message too.
    assert (await chat(client, "u", "hello?"))["response"] == "Hello from the fake model."
