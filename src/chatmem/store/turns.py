"""The two round trips of a turn: `begin` and `finish` (SPEC §3.2, §3.7).

Both are one Lua script each (turn_scripts.py), run with the store's write concern. The
service (chat/service.py) decides what to do with what `begin` finds: a new turn, an
idempotent retry to replay or re-attach to, a busy session, or a generation whose
process died to recover first. `place` stores a turn the outbox kept (the replay).

With a write concern, each says whether enough replicas confirmed it (`confirmed`):
a write that falls short is on the master all the same, so the turn goes on with Redis
(its one path) and is answered `memory: "unconfirmed"`; only `strict` refuses it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from chatmem.errors import (
    ChatmemError,
    Conflict,
    InvalidInput,
    NotFound,
    NotReplicated,
    RateLimited,
    SessionNotFound,
)
from chatmem.models import Message, Role, SessionMeta, Usage
from chatmem.store import keys, place_script, turn_scripts
from chatmem.store.client import redis_errors
from chatmem.store.codec import decode_message, decode_meta, decode_window, encode_message
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.locks import Coordinator
from chatmem.store.memories import Memory, decode_memories
from chatmem.store.rules import over_quota, preview_of
from chatmem.store.streams import StreamEntry, decode_entries

BeginKind = Literal["ok", "replay", "busy", "orphan"]
# A turn planned from a read that another write changed since (`expect_head`).
HISTORY_CHANGED = "history_changed"


def turn_ordinal(timestamp_s: float) -> int:
    """A turn's place in its session's order: when it began, in ms of this process's
    clock, times 1000 plus a tie-break (turns begun in one ms keep their order). Below
    2**53: exact as a Lua number."""
    global _last_ordinal
    value = max(int(timestamp_s * 1000) * 1000, _last_ordinal + 1)
    _last_ordinal = value
    return value


_last_ordinal = 0


@dataclass(slots=True)
class BeginResult:
    kind: BeginKind
    # ok: the meta and the context's messages, oldest first, the user message last
    meta: SessionMeta | None = None
    messages: list[Message] = field(default_factory=list)
    # replay: the stored user message, its reply (None: still running or lost)
    user_message: Message | None = None
    reply: Message | None = None
    running: bool = False
    # orphan: the dead generation's stream
    entries: list[tuple[str, StreamEntry]] = field(default_factory=list)
    # ok: the ordinal the user message was stored with (its reply takes it too), and
    # whether the replicas of the write concern confirmed the write
    ordinal: int = 0
    confirmed: bool = True
    token: str = ""  # ok: the lock token the turn holds the session with
    # ok, asked with `memories`: (the character id, its memories, newest first); None
    # when not read (the session's memory is off, or the character has no memories)
    memories: tuple[str, list[Memory]] | None = None


@dataclass(frozen=True, slots=True)
class MemoriesRead:
    """What BEGIN_TURN is asked to read besides the context: the memories of the
    character the turn talks to, unless its policy has none (`without`)."""

    prefix: str  # keys.user_memories_prefix
    ttl_ms: int
    character_id: str = ""  # '': the session's
    without: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SessionFigures:
    """The session after a turn's finish (seed `POST /chat`'s stats)."""

    stored: int
    ttl_remaining_s: int
    window_size: int
    window_tokens: int  # of the newest 2 × window_size messages


@dataclass(frozen=True, slots=True)
class FinishResult:
    stored_now: bool | None  # None: the session is gone
    confirmed: bool
    figures: SessionFigures | None = None


class TurnStore:
    def __init__(self, store: RedisMemoryStore, coordinator: Coordinator) -> None:
        self.store = store
        self.coordinator = coordinator
        redis = store.redis
        self._begin = redis.register_script(turn_scripts.BEGIN_TURN)
        self._finish = redis.register_script(turn_scripts.FINISH_TURN)
        self._place = redis.register_script(place_script.PLACE_TURN)

    async def _run(
        self, name: str, script: Any, ks: list[str], args: list[Any], *, refuse: bool = True
    ) -> Any:
        """The script's result and whether it was confirmed (NotReplicated instead if
        `strict` and `refuse`)."""
        concern = self.store.write_concern
        if concern is None:
            return await self.store.run_write(name, script, ks, args), True
        start = time.perf_counter()
        try:
            with redis_errors(name):
                result, confirmed = await concern.run_checked(name, script, ks, args)
        finally:
            self.store.observe(name, time.perf_counter() - start)
        if not confirmed and concern.strict and refuse:
            raise NotReplicated(
                f"{name} was written on the Redis master, but fewer than "
                f"{concern.replicas} replica(s) confirmed it in time",
                wanted=concern.replicas,
            )
        return result, confirmed

    async def begin(
        self,
        user_id: str,
        session_id: str,
        user_msg: Message,
        *,
        reply_id: str,
        generation_id: str,
        token: str,
        idempotent: bool,
        read_last: int,
        ordinal: int = 0,
        expect_head: str | None = None,
        before: Sequence[Message] = (),
        memories: MemoriesRead | None = None,
    ) -> BeginResult:
        """Rate limit, lock, generation cap, idempotency, the user message appended and
        the context read, in one round trip. RateLimited past a per-user limit.

        `before`: messages appended under the lock ahead of the user message (the OpenAI
        route's tool results). `expect_head`: the id of the newest message the turn was
        planned from ('' none): Conflict `history_changed`, nothing written, when it is
        not any more. `ordinal`: the turn's (codec.turn_ordinal), stored with its
        messages. `memories`: read them in the same round trip (`BeginResult.memories`)."""
        ks = keys.turn_keys(user_id, session_id)
        c = self.coordinator
        args: list[Any] = [
            session_id,
            int(time.time() * 1000),
            self.store.max_messages,
            self.store.id_window,
            read_last,
            preview_of(user_msg),
            token,
            c.lock_ttl_ms,
            max(0, c.turns_per_minute),
            keys.RATE_WINDOW_MS,
            max(0, c.streams_per_user),
            # A revision (regenerate, continue) appends no user message: id ''.
            keys.validate_id(user_msg.msg_id, "message id") if user_msg.msg_id else "",
            encode_message(user_msg, ordinal) if user_msg.msg_id else "",
            user_msg.token_count,
            reply_id,
            generation_id,
            "1" if idempotent else "0",
            keys.EVENTS_MAXLEN,
            self.store.max_stored_bytes_per_user,
            keys.session_prefix(user_id),
            ordinal,
            "0" if expect_head is None else "1",
            keys.validate_id(expect_head, "message id") if expect_head else "",
        ]
        if memories is None:
            args += ["", "", 0, ""]
        else:
            cid = memories.character_id
            args += [memories.prefix, keys.validate_id(cid, "character id") if cid else ""]
            args += [memories.ttl_ms, "," + ",".join(memories.without) + ","]
        for msg in before:
            args += [keys.validate_id(msg.msg_id, "message id"), encode_message(msg)]
            args += [msg.token_count, preview_of(msg), msg.role.value]
        res, confirmed = await self._run("begin_turn", self._begin, ks, args)
        if res is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        kind = res[0]
        if kind == "rate":
            raise RateLimited(
                f"rate limit of {c.turns_per_minute} turns per minute reached",
                retry_after_s=int(res[1]) / 1000,
            )
        if kind == "cap":
            raise RateLimited(
                f"at most {c.streams_per_user} replies at a time per user",
                retry_after_s=int(res[1]) / 1000,
                code="too_many_streams",
            )
        if kind == "quota":
            raise over_quota(self.store.max_stored_bytes_per_user)
        if kind == "stale":
            raise Conflict("the conversation changed meanwhile", code=HISTORY_CHANGED)
        if kind == "busy":
            return BeginResult("busy")
        if kind == "orphan":
            return BeginResult("orphan", entries=decode_entries(res[1]))
        if kind == "replay":
            _, reply, user, user_seq, held = res
            # The reply directly follows its message (the turn held the session's lock).
            return BeginResult(
                "replay",
                user_message=decode_message(user, user_seq),
                reply=decode_message(reply, user_seq + 1) if reply else None,
                running=bool(held),
            )
        _, seq, meta_flat, pttl, raw, stored, stored_ordinal, mems = res
        meta = decode_meta(session_id, meta_flat, pttl_ms=pttl, stored=stored)
        return BeginResult(
            "ok",
            meta=meta,
            messages=decode_window(raw, last_seq=seq),
            ordinal=int(stored_ordinal),
            confirmed=confirmed,
            memories=(mems[0], decode_memories(mems[1])) if mems else None,
        )

    async def finish(
        self,
        user_id: str,
        session_id: str,
        reply: Message | None,
        usage: Usage,
        *,
        token: str,
        generation_id: str,
        tail: tuple[int, str] | None,
        end_payload: dict[str, Any],
        replaces: str = "",
        ordinal: int = 0,
        user_message: Message | None = None,
        figures: bool = False,
        start_summary: bool = False,
        events_ttl_ms: int | None = None,
    ) -> FinishResult:
        """The reply with its usage and totals, the lock released and the event stream
        ended, in one round trip. Returns whether the reply was stored now (None: the
        session is gone; False: it was there already, or the generation had been
        ended) and whether the write was confirmed. `replaces`: a revision's reply takes
        the place of the newest message, of that id. `ordinal`: begin's. `user_message`:
        the turn's, stored again before the reply if a failover lost it. `figures`: the
        session's figures after the write too, in the same round trip. `start_summary`:
        the session's summary state starts with this write (if it has none yet).
        `events_ttl_ms`: how long the ended event stream stays (0: deleted at once)."""
        if not 0 <= usage.cost_usd < math.inf:
            raise InvalidInput(f"invalid usage {usage}", code="invalid_usage")
        ks = keys.turn_keys(user_id, session_id)
        args: list[Any] = [session_id, int(time.time() * 1000)]
        args += [self.store.max_messages, self.store.id_window]
        if reply is not None:
            args += [
                keys.validate_id(reply.msg_id, "message id"),
                encode_message(reply, ordinal),
                reply.token_count,
                preview_of(reply),
            ]
        else:
            args += ["", "", 0, ""]
        args += [usage.prompt_tokens, usage.completion_tokens, repr(usage.cost_usd)]
        args += [token, generation_id]
        args += [tail[1], tail[0]] if tail else ["", 0]
        events_ttl = keys.EVENTS_TTL_AFTER_END_MS if events_ttl_ms is None else events_ttl_ms
        args += [orjson.dumps(end_payload).decode(), events_ttl]
        args += [keys.EVENTS_MAXLEN, keys.validate_id(replaces, "message id") if replaces else ""]
        args += [ordinal]
        if user_message is not None and user_message.msg_id:
            args += [
                keys.validate_id(user_message.msg_id, "message id"),
                encode_message(user_message, ordinal),
                user_message.token_count,
                preview_of(user_message),
            ]
        else:
            args += ["", "", 0, ""]
        args += ["1" if figures else "0", "1" if start_summary else "0"]
        res, confirmed = await self._run("finish_turn", self._finish, ks, args)
        if res is None:
            return FinishResult(None, confirmed)
        if len(res) == 2:
            return FinishResult(bool(res[0]), confirmed)
        _, _, stored, pttl, window, tokens = res
        ttl_s = max(0, (pttl + 999) // 1000)
        return FinishResult(bool(res[0]), confirmed, SessionFigures(stored, ttl_s, window, tokens))

    async def abandon(
        self,
        user_id: str,
        session_id: str,
        token: str,
        generation_id: str,
        error: ChatmemError | None,
    ) -> None:
        """End a begun turn that will not run (no reply): its lock released, its event
        stream ended with `error` (or a generic one) — or deleted if `error` is the
        client's (a 4xx: nothing happened, a re-attach finds nothing, 204)."""
        code, message = "turn_abandoned", "the turn ended before its reply"
        if error is not None:
            code, message = error.code, error.message
        await self.finish(
            user_id, session_id, None, Usage(), token=token, generation_id=generation_id,
            tail=None, end_payload={"code": code, "message": message},
            events_ttl_ms=0 if isinstance(error, InvalidInput | NotFound) else None,
        )  # fmt: skip

    async def place(
        self,
        user_id: str,
        session_id: str,
        messages: Sequence[Message],
        usage: Usage | None,
        *,
        ordinal: int,
    ) -> tuple[int | None, bool]:
        """Store a kept turn's messages where the turn began (ids stored already are
        skipped). Returns (None if the session does not exist, else how many were stored
        now; whether the write was confirmed)."""
        ks = keys.turn_keys(user_id, session_id)[:5]
        u = usage or Usage()
        args: list[Any] = [session_id, int(time.time() * 1000)]
        args += [self.store.max_messages, self.store.id_window, ordinal]
        args += [u.prompt_tokens, u.completion_tokens, repr(u.cost_usd)]
        for msg in messages:
            args += [
                keys.validate_id(msg.msg_id, "message id"),
                encode_message(msg, ordinal),
                msg.token_count,
                preview_of(msg),
                "assistant" if msg.role is Role.ASSISTANT else "user",
            ]
        # Never refused: a kept turn is on its way back, confirmed or not (the outbox
        # keeps it until it is).
        res, confirmed = await self._run("place_turn", self._place, ks, args, refuse=False)
        return (None if res is None else int(res)), confirmed
