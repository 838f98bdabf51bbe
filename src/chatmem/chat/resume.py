"""Stopping and re-attaching to a session's generation, from any process, and the
recovery of a generation whose process died (SPEC §3.5, §3.6).

Re-attaching reads the generation's event stream (store/streams.py): what was missed
after `Last-Event-ID`, then live entries until the end. A generation of this process is
followed in memory instead. A stream that has no end while no process holds the
session's lock belongs to a generation whose process died: whoever finds it (a send, a
stop, a re-attach) stores what it holds as the reply, marked interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chatmem.chat.generation import Delta, Ended, NativeEvent, TurnDone
from chatmem.chat.inflight import InFlight
from chatmem.errors import SessionNotFound
from chatmem.metrics import Metrics
from chatmem.models import Message, Role, Usage, new_id
from chatmem.store.streams import (
    GenerationStreams,
    StreamDelta,
    StreamEnd,
    StreamEntry,
    StreamSnapshot,
)
from chatmem.store.turns import TurnStore
from chatmem.tokens import count_tokens

log = logging.getLogger(__name__)

# A re-attached client following another process's generation waits this long per read.
FOLLOW_BLOCK_MS = 1000


def parse_event_id(last_event_id: str | None) -> tuple[str, int | None]:
    """`g.o` → (g, o); `g.end` → (g, None); anything else → ("", 0): from the start."""
    if not last_event_id or "." not in last_event_id:
        return "", 0
    gen_id, _, rest = last_event_id.rpartition(".")
    if rest == "end":
        return gen_id, None
    return (gen_id, int(rest)) if rest.isdigit() else ("", 0)


@dataclass(slots=True)
class Attached:
    generation_id: str
    events: AsyncIterator[NativeEvent]


class Resumer:
    def __init__(
        self,
        turn_store: TurnStore,
        streams: GenerationStreams,
        inflight: InFlight,
        metrics: Metrics,
    ) -> None:
        self.turn_store = turn_store
        self.streams = streams
        self.inflight = inflight
        self.metrics = metrics

    async def recover(self, user_id: str, session_id: str, snap: StreamSnapshot) -> None:
        """Store what a dead process's generation said as its reply, interrupted."""
        start = snap.start
        if start is None:
            return
        text = snap.text()
        completion = count_tokens(text)
        usage = Usage(0, completion, 0.0)
        reply = Message(
            Role.ASSISTANT,
            text,
            completion,
            msg_id=start.reply_id or new_id(),
            metadata={"interrupted": True, "usage": usage.to_dict()},
        )
        reply.seq = start.user_seq + 1
        finished = await self.turn_store.finish(
            user_id,
            session_id,
            reply,
            usage,
            token=start.token,
            generation_id=start.generation_id,
            tail=None,
            end_payload=TurnDone(reply, None, usage).payload(),
        )
        if finished.stored_now:
            log.warning("stored the reply of a generation whose process died on %s", session_id)
            self.metrics.generations_recovered.inc()

    async def stop(self, user_id: str, session_id: str) -> bool:
        """Stop the session's generation, in this process or any other."""
        # Local first: a degraded generation can be stopped while Redis is down. The key
        # holds the caller's user id, so a generation found is the caller's own.
        local = self.inflight.local((user_id, session_id))
        if local is not None:
            local.request_stop()
            return True
        snap = await self.streams.snapshot(user_id, session_id)
        if not snap.session_exists:
            raise SessionNotFound(f"session {session_id!r} not found")
        if snap.orphaned:
            await self.recover(user_id, session_id, snap)
            return True
        return await self.turn_store.coordinator.request_stop(user_id, session_id)

    async def attach(
        self, user_id: str, session_id: str, last_event_id: str | None
    ) -> Attached | None:
        """The session's running (or just ended) generation's events after
        `last_event_id`; None when there is nothing to re-attach to."""
        want_gen, after = parse_event_id(last_event_id)
        local = self.inflight.local((user_id, session_id))
        if local is not None and local.relay and want_gen in ("", local.generation_id):
            if after is None:
                return None
            return Attached(local.generation_id, local.events(after))
        snap = await self.streams.snapshot(user_id, session_id)
        if not snap.session_exists:
            raise SessionNotFound(f"session {session_id!r} not found")
        if snap.orphaned:
            await self.recover(user_id, session_id, snap)
            snap = await self.streams.snapshot(user_id, session_id)
        start = snap.start
        if start is None:
            return None
        if want_gen != start.generation_id:
            after = 0
        elif after is None:
            return None
        events = self._replay_and_follow(user_id, session_id, snap, after)
        return Attached(start.generation_id, events)

    async def _replay_and_follow(
        self, user_id: str, session_id: str, snap: StreamSnapshot, after: int
    ) -> AsyncIterator[NativeEvent]:
        sent = after
        last_entry = "0-0"
        for entry_id, entry in snap.entries:
            last_entry = entry_id
            event, sent = _event_of(entry, sent)
            if event is not None:
                yield event
                if isinstance(event, Ended):
                    return
        async for event in self._follow(user_id, session_id, last_entry, sent):
            yield event

    async def _follow(
        self, user_id: str, session_id: str, after_entry: str, sent: int
    ) -> AsyncIterator[NativeEvent]:
        """Follow the stream live until its end, recovering it if its process dies."""
        while True:
            entries = await self.streams.follow(
                user_id, session_id, after_entry, block_ms=FOLLOW_BLOCK_MS
            )
            if not entries:
                if not await self.streams.lock_held(user_id, session_id):
                    snap = await self.streams.snapshot(user_id, session_id)
                    if not snap.entries:
                        return
                    if snap.orphaned:
                        await self.recover(user_id, session_id, snap)
                continue
            for entry_id, entry in entries:
                after_entry = entry_id
                event, sent = _event_of(entry, sent)
                if event is not None:
                    yield event
                    if isinstance(event, Ended):
                        return

    async def wait_end(self, user_id: str, session_id: str) -> None:
        """Wait until the session's generation (of another process) has ended."""
        async for _ in self._follow(user_id, session_id, "0-0", 0):
            pass


def _event_of(entry: StreamEntry, sent: int) -> tuple[NativeEvent | None, int]:
    """The event a client that has `sent` characters of the reply gets for one stream
    entry (None: nothing new in it), and how many characters it has then."""
    if isinstance(entry, StreamDelta):
        text = _text_after(entry, sent)
        if not text:
            return None, sent
        sent = entry.offset + len(entry.text)
        return Delta(text, sent), sent
    if isinstance(entry, StreamEnd):
        return Ended(entry.event, entry.payload), sent
    return None, sent


def _text_after(entry: StreamDelta, sent: int) -> str:
    end = entry.offset + len(entry.text)
    if end <= sent:
        return ""
    return entry.text[max(0, sent - entry.offset) :]
