"""ChatService: sessions and one chat turn, end to end (SPEC §3).

A turn: validate → rate limit → take the session's turn lock (Redis, so it holds across
processes) → append the user message and read the context in one round trip (the user
message is durable before the model is called) → stream from the provider, relaying
deltas → persist the reply with usage and cost in one round trip. If the client goes
away or a stop is requested, the partial reply is persisted with `interrupted: true`
and the upstream generation is closed. Persisting is shielded from cancellation and
awaited, never left as a dangling task.

When Redis cannot be reached (StoreUnavailable from the store or the coordinator), a
turn degrades instead of failing: the model gets the character's system prompt and the
new message only, the reply says `memory: "degraded"`, and the turn's messages go to
the local outbox (fsynced before the model is called, and before the reply is
acknowledged), which the replayer (replay.py) appends to Redis once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from chatmem.characters import CharacterRegistry
from chatmem.chat.prompts import context_messages
from chatmem.chat.turn import STOP_POLL_S, Delta, PersistedReply, Turn, TurnDone, TurnEvent
from chatmem.config import Settings
from chatmem.context import AssembledContext, ContextLimits, assemble_context
from chatmem.durability.outbox import OUTBOX_DIR, Outbox
from chatmem.durability.replay import OutboxReplayer
from chatmem.errors import InvalidInput, SessionBusy, StoreUnavailable
from chatmem.metrics import Metrics
from chatmem.models import Character, Message, Role, SessionMeta, Usage, new_id
from chatmem.providers.base import ChatProvider, GenerationParams, StreamChunk
from chatmem.store.conversations import WINDOW_MAX, RedisMemoryStore
from chatmem.store.locks import Coordinator
from chatmem.tokens import TOKENS_PER_MESSAGE, cost_usd, count_tokens

# The turn's types are part of what the service answers: importable from here too.
__all__ = ["ChatService", "Delta", "Turn", "TurnDone", "TurnEvent", "idempotent_ids"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A turn reads enough history for the widest window, plus the new message.
TURN_READ_MESSAGES = 2 * WINDOW_MAX + 1
# Sessions whose character a degraded turn can still tell (else: the default character).
KNOWN_CHARACTERS_MAX = 10_000
# After the grace period, turns still streaming are stopped; this long to persist them.
STOP_PERSIST_S = 5.0

SessionKey = tuple[str, str]


def idempotent_ids(key: str) -> tuple[str, str]:
    """Message ids for a client's idempotency key: a retry writes nothing new."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"k{digest}", f"k{digest}a"


class ChatService:
    def __init__(
        self,
        settings: Settings,
        store: RedisMemoryStore,
        provider: ChatProvider,
        characters: CharacterRegistry,
        coordinator: Coordinator,
        metrics: Metrics | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.characters = characters
        self.coordinator = coordinator
        self.metrics = metrics or Metrics()
        self.outbox = outbox or Outbox(settings.data_dir / OUTBOX_DIR)
        self.replayer = OutboxReplayer(self.outbox, store, coordinator, characters)
        self._local_turns: dict[SessionKey, Turn] = {}
        # One turn at a time per session in this process: the Redis lock cannot say so
        # while Redis is down. Key → (reservation, expiry on the monotonic clock).
        self._reserved: dict[SessionKey, tuple[object, float]] = {}
        self._streaming: set[Turn] = set()
        self._no_streams = asyncio.Event()
        # Shielded work that outlived a cancelled caller; drained at shutdown.
        self._background: set[asyncio.Task[Any]] = set()
        self._system_tokens: dict[str, int] = {}
        self._known_characters: OrderedDict[SessionKey, Character] = OrderedDict()
        self._stop_poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Adopt outboxes left by dead processes and start replaying (app start-up)."""
        await self.replayer.start()

    async def close(self) -> None:
        """Graceful shutdown: finish or persist the turns in flight, then flush the outbox
        (one last replay; what Redis cannot take now stays on disk for the next start)."""
        await self.drain(self.settings.server.shutdown_grace_s)
        if self._stop_poller is not None:
            self._stop_poller.cancel()
        await self.replayer.close()

    async def shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to completion even if the caller is cancelled meanwhile.

        The caller sees its cancellation at once; the work goes on as a tracked task
        that `drain()` awaits, so nothing is ever left dangling.
        """
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return await asyncio.shield(task)

    async def drain(self, grace_s: float = 0.0) -> None:
        """Wait for turns being streamed, up to `grace_s`, then for shielded work still
        running (graceful shutdown). Turns still streaming after the grace period are
        stopped, so their partial replies are stored as interrupted."""
        if not await self._streams_done(grace_s):
            log.warning("stopping %d turns still streaming at shutdown", len(self._streaming))
            for turn in self._streaming:
                turn.stop.set()
            await self._streams_done(STOP_PERSIST_S)
        while self._background:
            await asyncio.wait(set(self._background))

    async def _streams_done(self, timeout_s: float) -> bool:
        if self._streaming:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_streams.wait(), timeout_s)
        return not self._streaming

    # --- sessions --------------------------------------------------------------------

    async def create_session(
        self,
        user_id: str,
        character_id: str | None = None,
        *,
        title: str = "",
        ttl_s: int | None = None,
        window_size: int | None = None,
        session_id: str | None = None,
        ensure: bool = False,
    ) -> tuple[SessionMeta, Message | None]:
        character = await self.characters.get(character_id or self.characters.default_id)
        greeting = None
        if character.greeting:
            greeting = Message(
                Role.ASSISTANT,
                character.greeting,
                count_tokens(character.greeting),
                metadata={"greeting": True},
            )
        meta = await self.store.create_session(
            user_id,
            character.id,
            session_id=session_id,
            title=title[:200] or character.name,
            ttl_s=ttl_s,
            window_size=window_size,
            greeting=greeting,
            ensure=ensure,
        )
        return meta, greeting

    # --- a turn ----------------------------------------------------------------------

    def validate_content(self, content: str) -> str:
        text = content.strip() if isinstance(content, str) else ""
        if not text:
            raise InvalidInput("message must not be empty", code="empty_message")
        limit = self.settings.memory.max_message_chars
        if len(text) > limit:
            raise InvalidInput(
                f"message is {len(text)} characters; the limit is {limit}",
                code="message_too_long",
            )
        return text

    async def prepare_turn(
        self,
        user_id: str,
        session_id: str,
        content: str,
        *,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Turn:
        """Everything before the model is called; errors here are the client's to see.

        Degrades (see the module docstring) when Redis cannot be reached.
        """
        text = self.validate_content(content)
        user_msg = Message(Role.USER, text, count_tokens(text), metadata=dict(metadata or {}))
        reply_id: str | None = None
        if idempotency_key:
            user_msg.msg_id, reply_id = idempotent_ids(idempotency_key)
        key = (user_id, session_id)
        reservation = await self._reserve(key)
        try:
            turn: Turn | None = None
            if not self.replayer.store_down:
                try:
                    turn = await self._redis_turn(user_id, session_id, user_msg, reply_id)
                except StoreUnavailable as exc:
                    self.replayer.mark_down(exc)
            if turn is None:
                turn = await self._degraded_turn(user_id, session_id, user_msg, reply_id)
        except BaseException:
            self._unreserve(key, reservation)
            raise
        turn.reservation = reservation
        self._local_turns[key] = turn
        if self._stop_poller is None or self._stop_poller.done():
            self._stop_poller = asyncio.create_task(self._poll_stops())
        return turn

    async def _poll_stops(self) -> None:
        """Watch the stop flags of this process's turns for stops asked through another
        process: one round trip per STOP_POLL_S for all of them (a poll per turn cost a
        third of the CPU of 200 long streams). Ends when no turn is left."""
        while self._local_turns:
            await asyncio.sleep(STOP_POLL_S)
            if self.replayer.store_down:
                continue  # a stop can only reach a turn through its own process then
            turns = [
                t for t in self._local_turns.values() if not t.degraded and not t.stop.is_set()
            ]
            if not turns:
                continue
            try:
                asked = await self.coordinator.stops_requested(
                    [(t.user_id, t.session_id, t.lock_token) for t in turns]
                )
            except StoreUnavailable as exc:
                self.replayer.mark_down(exc)
                continue
            for turn, stop in zip(turns, asked, strict=True):
                if stop:
                    turn.stop.set()

    async def _reserve(self, key: SessionKey) -> object:
        deadline = time.monotonic() + self.settings.limits.session_lock_wait_ms / 1000
        delay = 0.01
        while (held := self._reserved.get(key)) is not None and held[1] > time.monotonic():
            if time.monotonic() + delay > deadline:
                raise SessionBusy()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        reservation = object()
        # Expires with the Redis lock's TTL, so a turn that is never finished cannot hold
        # the session here for longer than it would hold it in Redis.
        expiry = time.monotonic() + self.settings.limits.session_lock_ttl_ms / 1000
        self._reserved[key] = (reservation, expiry)
        return reservation

    def _unreserve(self, key: SessionKey, reservation: object) -> None:
        held = self._reserved.get(key)
        if held is not None and held[0] is reservation:
            del self._reserved[key]

    async def _redis_turn(
        self, user_id: str, session_id: str, user_msg: Message, reply_id: str | None
    ) -> Turn:
        await self.coordinator.check_rate(user_id)
        token = self.coordinator.new_token()
        try:
            await self.coordinator.acquire_turn(user_id, session_id, token=token)
        except StoreUnavailable:
            # The SET may have reached Redis (and its AOF) before the connection failed.
            self.replayer.defer_release(user_id, session_id, token)
            raise
        try:
            if self.outbox.has_pending(user_id, session_id):
                # The session's earlier messages are still in the outbox: they go first.
                await self.replayer.replay_session(user_id, session_id)
            return await self._start_turn(user_id, session_id, user_msg, reply_id, token)
        except BaseException:
            await self.shielded(self._release(user_id, session_id, token))
            raise

    async def _release(self, user_id: str, session_id: str, token: str) -> None:
        try:
            await self.coordinator.release_turn(user_id, session_id, token)
        except StoreUnavailable:
            self.replayer.defer_release(user_id, session_id, token)
        except Exception:
            log.exception("could not release the turn lock of %s", session_id)

    async def _start_turn(
        self,
        user_id: str,
        session_id: str,
        user_msg: Message,
        reply_id: str | None,
        token: str,
    ) -> Turn:
        # No clearing of the stop flag here: it holds the lock token it was meant for, so a
        # stale one never matches, and a stop that arrives before this turn is set up is kept.
        res = await self.store.append(user_id, session_id, [user_msg], read_last=TURN_READ_MESSAGES)
        assert res.meta is not None
        meta = res.meta
        msgs = res.messages
        idx = next((i for i, m in enumerate(msgs) if m.msg_id == user_msg.msg_id), len(msgs) - 1)
        stored_user = msgs[idx] if msgs else user_msg
        replay = next((m for m in msgs[idx + 1 :] if m.msg_id == reply_id), None)
        character = await self.characters.get(meta.character_id)
        self._remember_character((user_id, session_id), character)
        limits = self.limits_for(meta, character)
        context = self._assemble(character, msgs[:idx], stored_user, limits)
        return Turn(
            service=self,
            user_id=user_id,
            meta=meta,
            character=character,
            user_message=stored_user,
            context=context,
            params=self._params(character),
            lock_token=token,
            reply_id=reply_id or new_id(),
            replay=replay,
        )

    async def _degraded_turn(
        self, user_id: str, session_id: str, user_msg: Message, reply_id: str | None
    ) -> Turn:
        """A turn without Redis: no history, no lock, its messages kept in the outbox."""
        character = self._known_characters.get((user_id, session_id))
        if character is None:
            # Built in, so no Redis read: the session's own character is unknown here.
            character = await self.characters.get(self.characters.default_id)
        meta = SessionMeta(
            session_id, user_id, character.id, window_size=self.settings.memory.window_size
        )
        turn = Turn(
            service=self,
            user_id=user_id,
            meta=meta,
            character=character,
            user_message=user_msg,
            context=self._assemble(character, [], user_msg, self.limits_for(meta, character)),
            params=self._params(character),
            lock_token="",
            reply_id=reply_id or new_id(),
            degraded=True,
        )
        # Durable before the model is called, as in Redis (SPEC §3.3).
        await self._to_outbox(turn, [user_msg], None)
        self.metrics.degradations.labels("store_unavailable").inc()
        return turn

    def _remember_character(self, key: SessionKey, character: Character) -> None:
        known = self._known_characters
        known[key] = character
        known.move_to_end(key)
        if len(known) > KNOWN_CHARACTERS_MAX:
            known.popitem(last=False)

    async def _to_outbox(
        self, turn: Turn, messages: Sequence[Message], usage: Usage | None
    ) -> None:
        try:
            await self.outbox.add(turn.user_id, turn.session_id, turn.character.id, messages, usage)
        except OSError as exc:
            raise StoreUnavailable(
                f"redis is unavailable and the local outbox cannot be written: {exc}"
            ) from exc

    def limits_for(self, meta: SessionMeta, character: Character) -> ContextLimits:
        mem = self.settings.memory
        return ContextLimits(
            window_size=meta.window_size,
            max_context_messages=mem.max_context_messages,
            max_context_tokens=mem.max_context_tokens,
            model_context_window=self.provider.info.context_window,
            reply_tokens=self._params(character).max_tokens or self.settings.llm.max_tokens,
        )

    def _params(self, character: Character) -> GenerationParams:
        p = character.params
        llm = self.settings.llm
        return GenerationParams(
            model=p.model or llm.model,
            temperature=p.temperature if p.temperature is not None else llm.temperature,
            max_tokens=p.max_tokens or llm.max_tokens,
        )

    def _count_cached(self, text: str) -> int:
        n = self._system_tokens.get(text)
        if n is None:
            if len(self._system_tokens) > 1024:
                self._system_tokens.clear()
            n = self._system_tokens[text] = count_tokens(text)
        return n

    def _assemble(
        self,
        character: Character,
        history: list[Message],
        new_message: Message | None,
        limits: ContextLimits,
    ) -> AssembledContext:
        return assemble_context(
            system_prompt=character.system_prompt,
            system_tokens=self._count_cached(character.system_prompt),
            history=history,
            new_message=new_message,
            limits=limits,
            post_history=character.post_history_instructions,
            post_history_tokens=self._count_cached(character.post_history_instructions),
        )

    async def preview_context(
        self, user_id: str, session_id: str, *, show_prompts: bool = True
    ) -> dict[str, Any]:
        """The exact messages the next turn would send, before its new message, with the
        token breakdown; the character's prompts as placeholders unless `show_prompts`
        (admins only: see `chat.prompts`)."""
        snap = await self.store.read(user_id, session_id, last=TURN_READ_MESSAGES)
        character = await self.characters.get(snap.meta.character_id)
        limits = self.limits_for(snap.meta, character)
        ctx = self._assemble(character, snap.messages, None, limits)
        messages = context_messages(
            ctx,
            character,
            system_tokens=self._count_cached(character.system_prompt),
            post_history_tokens=self._count_cached(character.post_history_instructions),
            show_prompts=show_prompts,
        )
        return {"messages": messages, "tokens": ctx.breakdown()}

    async def _persist_reply(
        self,
        turn: Turn,
        text: str,
        usage_chunk: StreamChunk | None,
        finish_reason: str | None,
        *,
        interrupted: bool,
        quiet: bool = False,
    ) -> PersistedReply:
        completion = count_tokens(text)
        if usage_chunk is not None and usage_chunk.usage is not None:
            prompt_t = usage_chunk.usage.prompt_tokens
            completion_t = usage_chunk.usage.completion_tokens
        else:
            n_msgs = len(turn.context.messages)
            prompt_t = turn.context.total_tokens + TOKENS_PER_MESSAGE * n_msgs
            completion_t = completion
        model = turn.params.model or self.provider.info.name
        usage = Usage(
            prompt_t,
            completion_t,
            cost_usd(model, prompt_t, completion_t, self.settings.llm.prices),
        )
        metadata: dict[str, Any] = {"model": model, "usage": usage.to_dict()}
        if finish_reason:
            metadata["finish_reason"] = finish_reason
        if interrupted:
            metadata["interrupted"] = True
        msg = Message(Role.ASSISTANT, text, completion, msg_id=turn.reply_id, metadata=metadata)
        # The turn lock holds the session, so the reply directly follows the user message.
        msg.seq = turn.user_message.seq + 1 if turn.user_message.seq else 0
        degraded = turn.degraded
        try:
            if not degraded:
                try:
                    await self.store.append(turn.user_id, turn.session_id, [msg], usage=usage)
                except StoreUnavailable as exc:
                    # Redis went away during the turn: the reply is kept all the same.
                    self.replayer.mark_down(exc)
                    self.metrics.degradations.labels("reply_write").inc()
                    degraded = True
            if degraded:
                await self._to_outbox(turn, [msg], usage)
        except Exception:
            if not quiet:
                raise
            log.exception("could not persist the interrupted reply of %s", turn.session_id)
        self.metrics.tokens.labels("prompt").inc(prompt_t)
        self.metrics.tokens.labels("completion").inc(completion_t)
        return PersistedReply(msg, usage, degraded)

    async def _finish(self, turn: Turn) -> None:
        key = (turn.user_id, turn.session_id)
        if self._local_turns.get(key) is turn:
            del self._local_turns[key]
        if not turn.degraded:
            await self._release(turn.user_id, turn.session_id, turn.lock_token)
        # After the Redis lock: a turn waiting here then finds that one free too.
        self._unreserve(key, turn.reservation)

    async def complete(self, turn: Turn) -> TurnDone:
        """Run a prepared turn to the end without streaming; returns its final event."""
        done: TurnDone | None = None
        async for event in turn.events():
            if isinstance(event, TurnDone):
                done = event
        assert done is not None
        return done

    async def stop(self, user_id: str, session_id: str) -> bool:
        """Stop the session's generation in progress, in this process or any other."""
        # Local first: a degraded turn can be stopped while Redis is down. The key holds
        # the caller's user id, so a turn found is the caller's own.
        local = self._local_turns.get((user_id, session_id))
        if local is not None:
            local.stop.set()
            return True
        await self.store.get_meta(user_id, session_id)
        return await self.coordinator.request_stop(user_id, session_id)

    async def chat(self, user_id: str, session_id: str, content: str, **kwargs: Any) -> TurnDone:
        turn = await self.prepare_turn(user_id, session_id, content, **kwargs)
        return await self.complete(turn)
