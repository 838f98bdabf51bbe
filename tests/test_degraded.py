"""Redis down: turns degrade (empty context, `memory: "degraded"`), their messages wait in
the local outbox and are replayed once Redis is back; /ready fails meanwhile.

Real redis-server processes (killed, SIGSTOPped, restarted on the same port and dir with
AOF), the app in-process, the fake model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from chatmem.config import Settings
from chatmem.durability.outbox import OUTBOX_DIR, REJECTED_FILE
from chatmem.models import Message, Role
from tests.api_support import (
    FAST_FAILING_REDIS,
    REDIS_DOWN_TIMEOUT_S,
    make_test_settings,
    new_session,
    running_app,
    sse_done,
)
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import RedisProcess
from tests.support import eventually

H = {"X-User-Id": "alice"}
TIMEOUT_S = REDIS_DOWN_TIMEOUT_S


def degraded_settings(redis_url: str, llm_url: str, data_dir: Path) -> Settings:
    return make_test_settings(redis_url, llm_url, data_dir, redis=FAST_FAILING_REDIS)


@pytest.fixture
def settings(redis_server: RedisProcess, fake: FakeOpenAI, tmp_path: Path) -> Settings:
    return degraded_settings(redis_server.url, fake.base_url, tmp_path / "data")


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(settings) as (app, client):
        yield app, client


async def send(client: httpx.AsyncClient, sid: str, content: str, **body: Any) -> Any:
    r = await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": content, **body}, headers=H
    )
    assert r.status_code == 200, r.text
    return sse_done(r.text) if body.get("stream") else r.json()


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 15.0) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        r = await client.get("/ready")
        return r.json() if r.status_code == 200 else None

    body: dict[str, Any] = await eventually(ready, "/ready to answer 200", timeout_s=timeout_s)
    return body


async def history(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/sessions/{sid}/messages?limit=1000", headers=H)
    assert r.status_code == 200, r.text
    msgs: list[dict[str, Any]] = r.json()["messages"]
    return msgs


READY = {"ready": True, "redis": True, "outbox": 0, "unconfirmed": 0}


def outbox_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / OUTBOX_DIR).glob("*.jsonl"))


async def test_degraded_turn_shape_ready_and_replay(
    app_client: tuple[FastAPI, httpx.AsyncClient],
    redis_server: RedisProcess,
    fake: FakeOpenAI,
    settings: Settings,
) -> None:
    app, client = app_client
    characters = app.state.parts.characters
    teacher = await new_session(client, character_id="teacher")
    programmer = await new_session(client, character_id="programmer")  # no turn before
    fake.script(Reply(text="Paris."))
    first = await send(client, teacher, "Capital of France?")
    assert first["memory"] == "ok"
    assert (await client.get("/ready")).json() == READY

    redis_server.kill()
    fake.script(Reply(text="I cannot remember."), Reply(text="Streamed anyway."))
    down = await send(client, teacher, "What did I ask?")
    assert down["memory"] == "degraded" and down["message"]["content"] == "I cannot remember."
    assert down["usage"]["completion_tokens"] > 0
    # An empty context: the session's character (known from the turn before), the message.
    sent = fake.chat_bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[0]["content"] == (await characters.get("teacher")).system_prompt
    assert sent[1]["content"] == "What did I ask?"
    done = await send(client, programmer, "Hello?", stream=True)
    assert done["memory"] == "degraded" and done["message"]["content"] == "Streamed anyway."
    # Never seen a turn of that session: the default character answers.
    default = await characters.get(characters.default_id)
    assert fake.chat_bodies[-1]["messages"][0]["content"] == default.system_prompt

    ready = await client.get("/ready")
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "redis": False, "outbox": 4, "unconfirmed": 0}
    listing = await client.get("/v1/sessions", headers=H)
    assert listing.status_code == 503
    assert listing.json()["error"]["code"] == "store_unavailable"
    metrics = (await client.get("/metrics")).text
    assert 'chatmem_degradations_total{reason="store_unavailable"} 2.0' in metrics
    [file] = outbox_files(settings.data_dir)
    assert len(file.read_bytes().splitlines()) == 4  # fsynced before the replies went out

    redis_server.start()
    assert await wait_ready(client) == READY
    # Ready once no record is left to store; the emptied file is removed a moment later.
    await eventually(lambda: outbox_files(settings.data_dir) == [], "the outbox file removed")
    msgs = await history(client, teacher)
    assert [m["content"] for m in msgs[1:]] == [
        "Capital of France?",
        "Paris.",
        "What did I ask?",
        "I cannot remember.",
    ]
    assert msgs[3]["msg_id"] == down["user_message"]["msg_id"]
    assert msgs[4]["msg_id"] == down["message"]["msg_id"]
    assert [m["seq"] for m in msgs] == [1, 2, 3, 4, 5]
    meta = (await client.get(f"/v1/sessions/{teacher}", headers=H)).json()
    completion = first["usage"]["completion_tokens"] + down["usage"]["completion_tokens"]
    assert meta["usage"]["completion_tokens"] == completion
    assert meta["character_id"] == "teacher"
    msgs = await history(client, programmer)
    assert [m["msg_id"] for m in msgs[1:]] == [
        done["user_message"]["msg_id"],
        done["message"]["msg_id"],
    ]
    # Back to normal without a restart: memory again.
    fake.script(Reply(text="You asked about France."))
    again = await send(client, teacher, "And before that?")
    assert again["memory"] == "ok"
    assert [m["content"] for m in fake.chat_bodies[-1]["messages"][-5:]] == [
        "Capital of France?",
        "Paris.",
        "What did I ask?",
        "I cannot remember.",
        "And before that?",
    ]


async def test_missing_session_is_created_at_replay(
    app_client: tuple[FastAPI, httpx.AsyncClient], redis_server: RedisProcess
) -> None:
    """A turn on a session Redis has never seen (it cannot be checked while Redis is
    down) creates it at replay, with the character the turn was answered by."""
    _, client = app_client
    redis_server.kill()
    done = await send(client, "made-while-down", "anyone there?")
    assert done["memory"] == "degraded"
    redis_server.start()
    await wait_ready(client)
    meta = (await client.get("/v1/sessions/made-while-down", headers=H)).json()
    assert meta["character_id"] == "assistant" and meta["message_count"] == 2
    msgs = await history(client, "made-while-down")
    assert [m["role"] for m in msgs] == ["user", "assistant"]  # no greeting was seen


async def test_a_stopped_redis_never_holds_a_request_past_the_timeouts(
    app_client: tuple[FastAPI, httpx.AsyncClient], redis_server: RedisProcess
) -> None:
    """SIGSTOP: the server accepts connections and never answers, the worst case."""
    _, client = app_client
    sid = await new_session(client)
    await send(client, sid, "before")
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        bound_s = 3 * TIMEOUT_S + 1.0  # socket + connect + pool, and slack for a busy CI
        started = time.monotonic()
        assert (await send(client, sid, "frozen 1"))["memory"] == "degraded"
        assert time.monotonic() - started < bound_s
        # Known down now: the next turn does not wait for Redis at all.
        started = time.monotonic()
        assert (await send(client, sid, "frozen 2"))["memory"] == "degraded"
        assert time.monotonic() - started < TIMEOUT_S
        for path in ("/ready", "/v1/sessions", f"/v1/sessions/{sid}/messages"):
            started = time.monotonic()
            r = await client.get(path, headers=H)
            assert r.status_code == 503, (path, r.text)
            assert time.monotonic() - started < bound_s, path
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    await wait_ready(client)
    contents = [m["content"] for m in await history(client, sid) if m["role"] == "user"]
    assert contents == ["before", "frozen 1", "frozen 2"]


async def test_redis_lost_during_the_reply_keeps_the_reply(
    app_client: tuple[FastAPI, httpx.AsyncClient], redis_server: RedisProcess, fake: FakeOpenAI
) -> None:
    """The user message went to Redis, the reply to the outbox: the turn is acknowledged
    (degraded) and, once replayed, the history reads as if nothing happened."""
    _, client = app_client
    sid = await new_session(client)
    fake.script(Reply(text="slow words " * 5, delay_s=0.1))
    turn = asyncio.create_task(send(client, sid, "tell me"))
    await fake.wait_requests(1)  # the user message is in Redis, the reply under way
    redis_server.kill()
    done = await turn
    assert done["memory"] == "degraded" and done["message"]["content"] == "slow words " * 5
    redis_server.start()
    await wait_ready(client)
    msgs = await history(client, sid)
    assert [m["msg_id"] for m in msgs[1:]] == [
        done["user_message"]["msg_id"],
        done["message"]["msg_id"],
    ]
    # The session's turn lock, left in Redis (AOF) by the outage, was released.
    assert (await send(client, sid, "next"))["memory"] == "ok"


# --- outboxes of dead processes --------------------------------------------------------

_WRITER = """
import asyncio, json, sys
from pathlib import Path
from chatmem.models import Message, Role, Usage
from chatmem.durability.outbox import Outbox

async def main():
    outbox = Outbox(Path(sys.argv[1]))
    for rec in json.loads(sys.stdin.read()):
        msgs = [Message(Role(m["role"]), m["content"], 3, msg_id=m["id"]) for m in rec["messages"]]
        usage = Usage(**rec["usage"]) if rec["usage"] else None
        await outbox.add(rec["user"], rec["session"], rec["character"], msgs, usage)
    print("written", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def start_writer(outbox_dir: Path, records: list[dict[str, Any]]) -> subprocess.Popen[str]:
    """A process that writes an outbox and then lives on (holding its file's lock)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(outbox_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its "writing turns to the outbox" warning
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(records))
    proc.stdin.close()
    assert proc.stdout.readline().strip() == "written"
    return proc


def turn_records(session: str, n: int, character: str = "teacher") -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        out.append(
            {
                "user": "alice",
                "session": session,
                "character": character,
                "messages": [{"role": "user", "content": f"q{i}", "id": f"{session}-u{i}"}],
                "usage": None,
            }
        )
        out.append(
            {
                "user": "alice",
                "session": session,
                "character": character,
                "messages": [{"role": "assistant", "content": f"a{i}", "id": f"{session}-a{i}"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "cost_usd": 0.0},
            }
        )
    return out


async def test_outbox_of_a_dead_process_is_replayed_at_start_up(
    redis_server: RedisProcess, fake: FakeOpenAI, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    outbox_dir = data_dir / OUTBOX_DIR
    settings = degraded_settings(redis_server.url, fake.base_url, data_dir)
    async with running_app(settings) as (app, client):
        existing = await new_session(client, character_id="programmer")
        # Reached Redis before the crash: the replay must not store it twice.
        q0 = Message(Role.USER, "q0", 1, msg_id=f"{existing}-u0")
        await app.state.parts.service.store.append("alice", existing, [q0])

    dead_records = turn_records(existing, 3) + turn_records("fresh", 2)
    dead = start_writer(outbox_dir, dead_records)
    alive = start_writer(outbox_dir, turn_records("alive", 1))
    try:
        dead.kill()
        dead.wait()
        [dead_file] = [p for p in outbox_files(data_dir) if p.name.startswith(f"{dead.pid}-")]
        with dead_file.open("ab") as f:
            f.write(b'{"n": 99, "user": "alice", "sess')  # torn: died mid-write

        async with running_app(settings) as (app, client):
            await wait_ready(client)
            msgs = await history(client, existing)
            assert [m["content"] for m in msgs[1:]] == ["q0", "a0", "q1", "a1", "q2", "a2"]
            ids = [m["msg_id"] for m in msgs]
            assert len(ids) == len(set(ids))
            fresh = (await client.get("/v1/sessions/fresh", headers=H)).json()
            assert fresh["character_id"] == "teacher" and fresh["message_count"] == 4
            assert fresh["usage"]["completion_tokens"] == 6
            # The live process's file is not touched: it holds its lock.
            assert (await client.get("/v1/sessions/alive", headers=H)).status_code == 404
            assert not dead_file.exists()
            assert [p.name.split("-")[0] for p in outbox_files(data_dir)] == [str(alive.pid)]

            # Once that process is dead too, a scan adopts its file.
            alive.kill()
            alive.wait()
            service = app.state.parts.service
            assert await service.outbox.adopt_orphans() == 2
            await wait_ready(client)
            assert len(await history(client, "alive")) == 2
            await eventually(lambda: outbox_files(data_dir) == [], "the adopted file removed")
    finally:
        for proc in (dead, alive):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    assert not (outbox_dir / REJECTED_FILE).exists()


async def test_outbox_kept_on_disk_when_redis_is_still_down_at_shutdown(
    redis_server: RedisProcess, fake: FakeOpenAI, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    settings = degraded_settings(redis_server.url, fake.base_url, data_dir)
    async with running_app(settings) as (_, client):
        sid = await new_session(client)
        redis_server.kill()
        done = await send(client, sid, "remember me")
        assert done["memory"] == "degraded"
    # The last replay attempt at shutdown failed: the records wait on disk.
    [file] = outbox_files(data_dir)
    assert len(file.read_bytes().splitlines()) == 2
    redis_server.start()
    async with running_app(settings) as (_, client):
        await wait_ready(client)
        msgs = await history(client, sid)
        assert [m["msg_id"] for m in msgs[1:]] == [
            done["user_message"]["msg_id"],
            done["message"]["msg_id"],
        ]
    assert outbox_files(data_dir) == []


async def test_seed_chat_answers_while_redis_is_down(
    app_client: tuple[FastAPI, httpx.AsyncClient],
    redis_server: RedisProcess,
    fake: FakeOpenAI,
) -> None:
    """Regression: seed 000's POST /chat kept the turn (outbox) but answered 503, because it
    read the session after the turn and applied window/ttl before it: a client would retry
    and the turn would be stored twice."""
    _, client = app_client
    fake.script(Reply(text="ok one"), Reply(text="ok two"))
    r = await client.post("/chat", json={"user_id": "u1", "message": "first"})
    assert r.status_code == 200 and r.json()["memory"] == "ok"
    redis_server.kill()
    r = await client.post("/chat", json={"user_id": "u1", "message": "second", "window_size": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["memory"] == "degraded" and body["response"] == "ok two"
    assert body["stats"]["window_size"] == 3
    redis_server.start()
    await wait_ready(client)
    hist = (await client.get("/history/u1")).json()["messages"]
    assert [m["content"] for m in hist] == ["first", "ok one", "second", "ok two"]
