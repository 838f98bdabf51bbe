"""Per-user caps enforced by the write scripts: sessions and stored bytes (SPEC §8).

The user's totals keep `bytes`, the encoded size of every message the user stores now;
it must follow appends, trims, clears and deletes exactly, and sessions that expire must
stop counting once a cap is reached.
"""

from __future__ import annotations

import pytest

from chatmem.errors import StorageQuotaExceeded, TooManySessions
from chatmem.models import Message, Role, Usage
from chatmem.store import keys
from chatmem.store.conversations import AnyRedis, RedisMemoryStore
from tests.support import unlimited_turns


@pytest.fixture
def redis_client(contract_client: AnyRedis) -> AnyRedis:
    """Every test here runs against standalone, Cluster and Sentinel (see conftest)."""
    return contract_client


def store_with(redis_client: AnyRedis, **caps: int) -> RedisMemoryStore:
    return RedisMemoryStore(redis_client, max_messages=5, default_ttl_s=3600, **caps)


def text(n: int) -> Message:
    return Message(Role.USER, "x" * n, 1)


async def stored_bytes(redis_client: AnyRedis, user: str) -> int:
    """What the user really stores: the encoded size of every message of every session."""
    total = 0
    for sid in await redis_client.zrange(keys.user_sessions_key(user), 0, -1):
        items = await redis_client.lrange(keys.session_messages_key(user, sid), 0, -1)
        total += sum(len(item.encode()) for item in items)
    return total


async def counted_bytes(redis_client: AnyRedis, user: str) -> int:
    return int(await redis_client.hget(keys.user_totals_key(user), "bytes") or 0)


async def test_stored_bytes_follow_appends_trims_clears_and_deletes(
    redis_client: AnyRedis,
) -> None:
    store = store_with(redis_client)
    greeting = Message(Role.ASSISTANT, "Hello there!", 3)
    a = (await store.create_session("alice", "assistant", greeting=greeting)).session_id
    b = (await store.create_session("alice", "assistant")).session_id
    for i in range(8):  # past max_messages: the oldest are trimmed
        await store.append("alice", a, [text(10 * i + 1), text(3)])
        await store.append("alice", b, [text(7)], usage=Usage(1, 1, 0.0))
        assert await counted_bytes(redis_client, "alice") == await stored_bytes(
            redis_client, "alice"
        )
    # One append bringing more than max_messages: its own oldest are trimmed too.
    await store.append("alice", a, [text(i + 1) for i in range(7)])
    assert await counted_bytes(redis_client, "alice") == await stored_bytes(redis_client, "alice")
    await store.clear("alice", a)
    assert await counted_bytes(redis_client, "alice") == await stored_bytes(redis_client, "alice")
    await store.delete_session("alice", b)
    assert await counted_bytes(redis_client, "alice") == 0
    assert (await store.user_totals("alice")).stored_bytes == 0


async def test_storage_cap_refuses_the_write_and_stores_nothing(redis_client: AnyRedis) -> None:
    """One user could store without limit and so push every other user's data out of
    a Redis capped with `maxmemory` (issue 10 item 1)."""
    store = store_with(redis_client, max_stored_bytes_per_user=2000)
    sid = (await store.create_session("alice", "assistant")).session_id
    await store.append("alice", sid, [text(900)])
    with pytest.raises(StorageQuotaExceeded) as caught:
        await store.append("alice", sid, [text(1200)])
    assert caught.value.code == "storage_quota_exceeded"
    snap = await store.read("alice", sid, last=10)
    assert [len(m.content) for m in snap.messages] == [900]
    # Another user has a quota of their own.
    other = (await store.create_session("bob", "assistant")).session_id
    await store.append("bob", other, [text(1200)])
    # A turn's reply (it carries usage) is never refused: its turn was admitted.
    await store.append("alice", sid, [Message(Role.ASSISTANT, "y" * 1200, 1)], usage=Usage(1, 1))
    assert (await store.user_totals("alice")).stored_bytes > 2000
    with pytest.raises(StorageQuotaExceeded):
        await store.append("alice", sid, [text(1)])
    # Clearing frees the room.
    await store.clear("alice", sid)
    await store.append("alice", sid, [text(900)])


async def test_a_full_session_that_trims_as_much_as_it_adds_is_not_refused(
    redis_client: AnyRedis,
) -> None:
    store = store_with(redis_client, max_stored_bytes_per_user=1500)
    sid = (await store.create_session("alice", "assistant")).session_id
    for _ in range(5):
        await store.append("alice", sid, [text(200)])
    for _ in range(5):  # each drops a message as large as the one it adds
        await store.append("alice", sid, [text(200)])
    assert await counted_bytes(redis_client, "alice") == await stored_bytes(redis_client, "alice")


async def test_session_cap_counts_live_sessions_only(redis_client: AnyRedis) -> None:
    store = store_with(redis_client, max_sessions_per_user=2)
    first = (await store.create_session("alice", "assistant")).session_id
    await store.create_session("alice", "assistant")
    with pytest.raises(TooManySessions) as caught:
        await store.create_session("alice", "assistant")
    assert caught.value.code == "too_many_sessions"
    # `ensure` of a session that exists is not a new session.
    await store.create_session("alice", "assistant", session_id=first, ensure=True)
    await store.create_session("bob", "assistant")
    await store.delete_session("alice", first)
    third = (await store.create_session("alice", "assistant")).session_id
    # A session that expired (its keys gone, its index entry left) does not count.
    for kind in ("m", "h", "i"):
        await redis_client.delete(f"{keys.session_prefix('alice')}{third}:{kind}")
    await store.create_session("alice", "assistant")


async def test_expired_sessions_give_their_bytes_back(redis_client: AnyRedis) -> None:
    store = store_with(redis_client, max_stored_bytes_per_user=1000)
    sid = (await store.create_session("alice", "assistant")).session_id
    await store.append("alice", sid, [text(800)])
    for kind in ("m", "h", "i"):  # as expiry would leave it
        await redis_client.delete(f"{keys.session_prefix('alice')}{sid}:{kind}")
    sid = (await store.create_session("alice", "assistant")).session_id
    await store.append("alice", sid, [text(800)])
    assert await counted_bytes(redis_client, "alice") == await stored_bytes(redis_client, "alice")


async def test_turn_scripts_count_bytes_and_meet_the_cap(redis_client: AnyRedis) -> None:
    """Regression: the begin/finish scripts of a turn replaced APPEND_MESSAGES for chat
    turns without the byte cap: a user past it could still send, and the counter that
    trims subtract from never saw what turns added."""
    store = store_with(redis_client, max_stored_bytes_per_user=3000)
    turns = unlimited_turns(store)
    sid = (await store.create_session("carol", "assistant")).session_id
    refused = None
    for i in range(30):  # 5 messages kept: the trims give bytes back until the cap
        try:
            res = await turns.begin(
                "carol",
                sid,
                text(60 + 40 * i),
                reply_id=f"r{i}",
                generation_id=f"g{i}",
                token=f"t{i}",
                idempotent=False,
                read_last=0,
            )
        except StorageQuotaExceeded as exc:
            refused = exc
            break
        assert res.kind == "ok"
        reply = Message(Role.ASSISTANT, "y" * (50 + 30 * i), 1, msg_id=f"r{i}")
        await turns.finish(
            "carol",
            sid,
            reply,
            Usage(1, 1, 0.0),
            token=f"t{i}",
            generation_id=f"g{i}",
            tail=None,
            end_payload={},
        )
        assert await counted_bytes(redis_client, "carol") == await stored_bytes(
            redis_client, "carol"
        )
    assert refused is not None, "the byte cap never refused a turn"
    assert await counted_bytes(redis_client, "carol") == await stored_bytes(redis_client, "carol")
