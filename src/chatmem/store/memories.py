"""Long-term memories per (user, character) (SPEC §2b): a HASH of memory id → JSON.

They outlive sessions (their own sliding TTL, `memory.memory_ttl_s`, refreshed by every
write and every context read) and are erased with the user. A SET of the character ids
the user has memories with lets erase and export find them without SCAN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from chatmem.models import new_id
from chatmem.store import keys, memory_scripts
from chatmem.store.client import redis_errors
from chatmem.store.conversations import RedisMemoryStore

OpKind = Literal["new", "put", "del"]


@dataclass(slots=True)
class Memory:
    text: str
    memory_id: str = field(default_factory=new_id)
    source_ids: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=lambda: round(time.time(), 3))
    updated_at: float = field(default_factory=lambda: round(time.time(), 3))
    tokens: int = 0

    def encode(self) -> str:
        doc: dict[str, Any] = {"i": self.memory_id, "x": self.text, "s": self.source_ids}
        doc |= {"c": self.created_at, "u": self.updated_at, "n": self.tokens}
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, raw: str | bytes) -> Memory:
        d = orjson.loads(raw)
        return cls(d["x"], d["i"], list(d.get("s") or []), d["c"], d["u"], int(d.get("n", 0)))

    def to_dict(self, character_id: str) -> dict[str, Any]:
        return {
            "memory_id": self.memory_id,
            "character_id": character_id,
            "text": self.text,
            "source_msg_ids": self.source_ids,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "token_count": self.tokens,
        }


def decode_memories(raw: list[Any]) -> list[Memory]:
    """A memories HASH's values, most recently updated first."""
    out = [Memory.decode(r) for r in raw]
    out.sort(key=lambda m: (m.updated_at, m.created_at), reverse=True)
    return out


@dataclass(frozen=True, slots=True)
class MemoryOp:
    kind: OpKind
    memory_id: str
    memory: Memory | None = None


class MemoryStore:
    def __init__(self, store: RedisMemoryStore, *, ttl_s: int) -> None:
        self.store = store
        self.ttl_ms = ttl_s * 1000
        self._apply = store.redis.register_script(memory_scripts.APPLY_MEMORY_OPS)

    async def read(self, user_id: str, character_id: str, *, touch: bool = True) -> list[Memory]:
        """The memories, most recently updated first; `touch` slides their TTL."""
        key = keys.memories_key(user_id, character_id)
        with redis_errors("memories_read"):
            async with self.store.redis.pipeline(transaction=True) as pipe:
                pipe.hvals(key)
                if touch:
                    pipe.pexpire(key, self.ttl_ms)
                raw = (await pipe.execute())[0]
        return decode_memories(raw)

    async def characters(self, user_id: str) -> list[str]:
        with redis_errors("memories_index"):
            cids = await self.store.redis.smembers(keys.user_memory_index_key(user_id))
        return sorted(str(c) for c in cids)

    async def get(self, user_id: str, character_id: str, memory_id: str) -> Memory | None:
        key = keys.memories_key(user_id, character_id)
        with redis_errors("memories_get"):
            raw = await self.store.redis.hget(key, keys.validate_id(memory_id, "memory id"))
        return Memory.decode(raw) if raw else None

    async def apply(
        self,
        user_id: str,
        character_id: str,
        ops: list[MemoryOp],
        *,
        session_id: str | None = None,
        from_seq: int = -1,
        to_seq: int = 0,
    ) -> int | None:
        """Apply `ops` atomically; with `session_id`, only if the session's extraction
        mark is still `from_seq` (then it becomes `to_seq`): None if applied already.
        Returns how many operations took effect."""
        mem_key = keys.memories_key(user_id, character_id)
        meta_key = keys.session_meta_key(user_id, session_id) if session_id else mem_key
        ks = [mem_key, keys.user_memory_index_key(user_id), meta_key]
        args: list[Any] = [self.ttl_ms, character_id]
        args += [from_seq if session_id else -1, to_seq, keys.MEMORIES_MAX]
        for op in ops:
            keys.validate_id(op.memory_id, "memory id")
            args += [op.kind, op.memory_id, op.memory.encode() if op.memory else ""]
        res = await self.store.run_write("memory_ops", self._apply, ks, args)
        if res[0] == -1:
            return None
        return int(res[0])
