"""The one Redis error mapping (store/client.py) and what clients see of it.

Real redis-servers: one capped with `maxmemory` and `noeviction` for "out of memory",
one killed for "down". The cluster errors, which need a cluster in mid-failover to
happen for real, are checked on the mapping itself and through the character registry
(which mapped only connection errors and timeouts before, so they became 500s).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.exceptions as rex

from chatmem.auth_throttle import AuthThrottle
from chatmem.characters import CharacterRegistry
from chatmem.config import RedisSettings
from chatmem.errors import RateLimited, StoreFull, StoreUnavailable
from chatmem.models import Message, Role
from chatmem.store.auth_failures import RedisFailureCounter
from chatmem.store.characters import CharacterStore
from chatmem.store.client import make_redis, redis_errors, store_error
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.locks import Coordinator, TickItem
from tests.api_support import make_test_settings, running_app
from tests.fake_openai import FakeOpenAI
from tests.redis_servers import RedisProcess

OOM_SCRIPT_ERROR = (
    "Error running script (call to f_0123): @user_script:2: @user_script: 2: "
    "-OOM command not allowed when used memory > 'maxmemory'."
)


@pytest.mark.parametrize(
    "exc",
    [
        rex.ConnectionError("Error 111 connecting"),
        rex.TimeoutError("Timeout reading from socket"),
        rex.BusyLoadingError("Redis is loading the dataset in memory"),
        rex.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rex.MasterDownError("MASTERDOWN Link with MASTER is down"),
        rex.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        rex.SlotNotCoveredError("slot 42 is not covered"),
        rex.ReadOnlyError("READONLY You can't write against a read only replica."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unreachable_redis_is_store_unavailable(exc: Exception) -> None:
    assert isinstance(store_error(exc, "op"), StoreUnavailable)


@pytest.mark.parametrize(
    "exc",
    [
        rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        rex.ResponseError(OOM_SCRIPT_ERROR),
    ],
    ids=["reply", "inside a script"],
)
def test_redis_out_of_memory_is_store_full(exc: Exception) -> None:
    mapped = store_error(exc, "append")
    assert isinstance(mapped, StoreFull)
    assert not isinstance(mapped, StoreUnavailable)  # a turn must not degrade on it


def test_other_redis_errors_are_left_as_bugs() -> None:
    wrong = rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    assert store_error(wrong, "read") is None
    with pytest.raises(rex.ResponseError), redis_errors("read"):
        raise wrong


async def test_the_mapping_works_with_and_async_with() -> None:
    with pytest.raises(StoreUnavailable, match="during read"), redis_errors("read"):
        raise rex.TryAgainError("TRYAGAIN")
    with pytest.raises(StoreFull):
        async with redis_errors("append"):
            raise rex.OutOfMemoryError("command not allowed")
    async with redis_errors("read"):
        pass  # nothing raised, nothing mapped


class _ClusterDown:
    """A client of a cluster whose slots are not all served (every call fails so)."""

    def register_script(self, script: str) -> Any:
        return self._fail

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise rex.ClusterDownError("CLUSTERDOWN The cluster is down")

    def __getattr__(self, name: str) -> Any:
        return self._fail


async def test_cluster_down_in_character_registry_is_store_unavailable_not_500() -> None:
    """The character registry mapped only ConnectionError and TimeoutError: a
    ClusterDownError or TryAgainError reached the client as a 500."""
    registry = CharacterRegistry(CharacterStore(_ClusterDown()))  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        await registry.list()
    with pytest.raises(StoreUnavailable):
        await registry.get("someone-stored")


# --- out of memory ------------------------------------------------------------------------


@pytest.fixture
def capped_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path, "maxmemory-policy noeviction").start()
    yield server
    server.stop()


async def _fill(url: str) -> None:
    """Write 2 MiB, then cap the server 1 MiB under what it holds: every write is refused
    (as at maxmemory after a flood), whatever buffers come and go meanwhile."""
    client = make_redis(url, RedisSettings(url=url))
    try:
        for i in range(128):
            await client.set(f"filler:{i}", "x" * 16_384)
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory", used - 1024 * 1024)
        with pytest.raises(rex.OutOfMemoryError):
            await client.set("one-more", "x")
    finally:
        await client.aclose()


async def test_store_and_locks_raise_store_full_when_redis_is_out_of_memory(
    capped_redis: RedisProcess,
) -> None:
    client = make_redis(capped_redis.url, RedisSettings(url=capped_redis.url))
    try:
        store = RedisMemoryStore(client)
        await store.create_session("alice", "assistant", session_id="s1")
        await _fill(capped_redis.url)
        with pytest.raises(StoreFull):  # a Lua script's write
            await store.append("alice", "s1", [Message(Role.USER, "hi", 1)])
        with pytest.raises(StoreFull):  # a plain command
            await store.create_session("bob", "assistant")
        coordinator = Coordinator(
            client,
            lock_ttl_ms=1000,
            lock_wait_ms=10,
            turns_per_minute=10,
            writes_per_minute=10,
            streams_per_user=1,
        )
        with pytest.raises(StoreFull):  # the generations' pipelined tick
            await coordinator.tick([TickItem("alice", "s1", "t", "g", append=(0, "x"))])
        # Reads still work: Redis is full, not gone.
        assert (await store.read("alice", "s1", last=10)).meta.session_id == "s1"
    finally:
        await client.aclose()


async def test_auth_failures_are_counted_in_the_process_while_redis_is_full(
    capped_redis: RedisProcess,
) -> None:
    client = make_redis(capped_redis.url, RedisSettings(url=capped_redis.url))
    try:
        await _fill(capped_redis.url)
        counter = RedisFailureCounter(client)
        with pytest.raises(StoreFull):
            await counter.add_failure("10.0.0.1", 60_000)
        throttle = AuthThrottle(counter, max_failures=2, window_s=60)
        await throttle.failed("10.0.0.1")
        await throttle.failed("10.0.0.1")
        with pytest.raises(RateLimited):
            await throttle.failed("10.0.0.1")
    finally:
        await client.aclose()


@pytest.fixture
async def capped_client(
    capped_redis: RedisProcess, fake: FakeOpenAI, tmp_data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_test_settings(capped_redis.url, fake.base_url, tmp_data_dir)
    async with running_app(settings) as (_, http):
        yield http


async def test_redis_out_of_memory_answers_json_503_store_full_not_500(
    capped_client: httpx.AsyncClient, capped_redis: RedisProcess
) -> None:
    """Redis at maxmemory with noeviction refused writes with "OOM command not allowed",
    which reached clients as plain-text 500s. (Redis 6.2, the test server, lets a Lua
    script that has already written past maxmemory, so a turn's begin script may still
    succeed; a new session's index write is refused.)"""
    r = await capped_client.post("/v1/sessions", json={"character_id": "assistant"})
    sid = r.json()["session"]["session_id"]
    await _fill(capped_redis.url)
    for method, path, body in [
        ("POST", "/v1/sessions", {"character_id": "assistant"}),
        ("POST", "/chat", {"user_id": "bob", "message": "hello"}),
    ]:
        r = await capped_client.request(method, path, json=body)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["error"]["code"] == "store_full", path
    r = await capped_client.get(f"/v1/sessions/{sid}/messages")
    assert r.status_code == 200  # reading goes on


# --- redis down ---------------------------------------------------------------------------


async def test_admin_stats_answers_503_not_500_while_redis_is_down(
    fake: FakeOpenAI, tmp_path: Path, tmp_data_dir: Path
) -> None:
    """`/v1/admin/stats` read Redis INFO through redis-py directly, outside every error
    mapping: with Redis down it answered 500."""
    server = RedisProcess(tmp_path).start()
    settings = make_test_settings(server.url, fake.base_url, tmp_data_dir)
    try:
        async with running_app(settings) as (_, http):
            r = await http.get("/v1/admin/stats")
            assert r.status_code == 200
            assert r.json()["redis_version"]
            server.kill()
            for path in ("/v1/admin/stats", "/stats", "/v1/admin/users"):
                r = await http.get(path)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"]["code"] == "store_unavailable", path
    finally:
        server.stop()
