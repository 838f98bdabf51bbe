"""Generations across real chatmem processes on one Redis (SPEC §3.4–§3.6): the stream
cap, re-attaching on another process, and a process SIGKILLed mid-reply.

Real `python -m chatmem serve` processes, the test Redis, the fake model in this process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmem.config import RedisSettings
from chatmem.store.client import make_redis
from chatmem.store.streams import GenerationStreams
from tests.api_support import sse_stream
from tests.fake_openai import FakeOpenAI, Reply
from tests.live_uvicorn import ChatmemProcess, two_processes
from tests.support import eventually, process_env

LOCK_TTL_MS = 2000


def chatmem_env(redis_url: str, fake: FakeOpenAI) -> dict[str, str]:
    return process_env(redis_url, fake.base_url) | {
        "CHATMEM_LIMITS_SESSION_LOCK_WAIT_MS": "200",
        "CHATMEM_LIMITS_SESSION_LOCK_TTL_MS": str(LOCK_TTL_MS),
        "CHATMEM_LIMITS_STREAMS_PER_USER": "1",
    }


@pytest.fixture(scope="module")
def servers(
    redis_url: str, fake_model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ChatmemProcess, ChatmemProcess]]:
    env = chatmem_env(redis_url, fake_model)
    tmp = tmp_path_factory.mktemp("generations")
    with two_processes(env, tmp) as pair:
        yield pair


async def new_session(c: httpx.AsyncClient, url: str, user: str) -> str:
    r = await c.post(f"{url}/v1/sessions", json={}, headers={"X-User-Id": user})
    assert r.status_code == 201, r.text
    sid: str = r.json()["session"]["session_id"]
    return sid


async def holds(streams: GenerationStreams, user: str, sid: str, said: str) -> bool:
    """Whether the session's event stream in Redis holds at least `said`."""
    return (await streams.snapshot(user, sid)).text().startswith(said)


async def read_events(resp: httpx.Response, stop_after_deltas: int | None = None) -> list[Any]:
    """(event, data, id) of each event, stopping after that many deltas if given."""
    out: list[Any] = []
    async for event in sse_stream(resp):
        out.append(event)
        deltas = sum(1 for e in out if e.event == "delta")
        if stop_after_deltas is not None and deltas >= stop_after_deltas:
            break
    return out


async def messages(c: httpx.AsyncClient, url: str, user: str, sid: str) -> list[Any]:
    r = await c.get(f"{url}/v1/sessions/{sid}/messages", headers={"X-User-Id": user})
    assert r.status_code == 200, r.text
    out: list[Any] = r.json()["messages"]
    return out


def test_stream_cap_holds_across_two_processes(
    servers: tuple[ChatmemProcess, ChatmemProcess], fake: FakeOpenAI
) -> None:
    """With the cap at 1, a user's second generation is refused on the other process."""
    a, b = servers
    user = {"X-User-Id": "cap-user"}

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=20) as c:
            s1 = await new_session(c, a.url, "cap-user")
            s2 = await new_session(c, b.url, "cap-user")
            fake.script(Reply(text="slow " * 20, delay_s=0.05))
            first = asyncio.create_task(
                c.post(f"{a.url}/v1/sessions/{s1}/messages", json={"content": "x"}, headers=user)
            )
            # Its stream counts from its begin, before the model is asked: once it is
            # asked (not after a fixed pause a loaded machine may not have begun it in),
            # the cap is taken for the reply's ~1 s.
            await fake.wait_requests(1)
            r = await c.post(
                f"{b.url}/v1/sessions/{s2}/messages", json={"content": "y"}, headers=user
            )
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "too_many_streams"
            assert (await first).status_code == 200
            r = await c.post(
                f"{b.url}/v1/sessions/{s2}/messages", json={"content": "y"}, headers=user
            )
            assert r.status_code == 200

    asyncio.run(scenario())


def test_disconnect_then_reattach_on_the_other_process_resumes_exactly(
    servers: tuple[ChatmemProcess, ChatmemProcess], fake: FakeOpenAI
) -> None:
    """The page reloads mid-reply: the client hangs up after 3 events and re-attaches
    through the other process with Last-Event-ID. It gets the rest exactly once, and
    what it saw in all is the stored reply."""
    a, b = servers
    user = {"X-User-Id": "reload-user"}
    text = " ".join(f"w{i}" for i in range(40))

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=20) as c:
            sid = await new_session(c, a.url, "reload-user")
            fake.script(Reply(text=text, delay_s=0.03))
            body = {"content": "tell me", "stream": True}
            url = f"{a.url}/v1/sessions/{sid}/messages"
            async with c.stream("POST", url, json=body, headers=user) as resp:
                first = await read_events(resp, stop_after_deltas=3)
            assert len(first) == 3 and all(e[2] for e in first)
            last_id = first[-1][2]
            async with c.stream(
                "GET",
                f"{b.url}/v1/sessions/{sid}/stream",
                headers={**user, "Last-Event-ID": last_id},
            ) as resp:
                assert resp.status_code == 200
                rest = await read_events(resp)
            assert rest[-1][0] == "done"
            seen = "".join(d["content"] for _, d, _ in first + rest[:-1])
            stored = (await messages(c, a.url, "reload-user", sid))[-1]
            assert seen == stored["content"] == text
            assert rest[-1][1]["message"]["content"] == text

    asyncio.run(scenario())


def test_sigkill_mid_stream_next_send_or_reattach_stores_the_partial_reply(
    redis_url: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """The process streaming two replies is SIGKILLed. Within the lock's TTL of the
    kill, through another process: the next send on one session stores what that
    generation's stream held as its reply, marked interrupted, and takes its own turn
    after it; a client re-attaching to the other session gets the rest of what its
    stream held and its end, the reply stored the same way."""
    env = chatmem_env(redis_url, fake)
    victim = ChatmemProcess(env, tmp_path / "victim" / "data").start()
    other = ChatmemProcess(env, tmp_path / "other" / "data").start()
    ua, ub = {"X-User-Id": "kill-a"}, {"X-User-Id": "kill-b"}
    long_text = "word " * 200
    try:
        victim.wait_ready()
        other.wait_ready()

        async def open_stream(c: httpx.AsyncClient, sid: str, user: dict[str, str]) -> Any:
            body = {"content": "first", "stream": True}
            url = f"{victim.url}/v1/sessions/{sid}/messages"
            req = c.build_request("POST", url, json=body, headers=user)
            resp = await c.send(req, stream=True)
            return resp, await read_events(resp, stop_after_deltas=10)

        async def send_until_free(c: httpx.AsyncClient, sid: str) -> httpx.Response:
            send = f"{other.url}/v1/sessions/{sid}/messages"
            while True:
                r = await c.post(send, json={"content": "second"}, headers=ua)
                if r.status_code != 409:
                    return r
                await asyncio.sleep(0.1)

        async def reattach(c: httpx.AsyncClient, sid: str, last_id: str) -> list[Any]:
            h = {**ub, "Last-Event-ID": last_id}
            async with c.stream("GET", f"{other.url}/v1/sessions/{sid}/stream", headers=h) as r:
                assert r.status_code == 200
                return await read_events(r)

        async def scenario() -> None:
            redis_client = make_redis(redis_url, RedisSettings(url=redis_url))
            streams = GenerationStreams(redis_client)
            try:
                await kill_mid_stream(streams)
            finally:
                await redis_client.aclose()

        async def kill_mid_stream(streams: GenerationStreams) -> None:
            async with httpx.AsyncClient(timeout=20) as c:
                sa = await new_session(c, victim.url, "kill-a")
                sb = await new_session(c, victim.url, "kill-b")
                fake.script(
                    Reply(text=long_text, delay_s=0.03),
                    Reply(text=long_text, delay_s=0.03),
                    Reply(text="fresh reply"),
                )
                (resp_a, seen_a), (resp_b, seen_b) = await asyncio.gather(
                    open_stream(c, sa, ua), open_stream(c, sb, ub)
                )
                said_a = "".join(d["content"] for e, d, _ in seen_a if e == "delta")
                said_b = "".join(d["content"] for e, d, _ in seen_b if e == "delta")
                # The clients are sent the deltas from memory; the process's tick appends
                # them to Redis up to 50 ms later, or later on a loaded machine: wait
                # until each event stream holds what its client saw before the kill.
                a_held: bool = await eventually(
                    lambda: holds(streams, "kill-a", sa, said_a), "session a's deltas in Redis"
                )
                b_held: bool = await eventually(
                    lambda: holds(streams, "kill-b", sb, said_b), "session b's deltas in Redis"
                )
                assert a_held and b_held
                victim.kill()
                killed_at = time.monotonic()
                await resp_a.aclose()
                await resp_b.aclose()
                sent, rest = await asyncio.gather(
                    send_until_free(c, sa), reattach(c, sb, seen_b[-1][2])
                )
                assert time.monotonic() - killed_at < LOCK_TTL_MS / 1000 + 1.5

                # The send: the partial reply first, interrupted, then the new turn.
                assert sent.status_code == 200, sent.text
                msgs = await messages(c, other.url, "kill-a", sa)
                roles = [(m["role"], m["content"][:5]) for m in msgs[1:]]
                assert roles == [
                    ("user", "first"),
                    ("assistant", "word "),
                    ("user", "secon"),
                    ("assistant", "fresh"),
                ]
                partial = msgs[2]
                assert partial["metadata"]["interrupted"] is True
                assert partial["content"].startswith(said_a)
                assert len(partial["content"]) < len(long_text)

                # The re-attach: the rest of the stream exactly, then its end.
                assert rest[-1][0] == "done"
                recovered = rest[-1][1]["message"]
                assert recovered["metadata"]["interrupted"] is True
                more = "".join(d["content"] for e, d, _ in rest[:-1])
                assert said_b + more == recovered["content"]
                stored_b = (await messages(c, other.url, "kill-b", sb))[-1]
                assert stored_b["content"] == recovered["content"]
                assert stored_b["metadata"]["interrupted"] is True

        asyncio.run(scenario())
    finally:
        victim.stop()
        other.stop()
