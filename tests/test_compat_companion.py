"""Seed 004 (`POST /api/v1/chat/stream`, `DELETE /api/v1/chat/history`) against the real app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.api.routes.compat.companion import error_frame, message_frame
from chatmem.chat.service import Delta, TurnDone
from chatmem.models import Message, Role, Usage
from chatmem.store.conversations import AnyRedis
from tests.api_support import TEST_AUTH_KEYS, bearer, make_test_settings, running_app, sse_events
from tests.fake_openai import FakeOpenAI, Reply

USER = {"X-User-Id": "user_12345"}


pytestmark = pytest.mark.fake_model(default=Reply(text="嗨 我在 呢"))


def events(body: str) -> list[tuple[str, Any]]:
    return [(event.event, event.data) for event in sse_events(body)]


async def send(
    http: httpx.AsyncClient, character_id: str, message: str, **kw: Any
) -> httpx.Response:
    kw.setdefault("headers", USER)
    body = {"character_id": character_id, "message": message}
    return await http.post("/api/v1/chat/stream", json=body, **kw)


def test_frames_are_the_seeds() -> None:
    assert message_frame(Delta("你好")) == {
        "event": "message",
        "data": '{"content":"你好","done":false}',
    }
    done = TurnDone(Message(Role.ASSISTANT, "x"), Message(Role.USER, "y"), Usage())
    assert message_frame(done) == {"event": "message", "data": '{"content":"","done":true}'}
    assert error_frame("provider_error", "boom")["event"] == "error"


async def test_seed004_stream_and_memory(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    resp = await send(client, "companion", "你好")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    got = events(resp.text)
    assert {name for name, _ in got} == {"message"}
    assert all(data["done"] is False for _, data in got[:-1])
    assert got[-1] == ("message", {"content": "", "done": True})
    assert "".join(data["content"] for _, data in got) == "嗨 我在 呢"
    assert len(got) > 2
    sent = fake.chat_bodies[-1]["messages"]
    assert sent[0]["role"] == "system" and "小暖" in sent[0]["content"]
    assert sent[1:] == [{"role": "user", "content": "你好"}]  # no greeting: the seed had none

    await send(client, "companion", "还记得我吗")
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]] == [
        "你好",
        "嗨 我在 呢",
        "还记得我吗",
    ]
    # One conversation per (user, character): another character, another memory.
    await send(client, "luna", "hi")
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]] == ["hi"]
    # ...and per user.
    await send(client, "companion", "我是新来的", headers={"X-User-Id": "someone_else"})
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]] == ["我是新来的"]

    cleared = await client.delete(
        "/api/v1/chat/history", params={"character_id": "companion"}, headers=USER
    )
    assert cleared.status_code == 200
    assert cleared.json()["message"] == "历史已清空"
    await send(client, "companion", "重新开始")
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]] == ["重新开始"]
    # The native API sees the same conversation: one implementation, two doors.
    native = await client.get("/v1/sessions/char.companion/messages", headers=USER)
    assert [m["content"] for m in native.json()["messages"]] == ["重新开始", "嗨 我在 呢"]


async def test_context_is_up_to_50_history_messages(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    """Regression: the context stopped at the sessions' default window of 10 rounds (20
    messages); the document's `get_context_messages(max_messages=50)` sends up to 50."""
    for n in range(30):
        assert (await send(client, "companion", f"m{n}")).status_code == 200
    await send(client, "companion", "last")
    sent = fake.chat_bodies[-1]["messages"]
    assert sent[0]["role"] == "system"
    history = sent[1:-1]
    assert len(history) == 50
    assert history[0] == {"role": "user", "content": "m5"}  # the newest 50 of 60
    assert sent[-1] == {"role": "user", "content": "last"}


async def test_context_stays_within_the_token_budget(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    """Up to 50 messages, but never past the token budget: the newest that fit."""
    settings = make_test_settings(
        redis_url, fake.base_url, tmp_data_dir, memory={"max_context_tokens": 400}
    )
    async with running_app(settings) as (_, http):
        for n in range(30):
            await send(http, "companion", f"message number {n}")
        await send(http, "companion", "last")
        history = fake.chat_bodies[-1]["messages"][1:-1]
        assert 4 <= len(history) < 50
        assert history[-1]["content"] == "嗨 我在 呢"
        assert history[-2]["content"] == "message number 29"


async def test_clearing_a_conversation_never_started_is_fine(client: httpx.AsyncClient) -> None:
    resp = await client.delete(
        "/api/v1/chat/history", params={"character_id": "luna"}, headers=USER
    )
    assert resp.status_code == 200
    unknown = await client.delete(
        "/api/v1/chat/history", params={"character_id": "nobody"}, headers=USER
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "character_not_found"


async def test_an_upstream_error_is_an_error_event(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.script(Reply(status=400, error_message="bad request upstream"))
    resp = await send(client, "companion", "你好")
    assert resp.status_code == 200
    got = events(resp.text)
    assert got[-1][0] == "error"
    assert got[-1][1]["code"] == "provider_bad_request"
    assert got[-1][1]["error"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"character_id": "nobody", "message": "hi"}, 404, "character_not_found"),
        ({"character_id": "companion", "message": " "}, 400, "empty_message"),
        ({"character_id": "companion", "message": "x" * 2001}, 422, "invalid_request"),
        ({"character_id": "companion"}, 422, "invalid_request"),
        ({"message": "hi"}, 422, "invalid_request"),
    ],
)
async def test_bad_input(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    resp = await client.post("/api/v1/chat/stream", json=body, headers=USER)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


async def test_with_auth_the_user_is_the_credentials(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir, auth_keys=TEST_AUTH_KEYS)
    async with running_app(settings) as (_, http):
        assert (await send(http, "companion", "hi")).status_code == 401
        alice = bearer("alice") | {"X-User-Id": "mallory"}
        assert (await send(http, "companion", "hi", headers=alice)).status_code == 200
        native = await http.get("/v1/sessions", headers=alice)
        assert [s["session_id"] for s in native.json()["sessions"]] == ["char.companion"]
        assert native.json()["sessions"][0]["user_id"] == "alice"
