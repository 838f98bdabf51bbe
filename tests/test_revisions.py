"""Regenerate and continue (SPEC §3b): turns through the generation machinery that append
no user message; the reply becomes a new alternative of the last reply, or its longer
text, stored by the finish script in place of it."""

from __future__ import annotations

from typing import Any

import httpx

from chatmem.store import keys
from chatmem.tokens import count_tokens
from tests.api_support import sse_events
from tests.fake_openai import FakeOpenAI, Reply

H = {"X-User-Id": "alice"}


async def _session(client: httpx.AsyncClient) -> str:
    r = await client.post("/v1/sessions", json={}, headers=H)
    assert r.status_code == 201, r.text
    sid: str = r.json()["session"]["session_id"]
    return sid


async def _history(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = (
        await client.get(f"/v1/sessions/{sid}/messages", headers=H)
    ).json()["messages"]
    return msgs


async def _meta(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    meta: dict[str, Any] = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    return meta


async def test_regenerate_adds_a_selected_alternative(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await _session(client)
    fake.script(Reply(text="First answer."), Reply(text="Second answer."))
    sent = (
        await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    ).json()
    reply_id = sent["message"]["msg_id"]
    before = await _meta(client, sid)

    r = await client.post(f"/v1/sessions/{sid}/regenerate", headers=H)
    assert r.status_code == 200, r.text
    msg = r.json()["message"]
    assert (msg["msg_id"], msg["content"]) == (reply_id, "Second answer.")
    assert (msg["alternatives"], msg["selected"]) == (2, 1)
    # The model got the history up to the user message, once, and not the old reply.
    sent_msgs = fake.chat_bodies[-1]["messages"]
    assert sent_msgs[-1] == {"role": "user", "content": "hi"}
    assert [m["content"] for m in sent_msgs].count("hi") == 1
    assert "First answer." not in [m["content"] for m in sent_msgs]

    history = await _history(client, sid)
    assert len(history) == 3  # greeting, user, reply: nothing appended
    assert (history[-1]["content"], history[-1]["alternatives"]) == ("Second answer.", 2)
    after = await _meta(client, sid)
    assert after["stored_messages"] == before["stored_messages"]
    assert after["total_tokens"] == before["total_tokens"] + count_tokens(
        "Second answer."
    ) - count_tokens("First answer.")
    assert after["usage"]["completion_tokens"] > before["usage"]["completion_tokens"]
    ctx = (await client.get(f"/v1/sessions/{sid}/context", headers=H)).json()
    assert ctx["messages"][-1]["content"] == "Second answer."
    # Selecting the first again loses nothing.
    r = await client.patch(
        f"/v1/sessions/{sid}/messages/{reply_id}", json={"selected": 0}, headers=H
    )
    assert r.json()["message"]["content"] == "First answer."
    assert r.json()["message"]["alternatives"] == 2
    # The next turn's context uses the selected one.
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "and?"}, headers=H)
    contents = [m["content"] for m in fake.chat_bodies[-1]["messages"]]
    assert "First answer." in contents and "Second answer." not in contents


async def test_regenerate_streams_like_a_send_and_keeps_ten(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await _session(client)
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    fake.script(Reply(text="streamed alternative here"))
    r = await client.post(f"/v1/sessions/{sid}/regenerate", json={"stream": True}, headers=H)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    deltas = "".join(e.data["content"] for e in events if e.event == "delta")
    assert deltas == "streamed alternative here"
    [done] = [e.data for e in events if e.event == "done"]
    assert (done["message"]["content"], done["message"]["alternatives"]) == (deltas, 2)
    for n in range(10):
        fake.script(Reply(text=f"take {n}"))
        r = await client.post(f"/v1/sessions/{sid}/regenerate", headers=H)
        assert r.status_code == 200, r.text
    last = (await _history(client, sid))[-1]
    assert (last["content"], last["alternatives"], last["selected"]) == ("take 9", 10, 9)
    assert last["metadata"]["alternatives"][0]["content"] == "take 0"


async def test_continue_extends_the_last_reply(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    sid = await _session(client)
    fake.script(Reply(text="Once upon a time"), Reply(text=", there was a cat."))
    sent = (
        await client.post(f"/v1/sessions/{sid}/messages", json={"content": "a story"}, headers=H)
    ).json()
    r = await client.post(f"/v1/sessions/{sid}/continue", json={}, headers=H)
    assert r.status_code == 200, r.text
    msg = r.json()["message"]
    text = "Once upon a time, there was a cat."
    assert (msg["msg_id"], msg["content"]) == (sent["message"]["msg_id"], text)
    assert msg["token_count"] == count_tokens(text)
    assert msg["metadata"]["continued"] is True
    # The model saw the reply as its last, unfinished message.
    assert fake.chat_bodies[-1]["messages"][-1] == {
        "role": "assistant",
        "content": "Once upon a time",
    }
    history = await _history(client, sid)
    assert [m["content"] for m in history[-2:]] == ["a story", text]


async def test_nothing_to_regenerate_is_400_and_frees_the_session(
    client: httpx.AsyncClient, redis_client: Any
) -> None:
    sid = await _session(client)  # only the greeting: no user message to answer
    r = await client.post(f"/v1/sessions/{sid}/regenerate", headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "no_reply")
    assert await redis_client.exists(keys.session_lock_key("alice", sid)) == 0
    # Nothing happened: nothing to re-attach to (the page showed the 400 again on reload).
    assert (await client.get(f"/v1/sessions/{sid}/stream", headers=H)).status_code == 204
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    assert r.status_code == 200
    await client.delete(f"/v1/sessions/{sid}/messages", headers=H)
    r = await client.post(f"/v1/sessions/{sid}/continue", headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "no_reply")
    assert (await client.get(f"/v1/sessions/{sid}/stream", headers=H)).status_code == 204
    r = await client.post("/v1/sessions/nosuch/regenerate", headers=H)
    assert r.status_code == 404
    r = await client.post(f"/v1/sessions/{sid}/regenerate", json={"bogus": 1}, headers=H)
    assert r.status_code == 422 or r.status_code == 400


async def test_regenerate_waits_for_a_running_turn(
    client: httpx.AsyncClient, redis_client: Any
) -> None:
    sid = await _session(client)
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    await redis_client.set(keys.session_lock_key("alice", sid), "other", px=60_000)
    r = await client.post(f"/v1/sessions/{sid}/regenerate", headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "session_busy")
