"""ChatService: sessions and one chat turn, end to end (SPEC §3).

A turn: validate → rate limit → take the session's turn lock (Redis, so it holds across
processes) → append the user message and read the context in one round trip (the user
message is durable before the model is called) → stream from the provider, relaying
deltas → persist the reply with usage and cost in one round trip. If the client goes
away or a stop is requested, the partial reply is persisted with `interrupted: true`
and the upstream generation is closed. Persisting is shielded from cancellation and
awaited, never left as a dangling task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chatmem.characters import CharacterRegistry
from chatmem.config import Settings
from chatmem.coordination import Coordinator
from chatmem.errors import InvalidInput
from chatmem.memory.context import AssembledContext, ContextLimits, assemble_context
from chatmem.memory.store import WINDOW_MAX, RedisMemoryStore
from chatmem.metrics import Metrics
from chatmem.models import Character, Message, Role, SessionMeta, Usage
from chatmem.providers.base import ChatProvider, GenerationParams, StreamChunk
from chatmem.tokens import TOKENS_PER_MESSAGE, cost_usd, count_tokens

log = logging.getLogger(__name__)
T = TypeVar("T")

# A turn reads enough history for the widest window, plus the new message.
TURN_READ_MESSAGES = 2 * WINDOW_MAX + 1
STOP_POLL_S = 0.3


@dataclass(slots=True)
class Delta:
    text: str


@dataclass(slots=True)
class TurnDone:
    message: Message
    user_message: Message
    usage: Usage
    memory: str = "ok"
    replayed: bool = False


TurnEvent = Delta | TurnDone


def idempotent_ids(key: str) -> tuple[str, str]:
    """Message ids for a client's idempotency key: a retry writes nothing new."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"k{digest}", f"k{digest}a"


@dataclass(slots=True)
class Turn:
    """A prepared turn: the user message is stored and the session's lock is held.

    Iterate `events()` exactly once; its cleanup releases the lock.
    """

    service: ChatService
    user_id: str
    meta: SessionMeta
    character: Character
    user_message: Message
    context: AssembledContext
    params: GenerationParams
    lock_token: str
    reply_id: str
    replay: Message | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False

    @property
    def session_id(self) -> str:
        return self.meta.session_id

    async def events(self) -> AsyncGenerator[TurnEvent, None]:
        svc = self.service
        self.started = True
        if self.replay is not None:
            try:
                yield Delta(self.replay.content)
                yield TurnDone(self.replay, self.user_message, Usage(), replayed=True)
            finally:
                await svc._finish(self)
            return
        started = time.perf_counter()
        parts: list[str] = []
        usage_seen: StreamChunk | None = None
        finish_reason: str | None = None
        outcome = "interrupted"
        queue: asyncio.Queue[StreamChunk | None] = asyncio.Queue()
        pump = asyncio.create_task(self._pump(queue))
        watcher = asyncio.create_task(self._watch_stop(pump, queue))
        svc.metrics.active_streams.inc()
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    break
                if chunk.usage is not None:
                    usage_seen = chunk
                if chunk.finish_reason:
                    finish_reason = chunk.finish_reason
                if chunk.text:
                    if not parts:
                        svc.metrics.first_token.observe(time.perf_counter() - started)
                    parts.append(chunk.text)
                    yield Delta(chunk.text)
            if pump.done() and not pump.cancelled() and (exc := pump.exception()) is not None:
                raise exc
            stopped = self.stop.is_set()
            outcome = "stopped" if stopped else "ok"
            # Shielded: a client that leaves now must not cancel the write half-way (and
            # outcome is already set, so the cleanup will not write a partial copy).
            reply = await svc.shielded(
                svc._persist_reply(
                    self, "".join(parts), usage_seen, finish_reason, interrupted=stopped
                )
            )
            yield TurnDone(reply.message, self.user_message, reply.usage)
        finally:
            svc.metrics.active_streams.dec()
            pump.cancel()
            watcher.cancel()
            partial = "".join(parts) if outcome == "interrupted" and parts else None
            await svc.shielded(
                self._cleanup(pump, watcher, partial, usage_seen, finish_reason, outcome, started)
            )

    async def _cleanup(
        self,
        pump: asyncio.Task[None],
        watcher: asyncio.Task[None],
        partial: str | None,
        usage_seen: StreamChunk | None,
        finish_reason: str | None,
        outcome: str,
        started: float,
    ) -> None:
        """Everything after the stream, as one shielded unit: it must run to its end even
        when the client's task is cancelled (and, under anyio, re-cancelled) meanwhile."""
        svc = self.service
        # asyncio.wait, not gather: cancelling a gather would cancel the pump's own
        # cleanup too and leave the upstream stream open.
        await asyncio.wait((pump, watcher))
        if partial is not None:
            # Client gone or provider failed: keep what was said, marked interrupted.
            await svc._persist_reply(
                self, partial, usage_seen, finish_reason, interrupted=True, quiet=True
            )
        svc.metrics.turn_latency.labels(outcome).observe(time.perf_counter() - started)
        await svc._finish(self)

    async def abandon(self) -> None:
        """Release a turn whose events were never iterated (the client left before the
        response began): closing a generator that never started runs none of its cleanup."""
        if not self.started:
            self.started = True
            await self.service.shielded(self.service._finish(self))

    async def _pump(self, queue: asyncio.Queue[StreamChunk | None]) -> None:
        """Read the provider's stream into the queue; closing it cancels upstream."""
        try:
            stream = self.service.provider.stream(self.context.messages, self.params)
            async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    queue.put_nowait(chunk)
        finally:
            queue.put_nowait(None)

    async def _watch_stop(self, pump: asyncio.Task[None], queue: asyncio.Queue[Any]) -> None:
        coord = self.service.coordinator
        while not pump.done():
            if self.stop.is_set() or await coord.stop_requested(
                self.user_id, self.session_id, self.lock_token
            ):
                self.stop.set()
                pump.cancel()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), STOP_POLL_S)


@dataclass(slots=True)
class _Reply:
    message: Message
    usage: Usage


class ChatService:
    def __init__(
        self,
        settings: Settings,
        store: RedisMemoryStore,
        provider: ChatProvider,
        characters: CharacterRegistry,
        coordinator: Coordinator,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.characters = characters
        self.coordinator = coordinator
        self.metrics = metrics or Metrics()
        self._local_turns: dict[tuple[str, str], Turn] = {}
        # Shielded work that outlived a cancelled caller; drained at shutdown.
        self._background: set[asyncio.Task[Any]] = set()
        self._system_tokens: dict[str, int] = {}

    async def shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` to completion even if the caller is cancelled meanwhile.

        The caller sees its cancellation at once; the work goes on as a tracked task
        that `drain()` awaits, so nothing is ever left dangling.
        """
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for shielded work still running (graceful shutdown)."""
        while self._background:
            await asyncio.wait(set(self._background))

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
        """Everything before the model is called; errors here are the client's to see."""
        text = self.validate_content(content)
        await self.coordinator.check_rate(user_id)
        token = await self.coordinator.acquire_turn(user_id, session_id)
        try:
            return await self._start_turn(
                user_id, session_id, text, token, idempotency_key, metadata
            )
        except BaseException:
            await self.shielded(self.coordinator.release_turn(user_id, session_id, token))
            raise

    async def _start_turn(
        self,
        user_id: str,
        session_id: str,
        text: str,
        token: str,
        idempotency_key: str | None,
        metadata: dict[str, Any] | None,
    ) -> Turn:
        user_msg = Message(Role.USER, text, count_tokens(text), metadata=dict(metadata or {}))
        reply_id: str | None = None
        if idempotency_key:
            user_msg.msg_id, reply_id = idempotent_ids(idempotency_key)
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
        limits = self.limits_for(meta, character)
        context = self._assemble(character, msgs[:idx], stored_user, limits)
        turn = Turn(
            service=self,
            user_id=user_id,
            meta=meta,
            character=character,
            user_message=stored_user,
            context=context,
            params=self._params(character),
            lock_token=token,
            reply_id=reply_id or Message(Role.ASSISTANT, "").msg_id,
            replay=replay,
        )
        self._local_turns[(user_id, session_id)] = turn
        return turn

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

    async def preview_context(self, user_id: str, session_id: str) -> AssembledContext:
        """The exact messages the next turn would send, before its new message."""
        snap = await self.store.read(user_id, session_id, last=TURN_READ_MESSAGES)
        character = await self.characters.get(snap.meta.character_id)
        limits = self.limits_for(snap.meta, character)
        return self._assemble(character, snap.messages, None, limits)

    async def _persist_reply(
        self,
        turn: Turn,
        text: str,
        usage_chunk: StreamChunk | None,
        finish_reason: str | None,
        *,
        interrupted: bool,
        quiet: bool = False,
    ) -> _Reply:
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
        msg.seq = turn.user_message.seq + 1
        try:
            await self.store.append(turn.user_id, turn.session_id, [msg], usage=usage)
        except Exception:
            if not quiet:
                raise
            log.exception("could not persist the interrupted reply of %s", turn.session_id)
        self.metrics.tokens.labels("prompt").inc(prompt_t)
        self.metrics.tokens.labels("completion").inc(completion_t)
        return _Reply(msg, usage)

    async def _finish(self, turn: Turn) -> None:
        key = (turn.user_id, turn.session_id)
        if self._local_turns.get(key) is turn:
            del self._local_turns[key]
        try:
            await self.coordinator.release_turn(turn.user_id, turn.session_id, turn.lock_token)
        except Exception:
            log.exception("could not release the turn lock of %s", turn.session_id)

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
        await self.store.get_meta(user_id, session_id)
        local = self._local_turns.get((user_id, session_id))
        if local is not None:
            local.stop.set()
            return True
        return await self.coordinator.request_stop(user_id, session_id)

    async def chat(self, user_id: str, session_id: str, content: str, **kwargs: Any) -> TurnDone:
        turn = await self.prepare_turn(user_id, session_id, content, **kwargs)
        return await self.complete(turn)
