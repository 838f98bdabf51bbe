"""One prepared chat turn, streamed: the events a client sees, and what happens after.

`Turn.events()` relays the provider's stream as `Delta`s and ends with a `TurnDone` once
the reply is persisted; if the client goes away (the generator is closed or cancelled)
or a stop is requested, the partial reply is persisted as interrupted and the upstream
generation is closed. Everything after the stream runs as one shielded unit tracked by
the service, so it is never cut half-way nor left dangling.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatmem.context import AssembledContext
from chatmem.models import Character, Message, SessionMeta, Usage
from chatmem.providers.base import GenerationParams, StreamChunk

if TYPE_CHECKING:
    from chatmem.chat.service import ChatService

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


# eq=False: a turn is itself (hashable by identity), never equal to another.
@dataclass(slots=True, eq=False)
class Turn:
    """A prepared turn: the user message is stored and the session's lock is held.

    Iterate `events()` exactly once; its cleanup releases the lock. A `degraded` turn
    holds no Redis lock (only this process's reservation) and writes to the outbox.
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
    degraded: bool = False
    reservation: object = None

    @property
    def session_id(self) -> str:
        return self.meta.session_id

    async def events(self) -> AsyncGenerator[TurnEvent, None]:
        svc = self.service
        self.started = True
        svc._streaming.add(self)
        svc._no_streams.clear()
        try:
            async with contextlib.aclosing(self._events()) as events:
                async for event in events:
                    yield event
        finally:
            svc._streaming.discard(self)
            if not svc._streaming:
                svc._no_streams.set()

    async def _events(self) -> AsyncGenerator[TurnEvent, None]:
        svc = self.service
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
            memory = "degraded" if reply.degraded else "ok"
            yield TurnDone(reply.message, self.user_message, reply.usage, memory=memory)
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
        """Cancel the pump when `stop` is set: by this process's stop route, by shutdown,
        or by the service's stop poller when another process asks."""
        waiter = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait((pump, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self.stop.is_set():
            pump.cancel()


@dataclass(slots=True)
class PersistedReply:
    message: Message
    usage: Usage
    degraded: bool = False
