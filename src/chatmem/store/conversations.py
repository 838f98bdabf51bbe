"""RedisMemoryStore: the only code that talks to Redis about conversations.

Every write is one Lua script (one round trip) that appends, trims, refreshes the TTL of
every key of the session and updates meta, totals and the user's session index. Every
read is one script too, and so is a turn: `append(..., read_last=n)` writes the turn's
messages and returns the meta and the newest n messages in the same round trip. Ids are
validated by the key builders before any I/O.

With `wait_replicas` > 0 every write also waits for that many replicas, in the same
round trip; what a shortfall does is `write_concern`'s to say.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.commands.core import AsyncScript

from chatmem.errors import AlreadyExists, InvalidInput, SessionNotFound
from chatmem.models import (
    UNCHANGED,
    Message,
    SessionMeta,
    SessionSnapshot,
    SessionState,
    Unchanged,
    Usage,
    new_id,
)
from chatmem.store import keys, scripts
from chatmem.store.client import AnyRedis, redis_errors
from chatmem.store.codec import (
    decode_meta,
    decode_window,
    encode_message,
    encode_temperature,
    meta_fields,
)
from chatmem.store.keys import MIN_TTL_S, PREVIEW_CHARS, WINDOW_MAX, WINDOW_MIN
from chatmem.store.rules import (
    over_quota,
    preview_of,
    too_many_sessions,
    validate_temperature,
    validate_title,
    validate_ttl,
    validate_window,
)
from chatmem.store.users import DELETE_USER_AND_MEMORIES, UserQueries
from chatmem.store.write_concern import ShortfallObserver, WriteConcern

__all__ = [
    "MIN_TTL_S",
    "PREVIEW_CHARS",
    "WINDOW_MAX",
    "WINDOW_MIN",
    "AnyRedis",
    "AppendResult",
    "RedisMemoryStore",
    "SessionSnapshot",
    "validate_ttl",
    "validate_window",
]

OpObserver = Callable[[str, float], None]


@dataclass(slots=True)
class AppendResult:
    appended: int
    duplicate_ids: list[str]
    stored: int
    # Filled only when the append was asked to read back (read_last >= 0).
    meta: SessionMeta | None = None
    messages: list[Message] = field(default_factory=list)
    # The seq of the session's newest message after the write (0: none yet).
    last_seq: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_found(session_id: str) -> SessionNotFound:
    return SessionNotFound(f"session {session_id!r} not found")


class RedisMemoryStore(UserQueries):
    """Sessions and their messages here; users, totals and server figures in users.py."""

    def __init__(
        self,
        redis: AnyRedis,
        *,
        max_messages: int = 100,
        default_ttl_s: int = 24 * 3600,
        default_window: int = 10,
        on_op: OpObserver | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
        on_not_replicated: ShortfallObserver | None = None,
        max_sessions_per_user: int = 0,
        max_stored_bytes_per_user: int = 0,
    ) -> None:
        """`max_sessions_per_user` and `max_stored_bytes_per_user` (0: no cap) are enforced
        by the write scripts themselves, so no number of processes can pass them."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.redis = redis
        self.write_concern = (
            WriteConcern(redis, wait_replicas, wait_timeout_ms, on_not_replicated)
            if wait_replicas
            else None
        )
        self.max_messages = max_messages
        self.id_window = min(max_messages, keys.IDEMPOTENCY_WINDOW)
        self.default_ttl_s = validate_ttl(default_ttl_s)
        self.default_window = validate_window(default_window)
        self.max_sessions_per_user = max_sessions_per_user
        self.max_stored_bytes_per_user = max_stored_bytes_per_user
        self._on_op = on_op
        self._create = redis.register_script(scripts.CREATE_SESSION)
        self._append = redis.register_script(scripts.APPEND_MESSAGES)
        self._read = redis.register_script(scripts.READ_SESSION)
        self._update = redis.register_script(scripts.UPDATE_SESSION)
        self._clear = redis.register_script(scripts.CLEAR_SESSION)
        self._delete = redis.register_script(scripts.DELETE_SESSION)
        self._list = redis.register_script(scripts.LIST_SESSIONS)
        self._totals = redis.register_script(scripts.USER_TOTALS)
        self._delete_user = redis.register_script(DELETE_USER_AND_MEMORIES)

    def observe(self, name: str, seconds: float) -> None:
        """Time one operation of this store (the turn scripts report theirs here too)."""
        if self._on_op is not None:
            self._on_op(name, seconds)

    async def _run(
        self, name: str, script: AsyncScript, ks: list[str], args: list[Any], *, write: bool = False
    ) -> Any:
        """Run one script: timed, and its Redis errors mapped (client.redis_errors).

        A `write` waits for the configured replicas too (see the module docstring).
        """
        start = time.perf_counter()
        try:
            with redis_errors(name):
                if write and self.write_concern is not None:
                    return await self.write_concern.run(name, script, ks, args)
                return await script(keys=ks, args=args)
        finally:
            if self._on_op is not None:
                self._on_op(name, time.perf_counter() - start)

    async def run_write(
        self, name: str, script: AsyncScript, ks: list[str], args: list[Any]
    ) -> Any:
        """A write script of another store module (turns, edits) run as this store's own:
        timed, Redis errors mapped, the write concern waited for."""
        return await self._run(name, script, ks, args, write=True)

    @asynccontextmanager
    async def _op(self, name: str) -> AsyncIterator[None]:
        """Like `_run`, for operations made of plain commands."""
        start = time.perf_counter()
        try:
            with redis_errors(name):
                yield
        finally:
            if self._on_op is not None:
                self._on_op(name, time.perf_counter() - start)

    # --- sessions -------------------------------------------------------------------

    async def create_session(
        self,
        user_id: str,
        character_id: str,
        *,
        session_id: str | None = None,
        title: str = "",
        ttl_s: int | None = None,
        window_size: int | None = None,
        greeting: Message | None = None,
        ensure: bool = False,
        forked_from: tuple[str, str] | None = None,
        min_ttl_s: int = MIN_TTL_S,
        memory: bool = True,
        temperature: float | None = None,
    ) -> SessionMeta:
        """Create a session (with its greeting as the first message) and return its meta.

        With `ensure`, an existing session of that id is kept as it is and returned
        instead of raising AlreadyExists. `forked_from` (session id, message id) marks
        it as a fork (an import keeps what the export said). Costs two round trips: the
        script, and the global user index (which lives in another Cluster slot).
        """
        sid = keys.validate_id(new_id() if session_id is None else session_id, "session id")
        ks = keys.session_keys(user_id, sid)
        keys.validate_id(character_id, "character id")
        ttl = validate_ttl(ttl_s if ttl_s is not None else self.default_ttl_s, min_ttl_s)
        window = validate_window(window_size if window_size is not None else self.default_window)
        fields = meta_fields(
            user_id=user_id,
            character_id=character_id,
            title=validate_title(title),
            window_size=window,
        )
        if temperature is not None:
            fields["temp"] = encode_temperature(validate_temperature(temperature))
        if not memory:  # no summary, memories or titles (the seed routes' sessions)
            fields["mem"] = "0"
        if forked_from is not None:  # (session id, message id): an imported fork
            fields["fork"], fields["forkmsg"] = forked_from
        args: list[Any] = [sid, _now_ms(), ttl]
        if greeting is not None:
            keys.validate_id(greeting.msg_id, "message id")
            args += [encode_message(greeting), greeting.msg_id, greeting.token_count]
            args.append(preview_of(greeting))
        else:
            args += ["", "", 0, ""]
        args += [
            self.max_sessions_per_user,
            self.max_stored_bytes_per_user,
            keys.session_prefix(user_id),
        ]
        for name, value in fields.items():
            args += [name, value]
        # The user index first: a user listed without sessions is filtered out on listing,
        # while a session whose user is missing from the index would never be listed.
        async with self._op("create_session"):
            await self.redis.zadd(keys.USERS_INDEX_KEY, {user_id: _now_ms()})
        res = await self._run("create_session", self._create, ks, args, write=True)
        if res[0] == -1:
            raise too_many_sessions(self.max_sessions_per_user)
        if res[0] == -2:
            raise over_quota(self.max_stored_bytes_per_user)
        created, flat, pttl, stored = res
        if not created and not ensure:
            raise AlreadyExists(f"session {sid!r} already exists")
        return decode_meta(sid, flat, pttl_ms=pttl, stored=stored)

    async def append(
        self,
        user_id: str,
        session_id: str,
        messages: Sequence[Message],
        *,
        usage: Usage | None = None,
        read_last: int = -1,
        enforce_quota: bool = True,
    ) -> AppendResult:
        """Append messages atomically; ids already held by the session are skipped.

        A message id among the session's newest min(max_messages, IDEMPOTENCY_WINDOW)
        messages is reported in `duplicate_ids` and not stored again; `usage` is added
        only if at least one message was new (or none were given), so a retry pays once.
        With `read_last >= 0` the same round trip returns the meta and that many newest
        messages as they are after the write.

        Past the user's byte cap, StorageQuotaExceeded and nothing is written, unless
        `enforce_quota` is false or the write carries `usage`: a turn's reply (its turn
        was admitted with its user message) and a replay of what was already
        acknowledged are not refused.
        """
        if not messages and usage is None:
            raise InvalidInput("nothing to append")
        if len(messages) > keys.MAX_APPEND_MESSAGES:
            raise InvalidInput(f"at most {keys.MAX_APPEND_MESSAGES} messages per append")
        ks = keys.session_keys(user_id, session_id)
        u = usage or Usage()
        if u.prompt_tokens < 0 or u.completion_tokens < 0 or not 0 <= u.cost_usd < math.inf:
            raise InvalidInput(f"invalid usage {u}", code="invalid_usage")
        last = messages[-1] if messages else None
        args: list[Any] = [
            session_id,
            _now_ms(),
            self.max_messages,
            self.id_window,
            read_last,
            preview_of(last) if last else "",
            last.role.value if last else "",
            u.prompt_tokens,
            u.completion_tokens,
            repr(u.cost_usd),
            self.max_stored_bytes_per_user if enforce_quota and usage is None else 0,
            keys.session_prefix(user_id),
        ]
        validate_id = keys.validate_id
        for msg in messages:
            args += (validate_id(msg.msg_id, "message id"), encode_message(msg), msg.token_count)
        res = await self._run("append", self._append, ks, args, write=True)
        if res is None:
            raise _not_found(session_id)
        if res[0] == -1:
            raise over_quota(self.max_stored_bytes_per_user)
        result = AppendResult(appended=res[0], duplicate_ids=res[1], stored=res[2], last_seq=res[3])
        if read_last >= 0:
            result.meta = decode_meta(session_id, res[4], pttl_ms=res[5], stored=result.stored)
            result.messages = decode_window(res[6], last_seq=result.last_seq)
        return result

    async def read(
        self, user_id: str, session_id: str, *, last: int, before_seq: int = 0
    ) -> SessionSnapshot:
        """Meta and up to `last` newest messages (those older than `before_seq` if given).

        Seqs are 1-based and never reused within a session, so `before_seq` (the seq of
        the oldest message of the previous page) pages back through history while new
        messages are appended and old ones trimmed. The cost does not depend on how many
        messages the session holds.
        """
        if last < 0 or before_seq < 0:
            raise InvalidInput("limit and before must not be negative")
        ks = keys.session_keys(user_id, session_id)[:2]
        res = await self._run("read", self._read, ks, [last, before_seq])
        if res is None:
            raise _not_found(session_id)
        meta_flat, pttl, stored, first_seq, raw = res
        meta = decode_meta(session_id, meta_flat, pttl_ms=pttl, stored=stored)
        return SessionSnapshot(meta=meta, messages=decode_window(raw, first_seq))

    async def get_meta(self, user_id: str, session_id: str) -> SessionMeta:
        return (await self.read(user_id, session_id, last=0)).meta

    async def update_session(
        self,
        user_id: str,
        session_id: str,
        *,
        title: str | None = None,
        ttl_s: int | None = None,
        window_size: int | None = None,
        state: SessionState | None = None,
        character_id: str | None = None,
        min_ttl_s: int = MIN_TTL_S,
        temperature: float | Unchanged | None = UNCHANGED,
    ) -> SessionMeta:
        """Change title / ttl / window / state / character / temperature (None: clear it);
        refreshes the TTL of every session key."""
        ks = keys.session_keys(user_id, session_id)
        args: list[Any] = [_now_ms()]
        if title is not None:
            args += ["title", validate_title(title)]
        if ttl_s is not None:
            args += ["ttl", validate_ttl(ttl_s, min_ttl_s)]
        if character_id is not None:
            args += ["cid", keys.validate_id(character_id, "character id")]
        if window_size is not None:
            args += ["window", validate_window(window_size)]
        if not isinstance(temperature, Unchanged):
            args += ["temp", encode_temperature(validate_temperature(temperature))]
        if state is not None:
            try:
                args += ["state", SessionState(state).value]
            except ValueError:
                raise InvalidInput(f"unknown state {state!r}", code="invalid_state") from None
        res = await self._run("update_session", self._update, ks, args, write=True)
        if res is None:
            raise _not_found(session_id)
        flat, pttl, stored = res
        return decode_meta(session_id, flat, pttl_ms=pttl, stored=stored)

    async def clear(self, user_id: str, session_id: str) -> None:
        """Remove the session's messages; the session, its usage and seqs stay.

        Its message_count and total_tokens restart at 0; the user's totals keep them.
        """
        ks = keys.session_keys(user_id, session_id)
        if not await self._run("clear", self._clear, ks, [session_id, _now_ms()], write=True):
            raise _not_found(session_id)

    async def delete_session(self, user_id: str, session_id: str) -> None:
        ks = keys.session_keys(user_id, session_id)
        ks += [
            keys.session_lock_key(user_id, session_id),
            keys.session_stop_key(user_id, session_id),
            keys.session_events_key(user_id, session_id),
        ]
        if not await self._run("delete_session", self._delete, ks, [session_id], write=True):
            raise _not_found(session_id)

    async def list_sessions(self, user_id: str, *, limit: int = 100) -> list[SessionMeta]:
        """The user's live sessions, most recently active first, with previews."""
        ks = [keys.user_sessions_key(user_id)]
        rows = await self._run(
            "list_sessions", self._list, ks, [keys.session_prefix(user_id), limit]
        )
        return [
            decode_meta(sid, flat, pttl_ms=pttl, stored=stored) for sid, pttl, stored, flat in rows
        ]
