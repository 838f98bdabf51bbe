"""RedisMemoryStore: the only code that talks to Redis about conversations.

Every write is one Lua script (one round trip) that appends, trims, refreshes the TTL of
every key of the session and updates meta, totals and the user's session index. Every
read is one script too. Ids are validated by the key builders before any I/O.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from chatmem.errors import AlreadyExists, InvalidInput, SessionNotFound, StoreUnavailable
from chatmem.memory import keys, scripts
from chatmem.memory.codec import decode_messages, decode_meta, encode_message, meta_fields
from chatmem.models import Message, SessionMeta, SessionState, Usage, UserTotals, new_id

AnyRedis = Redis | RedisCluster
PREVIEW_CHARS = 100
MIN_TTL_S = 60
WINDOW_MIN, WINDOW_MAX = 1, 20

OpObserver = Callable[[str, float], None]


@dataclass(slots=True)
class AppendResult:
    appended: int
    duplicate_ids: list[str]
    stored: int
    # Filled only when the append was asked to read back (read_last >= 0).
    meta: SessionMeta | None = None
    messages: list[Message] = field(default_factory=list)


@dataclass(slots=True)
class SessionSnapshot:
    meta: SessionMeta
    messages: list[Message]


def _now_ms() -> int:
    return int(time.time() * 1000)


def validate_ttl(ttl_s: int) -> int:
    if ttl_s < MIN_TTL_S:
        raise InvalidInput(f"ttl must be at least {MIN_TTL_S} seconds", code="invalid_ttl")
    return ttl_s


def validate_window(window_size: int) -> int:
    if not WINDOW_MIN <= window_size <= WINDOW_MAX:
        raise InvalidInput(
            f"window_size must be between {WINDOW_MIN} and {WINDOW_MAX}", code="invalid_window"
        )
    return window_size


def _preview(msg: Message) -> str:
    text = " ".join(msg.content.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


class RedisMemoryStore:
    def __init__(
        self,
        redis: AnyRedis,
        *,
        max_messages: int = 100,
        default_ttl_s: int = 24 * 3600,
        default_window: int = 10,
        on_op: OpObserver | None = None,
    ) -> None:
        self.redis = redis
        self.max_messages = max_messages
        self.default_ttl_s = default_ttl_s
        self.default_window = default_window
        self._on_op = on_op
        self._create = redis.register_script(scripts.CREATE_SESSION)
        self._append = redis.register_script(scripts.APPEND_MESSAGES)
        self._read = redis.register_script(scripts.READ_SESSION)
        self._update = redis.register_script(scripts.UPDATE_SESSION)
        self._clear = redis.register_script(scripts.CLEAR_SESSION)
        self._delete = redis.register_script(scripts.DELETE_SESSION)
        self._list = redis.register_script(scripts.LIST_SESSIONS)
        self._delete_user = redis.register_script(scripts.DELETE_USER)

    @asynccontextmanager
    async def _op(self, name: str) -> AsyncIterator[None]:
        """Time an operation and turn connection failures into StoreUnavailable."""
        start = time.perf_counter()
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"redis unavailable during {name}: {exc}") from exc
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
    ) -> SessionMeta:
        """Create a session (with its greeting as the first message) and return its meta.

        With `ensure`, an existing session of that id is kept and returned instead of
        raising AlreadyExists.
        """
        sid = keys.validate_id(session_id or new_id(), "session id")
        keys.validate_id(character_id, "character id")
        ttl = validate_ttl(ttl_s if ttl_s is not None else self.default_ttl_s)
        window = validate_window(window_size if window_size is not None else self.default_window)
        fields = meta_fields(
            user_id=user_id, character_id=character_id, title=title, window_size=window
        )
        args: list[Any] = [
            sid,
            _now_ms(),
            ttl,
            "ensure" if ensure else "create",
            encode_message(greeting) if greeting else "",
            greeting.token_count if greeting else 0,
            _preview(greeting) if greeting else "",
        ]
        for name, value in fields.items():
            args += [name, value]
        async with self._op("create_session"):
            created = await self._create(keys=keys.session_keys(user_id, sid), args=args)
            if created:
                await self.redis.zadd(keys.USERS_INDEX_KEY, {user_id: _now_ms()})
        if not created and not ensure:
            raise AlreadyExists(f"session {sid!r} already exists")
        return await self.get_meta(user_id, sid)

    async def append(
        self,
        user_id: str,
        session_id: str,
        messages: Sequence[Message],
        *,
        usage: Usage | None = None,
        read_last: int = -1,
    ) -> AppendResult:
        """Append messages atomically; ids already held by the session are skipped.

        With `read_last >= 0` the same round trip returns the meta and that many newest
        messages as they are after the write.
        """
        if not messages and usage is None:
            raise InvalidInput("nothing to append")
        for msg in messages:
            keys.validate_id(msg.msg_id, "message id")
        last = messages[-1] if messages else None
        u = usage or Usage()
        args: list[Any] = [
            session_id,
            _now_ms(),
            self.max_messages,
            read_last,
            _preview(last) if last else "",
            last.role.value if last else "",
            u.prompt_tokens,
            u.completion_tokens,
            repr(u.cost_usd),
        ]
        for msg in messages:
            args += [msg.msg_id, encode_message(msg), msg.token_count]
        async with self._op("append"):
            res = await self._append(keys=keys.session_keys(user_id, session_id), args=args)
        if res is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        appended, dups, stored, meta_flat, raw_msgs, pttl = res
        result = AppendResult(appended=appended, duplicate_ids=list(dups), stored=stored)
        if read_last >= 0:
            result.meta = decode_meta(session_id, meta_flat, pttl_ms=pttl, stored=stored)
            first_seq = result.meta.message_count - len(raw_msgs) + 1
            result.messages = decode_messages(raw_msgs, first_seq)
        return result

    async def read(
        self, user_id: str, session_id: str, *, last: int, before_seq: int = 0
    ) -> SessionSnapshot:
        """Meta and up to `last` newest messages (older than `before_seq` when given)."""
        if last < 0 or before_seq < 0:
            raise InvalidInput("limit and before must not be negative")
        ks = keys.session_keys(user_id, session_id)[:2]
        async with self._op("read"):
            res = await self._read(keys=ks, args=[last, before_seq])
        if res is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        meta_flat, pttl, stored, first_seq, raw = res
        meta = decode_meta(session_id, meta_flat, pttl_ms=pttl, stored=stored)
        return SessionSnapshot(meta=meta, messages=decode_messages(raw, first_seq))

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
    ) -> SessionMeta:
        args: list[Any] = [_now_ms()]
        if title is not None:
            args += ["title", title]
        if ttl_s is not None:
            args += ["ttl", validate_ttl(ttl_s)]
        if window_size is not None:
            args += ["window", validate_window(window_size)]
        if state is not None:
            args += ["state", SessionState(state).value]
        async with self._op("update_session"):
            ok = await self._update(keys=keys.session_keys(user_id, session_id), args=args)
        if not ok:
            raise SessionNotFound(f"session {session_id!r} not found")
        return await self.get_meta(user_id, session_id)

    async def clear(self, user_id: str, session_id: str) -> None:
        """Remove the session's messages; the session and its totals stay."""
        async with self._op("clear"):
            ok = await self._clear(keys=keys.session_keys(user_id, session_id), args=[_now_ms()])
        if not ok:
            raise SessionNotFound(f"session {session_id!r} not found")

    async def delete_session(self, user_id: str, session_id: str) -> None:
        async with self._op("delete_session"):
            existed = await self._delete(
                keys=keys.session_keys(user_id, session_id), args=[session_id]
            )
        if not existed:
            raise SessionNotFound(f"session {session_id!r} not found")

    async def list_sessions(self, user_id: str, *, limit: int = 100) -> list[SessionMeta]:
        """The user's live sessions, most recently active first, with previews."""
        prefix = keys.session_meta_key(user_id, "x")[: -len("x:h")]
        async with self._op("list_sessions"):
            rows = await self._list(keys=[keys.user_sessions_key(user_id)], args=[prefix, limit])
        return [
            decode_meta(sid, flat, pttl_ms=pttl, stored=stored) for sid, pttl, stored, flat in rows
        ]

    # --- users ----------------------------------------------------------------------

    async def delete_user(self, user_id: str) -> int:
        """Erase all of a user's data; returns how many sessions were deleted."""
        prefix = keys.session_meta_key(user_id, "x")[: -len("x:h")]
        async with self._op("delete_user"):
            n: int = await self._delete_user(
                keys=[keys.user_sessions_key(user_id), keys.user_totals_key(user_id)],
                args=[prefix],
            )
            await self.redis.zrem(keys.USERS_INDEX_KEY, user_id)
        return n

    async def list_users(self, *, limit: int = 1000, offset: int = 0) -> list[str]:
        """Users with live data, most recently seen first (from the global index)."""
        async with self._op("list_users"):
            users = [
                str(u)
                for u in await self.redis.zrevrange(
                    keys.USERS_INDEX_KEY, offset, offset + limit - 1
                )
            ]
            if not users:
                return []
            pipe = self.redis.pipeline(transaction=False)
            for uid in users:
                pipe.exists(keys.user_sessions_key(uid))
            live = await pipe.execute()
            gone = [u for u, alive in zip(users, live, strict=True) if not alive]
            if gone:
                await self.redis.zrem(keys.USERS_INDEX_KEY, *gone)
        return [u for u, alive in zip(users, live, strict=True) if alive]

    async def count_users(self) -> int:
        async with self._op("count_users"):
            n: int = await self.redis.zcard(keys.USERS_INDEX_KEY)
        return n

    async def user_totals(self, user_id: str) -> UserTotals:
        async with self._op("user_totals"):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.user_totals_key(user_id))
            pipe.zcard(keys.user_sessions_key(user_id))
            h, n_sessions = await pipe.execute()
        return UserTotals(
            user_id=user_id,
            message_count=int(h.get("count", 0)),
            total_tokens=int(h.get("tokens", 0)),
            usage=Usage(
                prompt_tokens=int(h.get("ptok", 0)),
                completion_tokens=int(h.get("ctok", 0)),
                cost_usd=float(h.get("cost", 0)),
            ),
            session_count=n_sessions,
        )

    async def ping(self) -> bool:
        async with self._op("ping"):
            return bool(await self.redis.ping())
