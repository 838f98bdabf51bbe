"""Issue 16 item 6: under Redis Cluster, "Redis is down" is per shard.

Three masters without replicas (`cluster-require-full-coverage no`: the live masters
go on serving their slots). One master is SIGKILLed: its users' turns degrade, the
others' keep their memory — they lost it before, "Redis is down" being one flag per
process — and once it is back its users get their memory again, their kept turns
stored in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from chatmem.store import keys
from chatmem.store.client import make_redis
from tests.api_support import FAST_FAILING_REDIS, make_test_settings, new_session, running_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.redis_servers import RedisClusterProcesses
from tests.support import eventually

SESSIONS: dict[str, str] = {}
LOCK_TTL_MS = 600


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterProcesses]:
    servers = RedisClusterProcesses(
        tmp_path / "cluster",
        3,
        "cluster-require-full-coverage no",
        "appendonly yes",  # the dead master comes back with what it had
        "appendfsync always",
        node_timeout_ms=1000,
    ).start()
    try:
        yield servers
    finally:
        servers.stop()


async def users_by_node(url: str, settings_redis: object) -> dict[str, list[str]]:
    client = make_redis(url, settings_redis)  # type: ignore[arg-type]
    assert isinstance(client, RedisCluster)
    try:
        await client.initialize()
        by_node: dict[str, list[str]] = {}
        for k in range(60):
            user = f"user{k}"
            node = client.get_node_from_key(keys.user_totals_key(user))
            assert node is not None
            by_node.setdefault(str(node.port), []).append(user)
        return by_node
    finally:
        await client.aclose()


async def send(client: httpx.AsyncClient, user: str, text: str) -> str:
    r = await client.post(
        f"/v1/sessions/{SESSIONS[user]}/messages",
        json={"content": text},
        headers={"X-User-Id": user},
    )
    assert r.status_code == 200, r.text
    memory: str = r.json()["memory"]
    return memory


async def test_a_dead_master_degrades_only_the_users_of_its_slots(
    cluster: RedisClusterProcesses, fake: FakeOpenAI, tmp_path: Path
) -> None:
    settings = make_test_settings(
        cluster.url,
        fake.base_url,
        tmp_path / "data",
        redis=FAST_FAILING_REDIS,
        limits={"session_lock_ttl_ms": LOCK_TTL_MS},
    )
    by_node = await users_by_node(cluster.url, settings.redis)
    assert len(by_node) == 3
    # Not the node the URL names: the clients find the others through it.
    dead_port, *live_ports = sorted(by_node, key=lambda p: int(p) == cluster.nodes[0].port)
    live_ports = [p for p in by_node if p != dead_port]
    hit = by_node[dead_port][:2]
    spared = [by_node[p][0] for p in live_ports]
    probe = make_redis(cluster.url, settings.redis)
    assert isinstance(probe, RedisCluster)
    await probe.initialize()
    async with running_app(settings) as (_, client):
        for user in hit + spared:
            SESSIONS[user] = await new_session(client, user)
            assert await send(client, user, "before") == "ok"
        cluster.node(int(dead_port)).kill()
        for round_ in range(3):
            for user in hit:
                assert await send(client, user, f"down {round_}") == "degraded"
            for user in spared:
                assert await send(client, user, f"down {round_}") == "ok"
                # Its memory: the history it had before, and this outage's turns.
                sent = [m["content"] for m in fake.chat_bodies[-1]["messages"][1:]]
                assert "before" in sent and sent[-1] == f"down {round_}"
        # A long reply of a spared user: its lock is renewed all along (the renewals of
        # every generation stopped while "Redis is down" was one flag per process).
        # 4 s: the lock is looked at 1.8 s after the send, with time to spare before the
        # reply ends and releases it (a 2 s reply left 0.2 s, too little on a loaded box).
        fake.script(Reply(text="a slow reply " * 10, chunks=40, delay_s=0.1))
        slow = asyncio.create_task(send(client, spared[0], "slow"))
        await asyncio.sleep(3 * LOCK_TTL_MS / 1000)
        lock = keys.session_lock_key(spared[0], SESSIONS[spared[0]])
        assert await probe.exists(lock), "the lock of a spared user's generation expired"
        assert await slow == "ok"
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["redis"] is False
        cluster.node(int(dead_port)).start()

        async def back() -> bool:
            return (await client.get("/ready")).status_code == 200

        await eventually(back, "the master to be back and the outbox replayed", timeout_s=30)
        for user in hit:
            assert await send(client, user, "after") == "ok"
            r = await client.get(
                f"/v1/sessions/{SESSIONS[user]}/messages", headers={"X-User-Id": user}
            )
            msgs = r.json()["messages"][1:]  # after the greeting
            assert [m["content"] for m in msgs[::2]] == [
                "before",
                "down 0",
                "down 1",
                "down 2",
                "after",
            ]
            assert [m["role"] for m in msgs] == ["user", "assistant"] * 5
    await probe.aclose()
