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


async def test_write_without_enough_replicas_is_not_replicated_but_stays_on_the_master(
    redis_client: Redis,
) -> None:
    """Standalone, no replica: the append happens, and is reported as not durable."""
    shortfalls: list[str] = []
    store = RedisMemoryStore(
        redis_client, wait_replicas=1, wait_timeout_ms=20, on_not_replicated=shortfalls.append
    )
    with pytest.raises(NotReplicated) as err:
        await store.create_session("alice", "assistant", session_id="s1")
    with pytest.raises(NotReplicated) as err:
        await store.append("alice", "s1", [user_msg("hello", "m1")])
    assert isinstance(err.value, StoreUnavailable)
    assert (err.value.acked, err.value.wanted, err.value.code) == (0, 1, "store_not_replicated")
    assert "0 of 1 replica" in err.value.detail  # for the log; the client gets the class message
    assert shortfalls == ["create_session", "append"]
    # Written on the master all the same; a retry is idempotent.
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


async def test_a_turn_whose_write_no_replica_confirmed_is_degraded_and_counted(
    redis_url: str, redis_client: Redis, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """Through the app: no replica confirms the user message, so the turn is answered
    from the outbox (`memory: degraded`), as when Redis is down, and the metric counts it."""
    settings = make_test_settings(redis_url, fake.base_url, tmp_path / "data")
    await RedisMemoryStore(redis_client).create_session("alice", "assistant", session_id="s1")
    settings.redis.wait_replicas = 1
    settings.redis.wait_timeout_ms = 20
    async with running_app(settings) as (_, client):
        r = await client.post(
            "/v1/sessions/s1/messages", json={"content": "hi"}, headers={"X-User-Id": "alice"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["memory"] == "degraded"
        metrics = (await client.get("/metrics")).text
        assert 'chatmem_store_not_replicated_total{op="begin_turn"}' in metrics
