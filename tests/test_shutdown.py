"""Graceful shutdown: SIGTERM to a real `chatmem serve` while 50 replies are streaming.

uvicorn stops accepting at once; turns that finish within the grace period
(`CHATMEM_SERVER_SHUTDOWN_GRACE_S`) end normally, the streamed others are stopped just
before it ends and stored as interrupted (their clients get a `done` event saying so);
non-streamed ones still running when it ends lose their request to uvicorn, and their
generations (server-owned tasks) are stopped by the service's shutdown and stored as
interrupted too. Then the outbox is flushed and the
embedded Redis is stopped last (SIGTERM: it writes its AOF). Read back from that Redis
afterwards, every streamed reply is exactly what its client was sent.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from chatmem.config import RedisSettings
from chatmem.ops.embedded import EmbeddedRedis
from chatmem.store.client import make_redis
from chatmem.store.conversations import RedisMemoryStore
from tests.api_support import sse_stream
from tests.fake_openai import FakeOpenAI, Reply
from tests.support import free_port, process_env, wait_until

STREAMS = 50
JSON_TURNS = 4  # long, not streamed: cut by uvicorn at the end of the grace period
GRACE_S = 4
WORD_DELAY_S = 0.25
SHORT_WORDS = 8  # about 2 s: ends within the grace period
LONG_WORDS = 80  # about 20 s: cut by the shutdown


def paced(body: Any) -> Reply:
    """A short or a long reply, as the user message asks."""
    words = SHORT_WORDS if body["messages"][-1]["content"].startswith("short") else LONG_WORDS
    return Reply(text="w " * words, delay_s=WORD_DELAY_S)


def refuses_connections(url: str) -> bool:
    """Whether nothing listens on `url` any more (a connection accepted while uvicorn was
    closing its socket, and dropped unanswered or reset, counts as "not yet")."""
    try:
        httpx.get(url + "/health", timeout=5)
    except httpx.ConnectError:
        return True
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass
    return False


async def stream(
    c: httpx.AsyncClient, user: str, sid: str, content: str, started: asyncio.Queue[str]
) -> dict[str, Any]:
    seen: list[str] = []
    done: dict[str, Any] | None = None
    body = {"content": content, "stream": True}
    try:
        async with c.stream(
            "POST", f"/v1/sessions/{sid}/messages", json=body, headers={"X-User-Id": user}
        ) as resp:
            assert resp.status_code == 200
            async for event in sse_stream(resp):
                if event.event == "delta":
                    if not seen:
                        started.put_nowait(sid)
                    seen.append(event.data["content"])
                elif event.event == "done":
                    done = event.data
    except httpx.TransportError:
        pass  # the server ended a cut stream by closing the connection
    short = content.startswith("short")
    return {"user": user, "sid": sid, "short": short, "seen": seen, "done": done}


async def json_turn(c: httpx.AsyncClient, user: str, sid: str) -> dict[str, Any]:
    status = None
    try:
        r = await c.post(
            f"/v1/sessions/{sid}/messages", json={"content": "long"}, headers={"X-User-Id": user}
        )
        status = r.status_code
    except httpx.TransportError:
        pass
    return {"user": user, "sid": sid, "json": True, "status": status}


async def clients(
    url: str, proc: subprocess.Popen[bytes], fake: FakeOpenAI
) -> tuple[list[dict[str, Any]], float]:
    limits = httpx.Limits(max_connections=STREAMS + JSON_TURNS + 10, keepalive_expiry=1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        sessions = []
        for i in range(STREAMS + JSON_TURNS):
            user = f"user{i}"
            r = await c.post("/v1/sessions", json={}, headers={"X-User-Id": user})
            assert r.status_code == 201, r.text
            sessions.append((user, r.json()["session"]["session_id"]))
        started: asyncio.Queue[str] = asyncio.Queue()
        tasks = [
            asyncio.create_task(
                stream(c, user, sid, f"{'short' if i % 2 else 'long'} {i}", started)
            )
            for i, (user, sid) in enumerate(sessions[:STREAMS])
        ]
        tasks += [asyncio.create_task(json_turn(c, u, sid)) for u, sid in sessions[STREAMS:]]
        for _ in range(STREAMS):  # every reply under way
            await asyncio.wait_for(started.get(), 30)
        await fake.wait_requests(STREAMS + JSON_TURNS, timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        term_at = time.monotonic()
        # No longer accepting, well before the grace period is over.
        await asyncio.to_thread(wait_until, lambda: refuses_connections(url), "SIGTERM taken")
        assert time.monotonic() - term_at < GRACE_S
        results = await asyncio.gather(*tasks)
        return results, term_at


@pytest.mark.slow
def test_sigterm_lets_turns_finish_or_stores_them_interrupted(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI
) -> None:
    data_dir = tmp_path_factory.mktemp("sd")  # short: the embedded Redis's unix socket
    port = free_port()
    fake.respond = paced
    env = process_env(None, fake.base_url) | {
        "CHATMEM_DATA_DIR": str(data_dir),
        "CHATMEM_LIMITS_REQUESTS_PER_MINUTE": "100000",
        "CHATMEM_SERVER_SHUTDOWN_GRACE_S": str(GRACE_S),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatmem", "serve", "--port", str(port)],
        env=env,
        cwd=data_dir,  # no developer's .env
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        return httpx.get(url + "/ready", timeout=1).status_code == 200

    try:
        wait_until(ready, "the server to come up", timeout_s=60, ignore=(httpx.TransportError,))
        results, term_at = asyncio.run(clients(url, proc, fake))
        proc.wait(GRACE_S + 15)
        stopped_after_s = time.monotonic() - term_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr
    # No stream was cut half-way (uvicorn does log the JSON turns it cancelled).
    assert "returned without completing response" not in stderr, stderr
    assert stopped_after_s < GRACE_S + 5, stderr
    assert not (data_dir / "redis.sock").exists()  # the embedded Redis was stopped, last
    assert not list((data_dir / "outbox").glob("*.jsonl"))

    with EmbeddedRedis(data_dir) as server:  # the same data, from its AOF
        completed, interrupted = asyncio.run(check_stored(server.url, results))
    print(f"\n{completed} turns completed, {interrupted} stored as interrupted")
    assert completed == STREAMS // 2
    assert interrupted == STREAMS // 2 + JSON_TURNS


async def check_stored(url: str, results: list[dict[str, Any]]) -> tuple[int, int]:
    client = make_redis(url, RedisSettings(url=url))
    store = RedisMemoryStore(client)
    completed = interrupted = 0
    try:
        for res in results:
            snap = await store.read(res["user"], res["sid"], last=100)
            user_msg, reply = snap.messages[1:]  # after the greeting
            assert user_msg.role.value == "user" and reply.role.value == "assistant"
            if res.get("json"):
                # Cancelled by uvicorn: no reply reached the client; what was said is kept.
                assert res["status"] != 200, res
                assert reply.metadata.get("interrupted") is True
                assert 0 < len(reply.content) < len("w " * LONG_WORDS)
                interrupted += 1
                continue
            seen = "".join(res["seen"])
            if res["short"]:
                # Finished within the grace period: complete, and the client saw it end.
                assert res["done"] is not None, res
                assert reply.msg_id == res["done"]["message"]["msg_id"]
                assert reply.content == "w " * SHORT_WORDS == seen
                assert not reply.metadata.get("interrupted")
                completed += 1
            else:
                # Stopped before the end of the grace period: what was said is kept, marked.
                assert res["done"] is not None, res
                assert res["done"]["message"]["metadata"]["interrupted"] is True
                assert reply.metadata.get("interrupted") is True
                assert reply.msg_id == res["done"]["message"]["msg_id"]
                assert reply.content == res["done"]["message"]["content"] == seen
                assert 0 < len(reply.content) < len("w " * LONG_WORDS)
                interrupted += 1
    finally:
        await client.aclose()
    return completed, interrupted
