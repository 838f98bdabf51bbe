"""Appends and reads: atomicity, round trips, trimming, idempotency, paging, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from chatmem.errors import InvalidInput, SessionNotFound
from chatmem.models import Message, Role, Usage
from chatmem.store import keys
from chatmem.store.conversations import AnyRedis, RedisMemoryStore


@pytest.fixture
def redis_client(contract_client: AnyRedis) -> AnyRedis:
    """Every test here runs against standalone, Cluster and Sentinel (see conftest)."""
    return contract_client


TTL_S = 3600


def msg(role: Role, content: str, tokens: int = 1, msg_id: str | None = None) -> Message:
    m = Message(role, content, tokens)
    if msg_id is not None:
        m.msg_id = msg_id
    return m


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Every packet the client sends: one per round trip (a pipeline is one packet)."""
    sent: list[object] = []
    original = AbstractConnection.send_packed_command

    async def spy(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        sent.append(command)
        await original(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    yield sent


@pytest.fixture
async def session(store: RedisMemoryStore) -> str:
    await store.create_session(
        "alice", "assistant", session_id="s1", greeting=msg(Role.ASSISTANT, "Hi!", 2, "greet")
    )
    return "s1"


async def test_append_is_one_round_trip_and_writes_everything(
    store: RedisMemoryStore, redis_client: AnyRedis, session: str, round_trips: list[object]
) -> None:
    await store.append("alice", session, [msg(Role.USER, "warm-up")])  # loads the script
    ks = keys.session_keys("alice", session)
    for key in ks:  # age every key, so that a refresh shows
        await redis_client.pexpire(key, 5_000)
    before = await redis_client.zscore(keys.user_sessions_key("alice"), session)

    round_trips.clear()
    res = await store.append(
        "alice",
        session,
        [msg(Role.USER, "How are you?", 4), msg(Role.ASSISTANT, "Fine, thanks.", 5)],
        usage=Usage(10, 5, 0.01),
    )
    assert len(round_trips) == 1
    assert (res.appended, res.duplicate_ids, res.stored, res.last_seq) == (2, [], 4, 4)
    for key in ks:
        assert (await redis_client.pttl(key)) > (TTL_S - 5) * 1000, key
    assert (await redis_client.zscore(keys.user_sessions_key("alice"), session)) > before

    meta = await store.get_meta("alice", session)
    assert (meta.message_count, meta.total_tokens, meta.stored_messages) == (4, 12, 4)
    assert (meta.preview, meta.preview_role) == ("Fine, thanks.", "assistant")
    assert meta.usage == Usage(10, 5, 0.01)
    totals = await store.user_totals("alice")
    assert (totals.message_count, totals.total_tokens, totals.usage) == (4, 12, Usage(10, 5, 0.01))


async def test_append_with_read_back_is_one_round_trip(
    store: RedisMemoryStore, session: str, round_trips: list[object]
) -> None:
    await store.append("alice", session, [msg(Role.USER, "warm-up")], read_last=1)
    round_trips.clear()
    res = await store.append(
        "alice", session, [msg(Role.USER, "u"), msg(Role.ASSISTANT, "a")], read_last=3
    )
    assert len(round_trips) == 1
    assert [(m.content, m.seq) for m in res.messages] == [("warm-up", 2), ("u", 3), ("a", 4)]
    assert res.meta == await store.get_meta("alice", session)

    res = await store.append("alice", session, [msg(Role.USER, "x")], read_last=0)
    assert res.messages == [] and res.meta is not None and res.meta.message_count == 5
    res = await store.append("alice", session, [msg(Role.USER, "y")])
    assert res.meta is None and res.messages == []


async def test_read_newest_and_meta_is_one_round_trip(
    store: RedisMemoryStore, session: str, round_trips: list[object]
) -> None:
    await store.append("alice", session, [msg(Role.USER, str(i)) for i in range(30)])
    await store.read("alice", session, last=1)  # loads the script
    round_trips.clear()
    snap = await store.read("alice", session, last=20)
    assert len(round_trips) == 1
    assert [m.content for m in snap.messages] == [str(i) for i in range(10, 30)]
    assert [m.seq for m in snap.messages] == list(range(12, 32))
    assert (snap.meta.message_count, snap.meta.stored_messages) == (31, 31)
    assert [m.content for m in (await store.read("alice", session, last=1000)).messages][:2] == [
        "Hi!",
        "0",
    ]


async def test_150_appends_keep_the_newest_100(store: RedisMemoryStore, session: str) -> None:
    for i in range(150):
        await store.append("alice", session, [msg(Role.USER, f"m{i}")])
    snap = await store.read("alice", session, last=1000)
    assert [m.content for m in snap.messages] == [f"m{i}" for i in range(50, 150)]
    assert [m.seq for m in snap.messages] == list(range(52, 152))
    assert (snap.meta.message_count, snap.meta.stored_messages) == (151, 100)


async def test_batch_larger_than_max_messages_keeps_its_tail(redis_client: AnyRedis) -> None:
    store = RedisMemoryStore(redis_client, max_messages=5)
    await store.create_session("alice", "assistant", session_id="s1")
    batch = [msg(Role.USER, f"m{i}") for i in range(8)]
    res = await store.append("alice", "s1", batch, read_last=100)
    assert (res.appended, res.stored) == (8, 5)
    assert [m.content for m in res.messages] == [f"m{i}" for i in range(3, 8)]
    # The ids index names exactly the stored messages, oldest first.
    ids = await redis_client.get(keys.session_ids_key("alice", "s1"))
    assert ids == "," + ",".join(m.msg_id for m in batch[3:]) + ","


async def test_append_to_missing_session(store: RedisMemoryStore, redis_client: AnyRedis) -> None:
    with pytest.raises(SessionNotFound):
        await store.append("alice", "nope", [msg(Role.USER, "x")])
    assert [k async for k in redis_client.scan_iter()] == []


async def test_append_needs_something_and_caps_the_batch(
    store: RedisMemoryStore, session: str
) -> None:
    with pytest.raises(InvalidInput):
        await store.append("alice", session, [])
    with pytest.raises(InvalidInput):
        await store.append(
            "alice", session, [msg(Role.USER, "x") for _ in range(keys.MAX_APPEND_MESSAGES + 1)]
        )


# --- idempotency ---------------------------------------------------------------------


async def test_message_id_seen_before_is_not_appended_again(
    store: RedisMemoryStore, session: str
) -> None:
    first = msg(Role.USER, "hello", 3, "m-1")
    await store.append("alice", session, [first, msg(Role.ASSISTANT, "hi", 2, "m-2")])
    for i in range(20):  # other messages in between
        await store.append("alice", session, [msg(Role.USER, f"x{i}")])

    res = await store.append(
        "alice", session, [msg(Role.USER, "hello", 3, "m-1"), msg(Role.USER, "new", 1, "m-3")]
    )
    assert (res.appended, res.duplicate_ids) == (1, ["m-1"])
    res = await store.append("alice", session, [msg(Role.USER, "greeting again", 1, "greet")])
    assert (res.appended, res.duplicate_ids) == (0, ["greet"])

    snap = await store.read("alice", session, last=1000)
    ids = [m.msg_id for m in snap.messages]
    assert ids.count("m-1") == 1 and ids.count("greet") == 1 and ids[-1] == "m-3"
    assert snap.meta.message_count == 24


async def test_append_retried_with_same_id_is_stored_once(
    store: RedisMemoryStore, session: str
) -> None:
    turn = [msg(Role.USER, "q", 3, "turn-1-u"), msg(Role.ASSISTANT, "a", 4, "turn-1-a")]
    results = [await store.append("alice", session, turn, read_last=10) for _ in range(3)]
    assert [r.appended for r in results] == [2, 0, 0]
    assert results[2].duplicate_ids == ["turn-1-u", "turn-1-a"]
    assert results[0].last_seq == results[2].last_seq == 3
    snap = await store.read("alice", session, last=10)
    assert [m.msg_id for m in snap.messages] == ["greet", "turn-1-u", "turn-1-a"]
    assert (snap.meta.message_count, snap.meta.total_tokens) == (3, 9)
    totals = await store.user_totals("alice")
    assert (totals.message_count, totals.total_tokens) == (3, 9)


async def test_duplicate_within_one_batch_is_stored_once(
    store: RedisMemoryStore, session: str
) -> None:
    res = await store.append(
        "alice", session, [msg(Role.USER, "a", 1, "same"), msg(Role.USER, "b", 1, "same")]
    )
    assert (res.appended, res.duplicate_ids) == (1, ["same"])
    assert [m.content for m in (await store.read("alice", session, last=5)).messages] == [
        "Hi!",
        "a",
    ]


async def test_retried_append_with_usage_counts_usage_once(
    store: RedisMemoryStore, session: str
) -> None:
    """A retry whose messages were all duplicates added its usage again, billing the
    session and the user twice for one reply."""
    reply = msg(Role.ASSISTANT, "answer", 5, "reply-1")
    for _ in range(2):
        await store.append("alice", session, [reply], usage=Usage(100, 5, 0.002))
    assert (await store.get_meta("alice", session)).usage == Usage(100, 5, 0.002)
    assert (await store.user_totals("alice")).usage == Usage(100, 5, 0.002)


async def test_append_does_not_read_the_whole_list(
    store: RedisMemoryStore, redis_client: AnyRedis, session: str
) -> None:
    """Every append read the whole message list (LRANGE 0 -1) to find repeated ids, so a
    write cost grew with the stored history; the id index replaces that."""
    await store.append("alice", session, [msg(Role.USER, str(i)) for i in range(99)])
    # Under Cluster, the statistics of the node that holds the session.
    on_node: dict[str, Any] = {}
    if isinstance(redis_client, RedisCluster):
        node = redis_client.get_node_from_key(keys.session_meta_key("alice", session))
        on_node = {"target_nodes": node}
    await redis_client.config_resetstat(**on_node)
    await store.append("alice", session, [msg(Role.USER, "x")])
    stats = await redis_client.info("commandstats", **on_node)
    assert "cmdstat_lrange" not in stats
    assert stats["cmdstat_evalsha"]["calls"] == 1


async def test_lost_id_index_is_rebuilt_from_the_list(
    store: RedisMemoryStore, redis_client: AnyRedis, session: str
) -> None:
    await store.append("alice", session, [msg(Role.USER, "a", 1, "m-1")])
    await redis_client.delete(keys.session_ids_key("alice", session))
    res = await store.append("alice", session, [msg(Role.USER, "a", 1, "m-1")])
    assert (res.appended, res.duplicate_ids) == (0, ["m-1"])
    assert await redis_client.get(keys.session_ids_key("alice", session)) == ",greet,m-1,"


async def test_ids_of_trimmed_messages_are_forgotten(redis_client: AnyRedis) -> None:
    store = RedisMemoryStore(redis_client, max_messages=3)
    await store.create_session("alice", "assistant", session_id="s1")
    for i in range(5):
        await store.append("alice", "s1", [msg(Role.USER, f"m{i}", 1, f"id{i}")])
    assert await redis_client.get(keys.session_ids_key("alice", "s1")) == ",id2,id3,id4,"
    # id0 was trimmed away with its message: idempotency covers the stored window.
    res = await store.append("alice", "s1", [msg(Role.USER, "m0", 1, "id0")])
    assert res.appended == 1


# --- paging --------------------------------------------------------------------------


async def test_history_paging_with_before_seq(store: RedisMemoryStore, session: str) -> None:
    for i in range(150):
        await store.append("alice", session, [msg(Role.USER, f"m{i}")])
    pages: list[list[int]] = []
    cursor = 0
    while True:
        snap = await store.read("alice", session, last=30, before_seq=cursor)
        if not snap.messages:
            break
        pages.append([m.seq for m in snap.messages])
        cursor = snap.messages[0].seq
    assert pages[0] == list(range(122, 152))
    assert [s for page in reversed(pages) for s in page] == list(range(52, 152))
    assert len(pages) == 4 and pages[-1] == list(range(52, 62))

    # A cursor stays valid while new messages arrive and old ones are trimmed.
    first = await store.read("alice", session, last=30)
    await store.append("alice", session, [msg(Role.USER, "late") for _ in range(5)])
    second = await store.read("alice", session, last=30, before_seq=first.messages[0].seq)
    assert [m.seq for m in second.messages] == list(range(92, 122))

    assert (await store.read("alice", session, last=5, before_seq=1)).messages == []
    assert (await store.read("alice", session, last=5, before_seq=57)).messages == []
    with pytest.raises(InvalidInput):
        await store.read("alice", session, last=-1)
    with pytest.raises(InvalidInput):
        await store.read("alice", session, last=5, before_seq=-3)


async def test_paging_cursor_from_before_a_clear_finds_nothing(
    store: RedisMemoryStore, session: str
) -> None:
    await store.append("alice", session, [msg(Role.USER, f"m{i}") for i in range(5)])
    await store.clear("alice", session)
    await store.append("alice", session, [msg(Role.USER, "after")])
    assert (await store.read("alice", session, last=10, before_seq=6)).messages == []
    assert [m.seq for m in (await store.read("alice", session, last=10)).messages] == [7]


# --- concurrency ---------------------------------------------------------------------


async def test_50_concurrent_appends_keep_every_message_once_in_commit_order(
    store: RedisMemoryStore, session: str
) -> None:
    async def one(i: int) -> tuple[int, str]:
        res = await store.append("alice", session, [msg(Role.USER, f"m{i}", 1, f"c-{i}")])
        assert res.appended == 1
        return res.last_seq, f"c-{i}"

    done = await asyncio.gather(*(one(i) for i in range(50)))
    snap = await store.read("alice", session, last=100)
    stored = [m.msg_id for m in snap.messages[1:]]
    assert sorted(stored) == sorted(f"c-{i}" for i in range(50))  # each exactly once
    # Stored in the order the appends completed on the server, as each one saw it.
    assert stored == [mid for _, mid in sorted(done)]
    assert sorted(seq for seq, _ in done) == list(range(2, 52))
    assert snap.meta.message_count == 51


async def test_concurrent_retries_of_one_message_store_it_once(
    store: RedisMemoryStore, session: str
) -> None:
    results = await asyncio.gather(
        *(
            store.append("alice", session, [msg(Role.USER, "q", 2, "only")], usage=Usage(1, 1, 1))
            for _ in range(20)
        )
    )
    assert sorted(r.appended for r in results) == [0] * 19 + [1]
    snap = await store.read("alice", session, last=10)
    assert [m.msg_id for m in snap.messages] == ["greet", "only"]
    assert snap.meta.usage == Usage(1, 1, 1)


async def test_newest_messages_are_at_the_head_of_the_list(
    store: RedisMemoryStore, redis_client: AnyRedis, session: str
) -> None:
    """The list was kept oldest first, and Redis 6 reaches a tail index by walking the
    list from its head, so reading the newest 20 of 10 000 messages cost ~1 000 node
    hops: context reads grew with the stored history. Newest first, they start at the
    head."""
    await store.append("alice", session, [msg(Role.USER, "older"), msg(Role.USER, "newest")])
    head = await redis_client.lindex(keys.session_messages_key("alice", session), 0)
    assert '"c":"newest"' in head


@pytest.mark.parametrize(
    "usage", [Usage(-1, 0, 0.0), Usage(0, -1, 0.0), Usage(0, 0, -0.5), Usage(1, 1, float("inf"))]
)
async def test_invalid_usage_is_refused_before_any_write(
    store: RedisMemoryStore, session: str, usage: Usage
) -> None:
    with pytest.raises(InvalidInput) as err:
        await store.append("alice", session, [msg(Role.ASSISTANT, "a")], usage=usage)
    assert err.value.code == "invalid_usage"
    assert (await store.get_meta("alice", session)).message_count == 1
