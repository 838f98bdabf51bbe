"""The write concern (`wait_replicas`): WAIT after every write, in the same round trip,
on the connection that wrote, against a real master with a replica (the Sentinel pair),
a standalone server without one, and a Cluster whose masters have none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from chatmem.config import RedisSettings
from chatmem.errors import NotReplicated, StoreUnavailable
from chatmem.models import Message, Role
from chatmem.store import keys, scripts
from chatmem.store.client import make_redis
from chatmem.store.conversations import AnyRedis, RedisMemoryStore
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI


def user_msg(text: str, msg_id: str | None = None) -> Message:
    m = Message(Role.USER, text, 1)
    if msg_id is not None:
        m.msg_id = msg_id
    return m


async def command_calls(client: Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
async def sentinel_client(sentinel_redis_url: str) -> AsyncIterator[AnyRedis]:
    client = make_redis(sentinel_redis_url, RedisSettings(url=sentinel_redis_url))
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def replica(sentinel_redis_url: str, sentinel_client: AnyRedis) -> AsyncIterator[Redis]:
    """A direct client of the master's one replica."""
    host, port = sentinel_redis_url.split("//")[1].split(",")[0].split(":")
    async with Redis(host=host, port=int(port), decode_responses=True) as sentinel:
        (info,) = await sentinel.sentinel_slaves("mymaster")
    async with Redis(host=info["ip"], port=int(info["port"]), decode_responses=True) as client:
        yield client


async def test_every_write_waits_for_the_replica_in_the_same_round_trip(
    sentinel_client: Redis, replica: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    shortfalls: list[str] = []
    store = RedisMemoryStore(
        sentinel_client, wait_replicas=1, wait_timeout_ms=1000, on_not_replicated=shortfalls.append
    )

    async def writes() -> None:
        await store.create_session("alice", "assistant", session_id="s1")
        await store.append("alice", "s1", [user_msg("hello", "m1")])
        # Confirmed by the replica before the call returned: it is there now, not later.
        assert "m1" in (await replica.lindex(keys.session_messages_key("alice", "s1"), 0) or "")
        await store.update_session("alice", "s1", title="t")
        await store.clear("alice", "s1")
        await store.read("alice", "s1", last=5)  # a read does not wait
        await store.delete_session("alice", "s1")
        await store.create_session("alice", "assistant", session_id="s2")
        await store.delete_user("alice")

    await writes()  # loads the scripts
    packets: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def spy(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        packets.append(b"".join(command) if isinstance(command, list) else bytes(command))
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    await writes()
    monkeypatch.undo()
    with_wait = [p for p in packets if b"WAIT" in p]
    # Seven writes, each one packet: the script by its sha, then WAIT (no SCRIPT EXISTS).
    assert len(with_wait) == 7
    assert all(p.startswith(b"*") and b"EVALSHA" in p.split(b"WAIT")[0] for p in with_wait)
    assert not any(b"SCRIPT" in p for p in packets)
    assert shortfalls == []


async def test_write_without_enough_replicas_is_accepted_and_counted_on_the_master(
    redis_client: Redis,
) -> None:
    """Standalone, no replica: the write happens on the master, which answers, so it is
    accepted (a turn says `unconfirmed`, see below); each shortfall is counted."""
    shortfalls: list[str] = []
    store = RedisMemoryStore(
        redis_client, wait_replicas=1, wait_timeout_ms=20, on_not_replicated=shortfalls.append
    )
    await store.create_session("alice", "assistant", session_id="s1")
    res = await store.append("alice", "s1", [user_msg("hello", "m1")])
    assert (res.appended, res.stored) == (1, 1)
    assert shortfalls == ["create_session", "append"]


async def test_strict_write_concern_refuses_what_no_replica_confirmed(
    redis_client: Redis,
) -> None:
    """`wait_strict`: NotReplicated (503 `store_not_replicated`); the write is on the
    master all the same, and a retry is idempotent."""
    store = RedisMemoryStore(redis_client, wait_replicas=1, wait_timeout_ms=20)
    assert store.write_concern is not None
    store.write_concern.strict = True
    with pytest.raises(NotReplicated):
        await store.create_session("alice", "assistant", session_id="s1")
    with pytest.raises(NotReplicated) as err:
        await store.append("alice", "s1", [user_msg("hello", "m1")])
    assert isinstance(err.value, StoreUnavailable)
    assert (err.value.wanted, err.value.code) == (1, "store_not_replicated")
    plain = RedisMemoryStore(redis_client)
    assert [m.msg_id for m in (await plain.read("alice", "s1", last=5)).messages] == ["m1"]
    with pytest.raises(NotReplicated):
        await store.append("alice", "s1", [user_msg("hello", "m1")])
    assert [m.msg_id for m in (await plain.read("alice", "s1", last=5)).messages] == ["m1"]


async def test_wait_goes_to_the_master_that_owns_the_users_slot(
    cluster_redis_url: str,
) -> None:
    """redis-py sends a keyless command to a random Cluster node, where WAIT would say
    nothing about the write; it must go to the slot's owner, on the connection that wrote."""
    client = make_redis(cluster_redis_url, RedisSettings(url=cluster_redis_url))
    assert isinstance(client, RedisCluster)
    try:
        await client.flushdb()
        store = RedisMemoryStore(client, wait_replicas=1, wait_timeout_ms=10)
        assert store.write_concern is not None
        store.write_concern.strict = True
        nodes: dict[str, Redis] = {
            n.name: Redis(host=n.host, port=n.port, decode_responses=True)
            for n in client.get_primaries()
        }
        users = ["alice", "bob", "carol", "dave", "erin", "frank"]
        owners = {u: client.get_node_from_key(keys.user_tag(u)).name for u in users}  # type: ignore[union-attr]
        assert len(set(owners.values())) > 1  # the users are spread over several masters
        await client.script_load(scripts.CREATE_SESSION)  # on every master
        for c in nodes.values():
            await c.config_resetstat()
        for u in users:
            with pytest.raises(NotReplicated):
                await store.create_session(u, "assistant", session_id="s1")
        for name, c in nodes.items():
            expected = sum(owner == name for owner in owners.values())
            assert await command_calls(c, "wait") == expected
            assert await command_calls(c, "evalsha") == expected
        for c in nodes.values():
            await c.aclose()
    finally:
        await client.aclose()


async def test_a_master_without_the_script_loads_it_and_runs_the_write_once(
    sentinel_client: Redis,
) -> None:
    store = RedisMemoryStore(sentinel_client, wait_replicas=1, wait_timeout_ms=1000)
    await store.create_session("alice", "assistant", session_id="s1")
    await sentinel_client.script_flush()
    res = await store.append("alice", "s1", [user_msg("hello", "m1")])
    assert (res.appended, res.stored) == (1, 1)


async def test_unreachable_redis_is_still_store_unavailable() -> None:
    from tests.support import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    client = make_redis(url, RedisSettings(url=url, connect_timeout_s=0.2, socket_timeout_s=0.2))
    store = RedisMemoryStore(client, wait_replicas=1, wait_timeout_ms=100)
    try:
        with pytest.raises(StoreUnavailable) as err:
            await store.append("alice", "s1", [user_msg("x")])
        assert not isinstance(err.value, NotReplicated)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "values",
    [
        {"wait_replicas": -1},
        {"wait_replicas": 1, "wait_timeout_ms": 0},
        # WAIT would outlast the socket read and look like a dead Redis.
        {"wait_replicas": 1, "wait_timeout_ms": 2000, "socket_timeout_s": 2.0},
    ],
)
def test_settings_refuse_a_wait_that_cannot_work(values: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        RedisSettings(**values)


def test_store_refuses_a_wait_without_a_timeout(redis_client: Redis) -> None:
    with pytest.raises(ValueError):
        RedisMemoryStore(redis_client, wait_replicas=1, wait_timeout_ms=0)


async def test_a_turn_whose_writes_no_replica_confirmed_keeps_its_memory_and_one_path(
    redis_url: str, redis_client: Redis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Issue 16, items 2 and 7: no replica confirms the turn's writes while the master
    answers. The turn reads its history (it used to run with none, ctx=2, for as long as
    the replica was away), is answered `memory: "unconfirmed"`, its user message and reply
    are stored once, side by side (they used to be split between the master and the
    outbox), and its record stays in the outbox, stored already, until a replica
    confirms it; /ready stays 200, counting it apart."""
    settings = make_test_settings(redis_url, fake.base_url, tmp_path / "data")
    plain = RedisMemoryStore(redis_client)
    await plain.create_session("alice", "assistant", session_id="s1")
    await plain.append("alice", "s1", [user_msg("an earlier message", "m0")])
    settings.redis.wait_replicas = 1
    settings.redis.wait_timeout_ms = 20
    async with running_app(settings) as (app, client):
        for text in ("hi", "again"):
            r = await client.post(
                "/v1/sessions/s1/messages", json={"content": text}, headers={"X-User-Id": "alice"}
            )
            assert r.status_code == 200, r.text
            assert r.json()["memory"] == "unconfirmed"
        sent = [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]]
        assert sent[0] == "an earlier message" and sent[-1] == "again"
        assert len(sent) == 4  # the history, the first turn's pair, the new message
        snap = await plain.read("alice", "s1", last=10)
        assert [m.role.value for m in snap.messages] == ["user", "user", "assistant"] * 1 + [
            "user",
            "assistant",
        ]
        outbox = app.state.parts.service.outbox
        assert (outbox.pending, outbox.unconfirmed) == (0, 2)
        ready = await client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ready": True, "redis": True, "outbox": 0, "unconfirmed": 2}
        metrics = (await client.get("/metrics")).text
        assert 'chatmem_store_not_replicated_total{op="begin_turn"}' in metrics
        assert 'chatmem_store_not_replicated_total{op="finish_turn"}' in metrics
        assert "chatmem_degradations_total{" not in metrics
    # Stored again at shutdown (still unconfirmed): nothing was added twice.
    snap = await plain.read("alice", "s1", last=10)
    assert len(snap.messages) == 5 and len({m.msg_id for m in snap.messages}) == 5


async def test_strict_write_concern_refuses_the_turn_without_an_outbox(
    redis_url: str, redis_client: Redis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """`CHATMEM_REDIS_WAIT_STRICT`: the turn is refused with a 503 before the model is
    called, nothing goes to the outbox, and the session is not left locked."""
    settings = make_test_settings(redis_url, fake.base_url, tmp_path / "data")
    await RedisMemoryStore(redis_client).create_session("alice", "assistant", session_id="s1")
    settings.redis.wait_replicas = 1
    settings.redis.wait_timeout_ms = 20
    settings.redis.wait_strict = True
    async with running_app(settings) as (app, client):
        for _ in range(2):  # the second is not a 409: the first released its lock
            r = await client.post(
                "/v1/sessions/s1/messages", json={"content": "hi"}, headers={"X-User-Id": "alice"}
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "store_not_replicated"
        assert fake.chat_bodies == []
        assert app.state.parts.service.outbox.pending_records() == []
