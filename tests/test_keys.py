"""Key layout: one Cluster slot per user, and ids that cannot steer a key elsewhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.crc import key_slot

from chatmem.errors import InvalidId
from chatmem.models import Message, Role, SessionState, Usage
from chatmem.store import keys
from chatmem.store.conversations import AnyRedis, RedisMemoryStore
from tests.redis_servers import all_keys, keyspace, same_keyspace


@pytest.fixture
def redis_client(contract_client: AnyRedis) -> AnyRedis:
    """Every test here runs against standalone, Cluster and Sentinel (see conftest)."""
    return contract_client


HOSTILE_IDS = [
    "a}b",
    "a{b",
    "{u:bob}",
    "*",
    "x:y",
    "",
    "\n",
    "ok\n",
    "a b",
    "a\x00b",
    "é",
    "../x",
    "a,b",
    "x" * 129,
    "x" * 10_000,
]


def test_valid_ids() -> None:
    for value in ("alice", "a", "A-Z_0.9@x", "x" * 128, "0123456789abcdef" * 2):
        assert keys.validate_id(value) == value


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=repr)
def test_hostile_ids_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidId):
        keys.validate_id(bad)
    with pytest.raises(InvalidId):
        keys.session_keys(bad, "s1")
    with pytest.raises(InvalidId):
        keys.session_keys("alice", bad)


def test_non_strings_are_rejected() -> None:
    with pytest.raises(InvalidId):
        keys.validate_id(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidId):
        keys.validate_id(b"alice")  # type: ignore[arg-type]


def test_long_id_is_shortened_in_the_error() -> None:
    with pytest.raises(InvalidId) as err:
        keys.validate_id("x" * 10_000, "session id")
    assert len(str(err.value)) < 200 and err.value.code == "invalid_id"


def _user_keys(uid: str) -> list[str]:
    return [
        *keys.session_keys(uid, "s1"),
        keys.session_lock_key(uid, "s1"),
        keys.session_stop_key(uid, "s1"),
        keys.session_prefix(uid) + "s2:h",
        keys.user_rate_key(uid, 12345),
        keys.user_streams_key(uid),
    ]


@pytest.mark.parametrize("uid", ["alice", "bob", "u-1", "x" * 128, "a.b@c"])
def test_all_keys_of_a_user_share_one_slot(uid: str) -> None:
    ks = _user_keys(uid)
    assert all(k.startswith(f"cm:{{u:{uid}}}:") for k in ks)
    assert {key_slot(k.encode()) for k in ks} == {key_slot(f"u:{uid}".encode())}


def test_session_keys_match_the_single_key_builders() -> None:
    assert keys.session_keys("alice", "s1") == [
        keys.session_messages_key("alice", "s1"),
        keys.session_meta_key("alice", "s1"),
        keys.session_ids_key("alice", "s1"),
        keys.user_sessions_key("alice"),
        keys.user_totals_key("alice"),
    ]
    assert keys.session_meta_key("alice", "s1") == keys.session_prefix("alice") + "s1:h"


def test_session_keys_of_different_sessions_never_collide() -> None:
    a = set(keys.session_keys("alice", "s1")[:3])
    b = set(keys.session_keys("alice", "s1.h")[:3])
    c = set(keys.session_keys("alice.s", "1")[:3])
    assert not (a & b) and not (a & c) and not (b & c)


# --- the store refuses them before any I/O --------------------------------------------

StoreCall = Callable[[RedisMemoryStore, str], Awaitable[object]]

# Each entry passes the hostile value in one id position; everything else is valid.
CALLS: dict[str, StoreCall] = {
    "create.user": lambda s, v: s.create_session(v, "assistant", session_id="s1"),
    "create.session": lambda s, v: s.create_session("alice", "assistant", session_id=v),
    "create.character": lambda s, v: s.create_session("alice", v, session_id="s2"),
    "create.greeting_id": lambda s, v: s.create_session(
        "alice", "assistant", session_id="s3", greeting=Message(Role.ASSISTANT, "hi", msg_id=v)
    ),
    "append.user": lambda s, v: s.append(v, "s1", [Message(Role.USER, "x")]),
    "append.session": lambda s, v: s.append("alice", v, [Message(Role.USER, "x")]),
    "append.message_id": lambda s, v: s.append(
        "alice", "s1", [Message(Role.USER, "x"), Message(Role.USER, "y", msg_id=v)]
    ),
    "append.usage_only": lambda s, v: s.append("alice", v, [], usage=Usage(1, 1, 1.0)),
    "read.user": lambda s, v: s.read(v, "s1", last=5),
    "read.session": lambda s, v: s.read("alice", v, last=5),
    "meta": lambda s, v: s.get_meta("alice", v),
    "update": lambda s, v: s.update_session("alice", v, state=SessionState.ENDED),
    "clear": lambda s, v: s.clear("alice", v),
    "delete.session": lambda s, v: s.delete_session("alice", v),
    "delete.user": lambda s, v: s.delete_user(v),
    "list_sessions": lambda s, v: s.list_sessions(v),
    "user_totals": lambda s, v: s.user_totals(v),
}


@pytest.mark.parametrize("call", list(CALLS), ids=str)
async def test_store_rejects_hostile_ids_without_touching_redis(
    store: RedisMemoryStore, redis_client: AnyRedis, call: str
) -> None:
    await store.create_session(
        "alice", "assistant", session_id="s1", greeting=Message(Role.ASSISTANT, "hi")
    )
    await store.create_session("bob", "assistant", session_id="s1")
    for key in await all_keys(redis_client):  # aged, so that a refreshed TTL would show
        await redis_client.expire(key, 1000)
    before = await keyspace(redis_client)
    for bad in HOSTILE_IDS:
        with pytest.raises(InvalidId):
            await CALLS[call](store, bad)
    assert same_keyspace(before, await keyspace(redis_client))


async def test_ids_at_the_limit_stay_inside_the_users_tag(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    uid, sid, mid = "u" * 128, "s" * 128, "m" * 128
    await store.create_session(uid, "c" * 128, session_id=sid)
    await store.append(uid, sid, [Message(Role.USER, "x", msg_id=mid)])
    tag = keys.user_tag(uid)
    assert {k for k in await all_keys(redis_client) if k != keys.USERS_INDEX_KEY} == {
        f"{tag}:s:{sid}:m",
        f"{tag}:s:{sid}:h",
        f"{tag}:s:{sid}:i",
        f"{tag}:sessions",
        f"{tag}:totals",
    }
    assert len({key_slot(k.encode()) for k in await all_keys(redis_client) if tag in k}) == 1


async def test_empty_session_id_is_rejected_not_replaced(
    store: RedisMemoryStore, redis_client: AnyRedis
) -> None:
    """An empty session id was taken as "none given" and silently created a session under
    a new random id instead of being rejected."""
    with pytest.raises(InvalidId):
        await store.create_session("alice", "assistant", session_id="")
    assert await all_keys(redis_client) == set()
