"""Long-term memories per (user, character) (SPEC §2b): the user's API, and extraction.

Extraction is a background job (`memories`) queued after every `extract_every_rounds`
rounds of a session: the model reads the messages since the last extraction and the
memories so far (under short ids m1, m2, …: small models copy those reliably) and
answers add / update / delete operations as JSON. They are validated before anything is
stored: output that is not such JSON is dropped whole, an operation that is not valid
(unknown op or id, empty or too long text) is dropped alone; both are counted in
`chatmem_memory_invalid_output_total` and logged. The valid ones are applied in one
script together with the session's extraction mark, compared and swapped: a job run
twice applies them once.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from chatmem.characters import CharacterRegistry
from chatmem.chat.background import ask_model, drop_output
from chatmem.chat.prompting import Prompter
from chatmem.errors import InvalidInput, NotFound, SessionNotFound
from chatmem.memory_prompts import extract_prompt
from chatmem.metrics import Metrics
from chatmem.models import Message, Role
from chatmem.store import keys
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.jobs import Job
from chatmem.store.memories import Memory, MemoryOp, MemoryStore
from chatmem.tokens import count_tokens

EXTRACT_JOB = "memories"
# Passes of one extraction job over a session that turns keep adding to.
MAX_PASSES = 10
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def memory_text(text: Any) -> str:
    """A memory's text as stored: one line, trimmed; InvalidInput if empty or too long."""
    if not isinstance(text, str) or not " ".join(text.split()):
        raise InvalidInput("a memory's text must not be empty", code="invalid_memory")
    clean = " ".join(text.split())
    if len(clean) > keys.MEMORY_MAX_CHARS:
        raise InvalidInput(
            f"a memory is at most {keys.MEMORY_MAX_CHARS} characters", code="invalid_memory"
        )
    return clean


def parse_ops(
    output: str, short_ids: dict[str, Memory], sources: list[str]
) -> tuple[list[MemoryOp], int] | None:
    """The model's operations, validated; None if the output is not the JSON asked for.
    Also returns how many operations were dropped as invalid."""
    try:
        doc = orjson.loads(_FENCE.sub("", output.strip()))
    except orjson.JSONDecodeError:
        return None
    raw = doc.get("ops") if isinstance(doc, dict) else doc
    if not isinstance(raw, list):
        return None
    ops: list[MemoryOp] = []
    dropped = 0
    known = {" ".join(m.text.lower().split()) for m in short_ids.values()}
    now = round(time.time(), 3)
    for item in raw:
        try:
            op = _one_op(item, short_ids, sources, now)
        except (InvalidInput, KeyError, TypeError, AttributeError):
            dropped += 1
            continue
        if op.kind == "new" and op.memory is not None:
            norm = " ".join(op.memory.text.lower().split())
            if norm in known:
                continue  # said again: nothing new
            known.add(norm)
        ops.append(op)
    return ops, dropped


def _one_op(item: Any, short_ids: dict[str, Memory], sources: list[str], now: float) -> MemoryOp:
    kind = item["op"]
    if kind == "add":
        text = memory_text(item["text"])
        mem = Memory(text, source_ids=sources, tokens=count_tokens(text))
        return MemoryOp("new", mem.memory_id, mem)
    old = short_ids[item["id"]]
    if kind == "delete":
        return MemoryOp("del", old.memory_id)
    if kind == "update":
        text = memory_text(item["text"])
        mem = Memory(text, old.memory_id, sorted({*old.source_ids, *sources}), old.created_at, now)
        mem.tokens = count_tokens(text)
        return MemoryOp("put", old.memory_id, mem)
    raise KeyError(kind)


class Memories:
    """The user's memories (the API) and their extraction (the job)."""

    def __init__(
        self,
        store: RedisMemoryStore,
        memories: MemoryStore,
        characters: CharacterRegistry,
        prompter: Prompter,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.memories = memories
        self.characters = characters
        self.prompter = prompter
        self.metrics = metrics

    # --- the API ---------------------------------------------------------------------

    async def list_for(self, user_id: str, character_id: str | None = None) -> list[dict[str, Any]]:
        cids = [character_id] if character_id else await self.memories.characters(user_id)
        out: list[dict[str, Any]] = []
        for cid in cids:
            keys.validate_id(cid, "character id")
            out += [m.to_dict(cid) for m in await self.memories.read(user_id, cid)]
        return out

    async def add(self, user_id: str, character_id: str, text: str) -> dict[str, Any]:
        character = await self.characters.get(keys.validate_id(character_id, "character id"))
        clean = memory_text(text)
        mem = Memory(clean, tokens=count_tokens(clean))
        applied = await self.memories.apply(
            user_id, character.id, [MemoryOp("new", mem.memory_id, mem)]
        )
        if not applied:
            raise InvalidInput(
                f"at most {keys.MEMORIES_MAX} memories per character", code="too_many_memories"
            )
        return mem.to_dict(character.id)

    async def _find(self, user_id: str, memory_id: str) -> tuple[str, Memory]:
        keys.validate_id(memory_id, "memory id")
        for cid in await self.memories.characters(user_id):
            mem = await self.memories.get(user_id, cid, memory_id)
            if mem is not None:
                return cid, mem
        raise NotFound(f"memory {memory_id!r} not found")

    async def edit(self, user_id: str, memory_id: str, text: str) -> dict[str, Any]:
        clean = memory_text(text)
        cid, mem = await self._find(user_id, memory_id)
        mem.text, mem.tokens, mem.updated_at = clean, count_tokens(clean), round(time.time(), 3)
        if not await self.memories.apply(user_id, cid, [MemoryOp("put", mem.memory_id, mem)]):
            raise NotFound(f"memory {memory_id!r} not found")
        return mem.to_dict(cid)

    async def delete(self, user_id: str, memory_id: str) -> None:
        cid, mem = await self._find(user_id, memory_id)
        await self.memories.apply(user_id, cid, [MemoryOp("del", mem.memory_id)])

    # --- extraction --------------------------------------------------------------------

    def due(self, last_seq: int, extracted_seq: int) -> bool:
        every = self.prompter.settings.memory.extract_every_rounds
        return last_seq - extracted_seq >= 2 * every

    async def run(self, job: Job) -> None:
        """The `memories` job: args `user_id`, `session_id`. Like the summary job, it
        goes on while rounds that came meanwhile make another extraction due."""
        first = True
        for _ in range(MAX_PASSES):
            if not await self._pass(job.args["user_id"], job.args["session_id"], first):
                return
            first = False

    async def _pass(self, uid: str, sid: str, first: bool) -> bool:
        try:
            snap = await self.store.read(uid, sid, last=self.store.max_messages)
        except SessionNotFound:
            return False
        meta = snap.meta
        character = await self.characters.get(meta.character_id)
        if not self.prompter.policy(meta, character).memories:
            return False
        if not first and not self.due(meta.last_seq, meta.extracted_seq):
            return False
        new = [m for m in snap.messages if m.seq > meta.extracted_seq and m.role != Role.SYSTEM]
        if not new:
            return False
        existing = await self.memories.read(uid, character.id, touch=False)
        short_ids = {f"m{i + 1}": m for i, m in enumerate(existing)}
        output = await self._ask(short_ids, new, character.name, character_id=character.id)
        parsed = parse_ops(output, short_ids, [m.msg_id for m in new])
        ops: list[MemoryOp] = []
        if parsed is None:
            drop_output(self.metrics, EXTRACT_JOB, sid, "the output is not JSON ops")
        else:
            ops, dropped = parsed
            if dropped:
                drop_output(self.metrics, EXTRACT_JOB, sid, f"{dropped} invalid ops", dropped)
        applied = await self.memories.apply(
            uid,
            character.id,
            ops,
            session_id=sid,
            from_seq=meta.extracted_seq,
            to_seq=meta.last_seq,
        )
        return applied is not None

    async def _ask(
        self, short_ids: dict[str, Memory], new: list[Message], name: str, *, character_id: str
    ) -> str:
        character = await self.characters.get(character_id)
        prompt = extract_prompt([(k, m.text) for k, m in short_ids.items()], new, character=name)
        max_tokens = self.prompter.settings.memory.background_max_tokens
        return await ask_model(
            self.prompter,
            self.metrics,
            EXTRACT_JOB,
            prompt,
            character,
            temperature=0.0,
            max_tokens=max_tokens,
        )
