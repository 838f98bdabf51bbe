"""The native /v1 API end to end: real Redis, the fake OpenAI-compatible server, the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.api.app import create_app
from chatmem.config import Settings
from chatmem.tokens import count_tokens
from tests.api_support import make_test_settings, new_session, running_app, sse_events, sse_stream
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_uvicorn import serve_in_thread
from tests.support import eventually

H = {"X-User-Id": "alice"}


@pytest.fixture
def settings(redis_url: str, fake: FakeOpenAI, tmp_path: Path) -> Settings:
    return make_test_settings(redis_url, fake.base_url, tmp_path)


@pytest.fixture
async def client(settings: Settings, redis_client: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as (_, c):
        yield c


async def test_session_lifecycle_and_memory(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    r = await client.post("/v1/sessions", json={"character_id": "teacher"}, headers=H)
    assert r.status_code == 201
    body = r.json()
    sid = body["session"]["session_id"]
    assert body["greeting"]["role"] == "assistant" and body["greeting"]["content"]

    fake.script(Reply(text="Paris is the capital."), Reply(text="It has 2 million people."))
    r1 = await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "Capital of France?"}, headers=H
    )
    assert r1.status_code == 200, r1.text
    assert r1.json()["message"]["content"] == "Paris is the capital."
    r2 = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "How big?"}, headers=H)
    assert r2.json()["message"]["content"] == "It has 2 million people."

    sent = fake.chat_bodies[-1]["messages"]
    assert sent[0]["role"] == "system"
    assert [m["content"] for m in sent[-3:]] == [
        "Capital of France?",
        "Paris is the capital.",
        "How big?",
    ]

    hist = (await client.get(f"/v1/sessions/{sid}/messages", headers=H)).json()
    assert [m["role"] for m in hist["messages"]] == [
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert [m["seq"] for m in hist["messages"]] == [1, 2, 3, 4, 5]
    page = (await client.get(f"/v1/sessions/{sid}/messages?limit=2&before=4", headers=H)).json()
    assert [m["seq"] for m in page["messages"]] == [2, 3] and page["next_before"] == 2
    page = (await client.get(f"/v1/sessions/{sid}/messages?limit=2&before=2", headers=H)).json()
    assert [m["seq"] for m in page["messages"]] == [1] and page["next_before"] is None
    listed = (await client.get("/v1/sessions", headers=H)).json()["sessions"]
    assert listed[0]["session_id"] == sid
    assert listed[0]["preview"] == "It has 2 million people."

    meta = (await client.get(f"/v1/sessions/{sid}", headers=H)).json()
    assert meta["message_count"] == 5 and meta["usage"]["prompt_tokens"] > 0

    ctx = (await client.get(f"/v1/sessions/{sid}/context", headers=H)).json()
    assert ctx["messages"][-1]["content"] == "It has 2 million people."
    assert ctx["tokens"]["total"] == ctx["tokens"]["system"] + ctx["tokens"]["history"]

    # After the oldest is deleted, a page that holds all the rest offers no older page
    # (the cursor was computed from counts a delete changes: it offered an empty one).
    r = await client.delete(
        f"/v1/sessions/{sid}/messages/{hist['messages'][0]['msg_id']}", headers=H
    )
    assert r.status_code == 204
    page = (await client.get(f"/v1/sessions/{sid}/messages?limit=4", headers=H)).json()
    assert [m["seq"] for m in page["messages"]] == [2, 3, 4, 5] and page["next_before"] is None
    page = (await client.get(f"/v1/sessions/{sid}/messages?limit=3", headers=H)).json()
    assert [m["seq"] for m in page["messages"]] == [3, 4, 5] and page["next_before"] == 3

    r = await client.patch(
        f"/v1/sessions/{sid}", json={"title": "Geo", "window_size": 1}, headers=H
    )
    assert r.json()["title"] == "Geo" and r.json()["window_size"] == 1
    ctx = (await client.get(f"/v1/sessions/{sid}/context", headers=H)).json()
    assert len(ctx["messages"]) == 3  # system + one round

    cleared = await client.delete(f"/v1/sessions/{sid}/messages", headers=H)
    assert cleared.status_code == 200 and cleared.json()["stored_messages"] == 0
    assert (await client.get(f"/v1/sessions/{sid}/messages", headers=H)).json()["messages"] == []

    assert (await client.delete(f"/v1/sessions/{sid}", headers=H)).status_code == 204
    gone = await client.get(f"/v1/sessions/{sid}", headers=H)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"


async def test_streamed_reply_over_sse(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    sid = await new_session(client)
    fake.script(Reply(text="one two three"))
    r = await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "count", "stream": True}, headers=H
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    deltas = [d["content"] for e, d, _ in events if e == "delta"]
    assert "".join(deltas) == "one two three" and len(deltas) == 3
    kind, done, eid = events[-1]
    assert kind == "done" and done["message"]["content"] == "one two three"
    assert eid.startswith(done["message"]["msg_id"])
    assert done["usage"]["completion_tokens"] > 0


async def test_accept_header_selects_sse(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    r = await client.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": "hi"},
        headers={**H, "Accept": "text/event-stream"},
    )
    assert sse_events(r.text)[-1][0] == "done"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        ("", "empty_message"),
        ("   \n ", "empty_message"),
        ("\u200b \u200b", "empty_message"),  # only invisible: zero-width spaces
        ("\x00", "empty_message"),
        ("x" * 4001, "message_too_long"),
    ],
)
async def test_bad_messages_are_4xx_with_a_code(
    client: httpx.AsyncClient, content: str, code: str
) -> None:
    sid = await new_session(client)
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": content}, headers=H)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


@pytest.mark.parametrize("bad", ["a}b", "*", "x:y", "a" * 200])
async def test_unsafe_ids_are_rejected(client: httpx.AsyncClient, bad: str) -> None:
    r = await client.get(f"/v1/sessions/{bad}", headers=H)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_id"
    r = await client.get("/v1/sessions", headers={"X-User-Id": bad})
    assert r.status_code in (400, 401)


async def test_malformed_bodies_are_422(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    r = await client.post(f"/v1/sessions/{sid}/messages", content=b"{not json", headers=H)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = await client.post("/v1/sessions", json={"window_size": 99}, headers=H)
    assert r.status_code == 422
    r = await client.post("/v1/sessions", json={"character_id": "nobody"}, headers=H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "character_not_found"


async def test_idempotency_key_replays_the_stored_reply(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await new_session(client)
    fake.script(Reply(text="first answer"), Reply(text="should never be generated"))
    hdr = {**H, "Idempotency-Key": "req-42"}
    a = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "q"}, headers=hdr)
    b = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "q"}, headers=hdr)
    assert a.json()["message"] == b.json()["message"]
    assert b.json()["replayed"] is True
    assert fake.request_count == 1
    hist = (await client.get(f"/v1/sessions/{sid}/messages", headers=H)).json()["messages"]
    assert [m["content"] for m in hist[1:]] == ["q", "first answer"]
    # The same key for another message: the client's mistake, not "q"'s reply again.
    c = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "q2"}, headers=hdr)
    assert (c.status_code, c.json()["error"]["code"]) == (409, "idempotency_key_reused")
    assert fake.request_count == 1
    hist = (await client.get(f"/v1/sessions/{sid}/messages", headers=H)).json()["messages"]
    assert [m["content"] for m in hist[1:]] == ["q", "first answer"]


async def test_system_prompt_tokens_count_in_the_context_budget(
    redis_url: str, redis_client: Any, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The service's system prompt tokens reach the budget: counted as 0, history filled
    the whole budget and the model was sent more than max_context_tokens (every API test
    passed all the same)."""
    budget = 400
    prompt = "You are a careful assistant who answers in full sentences. " * 10
    memory = {"max_context_tokens": budget}
    settings = make_test_settings(redis_url, fake.base_url, tmp_path, memory=memory)
    character = {"id": "verbose", "name": "Verbose", "system_prompt": prompt}
    async with running_app(settings) as (_, client):
        assert (await client.post("/v1/characters", json=character, headers=H)).status_code == 201
        sid = await new_session(client, character_id="verbose")
        fake.default = Reply(text="word " * 40)
        for _ in range(6):  # 12 messages of about 40 tokens: more than the budget holds
            r = await client.post(
                f"/v1/sessions/{sid}/messages", json={"content": "word " * 40}, headers=H
            )
            assert r.status_code == 200, r.text
        tokens = (await client.get(f"/v1/sessions/{sid}/context", headers=H)).json()["tokens"]
    assert tokens["budget"] == budget and tokens["system"] == count_tokens(prompt) > 100
    assert tokens["total"] <= budget and tokens["dropped_by_budget"] > 0
    sent = fake.chat_bodies[-1]["messages"]
    assert sent[0]["content"] == prompt
    assert sum(count_tokens(m["content"]) for m in sent) <= budget


async def test_provider_errors_map_to_gateway_statuses(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    sid = await new_session(client)
    fake.script(Reply(status=500), Reply(status=401))
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "x"}, headers=H)
    assert r.status_code == 503 and r.json()["error"]["code"] == "provider_unavailable"
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "y"}, headers=H)
    assert r.status_code == 502 and r.json()["error"]["code"] == "provider_auth"
    # The user messages were accepted before the model was called: they are kept.
    hist = (await client.get(f"/v1/sessions/{sid}/messages", headers=H)).json()["messages"]
    assert [m["content"] for m in hist if m["role"] == "user"] == ["x", "y"]


async def test_me_and_erase_me(client: httpx.AsyncClient) -> None:
    await new_session(client)
    me = (await client.get("/v1/me", headers=H)).json()
    assert me["user_id"] == "alice" and me["session_count"] == 1
    assert (await client.delete("/v1/me", headers=H)).json()["deleted_sessions"] == 1
    assert (await client.get("/v1/sessions", headers=H)).json()["sessions"] == []


async def test_health_ready_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["redis"] == "connected"
    assert (await client.get("/ready")).status_code == 200
    sid = await new_session(client)
    await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
    text = (await client.get("/metrics")).text
    assert (
        "chatmem_turn_seconds_count" in text
        and 'chatmem_store_op_seconds_count{op="begin_turn"}' in text
    )
    assert (await client.get("/health")).headers["x-request-id"]


# --- real sockets: disconnects and stop ------------------------------------------------


async def _read_until_deltas(resp: httpx.Response, n: int) -> int:
    seen = 0
    async for event in sse_stream(resp):
        if event.event == "delta":
            seen += 1
            if seen >= n:
                break
    return seen


def test_client_disconnect_does_not_stop_the_generation(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    """A native streamed reply is server-owned: the client hanging up after 5 deltas
    does not end it; it completes and is stored whole (SPEC §3.6)."""
    fake.script(Reply(text="w " * 100, delay_s=0.01))

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            sid = await new_session(c)
            async with c.stream(
                "POST",
                f"/v1/sessions/{sid}/messages",
                json={"content": "long please", "stream": True},
                headers=H,
            ) as resp:
                assert await _read_until_deltas(resp, 5) == 5
            for _ in range(200):
                hist = (await c.get(f"/v1/sessions/{sid}/messages", headers=H)).json()
                if hist["messages"][-1]["role"] == "assistant" and len(hist["messages"]) == 3:
                    break
                await asyncio.sleep(0.05)
            last = hist["messages"][-1]
            assert last["role"] == "assistant" and last["content"] == "w " * 100
            assert "interrupted" not in last["metadata"]
            assert fake.client_disconnects == 0

    with serve_in_thread(create_app(settings)) as base:
        asyncio.run(scenario(base))


def test_on_disconnect_stop_keeps_partial_reply_and_closes_upstream(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    """`on_disconnect: "stop"`: the client hanging up stops the generation; the partial
    reply is stored, interrupted, and the upstream stream is closed."""
    fake.script(Reply(text="w " * 200, delay_s=0.02))

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            sid = await new_session(c)
            async with c.stream(
                "POST",
                f"/v1/sessions/{sid}/messages",
                json={"content": "long please", "stream": True, "on_disconnect": "stop"},
                headers=H,
            ) as resp:
                assert await _read_until_deltas(resp, 5) == 5
            # the client hung up: the server must store the partial reply and hang up too
            assert await fake.wait_disconnected(10)

            async def reply_stored() -> list[dict[str, Any]]:
                hist = (await c.get(f"/v1/sessions/{sid}/messages", headers=H)).json()
                done = hist["messages"][-1]["role"] == "assistant" and len(hist["messages"]) == 3
                return hist["messages"] if done else []

            last = (await eventually(reply_stored, "the partial reply stored"))[-1]
            assert last["role"] == "assistant" and last["metadata"]["interrupted"] is True
            assert 0 < len(last["content"]) < len("w " * 200)
            # the session is free again
            r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": "again"}, headers=H)
            assert r.status_code == 200

    with serve_in_thread(create_app(settings)) as base:
        asyncio.run(scenario(base))


def test_stop_endpoint_stops_generation(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    fake.script(Reply(text="z " * 300, delay_s=0.02))

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            sid = await new_session(c)
            async with c.stream(
                "POST",
                f"/v1/sessions/{sid}/messages",
                json={"content": "go", "stream": True},
                headers=H,
            ) as resp:
                deltas = 0
                async for event in sse_stream(resp):
                    if event.event == "delta":
                        deltas += 1
                        if deltas == 3:
                            r = await c.post(f"/v1/sessions/{sid}/stop", headers=H)
                            assert r.json()["stopped"] is True
                    elif event.event == "done":
                        done = event.data
                        break
            assert done["message"]["metadata"]["interrupted"] is True
            assert await fake.wait_disconnected(10)
            hist = (await c.get(f"/v1/sessions/{sid}/messages", headers=H)).json()["messages"]
            assert hist[-1]["metadata"]["interrupted"] is True
            assert hist[-1]["content"] == done["message"]["content"]

    with serve_in_thread(create_app(settings)) as base:
        asyncio.run(scenario(base))


async def test_generation_nobody_waits_for_completes_and_frees_the_session(
    settings: Settings, fake: FakeOpenAI, redis_client: Any
) -> None:
    """Regression: a client gone before the SSE body began left the turn lock held until
    its TTL (120 s). A generation is server-owned now: with no subscriber at all it still
    completes, is stored, and frees the session."""
    settings.limits.session_lock_wait_ms = 2000
    async with running_app(settings) as (app, client):
        sid = await new_session(client)
        service = app.state.parts.service
        await service.prepare_turn("alice", sid, "hello?", stream=True)
        r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "b"}, headers=H)
        assert r.status_code == 200
        hist = (await client.get(f"/v1/sessions/{sid}/messages", headers=H)).json()["messages"]
        assert [m["role"] for m in hist[1:]] == ["user", "assistant", "user", "assistant"]
        assert [m["content"] for m in hist if m["role"] == "user"] == ["hello?", "b"]


async def test_docs_page_works_offline(client: httpx.AsyncClient) -> None:
    """/docs loads Swagger UI from chatmem itself, never from a CDN."""
    page = (await client.get("/docs")).text
    assert "cdn." not in page and "/static-offline-docs/swagger-ui-bundle.js" in page
    js = await client.get("/static-offline-docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "chatmem"


async def test_active_streams_counts_streamed_replies_only(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    """Regression: `chatmem_active_streams` counted every generation, JSON turns too."""

    async def gauge() -> float:
        text = (await client.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("chatmem_active_streams "))
        return float(line.split()[1])

    async def while_generating(body: dict[str, Any]) -> float:
        sid = await new_session(client)
        fake.script(Reply(text="slow " * 20, delay_s=0.05))
        send = asyncio.create_task(
            client.post(f"/v1/sessions/{sid}/messages", json=body, headers=H)
        )
        async with asyncio.timeout(10):
            while not fake.chat_requests:  # noqa: ASYNC110 (the fake model has no event)
                await asyncio.sleep(0.01)
        seen = await gauge()
        assert (await send).status_code == 200
        fake.requests.clear()
        return seen

    assert await while_generating({"content": "json"}) == 0
    assert await while_generating({"content": "sse", "stream": True}) == 1
    assert await gauge() == 0
