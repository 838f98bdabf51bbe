"""The scripts that copy a session into a new one (fork, and the OpenAI route's diverge)
refuse past the user's caps with nothing written, as creating a session does."""

from __future__ import annotations

import pytest

from chatmem.errors import StorageQuotaExceeded, TooManySessions
from chatmem.models import Message, Role
from chatmem.store.conversations import AnyRedis, RedisMemoryStore
from chatmem.store.editing import MessageEdits


async def two_sessions(store: RedisMemoryStore) -> tuple[str, list[Message]]:
    sid = (await store.create_session("alice", "assistant")).session_id
    await store.append(
        "alice", sid, [Message(Role.USER, "hi", 1), Message(Role.ASSISTANT, "yo", 1)]
    )
    await store.create_session("alice", "assistant")
    return sid, (await store.read("alice", sid, last=10)).messages


async def test_fork_and_diverge_refuse_past_the_session_cap(redis_client: AnyRedis) -> None:
    store = RedisMemoryStore(redis_client, max_sessions_per_user=2)
    sid, msgs = await two_sessions(store)
    edits = MessageEdits(store)
    with pytest.raises(TooManySessions) as caught:
        await edits.fork("alice", sid, msgs[0].msg_id, title="copy")
    assert caught.value.code == "too_many_sessions"
    with pytest.raises(TooManySessions):
        await edits.diverge("alice", sid, await store.read("alice", sid, last=10), [])
    assert len(await store.list_sessions("alice")) == 2
    assert len((await store.read("alice", sid, last=10)).messages) == 2  # not rewritten


async def test_fork_refuses_past_the_byte_cap(redis_client: AnyRedis) -> None:
    store = RedisMemoryStore(redis_client, max_stored_bytes_per_user=200)
    sid, msgs = await two_sessions(store)
    with pytest.raises(StorageQuotaExceeded):
        await MessageEdits(store).fork("alice", sid, msgs[0].msg_id, title="copy")
    assert len(await store.list_sessions("alice")) == 2
