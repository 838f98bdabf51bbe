"""Generation event streams: reading what a generation said, from any process (SPEC §3.5).

A session's current (or last) generation writes its events to one Redis Stream: a start
entry (begin script), coalesced deltas (the process's tick, a few per 50 ms) and an end
entry carrying the final `done` or `error` payload (finish script). Entries are written
by turn_scripts.py and store/locks.py; this module reads them, for a client that
re-attaches and for the recovery of a generation whose process died.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from chatmem.store import keys
from chatmem.store.client import AnyRedis, redis_errors


@dataclass(slots=True)
class StreamStart:
    generation_id: str
    reply_id: str
    token: str
    user_seq: int


@dataclass(slots=True)
class StreamDelta:
    offset: int
    text: str


@dataclass(slots=True)
class StreamEnd:
    payload: dict[str, Any]

    @property
    def event(self) -> str:
        return "error" if "code" in self.payload else "done"


StreamEntry = StreamStart | StreamDelta | StreamEnd


@dataclass(slots=True)
class StreamSnapshot:
    """A session's event stream as it is now, with whether a live process holds the
    session's lock (else a stream with no end belongs to a dead generation)."""

    session_exists: bool
    lock_held: bool
    entries: list[tuple[str, StreamEntry]] = field(default_factory=list)

    @property
    def start(self) -> StreamStart | None:
        first = self.entries[0][1] if self.entries else None
        return first if isinstance(first, StreamStart) else None

    @property
    def ended(self) -> bool:
        return bool(self.entries) and isinstance(self.entries[-1][1], StreamEnd)

    @property
    def orphaned(self) -> bool:
        return bool(self.entries) and not self.ended and not self.lock_held

    def text(self) -> str:
        return "".join(e.text for _, e in self.entries if isinstance(e, StreamDelta))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_entry(fields: dict[Any, Any] | list[Any]) -> StreamEntry:
    """An entry's fields as redis-py parses them (a dict) or as a script returns them
    (a flat list)."""
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    f = {_s(k): _s(v) for k, v in fields.items()}
    kind = f.get("t")
    if kind == "d":
        return StreamDelta(int(f["o"]), f["x"])
    if kind == "e":
        return StreamEnd(orjson.loads(f["p"]))
    return StreamStart(f.get("g", ""), f.get("r", ""), f.get("k", ""), int(f.get("q", 0)))


def decode_entries(raw: list[Any]) -> list[tuple[str, StreamEntry]]:
    return [(_s(entry_id), decode_entry(fields)) for entry_id, fields in raw]


class GenerationStreams:
    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis

    async def snapshot(self, user_id: str, session_id: str) -> StreamSnapshot:
        """The whole stream (capped at keys.EVENTS_MAXLEN entries), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(keys.session_events_key(user_id, session_id))
        pipe.exists(keys.session_lock_key(user_id, session_id))
        pipe.exists(keys.session_meta_key(user_id, session_id))
        with redis_errors("stream_snapshot"):
            raw, lock, meta = await pipe.execute()
        return StreamSnapshot(bool(meta), bool(lock), decode_entries(raw))

    async def follow(
        self, user_id: str, session_id: str, after_entry: str, *, block_ms: int
    ) -> list[tuple[str, StreamEntry]]:
        """Entries after `after_entry`, waiting up to `block_ms` for the first one."""
        key = keys.session_events_key(user_id, session_id)
        with redis_errors("stream_follow"):
            res = await self.redis.xread({key: after_entry}, count=500, block=block_ms)
        if not res:
            return []
        # redis-py answers a list of [key, entries] (RESP2) or a dict (RESP3).
        found: Any = res
        if isinstance(found, dict):
            found = [[key, *found[key]] for key in found]
        entries: list[Any] = found[0][1]
        return decode_entries(entries)

    async def lock_held(self, user_id: str, session_id: str) -> bool:
        with redis_errors("stream_lock"):
            return bool(await self.redis.exists(keys.session_lock_key(user_id, session_id)))
