"""The two round trips of a turn: `begin` and `finish` (SPEC §3.2, §3.7).

Both are one Lua script each (turn_scripts.py), run with the store's write concern. The
service (chat/service.py) decides what to do with what `begin` finds: a new turn, an
idempotent retry to replay or re-attach to, a busy session, or a generation whose
process died to recover first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from chatmem.errors import Conflict, InvalidInput, RateLimited, SessionNotFound
from chatmem.models import Message, SessionMeta, Usage
from chatmem.store import keys, turn_scripts
from chatmem.store.codec import decode_message, decode_messages, decode_meta, encode_message
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.locks import Coordinator
from chatmem.store.rules import over_quota, preview_of
from chatmem.store.streams import StreamEntry, decode_entries

BeginKind = Literal["ok", "replay", "busy", "orphan"]
# A turn planned from a read that another write changed since (`expect_head`).
HISTORY_CHANGED = "history_changed"


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


class TurnStore:
    def __init__(self, store: RedisMemoryStore, coordinator: Coordinator) -> None:
        self.store = store
        self.coordinator = coordinator
        redis = store.redis
        self._begin = redis.register_script(turn_scripts.BEGIN_TURN)
        self._finish = redis.register_script(turn_scripts.FINISH_TURN)

    async def _run(self, name: str, script: Any, ks: list[str], args: list[Any]) -> Any:
        return await self.store.run_write(name, script, ks, args)

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
        expect_head: str | None = None,
        before: Sequence[Message] = (),
    ) -> BeginResult:
        """Rate limit, lock, generation cap, idempotency, the user message appended and
        the context read, in one round trip. RateLimited past a per-user limit.

        `before`: messages appended under the lock ahead of the user message (the OpenAI
        route's tool results). `expect_head`: the id of the newest message the turn was
        planned from ('' none): Conflict `history_changed`, nothing written, when it is
        not any more."""
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
            encode_message(user_msg) if user_msg.msg_id else "",
            user_msg.token_count,
            reply_id,
            generation_id,
            "1" if idempotent else "0",
            keys.EVENTS_MAXLEN,
            self.store.max_stored_bytes_per_user,
            keys.session_prefix(user_id),
            "0" if expect_head is None else "1",
            keys.validate_id(expect_head, "message id") if expect_head else "",
        ]
        for msg in before:
            args += [keys.validate_id(msg.msg_id, "message id"), encode_message(msg)]
            args += [msg.token_count, preview_of(msg), msg.role.value]
        res = await self._run("begin_turn", self._begin, ks, args)
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
        _, seq, meta_flat, pttl, raw, stored = res
        meta = decode_meta(session_id, meta_flat, pttl_ms=pttl, stored=stored)
        raw.reverse()
        return BeginResult("ok", meta=meta, messages=decode_messages(raw, seq - len(raw) + 1))

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
    ) -> bool | None:
        """The reply with its usage and totals, the lock released and the event stream
        ended, in one round trip. None if the session is gone; else whether the reply was
        stored now (False: it was there already, or the generation had been ended).
        `replaces`: a revision's reply takes the place of the newest message, of that id."""
        if not 0 <= usage.cost_usd < math.inf:
            raise InvalidInput(f"invalid usage {usage}", code="invalid_usage")
        ks = keys.turn_keys(user_id, session_id)
        args: list[Any] = [session_id, int(time.time() * 1000)]
        args += [self.store.max_messages, self.store.id_window]
        if reply is not None:
            args += [
                keys.validate_id(reply.msg_id, "message id"),
                encode_message(reply),
                reply.token_count,
                preview_of(reply),
            ]
        else:
            args += ["", "", 0, ""]
        args += [usage.prompt_tokens, usage.completion_tokens, repr(usage.cost_usd)]
        args += [token, generation_id]
        args += [tail[1], tail[0]] if tail else ["", 0]
        args += [orjson.dumps(end_payload).decode(), keys.EVENTS_TTL_AFTER_END_MS]
        args += [keys.EVENTS_MAXLEN, keys.validate_id(replaces, "message id") if replaces else ""]
        res = await self._run("finish_turn", self._finish, ks, args)
        if res is None:
            return None
        return bool(res[0])
