"""One turn as a server-owned generation (SPEC §3.4–§3.6).

A `Generation` reads the model's reply in a task of its own, owned by the process's
`InFlight` (chat/inflight.py), not by the request that started it: a client that goes
away does not end it, and any number of subscribers (`events()`) follow it, the request
that started it being one of them. When the reply ends — complete, stopped, or failed —
its `GenerationHost` (the turn service, chat/turns.py) persists it; the persistence runs
inside the generation's task, after reading, so nothing cancels it half-way.

A generation not asked to `relay` (a JSON turn) pays for nothing of streaming: no
subscriber wake-ups, no per-chunk objects, no event-stream appends.

Event ids (SSE `id`): `<generation id>.<offset>` for a delta, where offset is how many
characters of the reply the client has after it, and `<generation id>.end` for the final
event. A client that resumes after `g.o` gets the reply's text from character `o` on,
so it sees every character exactly once however the deltas were coalesced.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatmem.chat.reconcile import call_tokens
from chatmem.chat.turn_shape import TurnShape
from chatmem.context import AssembledContext
from chatmem.errors import ChatmemError
from chatmem.metrics import Metrics
from chatmem.models import TOOL_CALLS, Character, Message, SessionMeta, Usage
from chatmem.providers.base import ChatProvider, GenerationParams, StreamChunk, reply_chunks
from chatmem.store.turns import SessionFigures
from chatmem.tokens import count_tokens

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Delta:
    text: str
    # The reply's length once this text is added (the offset in its event id).
    offset: int = 0


@dataclass(slots=True)
class TurnDone:
    message: Message
    user_message: Message | None
    usage: Usage
    memory: str = "ok"
    replayed: bool = False
    figures: SessionFigures | None = None  # asked by TurnShape.figures (seed POST /chat)

    def payload(self) -> dict[str, Any]:
        """The `done` event's data (also what the event stream's end entry holds)."""
        return {
            "message": self.message.to_dict(),
            "user_message": self.user_message.to_dict() if self.user_message else None,
            "usage": self.usage.to_dict(),
            "memory": self.memory,
            "replayed": self.replayed,
        }


@dataclass(slots=True)
class Ended:
    """A final event read back from an event stream (a generation of another process)."""

    event: str  # "done" or "error"
    data: dict[str, Any]


TurnEvent = Delta | TurnDone
NativeEvent = Delta | TurnDone | Ended


@dataclass(slots=True)
class Reading:
    """What reading the model produced, handed to the host to persist."""

    text: str
    usage: StreamChunk | None
    finish_reason: str | None
    interrupted: bool
    error: ChatmemError | None
    # The model's tool calls (OpenAI's objects), stored and relayed with the reply.
    tool_calls: tuple[dict[str, Any], ...] = ()

    def reply_tokens(self) -> int:
        """The reply's size in the context: its text and its tool calls."""
        return count_tokens(self.text) + call_tokens(self.tool_calls)

    def reply_metadata(self, **fields: Any) -> dict[str, Any]:
        """The reply message's metadata: `fields`, then its tool calls (kept with the
        reply: the OpenAI route's agent loops, chat/reconcile.py)."""
        if self.tool_calls:
            fields[TOOL_CALLS] = list(self.tool_calls)
        return fields


class GenerationHost(Protocol):
    """What a generation needs from the service that started it."""

    @property
    def provider(self) -> ChatProvider: ...

    @property
    def metrics(self) -> Metrics: ...

    async def persist(self, gen: Generation, reading: Reading) -> TurnDone | None:
        """Store the reply (or only end the turn, when it failed with no text); the
        final event. Raises what the client should see instead of a `done`."""
        ...


@dataclass(eq=False)
class Generation:
    """A turn whose user message is stored and whose session lock is held (or, when
    `degraded`, whose messages go to the outbox)."""

    host: GenerationHost
    user_id: str
    meta: SessionMeta
    character: Character
    user_message: Message
    context: AssembledContext
    params: GenerationParams
    lock_token: str
    reply_id: str
    generation_id: str
    relay: bool = False
    degraded: bool = False
    # The turn's place in its session's order (store/codec.py `turn_ordinal`), and what
    # a session it creates (an outbox replay) starts with: its route's settings.
    ordinal: int = 0
    shape: TurnShape = field(default_factory=TurnShape)
    # A write of the turn that too few replicas confirmed (the write concern).
    unconfirmed: bool = False
    # How a subscriber's disconnect is taken: "continue" (native) or "stop".
    on_disconnect: str = "continue"
    # A revision (SPEC §3b): "regenerate" or "continue" the newest message, `revises`;
    # the reply replaces it (chat/editing.py `revised`) instead of being appended.
    revision: str = ""
    revises: Message | None = None
    task: asyncio.Task[TurnDone | None] | None = None
    # Bounds the finishes in flight in the process (set by InFlight.run; None: none).
    finishing: asyncio.Semaphore | None = None
    # Set while this generation's text is being appended to its event stream.
    appending: asyncio.Event | None = None
    flushed: int = 0  # how much of the text is in the event stream
    _parts: list[str] = field(default_factory=list)
    _ends: list[int] = field(default_factory=list)
    _length: int = 0
    # Set once reading has ended: the lock is the finish script's to release now.
    settling: bool = False
    _stop: bool = False
    _reading: bool = False
    _final: TurnDone | ChatmemError | None = None
    # One future per waiting subscriber (most generations have one), set at each change:
    # a subscriber that leaves cancels only its own.
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return self.meta.session_id

    @property
    def key(self) -> tuple[str, str]:
        return (self.user_id, self.meta.session_id)

    @property
    def finished(self) -> bool:
        return self._final is not None

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @classmethod
    def replayed(cls, host: GenerationHost, done: TurnDone, **fields: Any) -> Generation:
        """A generation that ended before it was asked for (an idempotent retry)."""
        gen = cls(host=host, **fields)
        gen._add(done.message.content)
        gen._final = done
        return gen

    # --- the task ----------------------------------------------------------------------

    async def run(self) -> TurnDone | None:
        """Read the reply, then persist it. Run once, by InFlight."""
        started = time.perf_counter()
        usage: StreamChunk | None = None
        finish_reason: str | None = None
        tool_calls: tuple[dict[str, Any], ...] = ()
        error: ChatmemError | None = None
        metrics = self.host.metrics
        # Streams only: a JSON turn is a generation, not a stream a client holds open.
        streams = metrics.active_streams if self.relay else None
        if streams is not None:
            streams.inc()
        try:
            if not self._stop:
                self._reading = True
                stream = reply_chunks(
                    self.host.provider, self.context.messages, self.params, relayed=self.relay
                )
                async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
                    async for chunk in chunks:
                        if chunk.usage is not None:
                            usage = chunk
                        if chunk.finish_reason:
                            finish_reason = chunk.finish_reason
                        if chunk.tool_calls:
                            tool_calls = chunk.tool_calls
                        if chunk.text:
                            if not self._length:
                                metrics.first_token.observe(time.perf_counter() - started)
                            self._add(chunk.text)
        except asyncio.CancelledError:
            # A stop (request_stop cancels the read); anything else cancelling this task
            # is treated alike: what was said is kept, marked interrupted.
            self._stop = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except ChatmemError as exc:
            error = exc
        except Exception as exc:
            log.exception("generation of %s failed", self.session_id)
            error = ChatmemError("the reply could not be generated", code="generation_failed")
            error.__cause__ = exc
        finally:
            self._reading = False
            self.settling = True
            if streams is not None:
                streams.dec()
        reading = Reading(
            "".join(self._parts),
            usage,
            finish_reason,
            self._stop or error is not None,
            error,
            tool_calls,
        )
        outcome = "stopped" if self._stop else "error" if error else "ok"
        try:
            # In line with the other finishes of the process (InFlight's admission): its
            # deltas are all out, so waiting delays only its final event, not a stream.
            async with self.finishing or contextlib.nullcontext():
                done = await self.host.persist(self, reading)
        except ChatmemError as exc:
            self._settle(exc)
            return None
        finally:
            metrics.turn_latency.labels(outcome).observe(time.perf_counter() - started)
        self._settle(done if done is not None else error or ChatmemError("no reply"))
        return done

    def request_stop(self) -> None:
        """Stop reading: the reply so far is stored, marked interrupted."""
        if self._stop or self.finished:
            return
        self._stop = True
        if self._reading and self.task is not None:
            self.task.cancel()

    def _add(self, text: str) -> None:
        self._parts.append(text)
        self._length += len(text)
        if self.relay:
            self._ends.append(self._length)
            self._notify()

    def _settle(self, final: TurnDone | ChatmemError) -> None:
        self._final = final
        self._notify()

    def _notify(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # --- what subscribers and the event stream see ---------------------------------------

    def text_from(self, offset: int) -> str:
        if offset <= 0:
            return "".join(self._parts)
        if not self._ends:  # not relayed: one string, built on demand
            return "".join(self._parts)[offset:]
        i = bisect.bisect_right(self._ends, offset)
        if i >= len(self._parts):
            return ""
        start = self._ends[i] - len(self._parts[i])
        return self._parts[i][offset - start :] + "".join(self._parts[i + 1 :])

    def _deltas_from(self, offset: int) -> list[Delta]:
        """The text after `offset` as it came: one delta per chunk of the model."""
        if not self._ends:  # not relayed (a replay, say): one delta
            return [Delta(self.text_from(offset), self._length)]
        i = bisect.bisect_right(self._ends, offset)
        out = []
        for j in range(i, len(self._parts)):
            end = self._ends[j]
            part = self._parts[j]
            out.append(Delta(part[max(0, offset - (end - len(part))) :], end))
        return out

    @property
    def unflushed(self) -> bool:
        """Whether some text is not yet in the event stream."""
        return self._length > self.flushed

    def take_unflushed(self) -> tuple[int, str] | None:
        """The text not yet in the event stream, as (offset, text); now counted in."""
        if self._length <= self.flushed:
            return None
        offset = self.flushed
        self.flushed = self._length
        return offset, self.text_from(offset)

    async def wait(self) -> TurnDone:
        """The final event, once the reply is stored; raises what the turn failed with."""
        while self._final is None:
            await self._next_change()
        if isinstance(self._final, ChatmemError):
            raise self._final
        return self._final

    async def events(self, after: int = 0) -> AsyncIterator[TurnEvent]:
        """Deltas from character `after` on, as they come, then the final event."""
        async for batch in self.batches(after):
            for event in batch:
                yield event

    async def batches(self, after: int = 0) -> AsyncIterator[list[TurnEvent]]:
        """`events`, in lists: each time a subscriber wakes, all there is to send (the
        deltas that arrived meanwhile, and the final event once there is one), so that
        a stream can write them at once. Raises what the turn failed with."""
        sent = after
        while True:
            if self._length > sent:
                batch: list[TurnEvent] = list(self._deltas_from(sent))
                sent = self._length
                if isinstance(self._final, TurnDone):  # ended: nothing more will come
                    batch.append(self._final)
                    yield batch
                    return
                yield batch
            elif self._final is not None:
                break
            else:
                await self._next_change()
        if isinstance(self._final, ChatmemError):
            raise self._final
        yield [self._final]

    async def _next_change(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter.cancelled():  # its subscriber left (a change took it off already)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
