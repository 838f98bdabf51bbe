"""Seeds 002/003 (start → stream → history → sessions → delete, roles) against the real app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.api.routes.compat.chat_app import chunk_frame, error_frame
from chatmem.chat.service import Delta, TurnDone
from chatmem.models import Message, Role, Usage
from chatmem.store.conversations import AnyRedis
from tests.api_support import TEST_AUTH_KEYS, bearer, make_test_settings, running_app, sse_events
from tests.fake_openai import FakeOpenAI, Reply

TEACHER_PROMPT = "你是一位经验丰富的老师，擅长用简单易懂的方式解释复杂概念，善于启发学生思考。"
ROLE_PROMPTS = {
    "assistant": "你是一个友善、专业的AI助手，能够帮助用户解答各种问题。请保持礼貌和耐心。",
    "teacher": TEACHER_PROMPT,
    "programmer": (
        "你是一位资深的程序员，精通多种编程语言和技术栈，能够提供专业的编程建议和解决方案。"
    ),
}


def data_frames(body: str) -> list[Any]:
    return [event.data for event in sse_events(body)]


async def start(http: httpx.AsyncClient, user_id: str, **params: str) -> str:
    resp = await http.post("/chat/start", params={"user_id": user_id, **params})
    assert resp.status_code == 200, resp.text
    sid: str = resp.json()["session_id"]
    return sid


async def stream(
    http: httpx.AsyncClient, user_id: str, sid: str, message: str, **params: str
) -> httpx.Response:
    return await http.get(
        "/chat/stream",
        params={"user_id": user_id, "session_id": sid, "message": message, **params},
    )


def test_frames_are_the_seeds() -> None:
    assert chunk_frame(Delta("你好"), "s1") == {"data": '{"content":"你好","type":"chunk"}'}
    done = TurnDone(Message(Role.ASSISTANT, "x"), Message(Role.USER, "y"), Usage())
    assert chunk_frame(done, "s1") == {"data": '{"type":"end","session_id":"s1"}'}
    assert json.loads(error_frame("provider_error", "boom")["data"]) == {
        "type": "error",
        "content": "boom",
        "code": "provider_error",
    }


async def test_seed002_flow(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    """start → stream → history → sessions → delete, as the seed's page and README use them."""
    started = await client.post("/chat/start", params={"user_id": "web_user"})
    body = started.json()
    assert body["message"] == "聊天会话已创建"
    assert body["welcome_message"] == "你好！我是你的AI助手，有什么可以帮助你的吗？"
    sid = body["session_id"]

    resp = await stream(client, "web_user", sid, "什么是Redis？", role="assistant")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = data_frames(resp.text)
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert "".join(f["content"] for f in chunks) == "Hello from the fake model."
    assert len(chunks) > 1  # streamed, not one piece
    assert frames[-1] == {"type": "end", "session_id": sid}
    # The greeting is part of the conversation the model sees.
    assert [m["role"] for m in fake.chat_bodies[-1]["messages"]] == ["system", "assistant", "user"]

    history = (
        await client.get("/chat/history", params={"user_id": "web_user", "session_id": sid})
    ).json()
    assert history["session_id"] == sid
    assert history["total"] == 3
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("assistant", "你好！我是你的AI助手，有什么可以帮助你的吗？"),
        ("user", "什么是Redis？"),
        ("assistant", "Hello from the fake model."),
    ]
    assert all(isinstance(m["timestamp"], float) for m in history["messages"])

    other = await start(client, "web_user")
    sessions = (await client.get("/chat/sessions", params={"user_id": "web_user"})).json()
    assert sessions["total"] == 2
    assert [s["session_id"] for s in sessions["sessions"]] == [other, sid]
    assert sessions["sessions"][1]["last_message"] == "Hello from the fake model."
    assert sessions["sessions"][1]["role"] == "assistant"

    deleted = await client.delete(f"/chat/session/{sid}", params={"user_id": "web_user"})
    assert deleted.status_code == 200
    assert deleted.json()["session_id"] == sid
    remaining = (await client.get("/chat/sessions", params={"user_id": "web_user"})).json()
    assert [s["session_id"] for s in remaining["sessions"]] == [other]
    # As in the document: a deleted (or never started) id has an empty history...
    gone = await client.get("/chat/history", params={"user_id": "web_user", "session_id": sid})
    assert gone.status_code == 200
    assert gone.json() == {"session_id": sid, "messages": [], "total": 0}
    assert (
        await client.delete(f"/chat/session/{sid}", params={"user_id": "web_user"})
    ).status_code == 404
    # ...and a stream for it starts it again, empty but for this turn.
    again = await stream(client, "web_user", sid, "还在吗？")
    assert again.status_code == 200
    assert data_frames(again.text)[-1] == {"type": "end", "session_id": sid}
    restarted = (
        await client.get("/chat/history", params={"user_id": "web_user", "session_id": sid})
    ).json()
    assert [m["content"] for m in restarted["messages"]] == [
        "还在吗？",
        "Hello from the fake model.",
    ]


async def test_roles(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    roles = (await client.get("/roles")).json()["roles"]
    assert {"assistant", "teacher", "programmer"} <= roles.keys()
    assert roles["teacher"]["name"] == "AI老师"
    assert roles["teacher"]["prompt"] == TEACHER_PROMPT

    sid = await start(client, "pupil", role="teacher")
    resp = await stream(client, "pupil", sid, "讲讲递归", role="teacher")
    assert data_frames(resp.text)[-1]["type"] == "end"
    assert fake.chat_bodies[-1]["messages"][0] == {"role": "system", "content": TEACHER_PROMPT}
    # Without `role`, the session's own character answers.
    await stream(client, "pupil", sid, "再讲一次")
    assert fake.chat_bodies[-1]["messages"][0]["content"] == TEACHER_PROMPT

    unknown = await stream(client, "pupil", sid, "hi", role="wizard")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unsupported_role"
    bad_start = await client.post("/chat/start", params={"user_id": "pupil", "role": "wizard"})
    assert bad_start.status_code == 400


async def test_an_upstream_failure_midway_is_an_error_frame(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await start(client, "u")
    fake.script(Reply(text="one two three four", drop_after=2))
    resp = await stream(client, "u", sid, "hello")
    assert resp.status_code == 200
    frames = data_frames(resp.text)
    assert [f["content"] for f in frames if f["type"] == "chunk"] == ["one ", "two "]
    assert frames[-1]["type"] == "error"
    assert frames[-1]["code"].startswith("provider")
    assert frames[-1]["content"]
    # What was said is kept, marked interrupted; the user message was durable.
    history = (await client.get("/chat/history", params={"user_id": "u", "session_id": sid})).json()
    assert [m["content"] for m in history["messages"][1:]] == ["hello", "one two "]


async def test_role_is_chosen_per_message(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    """Regression: another role than the session's was a 409 `role_mismatch`, and the
    document's page, which sends the picked role with every message, hung "thinking"."""
    sid = await start(client, "pupil")
    for role in ("assistant", "teacher", "programmer", "assistant"):
        resp = await stream(client, "pupil", sid, f"hi {role}", role=role)
        assert resp.status_code == 200, resp.text
        assert data_frames(resp.text)[-1] == {"type": "end", "session_id": sid}
        prompt = fake.chat_bodies[-1]["messages"][0]
        assert prompt == {"role": "system", "content": ROLE_PROMPTS[role]}
    # One session throughout, its history whole; it follows the role last used.
    await stream(client, "pupil", sid, "which role now?", role="programmer")
    await stream(client, "pupil", sid, "and now?")
    assert fake.chat_bodies[-1]["messages"][0]["content"] == ROLE_PROMPTS["programmer"]
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"][1:4]] == [
        "你好！我是你的AI助手，有什么可以帮助你的吗？",
        "hi assistant",
        "Hello from the fake model.",
    ]
    sessions = (await client.get("/chat/sessions", params={"user_id": "pupil"})).json()
    assert [(s["session_id"], s["role"]) for s in sessions["sessions"]] == [(sid, "programmer")]
    history = await client.get("/chat/history", params={"user_id": "pupil", "session_id": sid})
    assert history.json()["total"] == 1 + 2 * 6


async def test_stream_for_an_unknown_session_starts_it(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    """Regression: a stream for a session id the user did not have answered 404; the
    document stores the message under that id (a new conversation) and answers."""
    params = {"user_id": "newbie", "session_id": "made-up-id"}
    assert (await client.get("/chat/history", params=params)).json()["total"] == 0
    resp = await stream(client, "newbie", "made-up-id", "讲讲递归", role="teacher")
    assert resp.status_code == 200, resp.text
    assert data_frames(resp.text)[-1] == {"type": "end", "session_id": "made-up-id"}
    assert fake.chat_bodies[-1]["messages"][0]["content"] == ROLE_PROMPTS["teacher"]
    history = (await client.get("/chat/history", params=params)).json()
    assert [m["content"] for m in history["messages"]] == ["讲讲递归", "Hello from the fake model."]
    sessions = (await client.get("/chat/sessions", params={"user_id": "newbie"})).json()
    assert [(s["session_id"], s["role"]) for s in sessions["sessions"]] == [
        ("made-up-id", "teacher")
    ]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"user_id": "u", "session_id": "bad:id", "message": "hi"}, 400, "invalid_id"),
        ({"user_id": "u", "session_id": "nope"}, 422, "invalid_request"),
        ({"user_id": "u", "session_id": "SID", "message": "  "}, 400, "empty_message"),
    ],
)
async def test_stream_bad_input(
    client: httpx.AsyncClient, params: dict[str, str], status: int, code: str
) -> None:
    sid = await start(client, "u")
    params = {k: sid if v == "SID" else v for k, v in params.items()}
    resp = await client.get("/chat/stream", params=params)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


async def test_with_auth_only_the_callers_sessions(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> None:
    settings = make_test_settings(
        redis_url,
        fake.base_url,
        tmp_data_dir,
        auth_keys=TEST_AUTH_KEYS,
    )
    alice, bob = bearer("alice"), bearer("bob")
    async with running_app(settings) as (_, http):
        sid = (await http.post("/chat/start", params={"user_id": "alice"}, headers=alice)).json()[
            "session_id"
        ]
        assert (
            await http.post("/chat/start", params={"user_id": "alice"}, headers=bob)
        ).status_code == 404
        await http.get(
            "/chat/stream",
            params={"user_id": "alice", "session_id": sid, "message": "secret"},
            headers=alice,
        )
        # bob cannot name alice...
        params = {"user_id": "alice", "session_id": sid}
        assert (await http.get("/chat/history", params=params, headers=bob)).status_code == 404
        assert (
            await http.get("/chat/stream", params={**params, "message": "x"}, headers=bob)
        ).status_code == 404
        assert (
            await http.delete(f"/chat/session/{sid}", params={"user_id": "alice"}, headers=bob)
        ).status_code == 404
        # ...and her session id, as his own, is a session of his that he has not started:
        # empty, then his own conversation; hers is untouched.
        params = {"user_id": "bob", "session_id": sid}
        own = await http.get("/chat/history", params=params, headers=bob)
        assert own.json()["messages"] == []
        assert (
            await http.delete(f"/chat/session/{sid}", params={"user_id": "bob"}, headers=bob)
        ).status_code == 404
        mine = await http.get("/chat/stream", params={**params, "message": "x"}, headers=bob)
        assert mine.status_code == 200
        bobs = (await http.get("/chat/history", params=params, headers=bob)).json()
        assert [m["content"] for m in bobs["messages"]] == ["x", "Hello from the fake model."]
        hers = await http.get("/chat/history", params={**params, "user_id": "alice"}, headers=alice)
        assert "secret" in [m["content"] for m in hers.json()["messages"]]
        assert "x" not in [m["content"] for m in hers.json()["messages"]]
        assert (
            await http.get("/chat/sessions", params={"user_id": "alice"}, headers=bob)
        ).status_code == 404
        assert (
            await http.get("/chat/sessions", params={"user_id": "alice"}, headers=alice)
        ).json()["total"] == 1
