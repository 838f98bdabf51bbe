"""Editing a conversation on the native API (SPEC §3b): alternatives and select, edit,
delete one message, fork — each one script under the session's turn lock — and what
history, the context endpoint and export/import show of them."""

from __future__ import annotations

from typing import Any

import httpx

from chatmem.models import Message, Role
from chatmem.ops.transfer import export_sessions, import_sessions
from chatmem.store import keys
from chatmem.store.codec import encode_message
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.editing import MessageEdits
from chatmem.tokens import count_tokens
from tests.fake_openai import FakeOpenAI

H = {"X-User-Id": "alice"}

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Swiper",
        "description": "A character with three greetings.",
        "first_mes": "Hello, I am {{char}}.",
        "alternate_greetings": ["Hi {{user}}, {{char}} here.", "Good evening."],
        "extensions": {"chatmem": {"id": "swiper"}},
    },
}


async def _session(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/sessions", json=body, headers=H)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def _history(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/sessions/{sid}/messages", headers=H)
    assert r.status_code == 200, r.text
    msgs: list[dict[str, Any]] = r.json()["messages"]
    return msgs


async def _send(client: httpx.AsyncClient, sid: str, text: str) -> dict[str, Any]:
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=H)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_card_alternate_greetings_are_alternatives_of_the_greeting(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/v1/characters/import", json=CARD, headers=H)).status_code < 300
    created = await _session(client, character_id="swiper")
    greeting = created["greeting"]
    assert greeting["content"] == "Hello, I am Swiper."
    assert (greeting["alternatives"], greeting["selected"]) == (3, 0)
    sid, mid = created["session"]["session_id"], greeting["msg_id"]

    r = await client.patch(f"/v1/sessions/{sid}/messages/{mid}", json={"selected": 2}, headers=H)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == "Good evening."
    [shown] = await _history(client, sid)
    assert (shown["content"], shown["alternatives"], shown["selected"]) == ("Good evening.", 3, 2)
    assert shown["token_count"] == count_tokens("Good evening.")
    ctx = (await client.get(f"/v1/sessions/{sid}/context", headers=H)).json()
    assert [m["content"] for m in ctx["messages"] if m["role"] == "assistant"] == ["Good evening."]
    # Selecting another loses nothing: back to the second one, the third still there.
    r = await client.patch(f"/v1/sessions/{sid}/messages/{mid}", json={"selected": 1}, headers=H)
    assert r.json()["message"]["content"] == "Hi User, Swiper here."
    assert (await _history(client, sid))[0]["alternatives"] == 3
    meta = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    assert meta["total_tokens"] == count_tokens("Hi User, Swiper here.")


async def test_select_out_of_range_and_bad_bodies_are_400(client: httpx.AsyncClient) -> None:
    created = await _session(client)
    sid, mid = created["session"]["session_id"], created["greeting"]["msg_id"]
    url = f"/v1/sessions/{sid}/messages/{mid}"
    r = await client.patch(url, json={"selected": 1}, headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_selected")
    r = await client.patch(url, json={}, headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_edit")
    r = await client.patch(url, json={"content": "x", "selected": 0}, headers=H)
    assert r.status_code == 400
    r = await client.patch(url, json={"content": "   "}, headers=H)
    assert r.status_code == 400
    r = await client.patch(f"/v1/sessions/{sid}/messages/nope", json={"content": "x"}, headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "message_not_found")
    r = await client.patch(f"/v1/sessions/nosuch/messages/{mid}", json={"content": "x"}, headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "session_not_found")
    r = await client.patch(url, json={"content": "x"}, headers={"X-User-Id": "mallory"})
    assert r.status_code == 404


async def test_edit_in_place_recounts_tokens_and_the_context_follows(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = (await _session(client))["session"]["session_id"]
    done = await _send(client, sid, "my cat is called Tom")
    uid = done["user_message"]["msg_id"]
    before = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    new_text = "my cat is called Bartholomew the Third, a very large orange cat"
    r = await client.patch(
        f"/v1/sessions/{sid}/messages/{uid}", json={"content": new_text}, headers=H
    )
    assert r.status_code == 200, r.text
    edited = r.json()["message"]
    assert (edited["content"], edited["msg_id"]) == (new_text, uid)
    assert edited["token_count"] == count_tokens(new_text)
    assert edited["metadata"]["edited"] is True
    after = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    delta = count_tokens(new_text) - count_tokens("my cat is called Tom")
    assert after["total_tokens"] == before["total_tokens"] + delta
    assert after["stored_messages"] == before["stored_messages"]
    await _send(client, sid, "what is my cat called?")
    sent = [m["content"] for m in fake.chat_bodies[-1]["messages"]]
    assert new_text in sent and "my cat is called Tom" not in sent


async def test_delete_one_message(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    sid = (await _session(client))["session"]["session_id"]
    first = await _send(client, sid, "first question")
    await _send(client, sid, "second question")
    before = await _history(client, sid)
    target = first["message"]["msg_id"]
    r = await client.delete(f"/v1/sessions/{sid}/messages/{target}", headers=H)
    assert r.status_code == 204, r.text
    after = await _history(client, sid)
    assert [m["msg_id"] for m in after] == [m["msg_id"] for m in before if m["msg_id"] != target]
    meta = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    assert meta["stored_messages"] == len(before) - 1
    r = await client.delete(f"/v1/sessions/{sid}/messages/{target}", headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "message_not_found")
    # Deleting the newest moves the preview to the one before it.
    newest = after[-1]["msg_id"]
    assert (
        await client.delete(f"/v1/sessions/{sid}/messages/{newest}", headers=H)
    ).status_code == 204
    meta = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    assert meta["preview"] == "second question"
    # The id index was rebuilt: later turns append, and a retry is still recognised.
    hdr = H | {"Idempotency-Key": "k-1"}
    r1 = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "again"}, headers=hdr)
    r2 = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "again"}, headers=hdr)
    assert r2.json()["replayed"] is True
    assert r1.json()["message"]["msg_id"] == r2.json()["message"]["msg_id"]
    assert fake.chat_bodies[-1]["messages"][-1]["content"] == "again"
    assert [m["content"] for m in await _history(client, sid)][-2:] == [
        "again",
        "Hello from the fake model.",
    ]


async def test_fork_copies_up_to_the_message_and_leaves_the_original(
    client: httpx.AsyncClient,
) -> None:
    created = await _session(client, title="Trip")
    sid = created["session"]["session_id"]
    first = await _send(client, sid, "plan a trip to Kyoto")
    await _send(client, sid, "now Osaka")
    original = await _history(client, sid)
    r = await client.post(
        f"/v1/sessions/{sid}/fork", json={"message_id": first["message"]["msg_id"]}, headers=H
    )
    assert r.status_code == 201, r.text
    fork = r.json()["session"]
    assert fork["session_id"] != sid
    assert (fork["forked_from"], fork["forked_at"]) == (sid, first["message"]["msg_id"])
    assert fork["title"] == "Trip (fork)"
    assert fork["character_id"] == created["session"]["character_id"]
    copied = await _history(client, fork["session_id"])
    assert [m["content"] for m in copied] == [m["content"] for m in original[:3]]
    assert [m["seq"] for m in copied] == [1, 2, 3]
    assert fork["total_tokens"] == sum(m["token_count"] for m in copied)
    assert await _history(client, sid) == original
    listed = (await client.get("/v1/sessions", headers=H)).json()["sessions"]
    assert {s["session_id"] for s in listed} >= {sid, fork["session_id"]}
    # The fork goes on by itself.
    await _send(client, fork["session_id"], "what about Nara?")
    assert len(await _history(client, fork["session_id"])) == 5
    assert await _history(client, sid) == original
    r = await client.post(f"/v1/sessions/{sid}/fork", json={"message_id": "nope"}, headers=H)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "message_not_found")
    r = await client.post(
        f"/v1/sessions/{sid}/fork",
        json={"message_id": first["message"]["msg_id"]},
        headers={"X-User-Id": "mallory"},
    )
    assert r.status_code == 404


async def test_edits_wait_for_the_turn_lock_then_409(
    client: httpx.AsyncClient, redis_client: Any
) -> None:
    """An edit never lands inside a running turn: while the lock is held it is refused."""
    created = await _session(client)
    sid, mid = created["session"]["session_id"], created["greeting"]["msg_id"]
    await redis_client.set(keys.session_lock_key("alice", sid), "someone", px=60_000)
    url = f"/v1/sessions/{sid}/messages/{mid}"
    for r in (
        await client.patch(url, json={"content": "changed"}, headers=H),
        await client.delete(url, headers=H),
        await client.post(f"/v1/sessions/{sid}/fork", json={"message_id": mid}, headers=H),
    ):
        assert (r.status_code, r.json()["error"]["code"]) == (409, "session_busy")
    assert (await _history(client, sid))[0]["content"] == created["greeting"]["content"]
    await redis_client.delete(keys.session_lock_key("alice", sid))
    r = await client.patch(url, json={"content": "changed"}, headers=H)
    assert r.status_code == 200


async def test_export_import_keeps_alternatives_and_forks(
    client: httpx.AsyncClient, store: RedisMemoryStore
) -> None:
    assert (await client.post("/v1/characters/import", json=CARD, headers=H)).status_code < 300
    created = await _session(client, character_id="swiper")
    sid, mid = created["session"]["session_id"], created["greeting"]["msg_id"]
    await client.patch(f"/v1/sessions/{sid}/messages/{mid}", json={"selected": 1}, headers=H)
    fork = (
        await client.post(f"/v1/sessions/{sid}/fork", json={"message_id": mid}, headers=H)
    ).json()["session"]
    metas = [await store.get_meta("alice", s) for s in (sid, fork["session_id"])]
    doc = await export_sessions(store, metas)
    for item in doc["sessions"]:
        item["meta"]["user_id"] = "bob"
    await import_sessions(store, doc["sessions"])
    snap = await store.read("bob", sid, last=10)
    [greeting] = snap.messages
    assert greeting.content == "Hi User, Swiper here."
    assert len(greeting.metadata["alternatives"]) == 3
    assert greeting.metadata["selected"] == 1
    forked = await store.get_meta("bob", fork["session_id"])
    assert (forked.forked_from, forked.forked_at) == (sid, mid)


async def test_an_edit_from_a_stale_read_is_refused_not_misapplied(
    store: RedisMemoryStore,
) -> None:
    """The script compares the stored message with what was read: a change computed from
    a read that another writer overtook is tried again on a fresh read."""
    await store.create_session("carol", "assistant", session_id="s1")
    msg = Message(Role.USER, "v1", 1, msg_id="m1")
    await store.append("carol", "s1", [msg])
    edits = MessageEdits(store)
    calls: list[str] = []
    key = keys.session_messages_key("carol", "s1")

    def change(old: Message) -> Message:
        calls.append(old.content)
        return Message(old.role, old.content + "+", 1, old.msg_id, old.timestamp, {})

    # Another writer changes the message between the first read and the script.
    original_stored = edits._stored
    swapped = False

    async def stored(user_id: str, session_id: str) -> list[Any]:
        nonlocal swapped
        items = await original_stored(user_id, session_id)
        if not swapped:
            swapped = True
            await store.redis.lset(key, 0, encode_message(Message(Role.USER, "v2", 1, "m1")))
        return items

    edits._stored = stored  # type: ignore[method-assign]
    await edits.change("carol", "s1", "m1", change)
    assert calls == ["v1", "v2"]
    snap = await store.read("carol", "s1", last=5)
    assert [m.content for m in snap.messages] == ["v2+"]
