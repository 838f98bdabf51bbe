"""Issue 16, items 1, 3, 5 and 8: order, no 404, the lost lock release, route settings.

- Every message a turn stores carries the turn's ordinal (when it began); a turn the
  outbox kept is stored where it began among what other processes stored meanwhile,
  and a reply always right after its user message (turn_scripts.py, place_script.py).
- A session this process still holds records for exists for the client: no 404.
- A turn begun and then abandoned releases its lock at once (a 409 for the lock's
  whole TTL before).
- A conversation first created by a replay gets its route's window and TTL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from chatmem.durability import replay
from chatmem.durability.outbox import Outbox
from chatmem.models import Message, Role, Usage
from chatmem.store import keys
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.streams import GenerationStreams
from chatmem.store.turns import TurnStore, turn_ordinal
from tests.api_support import FAST_FAILING_REDIS, make_test_settings, running_app
from tests.fake_openai import FakeOpenAI
from tests.redis_servers import RedisProcess, expire_now
from tests.support import eventually, unlimited_turns

H = {"X-User-Id": "alice"}


@pytest.fixture
async def turns(redis_client: Redis) -> TurnStore:
    await redis_client.flushdb()
    store = RedisMemoryStore(redis_client)
    await store.create_session("alice", "assistant", session_id="s1")
    return unlimited_turns(store, lock_ttl_ms=10_000)


def pair(k: int) -> tuple[Message, Message]:
    return (
        Message(Role.USER, f"question {k}", 2, msg_id=f"u{k}"),
        Message(Role.ASSISTANT, f"answer {k}", 2, msg_id=f"r{k}"),
    )


async def full_turn(turns: TurnStore, k: int, ordinal: int) -> None:
    user, reply = pair(k)
    res = await turns.begin(
        "alice", "s1", user, reply_id=reply.msg_id, generation_id=f"g{k}", token=f"t{k}",
        idempotent=False, read_last=0, ordinal=ordinal,
    )  # fmt: skip
    assert res.kind == "ok" and res.ordinal == ordinal
    await turns.finish(
        "alice", "s1", reply, _usage(), token=f"t{k}",
        generation_id=f"g{k}", tail=None, end_payload={}, ordinal=ordinal,
    )  # fmt: skip


def _usage() -> Usage:
    return Usage(1, 2, 0.0)


async def stored(turns: TurnStore) -> list[str]:
    snap = await turns.store.read("alice", "s1", last=100)
    assert [m.seq for m in snap.messages] == list(range(1, len(snap.messages) + 1))
    return [m.msg_id for m in snap.messages]


async def test_a_kept_turn_is_stored_where_it_began_once(turns: TurnStore) -> None:
    o1, o2, o3 = (turn_ordinal(t) for t in (1000.0, 1001.0, 1002.0))
    await full_turn(turns, 1, o1)
    await full_turn(turns, 3, o3)
    u2, r2 = pair(2)
    # A degraded turn's two records (its user message, later its reply), replayed after
    # another process stored turn 3: each goes where turn 2 began.
    assert (await turns.place("alice", "s1", [u2], None, ordinal=o2))[0] == 1
    assert (await turns.place("alice", "s1", [r2], _usage(), ordinal=o2))[0] == 1
    assert await stored(turns) == ["u1", "r1", "u2", "r2", "u3", "r3"]
    # Replayed again (an ack lost in a crash): nothing twice, and the usage not either.
    assert (await turns.place("alice", "s1", [u2, r2], _usage(), ordinal=o2))[0] == 0
    assert await stored(turns) == ["u1", "r1", "u2", "r2", "u3", "r3"]
    meta = (await turns.store.read("alice", "s1", last=0)).meta
    assert meta.usage.completion_tokens == 6 and meta.preview == "answer 3"
    # The id index follows the new order: an idempotent retry of turn 2 finds its reply.
    res = await turns.begin(
        "alice", "s1", u2, reply_id="r2", generation_id="g9", token="t9", idempotent=True,
        read_last=0,
    )  # fmt: skip
    assert res.kind == "replay" and res.reply is not None and res.reply.msg_id == "r2"


async def test_a_turn_begun_later_on_a_clock_behind_still_goes_last(turns: TurnStore) -> None:
    """Another process's clock ran ahead: a new turn still begins after what is stored
    (its ordinal is raised), and its reply follows it."""
    await full_turn(turns, 1, turn_ordinal(2000.0))
    user, reply = pair(2)
    res = await turns.begin(
        "alice", "s1", user, reply_id="r2", generation_id="g2", token="t2", idempotent=False,
        read_last=0, ordinal=turn_ordinal(1000.0),
    )  # fmt: skip
    assert res.ordinal >= turn_ordinal(2000.0) - 1000
    await turns.finish(
        "alice", "s1", reply, _usage(), token="t2", generation_id="g2", tail=None,
        end_payload={}, ordinal=res.ordinal,
    )  # fmt: skip
    assert await stored(turns) == ["u1", "r1", "u2", "r2"]


async def test_a_reply_after_its_lock_expired_follows_its_message_and_spares_the_next_turn(
    turns: TurnStore, redis_client: Redis
) -> None:
    """Turn 1's lock expired (its process lost Redis for longer than the TTL), turn 2
    began meanwhile in another process. Turn 1's reply goes right after its own message
    (it was appended after turn 2's before), and turn 2's event stream is not ended by
    turn 1's finish (it was: its followers saw turn 1's end)."""
    u1, r1 = pair(1)
    o1 = turn_ordinal(3000.0)
    res = await turns.begin(
        "alice", "s1", u1, reply_id="r1", generation_id="g1", token="t1", idempotent=False,
        read_last=0, ordinal=o1,
    )  # fmt: skip
    assert res.kind == "ok"
    await expire_now(redis_client, keys.session_lock_key("alice", "s1"))
    await redis_client.xadd(keys.session_events_key("alice", "s1"), {"t": "e", "p": "{}"})
    u2, r2 = pair(2)
    o2 = turn_ordinal(3001.0)
    res = await turns.begin(
        "alice", "s1", u2, reply_id="r2", generation_id="g2", token="t2", idempotent=False,
        read_last=0, ordinal=o2,
    )  # fmt: skip
    assert res.kind == "ok"
    finished = await turns.finish(
        "alice", "s1", r1, _usage(), token="t1", generation_id="g1", tail=None,
        end_payload={}, ordinal=o1,
    )  # fmt: skip
    assert finished.stored_now
    snap = await GenerationStreams(redis_client).snapshot("alice", "s1")
    assert snap.lock_held and not snap.ended  # turn 2 still runs, its stream untouched
    await turns.finish(
        "alice", "s1", r2, _usage(), token="t2", generation_id="g2", tail=None,
        end_payload={}, ordinal=o2,
    )  # fmt: skip
    assert await stored(turns) == ["u1", "r1", "u2", "r2"]


# --- through the app ---------------------------------------------------------------------


async def test_a_turn_replayed_after_another_process_went_on_is_stored_where_it_began(
    redis_server: RedisProcess, fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 item 1: turn k degrades into process A's outbox, Redis comes back, turn
    k+1 is taken by process B before A replays k; stored order was `k+1, k`."""
    monkeypatch.setattr(replay, "REPLAY_INTERVAL_S", 3.0)  # B's turn comes first
    url = redis_server.url
    a_settings = make_test_settings(url, fake.base_url, tmp_path / "a", redis=FAST_FAILING_REDIS)
    b_settings = make_test_settings(url, fake.base_url, tmp_path / "b", redis=FAST_FAILING_REDIS)
    async with running_app(a_settings) as (app_a, a), running_app(b_settings) as (_, b):
        r = await a.post("/v1/sessions", json={}, headers=H)
        sid = r.json()["session"]["session_id"]

        async def send(client: object, text: str) -> dict[str, str]:
            r = await client.post(  # type: ignore[attr-defined]
                f"/v1/sessions/{sid}/messages", json={"content": text}, headers=H
            )
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

        await send(a, "turn 0")
        redis_server.kill()
        assert (await send(a, "turn 1"))["memory"] == "degraded"
        redis_server.start()
        assert (await send(b, "turn 2"))["memory"] == "ok"
        assert app_a.state.parts.service.outbox.pending == 2  # not replayed yet

        async def replayed() -> bool:
            return (await a.get("/ready")).status_code == 200

        await eventually(replayed, "A to replay its outbox", timeout_s=15)
        r = await b.get(f"/v1/sessions/{sid}/messages", headers=H)
        contents = [m["content"] for m in r.json()["messages"] if m["role"] == "user"]
        assert contents == ["turn 0", "turn 1", "turn 2"]
        roles = [m["role"] for m in r.json()["messages"]][-6:]
        assert roles == ["user", "assistant"] * 3


async def test_a_kept_new_conversation_is_no_404_and_keeps_its_route_settings(
    redis_url: str, redis_client: Redis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Items 3, 7 and 8: with wait 1 and no replica, a seed `/chat` turn creates the
    user's conversation (window 5, 1,800 s) and is kept until a replica confirms it; a
    failover then loses it (FLUSHALL here). The next turn on it was a 404 (and a client
    retrying a 404 duplicated it); it is stored again first, with its route's settings,
    and the turn goes on with it in its history."""
    await redis_client.flushdb()
    settings = make_test_settings(redis_url, fake.base_url, tmp_path / "data")
    settings.redis.wait_replicas = 1
    settings.redis.wait_timeout_ms = 20
    async with running_app(settings) as (_, client):
        r = await client.post("/chat", json={"user_id": "alice", "message": "first"})
        assert r.status_code == 200, r.text
        assert r.json()["memory"] == "unconfirmed"
        await redis_client.flushall()  # what the promoted replica never had
        r = await client.post(
            "/v1/sessions/default/messages", json={"content": "second"}, headers=H
        )
        assert r.status_code == 200, r.text
        sent = [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]]
        assert sent[0] == "first" and sent[-1] == "second" and len(sent) == 3
        meta = (await client.get("/v1/sessions/default", headers=H)).json()
        assert (meta["window_size"], meta["ttl_s"]) == (5, 1800)
        assert meta["message_count"] == 4


async def test_a_degraded_new_conversation_is_created_with_its_route_settings(
    redis_server: RedisProcess, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Item 8: created by the outbox's replay, seed `/chat`'s conversation got the
    default window and TTL (10, 1 day) instead of 5 and 1,800 s."""
    settings = make_test_settings(
        redis_server.url, fake.base_url, tmp_path / "data", redis=FAST_FAILING_REDIS
    )
    async with running_app(settings) as (_, client):
        redis_server.kill()
        r = await client.post("/chat", json={"user_id": "alice", "message": "hello"})
        assert r.status_code == 200 and r.json()["memory"] == "degraded", r.text
        redis_server.start()

        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await eventually(ready, "the outbox to be replayed", timeout_s=15)
        meta = (await client.get("/v1/sessions/default", headers=H)).json()
        assert (meta["window_size"], meta["ttl_s"], meta["message_count"]) == (5, 1800, 2)


async def test_a_turn_that_fails_after_its_begin_releases_its_lock_at_once(
    redis_url: str, redis_client: Redis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Item 5: a turn whose character is gone fails after its begin took the session's
    lock; the lock was left to its TTL, and every turn of the session was a 409
    `session_busy` meanwhile. It is released with the failure now."""
    await redis_client.flushdb()
    settings = make_test_settings(redis_url, fake.base_url, tmp_path / "data")
    async with running_app(settings) as (app, client):
        store: RedisMemoryStore = app.state.parts.service.store
        await store.create_session("alice", "no-such-character", session_id="s1")
        for _ in range(2):
            r = await client.post("/v1/sessions/s1/messages", json={"content": "hi"}, headers=H)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "character_not_found"


async def test_a_lock_a_failover_brought_back_is_released_by_the_kept_turn(
    redis_url: str, redis_client: Redis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Item 5: a turn's begin reached the replica, its finish (which released the lock)
    did not; promoted, the replica holds a lock no live turn owns, and every turn of the
    session was a 409 until its TTL. The turn's kept record releases it at its replay."""
    await redis_client.flushdb()
    settings = make_test_settings(
        redis_url, fake.base_url, tmp_path / "data", limits={"session_lock_ttl_ms": 60_000}
    )
    settings.redis.wait_replicas = 1
    settings.redis.wait_timeout_ms = 20
    await RedisMemoryStore(redis_client).create_session("alice", "assistant", session_id="s1")
    async with running_app(settings) as (app, client):
        r = await client.post("/v1/sessions/s1/messages", json={"content": "hi"}, headers=H)
        assert r.json()["memory"] == "unconfirmed"
        service = app.state.parts.service
        [record] = service.outbox.pending_records()
        lock = keys.session_lock_key("alice", "s1")
        await redis_client.set(lock, record.lock_token, px=60_000)  # the promoted replica's
        await service.replayer.flush(confirm=True)
        assert not await redis_client.exists(lock)
        r = await client.post("/v1/sessions/s1/messages", json={"content": "again"}, headers=H)
        assert r.status_code == 200, r.text


async def test_a_kept_record_keeps_its_place_settings_and_lock_across_a_restart(
    tmp_path: Path,
) -> None:
    """What a replay needs is on disk: an outbox adopted after a crash still knows where
    each turn began, what its route gives a new conversation, and which lock to free."""
    first = Outbox(tmp_path / "outbox")
    ordinal = turn_ordinal(5000.0)
    await first.add(
        "alice", "default", "assistant", [pair(1)[0]], None,
        ordinal=ordinal, ttl_s=1800, window_size=5, lock_token="tok",
    )  # fmt: skip
    await first.close()  # kept on disk: not replayed
    second = Outbox(tmp_path / "outbox")
    assert await second.adopt_orphans() == 1
    [rec] = second.pending_records()
    assert (rec.ordinal, rec.ttl_s, rec.window_size, rec.lock_token) == (ordinal, 1800, 5, "tok")
    assert not rec.applied  # stored again after a restart: its ids are skipped if there
    await second.close()


async def test_a_reply_whose_message_a_failover_lost_brings_it_back(
    turns: TurnStore, redis_client: Redis
) -> None:
    """Wait 0, a long reply: the begin was on the old master, which died before its
    replica had the user message; the finish, on the new master, stored the reply alone.
    The finish stores the message again first (where its turn began)."""
    await full_turn(turns, 1, turn_ordinal(6000.0))
    u2, r2 = pair(2)
    o2 = turn_ordinal(6001.0)
    res = await turns.begin(
        "alice", "s1", u2, reply_id="r2", generation_id="g2", token="t2", idempotent=False,
        read_last=1, ordinal=o2,
    )  # fmt: skip
    [stored_u2] = res.messages
    messages = keys.session_messages_key("alice", "s1")
    raw = await redis_client.lindex(messages, 0)
    await redis_client.lrem(messages, 1, raw)  # lost in the failover
    await redis_client.delete(keys.session_ids_key("alice", "s1"))
    await turns.finish(
        "alice", "s1", r2, _usage(), token="t2", generation_id="g2", tail=None,
        end_payload={}, ordinal=o2, user_message=stored_u2,
    )  # fmt: skip
    snap = await turns.store.read("alice", "s1", last=10)
    assert [m.msg_id for m in snap.messages] == ["u1", "r1", "u2", "r2"]
