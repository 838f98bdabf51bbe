"""Sliding expiry against a real redis-server.

The store refuses TTLs under 60 s, so these tests shorten a live session's keys with
PEXPIRE directly (what an elapsed TTL would leave behind) instead of weakening that rule.
"""

from __future__ import annotations

import pytest

from chatmem.errors import SessionNotFound
from chatmem.models import Message, Role, SessionState
from chatmem.store import keys
from chatmem.store.conversations import AnyRedis, RedisMemoryStore
from tests.redis_servers import all_keys, expire_now


@pytest.fixture
def redis_client(contract_client: AnyRedis) -> AnyRedis:
    """Every test here runs against standalone, Cluster and Sentinel (see conftest)."""
    return contract_client


TTL_S = 120


async def _age(client: AnyRedis, ks: list[str], ms: int) -> None:
    for key in ks:
        await client.pexpire(key, ms)


@pytest.fixture
async def session(store: RedisMemoryStore) -> list[str]:
    await store.create_session(
        "alice", "assistant", session_id="s1", ttl_s=TTL_S, greeting=Message(Role.ASSISTANT, "hi")
    )
    return keys.session_keys("alice", "s1")


async def _assert_fresh(client: AnyRedis, ks: list[str], ttl_s: int = TTL_S) -> None:
    for key in ks:
        assert (ttl_s - 2) * 1000 < await client.pttl(key) <= ttl_s * 1000, key


async def test_every_key_of_the_session_expires(
    store: RedisMemoryStore, redis_client: AnyRedis, session: list[str]
) -> None:
    await store.append("alice", "s1", [Message(Role.USER, "x")])
    await _assert_fresh(redis_client, session)
    assert (await store.get_meta("alice", "s1")).ttl_remaining_s == TTL_S


async def test_every_write_refreshes_the_ttl_of_every_key(
    store: RedisMemoryStore, redis_client: AnyRedis, session: list[str]
) -> None:
    await store.append("alice", "s1", [Message(Role.USER, "x")])
    writes = [
        lambda: store.append("alice", "s1", [Message(Role.USER, "y")]),
        lambda: store.update_session("alice", "s1", title="t"),
        lambda: store.update_session("alice", "s1", state=SessionState.INACTIVE),
    ]
    for write in writes:
        await _age(redis_client, session, 3_000)
        await write()
        await _assert_fresh(redis_client, session)


async def test_reads_do_not_refresh_the_ttl(
    store: RedisMemoryStore, redis_client: AnyRedis, session: list[str]
) -> None:
    await _age(redis_client, session, 30_000)
    await store.read("alice", "s1", last=10)
    await store.list_sessions("alice")
    assert await redis_client.pttl(session[1]) <= 30_000
    assert (await store.get_meta("alice", "s1")).ttl_remaining_s <= 30


async def test_changing_the_ttl_applies_it_to_every_key(
    store: RedisMemoryStore, redis_client: AnyRedis, session: list[str]
) -> None:
    meta = await store.update_session("alice", "s1", ttl_s=7200)
    assert (meta.ttl_s, meta.ttl_remaining_s) == (7200, 7200)
    await _assert_fresh(redis_client, session, 7200)
    # Shorter again: the session's keys follow; the user's keys never shrink below it.
    await store.update_session("alice", "s1", ttl_s=60)
    await _assert_fresh(redis_client, session[:3], 60)
    assert await redis_client.pttl(session[3]) > 7000 * 1000


async def test_expired_session_is_gone_everywhere(
    store: RedisMemoryStore, redis_client: AnyRedis, session: list[str]
) -> None:
    await store.append("alice", "s1", [Message(Role.USER, "x")])
    await expire_now(redis_client, *session[:3])

    for op in (
        lambda: store.read("alice", "s1", last=10),
        lambda: store.get_meta("alice", "s1"),
        lambda: store.append("alice", "s1", [Message(Role.USER, "late")]),
        lambda: store.update_session("alice", "s1", title="t"),
        lambda: store.clear("alice", "s1"),
        lambda: store.delete_session("alice", "s1"),
    ):
        with pytest.raises(SessionNotFound):
            await op()
    assert await store.list_sessions("alice") == []
    # A failed append to an expired session wrote nothing back.
    assert not any(":s:s1:" in k for k in await all_keys(redis_client))


async def test_user_keys_outlive_their_longest_session(
    store: RedisMemoryStore, redis_client: AnyRedis, session: list[str]
) -> None:
    await store.create_session("alice", "assistant", session_id="long", ttl_s=7200)
    await store.append("alice", "s1", [Message(Role.USER, "x")])  # a shorter session's write
    for key in (keys.user_sessions_key("alice"), keys.user_totals_key("alice")):
        assert await redis_client.pttl(key) > 7100 * 1000


async def test_clear_keeps_the_user_index_alive(
    store: RedisMemoryStore, redis_client: AnyRedis, session: list[str]
) -> None:
    """Clearing refreshed the session's expiry but not the user's session index, so the
    index could expire first and a live session drop out of the session list."""
    await _age(redis_client, session, 2_000)
    await store.clear("alice", "s1")
    await _assert_fresh(redis_client, [session[1], session[3], session[4]])
    assert [s.session_id for s in await store.list_sessions("alice")] == ["s1"]
