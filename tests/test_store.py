"""RedisMemoryStore against a real redis-server: sessions, listing, users and totals."""

from __future__ import annotations

import pytest

from chatmem.errors import AlreadyExists, InvalidInput, SessionNotFound, StoreUnavailable
from chatmem.models import Message, Role, SessionState, Usage
from chatmem.store import keys
from chatmem.store.conversations import AnyRedis, RedisMemoryStore
from tests.redis_servers import all_keys, expire_now
from tests.support import next_millisecond


@pytest.fixture
def redis_client(contract_client: AnyRedis) -> AnyRedis:
    """Every test here runs against standalone, Cluster and Sentinel (see conftest)."""
    return contract_client


def msg(role: Role, content: str, tokens: int = 1, msg_id: str | None = None) -> Message:
    m = Message(role, content, tokens)
    if msg_id is not None:
        m.msg_id = msg_id
    return m


async def test_create_session_with_greeting(store: RedisMemoryStore) -> None:
    greeting = msg(Role.ASSISTANT, "Hello! How can I help?", 7)
    meta = await store.create_session(
        "alice", "teacher", session_id="s1", title="Maths", ttl_s=600, window_size=5,
        greeting=greeting,
    )  # fmt: skip
    assert (meta.session_id, meta.user_id, meta.character_id) == ("s1", "alice", "teacher")
    assert (meta.title, meta.ttl_s, meta.window_size) == ("Maths", 600, 5)
    assert meta.state == SessionState.ACTIVE
    assert (meta.message_count, meta.stored_messages, meta.total_tokens) == (1, 1, 7)
    assert (meta.preview, meta.preview_role) == ("Hello! How can I help?", "assistant")
    assert 599 <= meta.ttl_remaining_s <= 600
    assert meta.created_at == meta.last_active_at > 0

    snap = await store.read("alice", "s1", last=10)
    assert [(m.msg_id, m.role, m.content, m.token_count, m.seq) for m in snap.messages] == [
        (greeting.msg_id, Role.ASSISTANT, "Hello! How can I help?", 7, 1)
    ]


async def test_create_session_defaults_and_no_greeting(store: RedisMemoryStore) -> None:
    meta = await store.create_session("alice", "assistant")
    assert len(meta.session_id) == 32
    assert (meta.ttl_s, meta.window_size, meta.title) == (3600, 10, "")
    assert (meta.message_count, meta.stored_messages, meta.preview) == (0, 0, "")
    assert (await store.read("alice", meta.session_id, last=10)).messages == []


async def test_create_existing_session(store: RedisMemoryStore) -> None:
    await store.create_session("alice", "assistant", session_id="s1", title="first")
    with pytest.raises(AlreadyExists):
        await store.create_session("alice", "assistant", session_id="s1")
    kept = await store.create_session("alice", "teacher", session_id="s1", ensure=True)
    assert (kept.character_id, kept.title) == ("assistant", "first")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"ttl_s": 59}, "invalid_ttl"),
        # Past a year; 10**15 s is past what Redis can expire (it broke an imported session).
        ({"ttl_s": 365 * 24 * 3600 + 1}, "invalid_ttl"),
        ({"ttl_s": 10**15}, "invalid_ttl"),
        ({"window_size": 0}, "invalid_window"),
        ({"window_size": 21}, "invalid_window"),
        ({"title": "x" * 201}, "invalid_title"),
        ({"title": "a\x1b[31mb"}, "invalid_title"),
        ({"title": "evil\u202etxt.exe"}, "invalid_title"),
    ],
)
async def test_create_session_validates(
    store: RedisMemoryStore, redis_client: AnyRedis, kwargs: dict[str, int | str], code: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        await store.create_session("alice", "assistant", session_id="s1", **kwargs)  # type: ignore[arg-type]
    assert err.value.code == code
    assert await all_keys(redis_client) == set()


async def test_a_title_keeps_emoji_sequences(store: RedisMemoryStore) -> None:
    family = "Plans 👨\u200d👩\u200d👧 ✈\ufe0f"  # joiners and selectors are no control
    meta = await store.create_session("alice", "assistant", session_id="s1", title=family)
    assert meta.title == family


async def test_update_session(store: RedisMemoryStore) -> None:
    await store.create_session("alice", "assistant", session_id="s1")
    meta = await store.update_session(
        "alice", "s1", title="Renamed", ttl_s=60, window_size=20, state=SessionState.ENDED
    )
    assert (meta.title, meta.ttl_s, meta.window_size, meta.state) == (
        "Renamed", 60, 20, SessionState.ENDED,
    )  # fmt: skip
    assert 59 <= meta.ttl_remaining_s <= 60
    assert await store.get_meta("alice", "s1") == meta
    meta = await store.update_session("alice", "s1", window_size=1)
    assert (meta.title, meta.window_size, meta.ttl_s) == ("Renamed", 1, 60)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"ttl_s": 59}, "invalid_ttl"),
        ({"ttl_s": 0}, "invalid_ttl"),
        ({"ttl_s": 10**15}, "invalid_ttl"),
        ({"window_size": 0}, "invalid_window"),
        ({"window_size": 21}, "invalid_window"),
        ({"title": "x" * 201}, "invalid_title"),
        ({"state": "PAUSED"}, "invalid_state"),
    ],
)
async def test_update_session_validates(
    store: RedisMemoryStore, kwargs: dict[str, int | str], code: str
) -> None:
    before = await store.create_session("alice", "assistant", session_id="s1")
    with pytest.raises(InvalidInput) as err:
        await store.update_session("alice", "s1", **kwargs)  # type: ignore[arg-type]
    assert err.value.code == code
    assert await store.get_meta("alice", "s1") == before


async def test_unknown_state_is_invalid_input_not_value_error(store: RedisMemoryStore) -> None:
    """An unknown state escaped as a bare ValueError (a 500) instead of InvalidInput."""
    await store.create_session("alice", "assistant", session_id="s1")
    with pytest.raises(InvalidInput):
        await store.update_session("alice", "s1", state="nope")  # type: ignore[arg-type]


async def test_clear_keeps_session_with_zero_messages(store: RedisMemoryStore) -> None:
    await store.create_session(
        "alice", "assistant", session_id="s1", greeting=msg(Role.ASSISTANT, "hi", 1)
    )
    await store.append(
        "alice", "s1", [msg(Role.USER, "a", 2), msg(Role.ASSISTANT, "b", 3)], usage=Usage(5, 3, 0.5)
    )
    await store.clear("alice", "s1")
    snap = await store.read("alice", "s1", last=100)
    assert snap.messages == []
    assert (snap.meta.message_count, snap.meta.stored_messages, snap.meta.total_tokens) == (0, 0, 0)
    assert (snap.meta.preview, snap.meta.preview_role) == ("", "")
    assert snap.meta.usage == Usage(5, 3, 0.5)  # what was spent stays
    assert [s.session_id for s in await store.list_sessions("alice")] == ["s1"]

    res = await store.append("alice", "s1", [msg(Role.USER, "again", 1)], read_last=10)
    assert [(m.content, m.seq) for m in res.messages] == [("again", 4)]  # seqs are not reused
    assert res.meta is not None and res.meta.message_count == 1


async def test_message_count_is_zero_after_clear(store: RedisMemoryStore) -> None:
    """Clearing kept message_count and total_tokens, so a cleared session still reported
    the messages and tokens it no longer had."""
    await store.create_session("alice", "assistant", session_id="s1")
    await store.append("alice", "s1", [msg(Role.USER, "a", 9)])
    await store.clear("alice", "s1")
    meta = await store.get_meta("alice", "s1")
    assert (meta.message_count, meta.total_tokens) == (0, 0)


async def test_delete_session(store: RedisMemoryStore, redis_client: AnyRedis) -> None:
    await store.create_session("alice", "assistant", session_id="s1")
    await store.create_session("alice", "assistant", session_id="s2")
    await store.append("alice", "s1", [msg(Role.USER, "a")])
    await store.delete_session("alice", "s1")

    with pytest.raises(SessionNotFound):
        await store.read("alice", "s1", last=10)
    with pytest.raises(SessionNotFound):
        await store.append("alice", "s1", [msg(Role.USER, "b")])
    with pytest.raises(SessionNotFound):
        await store.update_session("alice", "s1", title="x")
    with pytest.raises(SessionNotFound):
        await store.clear("alice", "s1")
    with pytest.raises(SessionNotFound):
        await store.delete_session("alice", "s1")
    assert [s.session_id for s in await store.list_sessions("alice")] == ["s2"]
    assert not any(":s:s1:" in k for k in await all_keys(redis_client))


async def test_delete_session_removes_lock_and_stop_keys(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    """Deleting a session left its turn lock and stop flag behind."""
    await store.create_session("alice", "assistant", session_id="s1")
    await redis_client.set(keys.session_lock_key("alice", "s1"), "token")
    await redis_client.set(keys.session_stop_key("alice", "s1"), "token")
    await store.delete_session("alice", "s1")
    assert not any(":s:s1:" in k for k in await all_keys(redis_client))


async def test_session_id_can_be_reused_after_delete(store: RedisMemoryStore) -> None:
    await store.create_session("alice", "assistant", session_id="s1")
    m = msg(Role.USER, "old")
    await store.append("alice", "s1", [m])
    await store.delete_session("alice", "s1")
    await store.create_session("alice", "assistant", session_id="s1")
    res = await store.append("alice", "s1", [m], read_last=10)
    assert res.appended == 1 and [x.seq for x in res.messages] == [1]


async def test_list_sessions_newest_first_with_preview(store: RedisMemoryStore) -> None:
    for sid in ("s1", "s2", "s3"):
        await store.create_session("alice", "assistant", session_id=sid, title=sid.upper())
        next_millisecond()  # the store stamps in ms: each session is newer than the last
    await store.append("alice", "s1", [msg(Role.USER, "q"), msg(Role.ASSISTANT, "  the\n answer ")])
    next_millisecond()
    long = "word " * 100
    await store.append("alice", "s2", [msg(Role.USER, long)])

    listed = await store.list_sessions("alice")
    assert [s.session_id for s in listed] == ["s2", "s1", "s3"]
    s2, s1, s3 = listed
    assert (s1.preview, s1.preview_role, s1.title, s1.stored_messages) == (
        "the answer", "assistant", "S1", 2,
    )  # fmt: skip
    assert len(s2.preview) == keys.PREVIEW_CHARS and s2.preview.endswith("…")
    assert (s2.preview_role, s3.preview) == ("user", "")
    assert [s.session_id for s in await store.list_sessions("alice", limit=2)] == ["s2", "s1"]
    assert await store.list_sessions("bob") == []


async def test_list_sessions_never_lists_expired(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    await store.create_session("alice", "assistant", session_id="gone")
    await store.create_session("alice", "assistant", session_id="kept")
    await expire_now(redis_client, *keys.session_keys("alice", "gone")[:3])
    assert [s.session_id for s in await store.list_sessions("alice")] == ["kept"]
    assert await redis_client.zrange(keys.user_sessions_key("alice"), 0, -1) == ["kept"]


async def test_delete_user_erases_all_their_data(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    for sid in ("s1", "s2"):
        await store.create_session("alice", "assistant", session_id=sid)
        await store.append("alice", sid, [msg(Role.USER, "x")], usage=Usage(1, 1, 0.1))
    await redis_client.set(keys.session_lock_key("alice", "s1"), "t")
    await redis_client.set(keys.session_stop_key("alice", "s2"), "t")
    await store.create_session("bob", "assistant", session_id="s1")
    bob_keys = {k for k in await all_keys(redis_client) if k.startswith(keys.user_tag("bob"))}

    assert await store.delete_user("alice") == 2
    left = await all_keys(redis_client)
    assert not [k for k in left if "alice" in k]
    assert {k for k in left if k.startswith(keys.user_tag("bob"))} == bob_keys
    assert await store.list_users() == ["bob"]
    assert await store.list_sessions("alice") == []
    with pytest.raises(SessionNotFound):
        await store.read("alice", "s1", last=1)
    totals = await store.user_totals("alice")
    assert (totals.message_count, totals.session_count, totals.usage) == (0, 0, Usage())
    assert await store.delete_user("alice") == 0


async def test_list_users_newest_first_and_drops_expired(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    for uid in ("u1", "u2", "u3"):
        await store.create_session(uid, "assistant", session_id="s")
        next_millisecond()
    assert await store.list_users() == ["u3", "u2", "u1"]
    assert await store.list_users(limit=1, offset=1) == ["u2"]
    assert await store.count_users() == 3

    # u2's data expires: it disappears from the listing and from the index.
    u2_keys = [k for k in await all_keys(redis_client) if k.startswith(keys.user_tag("u2"))]
    await expire_now(redis_client, *u2_keys)
    assert await store.list_users() == ["u3", "u1"]
    assert await store.count_users() == 2


async def test_meta_and_user_totals(store: RedisMemoryStore) -> None:
    await store.create_session(
        "alice", "assistant", session_id="s1", greeting=msg(Role.ASSISTANT, "hi", 2)
    )
    await store.create_session("alice", "teacher", session_id="s2")
    await store.append("alice", "s1", [msg(Role.USER, "q", 10)])
    await store.append("alice", "s1", [msg(Role.ASSISTANT, "a", 20)], usage=Usage(12, 20, 0.25))
    await store.append("alice", "s2", [msg(Role.USER, "q2", 5), msg(Role.ASSISTANT, "a2", 6)])
    await store.append("alice", "s2", [], usage=Usage(100, 6, 0.5))

    s1 = await store.get_meta("alice", "s1")
    assert (s1.message_count, s1.total_tokens, s1.usage) == (3, 32, Usage(12, 20, 0.25))
    s2 = await store.get_meta("alice", "s2")
    assert (s2.message_count, s2.total_tokens, s2.usage) == (2, 11, Usage(100, 6, 0.5))

    totals = await store.user_totals("alice")
    assert (totals.message_count, totals.total_tokens, totals.session_count) == (5, 43, 2)
    assert totals.usage == Usage(112, 26, 0.75)

    # Clearing a session does not lower the user's lifetime totals; deleting one
    # removes it from the session count.
    await store.clear("alice", "s1")
    await store.delete_session("alice", "s2")
    totals = await store.user_totals("alice")
    assert (totals.message_count, totals.total_tokens, totals.session_count) == (5, 43, 1)


async def test_user_totals_count_only_live_sessions(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    await store.create_session("alice", "assistant", session_id="gone")
    await store.create_session("alice", "assistant", session_id="kept")
    await expire_now(redis_client, keys.session_meta_key("alice", "gone"))
    assert (await store.user_totals("alice")).session_count == 1


async def test_on_op_observer_sees_each_operation(redis_client: AnyRedis) -> None:
    seen: list[str] = []
    store = RedisMemoryStore(redis_client, on_op=lambda name, secs: seen.append(name))
    await store.create_session("alice", "assistant", session_id="s1")
    await store.append("alice", "s1", [msg(Role.USER, "x")])
    await store.read("alice", "s1", last=1)
    assert seen == ["create_session", "create_session", "append", "read"]


async def test_unreachable_redis_is_store_unavailable() -> None:
    from chatmem.config import RedisSettings
    from chatmem.store.client import make_redis
    from tests.support import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    client = make_redis(url, RedisSettings(url=url, connect_timeout_s=0.2, socket_timeout_s=0.2))
    store = RedisMemoryStore(client)
    try:
        with pytest.raises(StoreUnavailable):
            await store.read("alice", "s1", last=1)
        with pytest.raises(StoreUnavailable):
            await store.append("alice", "s1", [msg(Role.USER, "x")])
        with pytest.raises(StoreUnavailable):
            await store.list_users()
    finally:
        await client.aclose()


async def test_text_redis_cannot_store_is_invalid_input(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    """A lone surrogate (a valid JSON escape, "\\ud800", but not valid UTF-8) in a message or
    a title, or metadata that is not JSON, escaped as an encoder TypeError: a 500."""
    await store.create_session("alice", "assistant", session_id="s1")
    bad_messages = [
        Message(Role.USER, "a\ud800b"),
        Message(Role.USER, "ok", metadata={"tags": {"a", "b"}}),
    ]
    for bad in bad_messages:
        with pytest.raises(InvalidInput) as err:
            await store.append("alice", "s1", [msg(Role.USER, "fine"), bad])
        assert err.value.code == "invalid_message"
    with pytest.raises(InvalidInput) as err:
        await store.update_session("alice", "s1", title="x\udcffy")
    assert err.value.code == "invalid_text"
    with pytest.raises(InvalidInput):
        await store.create_session("alice", "assistant", greeting=Message(Role.ASSISTANT, "\ud800"))
    snap = await store.read("alice", "s1", last=10)
    assert snap.messages == [] and snap.meta.title == ""


async def test_list_users_offset_near_int64_max_is_empty_not_an_error(
    store: RedisMemoryStore,
) -> None:
    """An offset near 2**63 made ZREVRANGE's stop index (offset + limit - 1) overflow a
    64-bit integer: Redis refused the command and the admin route answered 500."""
    await store.create_session("alice", "assistant", session_id="s1")
    assert await store.list_users(offset=2**63 - 100, limit=1000) == []
    assert await store.list_users(offset=2**63 + 5) == []
    assert await store.list_users(limit=0) == []
    with pytest.raises(InvalidInput):
        await store.list_users(offset=-1)
    assert await store.list_users(offset=0, limit=2**63) == ["alice"]
