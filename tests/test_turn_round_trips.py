"""A turn is two Redis round trips (issue 15): the begin script reads the long-term
memories of a character whose policy has them, and the finish script returns seed
`POST /chat`'s stats. Counted on the real Redis: every packed send that touches the
user's keys (background jobs and their polls touch others), and `INFO commandstats`
for what the scripts ran inside."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio.connection import AbstractConnection

from chatmem.store.client import AnyRedis
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI
from tests.support import eventually
from tests.test_memory_summary import FAST_JOBS

H = {"X-User-Id": "alice"}
TAG = b"{u:alice}"
# No extraction, summary or title job while counting: only the turn touches alice's keys.
MEMORY = {"extract_every_rounds": 50, "generate_titles": False}


class UserRoundTrips:
    """Packed sends (one per round trip; a pipeline is one) naming one user's keys."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.count = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = AbstractConnection.send_packed_command

        async def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            packed = command if isinstance(command, bytes | str) else b"".join(command)
            if self.tag in (packed.encode() if isinstance(packed, str) else packed):
                self.count += 1
            await original(conn, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[UserRoundTrips]:
    spy = UserRoundTrips(TAG)
    spy.install(monkeypatch)
    yield spy


@pytest.fixture
async def client(
    redis_url: str, redis_client: AnyRedis, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_test_settings(
        redis_url, fake.base_url, tmp_data_dir, memory=MEMORY, jobs=FAST_JOBS
    )
    async with running_app(settings) as (_, http):
        yield http


async def session(c: httpx.AsyncClient, character_id: str) -> str:
    r = await c.post("/v1/sessions", json={"character_id": character_id}, headers=H)
    assert r.status_code == 201, r.text
    return str(r.json()["session"]["session_id"])


async def say(c: httpx.AsyncClient, sid: str, text: str) -> None:
    r = await c.post(f"/v1/sessions/{sid}/messages", json={"content": text}, headers=H)
    assert r.status_code == 200, r.text


async def warm_up(c: httpx.AsyncClient, redis_client: AnyRedis, sid: str) -> None:
    """A first turn: scripts loaded, and its after-turn work (the summary state the
    first turn starts) done before counting."""
    await say(c, sid, "warm up")
    meta = f"cm:{{u:alice}}:s:{sid}:h"
    await eventually(lambda: redis_client.hexists(meta, "sumn"), "the summary state")


async def hvals_calls(redis_client: AnyRedis) -> int:
    stats = await redis_client.info("commandstats")
    return int(stats.get("cmdstat_hvals", {}).get("calls", 0))


async def test_a_turn_with_memories_costs_two_round_trips_and_sends_them(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    round_trips: UserRoundTrips,
    redis_client: AnyRedis,
) -> None:
    """Regression: the memories were a third round trip of every such turn."""
    r = await client.post(
        "/v1/memories", json={"character_id": "luna", "text": "Has a cat called Miso"}, headers=H
    )
    assert r.status_code == 201, r.text
    sid = await session(client, "luna")
    await warm_up(client, redis_client, sid)
    before, hvals = round_trips.count, await hvals_calls(redis_client)
    await say(client, sid, "what is my cat called?")
    assert round_trips.count - before == 2
    assert await hvals_calls(redis_client) - hvals == 1  # read inside the begin script
    sent = " ".join(str(m["content"]) for m in fake.chat_bodies[-1]["messages"])
    assert "Has a cat called Miso" in sent
    # The read slid the memories' TTL as the separate read did.
    ttl = await redis_client.pttl("cm:{u:alice}:mem:luna")
    assert ttl > 0


async def test_a_character_without_memories_does_not_read_them(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    round_trips: UserRoundTrips,
    redis_client: AnyRedis,
) -> None:
    character = {"id": "plain", "name": "Plain", "system_prompt": "Be plain."}
    character["memory"] = {"summary": True, "memories": False}  # type: ignore[assignment]
    assert (await client.post("/v1/characters", json=character, headers=H)).status_code == 201
    r = await client.post(
        "/v1/memories", json={"character_id": "plain", "text": "Likes tea"}, headers=H
    )
    assert r.status_code == 201, r.text
    sid = await session(client, "plain")
    await warm_up(client, redis_client, sid)  # the process learns the character's policy
    before, hvals = round_trips.count, await hvals_calls(redis_client)
    await say(client, sid, "hello")
    assert round_trips.count - before == 2
    assert await hvals_calls(redis_client) - hvals == 0
    sent = " ".join(str(m["content"]) for m in fake.chat_bodies[-1]["messages"])
    assert "Likes tea" not in sent


async def test_seed_chat_is_two_round_trips_with_the_stats_a_read_gives(
    client: httpx.AsyncClient, round_trips: UserRoundTrips, redis_client: AnyRedis
) -> None:
    """Regression: `POST /chat` read its stats in a third round trip after the turn."""
    for text in ("one", "two", "three", "four"):
        r = await client.post("/chat", json={"user_id": "alice", "message": text})
        assert r.status_code == 200, r.text
    hvals = await hvals_calls(redis_client)
    before = round_trips.count
    r = await client.post("/chat", json={"user_id": "alice", "message": "five"})
    assert r.status_code == 200, r.text
    assert round_trips.count - before == 2
    assert await hvals_calls(redis_client) == hvals  # the seed's session: memory off
    body = r.json()
    read = (await client.get("/stats/alice")).json()
    assert body["stats"] == {k: v for k, v in read.items() if k != "user_id"}
    assert body["stats"]["total_messages"] == 10 and body["stats"]["tokens"] > 0
    assert 1790 <= body["ttl_remaining"] <= 1800
    # A window of 2 rounds sums the newest 4 messages' tokens.
    r = await client.post("/chat", json={"user_id": "alice", "message": "six", "window_size": 2})
    read = (await client.get("/stats/alice")).json()
    assert r.json()["stats"] == {k: v for k, v in read.items() if k != "user_id"}
    assert r.json()["stats"]["window_size"] == 2
