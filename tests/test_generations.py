"""Generations (SPEC §3): server-owned turns, their renewing lock, the two round trips,
idempotency by message id, the per-user limits, stop and re-attach — in one process.
The cross-process cases (another process re-attaching, SIGKILL) are in
test_generations_processes.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio.connection import AbstractConnection

from chatmem.api.app import create_app
from chatmem.chat import generation
from chatmem.config import Settings
from chatmem.models import Message, Role
from chatmem.store.streams import GenerationStreams
from tests.api_support import make_test_settings, running_app, sse_events, sse_stream
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_uvicorn import serve_in_thread
from tests.support import unlimited_turns

H = {"X-User-Id": "alice"}


@pytest.fixture
def settings(redis_url: str, fake: FakeOpenAI, tmp_data_dir: Path) -> Settings:
    return make_test_settings(redis_url, fake.base_url, tmp_data_dir)


@pytest.fixture
async def app_client(
    settings: Settings, redis_client: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with running_app(settings) as (app, client):
        yield app, client


async def new_session(c: httpx.AsyncClient, headers: dict[str, str] = H) -> str:
    r = await c.post("/v1/sessions", json={"character_id": "assistant"}, headers=headers)
    assert r.status_code == 201, r.text
    sid: str = r.json()["session"]["session_id"]
    return sid


class RoundTrips:
    """Counts what goes to Redis over any connection: one packed send per round trip
    (a pipeline is one)."""

    def __init__(self) -> None:
        self.count = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = AbstractConnection.send_packed_command

        async def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    spy = RoundTrips()
    spy.install(monkeypatch)
    yield spy


async def history(c: httpx.AsyncClient, sid: str, headers: dict[str, str] = H) -> list[Any]:
    r = await c.get(f"/v1/sessions/{sid}/messages", headers=headers)
    assert r.status_code == 200, r.text
    messages: list[Any] = r.json()["messages"]
    return messages


# --- round trips --------------------------------------------------------------------------


async def test_a_json_turn_costs_two_redis_round_trips(
    app_client: tuple[Any, httpx.AsyncClient], round_trips: RoundTrips
) -> None:
    """Regression: a turn cost five round trips (rate, lock, append+read, append,
    release); begin and finish are one script each now."""
    _, c = app_client
    sid = await new_session(c)
    await c.post(f"/v1/sessions/{sid}/messages", json={"content": "warm up"}, headers=H)
    before = round_trips.count
    r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    assert r.status_code == 200
    assert round_trips.count - before == 2


async def test_a_streamed_turn_costs_two_round_trips_plus_its_stream_appends(
    app_client: tuple[Any, httpx.AsyncClient], round_trips: RoundTrips, fake: FakeOpenAI
) -> None:
    """A streamed reply of ~0.6 s adds its event-stream appends (at most one per 50 ms
    tick) to begin and finish, and nothing else."""
    _, c = app_client
    sid = await new_session(c)
    await c.post(f"/v1/sessions/{sid}/messages", json={"content": "warm up"}, headers=H)
    fake.script(Reply(text="word " * 30, delay_s=0.02))
    before = round_trips.count
    started = time.monotonic()
    r = await c.post(
        f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}, headers=H
    )
    elapsed = time.monotonic() - started
    assert sse_events(r.text)[-1][0] == "done"
    extra = round_trips.count - before - 2
    # Stream appends, plus a stop poll every 0.3 s: both bounded by the reply's length.
    assert 1 <= extra <= elapsed / 0.05 + elapsed / 0.3 + 2


async def test_seed_chat_costs_two_round_trips(
    app_client: tuple[Any, httpx.AsyncClient], round_trips: RoundTrips
) -> None:
    """Regression: seed `POST /chat` cost six to seven round trips."""
    _, c = app_client
    await c.post("/chat", json={"user_id": "bob", "message": "warm up"})
    before = round_trips.count
    r = await c.post("/chat", json={"user_id": "bob", "message": "hello"})
    assert r.status_code == 200, r.text
    assert round_trips.count - before == 2  # its stats come with the finish


# --- the renewing lock --------------------------------------------------------------------


async def test_a_reply_longer_than_the_lock_ttl_keeps_the_session(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    """Regression: the turn lock was never renewed: with its TTL at 0.5 s a second send
    during a longer reply got 200, and history was stored as user1, user2, reply2,
    reply1. The generation renews its lock now."""
    settings.limits.session_lock_ttl_ms = 600
    settings.limits.session_lock_wait_ms = 100
    # Two apps on one Redis: only the Redis lock keeps the second out (not the
    # process's own reservation).
    async with running_app(settings) as (_, c), running_app(settings) as (_, c2):
        sid = await new_session(c)
        # ~3 s, 5 lock TTLs: the second send at 1.5 s finds it running with time to spare.
        fake.script(Reply(text="slow " * 60, delay_s=0.05))
        first = asyncio.create_task(
            c.post(f"/v1/sessions/{sid}/messages", json={"content": "u1"}, headers=H)
        )
        await asyncio.sleep(1.5)
        second = await c2.post(f"/v1/sessions/{sid}/messages", json={"content": "u2"}, headers=H)
        assert second.status_code == 409 and second.json()["error"]["code"] == "session_busy"
        assert (await first).status_code == 200
        msgs = await history(c, sid)
        assert [(m["role"], m["content"][:5]) for m in msgs[1:]] == [
            ("user", "u1"),
            ("assistant", "slow "),
        ]


# --- idempotency --------------------------------------------------------------------------


async def test_idempotency_key_retry_60_messages_later_replays(
    app_client: tuple[Any, httpx.AsyncClient], fake: FakeOpenAI
) -> None:
    """Regression: a retry whose turn was more than 40 messages back called the model
    again, answered `replayed: false` and returned the newest assistant message as its
    user message. It is found by message id in the session's id index now."""
    _, c = app_client
    sid = await new_session(c)
    key = {**H, "Idempotency-Key": "order-1"}
    fake.script(Reply(text="the first answer"))
    first = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "q0"}, headers=key)
    assert first.status_code == 200
    for i in range(30):  # 60 messages
        r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": f"q{i + 1}"}, headers=H)
        assert r.status_code == 200
    calls = fake.request_count
    retry = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "q0"}, headers=key)
    assert retry.status_code == 200
    body = retry.json()
    assert body["replayed"] is True and fake.request_count == calls
    assert body["message"]["content"] == "the first answer"
    assert body["message"]["msg_id"] == first.json()["message"]["msg_id"]
    assert body["user_message"]["content"] == "q0"
    assert body["user_message"]["seq"] == first.json()["user_message"]["seq"]
    meta = (await c.get(f"/v1/sessions/{sid}", headers=H)).json()
    assert meta["message_count"] == 1 + 62


async def test_idempotent_retry_while_generating_reattaches(
    app_client: tuple[Any, httpx.AsyncClient], fake: FakeOpenAI
) -> None:
    """A retry of a turn still generating waits for that generation (it is not run
    twice) and answers its reply."""
    _, c = app_client
    sid = await new_session(c)
    key = {**H, "Idempotency-Key": "order-2"}
    fake.script(Reply(text="one two three four", delay_s=0.1))
    first = asyncio.create_task(
        c.post(f"/v1/sessions/{sid}/messages", json={"content": "q"}, headers=key)
    )
    await asyncio.sleep(0.15)
    retry = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "q"}, headers=key)
    done = await first
    assert retry.status_code == 200 and done.status_code == 200
    assert retry.json()["message"] == done.json()["message"]
    assert fake.request_count == 1


# --- limits -------------------------------------------------------------------------------


async def test_stream_cap_one_gives_one_stream_and_429s(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    """Regression: CHATMEM_LIMITS_STREAMS_PER_USER was documented but never enforced
    (with the cap at 1, six concurrent turns got 200)."""
    settings.limits.streams_per_user = 1
    async with running_app(settings) as (_, c):
        sids = [await new_session(c) for _ in range(6)]
        fake.script(Reply(text="slow " * 20, delay_s=0.05))
        first = asyncio.create_task(
            c.post(f"/v1/sessions/{sids[0]}/messages", json={"content": "go"}, headers=H)
        )
        # Its stream counts from its begin, before the model is asked: once it is asked
        # (not after a fixed pause a loaded machine may not have begun it in), the cap
        # is taken for the reply's ~1 s.
        await fake.wait_requests(1)
        others = await asyncio.gather(
            *(
                c.post(f"/v1/sessions/{s}/messages", json={"content": "go"}, headers=H)
                for s in sids[1:]
            )
        )
        assert [r.status_code for r in others] == [429] * 5
        assert all(int(r.headers["Retry-After"]) >= 1 for r in others)
        assert others[0].json()["error"]["code"] == "too_many_streams"
        assert (await first).status_code == 200
        # another user is not affected, and the slot is free again once the reply ended
        r = await c.post(f"/v1/sessions/{sids[1]}/messages", json={"content": "go"}, headers=H)
        assert r.status_code == 200


async def test_rate_limit_is_a_sliding_window(
    settings: Settings, fake: FakeOpenAI, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a fixed one-minute window let 240 turns through in 8.8 s across a
    minute boundary. The window slides: 3 turns just before a minute boundary still
    count just after it (the clock the scripts are given is moved across it)."""
    settings.limits.turns_per_minute = 3
    before_boundary = (int(time.time() // 60) + 2) * 60 - 0.1
    clock = {"now": before_boundary}
    monkeypatch.setattr("chatmem.store.turns.time.time", lambda: clock["now"])
    async with running_app(settings) as (_, c):
        sid = await new_session(c)
        codes = []
        for i in range(3):
            r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": f"{i}"}, headers=H)
            codes.append(r.status_code)
        clock["now"] = before_boundary + 0.2  # the next minute
        r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "3"}, headers=H)
        codes.append(r.status_code)
        assert codes == [200, 200, 200, 429]
        assert 59 <= int(r.headers["Retry-After"]) <= 60
        assert r.json()["error"]["code"] == "rate_limited"
        clock["now"] = before_boundary + 60.1  # the first three have left the window
        r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "4"}, headers=H)
        assert r.status_code == 200
        # The 429 stored nothing.
        meta = (await c.get(f"/v1/sessions/{sid}", headers=H)).json()
        assert meta["message_count"] == 1 + 8


async def test_session_creation_has_its_own_write_budget(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    """Regression: only chat turns were counted; creating sessions was unlimited."""
    settings.limits.writes_per_minute = 2
    async with running_app(settings) as (_, c):
        codes = [(await c.post("/v1/sessions", json={}, headers=H)).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        # Turns have their own budget.
        sid = (await c.get("/v1/sessions", headers=H)).json()["sessions"][0]["session_id"]
        r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
        assert r.status_code == 200
        # Changing one's name is a write too (it was unlimited).
        r = await c.patch("/v1/me", json={"display_name": "Ann"}, headers=H)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert (await c.get("/v1/me", headers=H)).json()["display_name"] == "User"


# --- stop and re-attach ---------------------------------------------------------------------


async def test_stop_before_the_first_token_stores_an_empty_interrupted_reply(
    app_client: tuple[Any, httpx.AsyncClient], fake: FakeOpenAI
) -> None:
    """Regression: a stop before the first token left the user message unanswered, with
    no marker. Every user message has its answer now."""
    _, c = app_client
    sid = await new_session(c)
    fake.script(Reply(text="never said", headers_delay_s=5))
    send = asyncio.create_task(
        c.post(f"/v1/sessions/{sid}/messages", json={"content": "hm"}, headers=H)
    )
    # The generation runs once the model is asked (a fixed pause may end before a loaded
    # machine has begun the turn: nothing to stop yet); its first token is 5 s away.
    await fake.wait_requests(1)
    stop = await c.post(f"/v1/sessions/{sid}/stop", headers=H)
    assert stop.json()["stopped"] is True
    r = await send
    assert r.status_code == 200
    reply = r.json()["message"]
    assert reply["content"] == "" and reply["metadata"]["interrupted"] is True
    msgs = await history(c, sid)
    assert [(m["role"], m["content"]) for m in msgs[-2:]] == [("user", "hm"), ("assistant", "")]
    assert msgs[-1]["metadata"]["interrupted"] is True


def test_reattach_in_the_same_process_resumes_after_last_event_id(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    """A client that reconnects to the process running its generation follows it in
    memory from its Last-Event-ID: every character exactly once."""
    fake.script(Reply(text="alpha beta gamma delta epsilon zeta eta theta", delay_s=0.1))

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            sid = await new_session(c)
            seen: list[str] = []
            last_id = ""
            body = {"content": "go", "stream": True}
            async with c.stream(
                "POST", f"/v1/sessions/{sid}/messages", json=body, headers=H
            ) as resp:
                async for event in sse_stream(resp):
                    last_id = event.id
                    if event.event == "delta":
                        seen.append(event.data["content"])
                        if len(seen) == 2:
                            break
            h = {**H, "Last-Event-ID": last_id}
            r = await c.get(f"/v1/sessions/{sid}/stream", headers=h)
            events = sse_events(r.text)
            rest = [d["content"] for e, d, _ in events if e == "delta"]
            assert events[-1][0] == "done"
            stored = events[-1][1]["message"]["content"]
            assert "".join(seen) + "".join(rest) == stored
            assert stored == "alpha beta gamma delta epsilon zeta eta theta"
            # Once ended: from its end nothing to send (204); from the start, all of it.
            h = {**H, "Last-Event-ID": events[-1][2]}
            assert (await c.get(f"/v1/sessions/{sid}/stream", headers=h)).status_code == 204
            again = sse_events((await c.get(f"/v1/sessions/{sid}/stream", headers=H)).text)
            assert "".join(d["content"] for e, d, _ in again if e == "delta") == stored

    with serve_in_thread(create_app(settings)) as base:
        asyncio.run(scenario(base))


async def test_reattach_answers_204_without_a_generation_and_404_for_others(
    app_client: tuple[Any, httpx.AsyncClient],
) -> None:
    _, c = app_client
    sid = await new_session(c)
    assert (await c.get(f"/v1/sessions/{sid}/stream", headers=H)).status_code == 204
    other = {"X-User-Id": "mallory"}
    assert (await c.get(f"/v1/sessions/{sid}/stream", headers=other)).status_code == 404
    assert (await c.get("/v1/sessions/nope/stream", headers=H)).status_code == 404


async def test_a_late_lock_release_ends_the_generation_so_it_is_not_recovered(
    store: Any, redis_client: Any
) -> None:
    """Regression: a turn whose finish failed (Redis went away) keeps its reply in the
    outbox and releases its lock once Redis is back. Its event stream had no end, so the
    next turn took it for a dead process's generation and stored a partial reply under
    the id the outbox's full reply is replayed with (which was then skipped as a
    duplicate). The late release ends the stream now."""
    turns = unlimited_turns(store)
    await store.create_session("alice", "assistant", session_id="s1")
    res = await turns.begin(
        "alice",
        "s1",
        Message(Role.USER, "hi", 1),
        reply_id="r1",
        generation_id="r1",
        token="tok",
        idempotent=False,
        read_last=5,
    )
    assert res.kind == "ok"
    streams = GenerationStreams(redis_client)
    assert (await streams.snapshot("alice", "s1")).lock_held
    await turns.coordinator.release_turn("alice", "s1", "tok")  # the replayer's deferred release
    snap = await streams.snapshot("alice", "s1")
    assert not snap.lock_held and snap.ended and not snap.orphaned


async def test_a_json_turn_pays_nothing_for_streaming(
    app_client: tuple[Any, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: non-streamed turns ran the whole streaming machinery (three tasks, a
    queue, a Delta per chunk). A JSON turn builds no per-chunk object now; its one task
    is the generation's own."""
    _, c = app_client
    sid = await new_session(c)
    built: list[Any] = []
    original = generation.Delta

    def counting_delta(*args: Any) -> Any:
        built.append(args)
        return original(*args)

    monkeypatch.setattr(generation, "Delta", counting_delta)
    r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    assert r.status_code == 200 and built == []
    r = await c.post(
        f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True}, headers=H
    )
    assert sse_events(r.text)[-1][0] == "done" and len(built) > 1


@pytest.mark.parametrize("whole", [False, True])
async def test_json_turns_ask_for_the_whole_reply_only_when_configured(
    settings: Settings, fake: FakeOpenAI, redis_client: Any, whole: bool
) -> None:
    """CHATMEM_LLM_WHOLE_JSON_REPLIES: a JSON turn in one non-streamed upstream request
    (much less CPU); by default streamed, so that a stopped JSON turn keeps its text.
    A streamed turn streams either way."""
    settings.llm.whole_json_replies = whole
    async with running_app(settings) as (_, c):
        sid = await new_session(c)
        fake.script(Reply(text="one two three"))
        r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
        assert r.status_code == 200 and r.json()["message"]["content"] == "one two three"
        assert r.json()["usage"]["completion_tokens"] > 0
        assert fake.requests[-1].body["stream"] is not whole
        assert ("stream_options" in fake.requests[-1].body) is not whole
        fake.script(Reply(text="four five"))
        body = {"content": "more", "stream": True}
        r = await c.post(f"/v1/sessions/{sid}/messages", json=body, headers=H)
        assert sse_events(r.text)[-1][0] == "done"
        assert fake.requests[-1].body["stream"] is True
        history = await c.get(f"/v1/sessions/{sid}/messages", headers=H)
        contents = [m["content"] for m in history.json()["messages"]]
        assert contents[-4:] == ["hi", "one two three", "more", "four five"]
