"""Redis SIGKILLed in the middle of 500 turns from 50 users, then restarted on the same
port and dir (AOF, `appendfsync always`): every turn the API acknowledged is stored
exactly once, in order, and the service answered every request, without a restart.

What Redis acknowledged comes back from its AOF; what was written while it was down (or
while a turn was in flight when it died) comes back from the outbox's replay.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from chatmem.store.conversations import RedisMemoryStore
from tests.api_support import FAST_FAILING_REDIS, make_test_settings, running_app, sse_done
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import RedisProcess
from tests.support import eventually

USERS, TURNS = 50, 10
KILL_AFTER_ACKS = 150
DEGRADED_BEFORE_RESTART = 10  # turns acknowledged without Redis before it comes back


@dataclass
class Acked:
    user: str
    session: str
    user_msg_id: str
    reply_id: str
    completion_tokens: int
    memory: str


@dataclass
class Run:
    acked: list[Acked] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    time_to_kill: asyncio.Event = field(default_factory=asyncio.Event)
    time_to_restart: asyncio.Event = field(default_factory=asyncio.Event)
    acked_when_back: int = 0

    def ack(self, acked: Acked) -> None:
        self.acked.append(acked)
        if len(self.acked) >= KILL_AFTER_ACKS:
            self.time_to_kill.set()
        degraded = sum(a.memory == "degraded" for a in self.acked)
        if degraded >= DEGRADED_BEFORE_RESTART:
            self.time_to_restart.set()


async def one_user(client: httpx.AsyncClient, u: int, run: Run) -> tuple[str, str]:
    user = f"user{u}"
    h = {"X-User-Id": user}
    r = await client.post("/v1/sessions", json={}, headers=h)
    assert r.status_code == 201, r.text
    sid: str = r.json()["session"]["session_id"]
    stream = u % 2 == 0  # half the users read SSE, half JSON
    for t in range(TURNS):
        r = await client.post(
            f"/v1/sessions/{sid}/messages",
            json={"content": f"{user} turn {t}", "stream": stream},
            headers=h,
        )
        if r.status_code != 200:
            run.failures.append((r.status_code, r.text))
            continue
        try:
            done = sse_done(r.text) if stream else r.json()
        except AssertionError:  # an SSE error event instead
            run.failures.append((200, r.text))
            continue
        run.ack(
            Acked(
                user,
                sid,
                done["user_message"]["msg_id"],
                done["message"]["msg_id"],
                done["usage"]["completion_tokens"],
                done["memory"],
            )
        )
    return user, sid


async def kill_and_restart(server: RedisProcess, run: Run) -> None:
    await asyncio.wait_for(run.time_to_kill.wait(), 60)
    server.kill()
    await asyncio.wait_for(run.time_to_restart.wait(), 30)
    await asyncio.to_thread(server.start)
    run.acked_when_back = len(run.acked)


async def scenario(server: RedisProcess, fake: FakeOpenAI, data_dir: Path) -> None:
    settings = make_test_settings(server.url, fake.base_url, data_dir, redis=FAST_FAILING_REDIS)
    run = Run()
    async with running_app(settings) as (app, client):
        killer = asyncio.create_task(kill_and_restart(server, run))
        sessions = await asyncio.gather(*(one_user(client, u, run) for u in range(USERS)))
        await killer
        assert run.failures == []
        assert len(run.acked) == USERS * TURNS
        degraded = sum(a.memory == "degraded" for a in run.acked)
        assert degraded > 0, "the kill fell outside the run"
        # Back to memory without a restart once Redis is.
        with_memory_after = sum(a.memory == "ok" for a in run.acked[run.acked_when_back :])
        assert with_memory_after > 0

        # Recovers without a restart: the outbox drains, /ready turns 200.
        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await eventually(ready, "/ready to answer 200", timeout_s=30)
        assert not list((data_dir / "outbox").glob("*.jsonl"))

        store: RedisMemoryStore = app.state.parts.service.store
        by_session: dict[str, list[Acked]] = {}
        for a in run.acked:
            by_session.setdefault(a.session, []).append(a)
        found = 0
        for user, sid in sessions:
            snap = await store.read(user, sid, last=1000)
            ids = [m.msg_id for m in snap.messages[1:]]  # after the greeting
            counts = Counter(ids)
            assert all(n == 1 for n in counts.values()), [i for i, n in counts.items() if n > 1]
            # Each user's turns are sequential: stored in the order they were answered,
            # every reply right after its own message.
            assert ids == [i for a in by_session[sid] for i in (a.user_msg_id, a.reply_id)]
            assert snap.meta.usage.completion_tokens == sum(
                a.completion_tokens for a in by_session[sid]
            )
            found += len(ids) // 2
        assert found == USERS * TURNS
        metrics = (await client.get("/metrics")).text
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("chatmem_degradations_total{")
        )
        assert counted == degraded
        replayed = app.state.parts.service.replayer.replayed
        assert replayed >= degraded  # at least each degraded turn's reply
        print(
            f"\nturns acknowledged {len(run.acked)}, degraded {degraded}, with memory after "
            f"the restart {with_memory_after}, found in Redis {found} (each once, in order), "
            f"outbox records replayed {replayed}"
        )


@pytest.mark.slow
@pytest.mark.fake_model(default=Reply(text="a reply in a few words", chunks=4, delay_s=0.005))
def test_redis_killed_mid_run_loses_no_acknowledged_turn(
    redis_server: RedisProcess, fake: FakeOpenAI, tmp_path: Path
) -> None:
    asyncio.run(scenario(redis_server, fake, tmp_path / "data"))
