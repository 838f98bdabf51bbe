"""The OpenAI route's writes are atomic (SPEC §2, §3b, §4): a tool result is appended in
the begin script of the turn that answers it, under the session's lock, and a divergence
(the stored version kept as a fork, the session continuing from the client's) is one
script. A turn that comes in between a request's read and its begin makes the request
plan again; a failure after the divergence's write leaves no half-rewritten session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from chatmem.chat.reconcile import ClientMessage, check_tool_results
from chatmem.chat.service import ChatService
from chatmem.errors import Conflict, SessionBusy, StoreUnavailable
from chatmem.models import Message, Role
from chatmem.store import keys
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.editing import MessageEdits
from tests.api_support import make_test_settings, new_session, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai_tools import ToolCall

USER = "ada"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def app(
    redis_url: str, redis_client: Any, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_test_settings(redis_url, fake.base_url, tmp_data_dir)
    async with running_app(settings) as parts:
        yield parts


def _service(app: FastAPI) -> ChatService:
    service: ChatService = app.state.parts.service
    return service


def _headers(sid: str) -> dict[str, str]:
    return {"X-User-Id": USER, "X-Session-Id": sid}


async def _complete(http: httpx.AsyncClient, sid: str, convo: list[Any]) -> dict[str, Any]:
    body = {"model": "m", "messages": convo, "tools": [WEATHER]}
    r = await http.post("/v1/chat/completions", json=body, headers=_headers(sid))
    assert r.status_code == 200, r.text
    message: dict[str, Any] = r.json()["choices"][0]["message"]
    return message


async def _all_sessions(service: ChatService) -> dict[str, list[Message]]:
    """Each of the user's sessions: its stored messages, the greeting left out."""
    out = {}
    for meta in await service.store.list_sessions(USER):
        snap = await service.store.read(USER, meta.session_id, last=1000)
        out[meta.session_id] = [m for m in snap.messages if not m.metadata.get("greeting")]
    return out


async def test_a_turn_between_the_read_and_the_begin_of_a_tool_result_does_not_interleave(
    app: tuple[FastAPI, httpx.AsyncClient], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two concurrent requests: a client's tool result, and a native send in the same
    session that begins after the tool result's request has read the session. The tool
    result is stored only under the lock of the turn that answers it: never between the
    other turn's message and its reply; the request plans again (the session changed:
    the client's version goes on, the other turn is kept in a fork)."""
    api, http = app
    service = _service(api)
    sid = await new_session(http, USER)
    call = ToolCall("get_weather", '{"city": "Paris"}')
    fake.script(Reply(text="", tool_calls=[call], finish_reason="tool_calls"))
    convo: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    convo.append(await _complete(http, sid, convo))
    convo.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
    # The native turn's reply takes a while (it holds the lock meanwhile); then the
    # answer to the tool result.
    fake.script(Reply(text="Tomorrow it rains.", chunks=4, delay_s=0.05), Reply(text="Sunny."))

    original = service.store.read
    native: list[asyncio.Task[httpx.Response]] = []

    async def read(user_id: str, session_id: str, **kw: Any) -> Any:
        snap = await original(user_id, session_id, **kw)
        if not native and kw.get("last") == service.store.max_messages:
            send = http.post(
                f"/v1/sessions/{sid}/messages",
                json={"content": "And tomorrow?"},
                headers={"X-User-Id": USER},
            )
            native.append(asyncio.create_task(send))
            await fake.wait_requests(2)  # the native turn has begun: it holds the lock
        return snap

    monkeypatch.setattr(service.store, "read", read)
    answer = await _complete(http, sid, convo)
    assert (await native[0]).status_code == 200
    assert answer["content"] == "Sunny."

    sessions = await _all_sessions(service)
    for msgs in sessions.values():
        # Every stored tool result directly follows the reply that made its call.
        check_tool_results([], [ClientMessage.of(m) for m in msgs])
    got = {sid_: [(m.role.value, m.content) for m in msgs] for sid_, msgs in sessions.items()}
    assert got[sid] == [
        ("user", "Weather in Paris?"),
        ("assistant", ""),
        ("tool", "sunny, 21 C"),
        ("assistant", "Sunny."),
    ]
    [fork] = [s for s in got if s != sid]
    assert got[fork][-2:] == [("user", "And tomorrow?"), ("assistant", "Tomorrow it rains.")]
    # The model saw the tool result right after its call, and the native turn not.
    last = fake.chat_bodies[-1]["messages"]
    assert [m["role"] for m in last[-3:]] == ["user", "assistant", "tool"]


async def _edited_conversation(http: httpx.AsyncClient, fake: FakeOpenAI, sid: str) -> list[Any]:
    """Two turns stored, then the client's version with its first message edited."""
    fake.script(Reply(text="Nice cat."), Reply(text="Tom."))
    convo: list[Any] = [{"role": "user", "content": "My cat is Tom."}]
    convo.append(await _complete(http, sid, convo))
    convo.append({"role": "user", "content": "What is its name?"})
    convo.append(await _complete(http, sid, convo))
    convo[0] = {"role": "user", "content": "My cat is Max."}
    return [*convo, {"role": "user", "content": "Say it again."}]


async def test_a_divergence_is_one_write(
    app: tuple[FastAPI, httpx.AsyncClient], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, http = app
    service = _service(api)
    sid = await new_session(http, USER)
    edited = await _edited_conversation(http, fake, sid)
    writes: list[str] = []
    original = service.store._run

    async def run(name: str, *args: Any, write: bool = False) -> Any:
        if write:
            writes.append(name)
        return await original(name, *args, write=write)

    monkeypatch.setattr(service.store, "_run", run)
    fake.script(Reply(text="Max."))
    assert (await _complete(http, sid, edited))["content"] == "Max."
    assert writes[: writes.index("begin_turn")] == ["diverge_session"]
    sessions = await _all_sessions(service)
    assert [m.content for m in sessions[sid]] == [
        "My cat is Max.",
        "Nice cat.",
        "What is its name?",
        "Tom.",
        "Say it again.",
        "Max.",
    ]
    [fork] = [s for s in sessions if s != sid]
    assert sessions[fork][0].content == "My cat is Tom."


async def test_a_failure_after_the_divergence_leaves_no_half_rewritten_session(
    app: tuple[FastAPI, httpx.AsyncClient], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails at the request's second write: the session and its fork are either
    both there (the client's version in the session) or neither (the stored version
    untouched): never a fork of a session that still holds the old version, nor a
    cleared session."""
    api, http = app
    service = _service(api)
    sid = await new_session(http, USER)
    edited = await _edited_conversation(http, fake, sid)
    before = await _all_sessions(service)
    writes = 0
    original = service.store._run

    async def run(name: str, *args: Any, write: bool = False) -> Any:
        nonlocal writes
        if write:
            writes += 1
            if writes == 2:
                raise StoreUnavailable("redis went away")
        return await original(name, *args, write=write)

    monkeypatch.setattr(service.store, "_run", run)
    fake.default = Reply(text="Max.")
    r = await http.post(
        "/v1/chat/completions", json={"model": "m", "messages": edited}, headers=_headers(sid)
    )
    assert r.status_code in (200, 503), r.text
    monkeypatch.setattr(service.store, "_run", original)
    await service.drain(5)
    after = await _all_sessions(service)
    forks = [s for s in after if s != sid]
    first = after[sid][0].content if after[sid] else None
    if forks:
        assert first == "My cat is Max."
        assert [m.content for m in after[forks[0]]] == [m.content for m in before[sid]]
    else:
        assert [m.content for m in after[sid]] == [m.content for m in before[sid]]


async def _two_messages(store: RedisMemoryStore) -> list[Message]:
    await store.create_session(USER, "assistant", session_id="s1")
    msgs = [Message(Role.USER, "hello there", 2), Message(Role.ASSISTANT, "hi", 1)]
    await store.append(USER, "s1", msgs)
    return msgs


async def test_the_divergence_script_keeps_a_fork_and_the_totals(
    store: RedisMemoryStore,
) -> None:
    await _two_messages(store)
    edits = MessageEdits(store)
    snap = await store.read(USER, "s1", last=100)
    totals = await store.redis.hgetall(keys.user_totals_key(USER))
    keep = [Message(Role.USER, "hello you", 2), Message(Role.ASSISTANT, "hey", 1)]
    fork = await edits.diverge(USER, "s1", snap, keep)
    assert fork is not None
    new = await store.read(USER, "s1", last=100)
    old = await store.read(USER, fork, last=100)
    assert [m.content for m in new.messages] == ["hello you", "hey"]
    assert [m.seq for m in new.messages] == [3, 4]  # seqs go on, as after a clear
    assert (new.meta.message_count, new.meta.total_tokens) == (2, 3)
    assert new.meta.preview == "hey"
    assert [m.content for m in old.messages] == ["hello there", "hi"]
    assert [m.msg_id for m in old.messages] == [m.msg_id for m in snap.messages]
    assert (old.meta.forked_from, old.meta.forked_at) == ("s1", snap.messages[-1].msg_id)
    assert (old.meta.message_count, old.meta.total_tokens) == (2, 3)
    # The user's stored bytes are those of both sessions.
    after = await store.redis.hgetall(keys.user_totals_key(USER))
    sizes = [
        int(await store.redis.hget(keys.session_meta_key(USER, s), "bytes")) for s in ("s1", fork)
    ]
    assert int(after["bytes"]) == sum(sizes) > 0
    assert int(after["count"]) == int(totals["count"]) + 2


async def test_the_divergence_script_refuses_a_stale_read_or_a_busy_session(
    store: RedisMemoryStore,
) -> None:
    await _two_messages(store)
    edits = MessageEdits(store)
    snap = await store.read(USER, "s1", last=100)
    await store.append(USER, "s1", [Message(Role.USER, "meanwhile", 1)])
    with pytest.raises(Conflict) as exc:
        await edits.diverge(USER, "s1", snap, [Message(Role.USER, "x", 1)])
    assert exc.value.code == "edit_conflict"
    snap = await store.read(USER, "s1", last=100)
    await store.redis.set(keys.session_lock_key(USER, "s1"), "someone", px=5000)
    with pytest.raises(SessionBusy):
        await edits.diverge(USER, "s1", snap, [Message(Role.USER, "x", 1)])
    # Nothing written either time: no fork, the session as it was.
    assert [m.session_id for m in await store.list_sessions(USER)] == ["s1"]
    now = await store.read(USER, "s1", last=100)
    assert [m.content for m in now.messages] == ["hello there", "hi", "meanwhile"]


async def test_a_session_that_keeps_changing_is_409_history_changed(
    app: tuple[FastAPI, httpx.AsyncClient], fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer changes the session after each of the request's reads: the request
    plans again, three times in all, then answers 409; it stored nothing of its own."""
    api, http = app
    service = _service(api)
    sid = await new_session(http, USER)
    original = service.store.read
    reads = 0

    async def read(user_id: str, session_id: str, **kw: Any) -> Any:
        nonlocal reads
        snap = await original(user_id, session_id, **kw)
        if kw.get("last") == service.store.max_messages:
            reads += 1
            await service.store.append(USER, sid, [Message(Role.USER, f"other {reads}", 2)])
        return snap

    monkeypatch.setattr(service.store, "read", read)
    body = {"model": "m", "messages": [{"role": "user", "content": "mine"}]}
    r = await http.post("/v1/chat/completions", json=body, headers=_headers(sid))
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "history_changed"
    assert reads == 3
    assert fake.request_count == 0
    monkeypatch.setattr(service.store, "read", original)
    stored = (await _all_sessions(service))[sid]
    assert [m.content for m in stored] == ["other 1", "other 2", "other 3"]
