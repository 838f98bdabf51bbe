"""Two chatmem processes on one Redis behave as one (SPEC §7): memory, order, the turn
lock and stop signals live in Redis, nothing that matters in a process.

Two real `python -m chatmem serve` processes on different ports, the test Redis, the
fake model in this process (it records what each turn sent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.api_support import make_test_settings, running_app, sse_stream
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_uvicorn import ChatmemProcess, two_processes
from tests.support import process_env

H = {"X-User-Id": "alice"}


@pytest.fixture(scope="module")
def servers(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ChatmemProcess, ChatmemProcess]]:
    env = process_env(redis_url, fake_model.base_url) | {
        # A second send gives up quickly, while the first turn is still streaming.
        "CHATMEM_LIMITS_SESSION_LOCK_WAIT_MS": "300",
    }
    tmp = tmp_path_factory.mktemp("scale-out")
    with two_processes(env, tmp) as pair:
        yield pair


@pytest.fixture
def clean(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


def new_session(url: str) -> str:
    r = httpx.post(url + "/v1/sessions", json={"character_id": "assistant"}, headers=H)
    assert r.status_code == 201, r.text
    sid: str = r.json()["session"]["session_id"]
    return sid


@pytest.mark.usefixtures("clean")
def test_alternating_servers_keep_the_whole_conversation_in_order(
    servers: tuple[ChatmemProcess, ChatmemProcess], fake: FakeOpenAI
) -> None:
    a, b = servers
    sid = new_session(a.url)
    turns = 6
    fake.script(*(Reply(text=f"reply {i}") for i in range(turns)))
    for i in range(turns):
        server = (a, b)[i % 2]
        r = httpx.post(
            f"{server.url}/v1/sessions/{sid}/messages", json={"content": f"turn {i}"}, headers=H
        )
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"] == f"reply {i}"
        # What the model saw: every earlier turn, whichever process served it, in order.
        sent = [(m["role"], m["content"]) for m in fake.chat_bodies[-1]["messages"]]
        history = [
            pair for j in range(i) for pair in (("user", f"turn {j}"), ("assistant", f"reply {j}"))
        ]
        assert sent[-(2 * i + 1) :] == [*history, ("user", f"turn {i}")]
        assert sent[0][0] == "system"
    r = httpx.get(f"{b.url}/v1/sessions/{sid}/messages", params={"limit": 100}, headers=H)
    contents = [m["content"] for m in r.json()["messages"] if not m["metadata"].get("greeting")]
    assert contents == [c for i in range(turns) for c in (f"turn {i}", f"reply {i}")]
    seqs = [m["seq"] for m in r.json()["messages"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.usefixtures("clean")
async def test_simultaneous_sends_to_two_servers_one_turn_the_other_session_busy(
    servers: tuple[ChatmemProcess, ChatmemProcess], fake: FakeOpenAI
) -> None:
    a, b = servers
    sid = new_session(a.url)
    fake.script(Reply(text="a slow reply of ten chunks", chunks=10, delay_s=0.1))

    async def send(client: httpx.AsyncClient, server: ChatmemProcess, text: str) -> Any:
        return await client.post(
            f"{server.url}/v1/sessions/{sid}/messages", json={"content": text}, headers=H
        )

    async with httpx.AsyncClient(timeout=30) as client:
        ra, rb = await asyncio.gather(send(client, a, "from a"), send(client, b, "from b"))
        assert sorted([ra.status_code, rb.status_code]) == [200, 409]
        busy = ra if ra.status_code == 409 else rb
        assert busy.json()["error"]["code"] == "session_busy"
        assert fake.request_count == 1
        # The winner's turn is the session's only one, and the lock is free again after it.
        winner = "from a" if ra.status_code == 200 else "from b"
        r = await client.get(f"{b.url}/v1/sessions/{sid}/messages", headers=H)
        contents = [m["content"] for m in r.json()["messages"] if not m["metadata"].get("greeting")]
        assert contents == [winner, "a slow reply of ten chunks"]
        r = await send(client, b, "next")
        assert r.status_code == 200, r.text


@pytest.mark.usefixtures("clean")
async def test_a_stop_sent_to_one_server_stops_the_turn_streaming_on_the_other(
    servers: tuple[ChatmemProcess, ChatmemProcess], fake: FakeOpenAI
) -> None:
    a, b = servers
    sid = new_session(a.url)
    fake.script(Reply(text="word " * 100, chunks=100, delay_s=0.05))
    deltas = 0
    done: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        request = client.stream(
            "POST",
            f"{a.url}/v1/sessions/{sid}/messages",
            json={"content": "go on and on", "stream": True},
            headers=H,
        )
        async with request as response:
            async for event in sse_stream(response):
                if event.event == "delta":
                    deltas += 1
                    if deltas == 3:
                        r = await client.post(f"{b.url}/v1/sessions/{sid}/stop", headers=H)
                        assert r.json()["stopped"] is True
                elif event.event == "done":
                    done = event.data
        assert 3 <= deltas < 100
        assert done["message"]["metadata"]["interrupted"] is True
        r = await client.get(f"{b.url}/v1/sessions/{sid}/messages", headers=H)
        assert r.json()["messages"][-1]["metadata"]["interrupted"] is True


@pytest.mark.fake_model(default=Reply(text="slow " * 5, chunks=5, delay_s=0.2))
async def test_concurrent_streams_are_capped_by_llm_max_connections_not_a_constant(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The upstream pool was a fixed 512 connections: the 513th concurrent stream of a
    process waited for one and failed after connect_timeout_s (1 000 streams in
    bench/stream_load.py). It is CHATMEM_LLM_MAX_CONNECTIONS now, 1024 by default."""
    from chatmem.config import LLMSettings

    assert LLMSettings(_env_file=None).max_connections >= 1000  # type: ignore[call-arg]
    llm = {"max_connections": 2, "connect_timeout_s": 0.3}
    settings = make_test_settings(redis_url, fake.base_url, tmp_path / "data", llm=llm)
    async with running_app(settings) as (_, client):
        sids = []
        for _ in range(3):
            r = await client.post("/v1/sessions", json={"character_id": "assistant"}, headers=H)
            sids.append(r.json()["session"]["session_id"])
        replies = await asyncio.gather(
            *(
                client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=H)
                for sid in sids
            )
        )
    assert sorted(r.status_code for r in replies) == [200, 200, 504]
