"""InFlight: the one owner of this process's turns in flight (STYLE rule 18).

- **Reservations.** One turn at a time per session in this process (`reserve`, an
  `async with`): the Redis lock cannot say so while Redis is down, and a local wait
  costs no round trip. A reservation that gets a generation (`run`) is held until the
  generation's task ends; one that does not is released when the block exits.
- **Admission.** At most `starts` turns are starting at once (reserved, not yet
  running their generation: the begin round trip, the context, the task's creation);
  the others wait in line for a place, in order, without a time limit and without being
  refused. A burst of 1 000 starts would otherwise take the event loop in lockstep
  (every start's next step queued behind every other's) and the deltas of the streams
  already running would wait behind all of them. A session's own wait (one turn at a
  time, `lock_wait_ms`) comes first and is unchanged. Finishes (storing the reply, once
  its last delta is out) are bounded alike: 1 000 streams that end together would
  otherwise stall the ones still streaming.
- **Generations.** Their tasks are created and awaited here, and nowhere else.
- **The tick.** One task per process, every TICK_S while generations run, makes one
  pipelined round trip for all of them (Coordinator.tick): the coalesced deltas of
  relayed generations go to their event streams (at most one append per generation per
  TICK_S), stop flags are polled every STOP_POLL_S, each generation's counted from its
  start so that 1 000 polls are not one burst (a stop asked through another
  process), and locks are renewed every lock_ttl / 3.
- **Shutdown.** `drain(grace_s)` waits for the generations, stops those still running
  after the grace period and waits for them to be stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from chatmem.chat.generation import Generation, TurnDone
from chatmem.errors import SessionBusy, StoreUnavailable
from chatmem.store.locks import Coordinator, TickItem

log = logging.getLogger(__name__)

TICK_S = 0.05
STOP_POLL_S = 0.3
# Stopped generations at the end of the grace period get this long to be stored.
STOP_PERSIST_S = 5.0

SessionKey = tuple[str, str]


class StoreHealth(Protocol):
    """Whether Redis is believed down, per user's node (the outbox replayer owns that
    state: under Cluster a dead master is down for the users of its slots only)."""

    def is_down(self, user_id: str) -> bool: ...

    def mark_down(self, exc: BaseException, user_id: str | None = None) -> None: ...


@dataclass(eq=False)
class Slot:
    key: SessionKey
    generation: Generation | None = None


class InFlight:
    def __init__(
        self, coordinator: Coordinator, health: StoreHealth, *, lock_wait_ms: int, starts: int = 0
    ) -> None:
        self.coordinator = coordinator
        self.health = health
        self.lock_wait_ms = lock_wait_ms
        # Admission: None when unbounded (starts 0).
        self._starts = asyncio.Semaphore(starts) if starts > 0 else None
        self._finishes = asyncio.Semaphore(starts) if starts > 0 else None
        self.starts_waiting = 0
        self._slots: dict[SessionKey, Slot] = {}
        self._freed: dict[SessionKey, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[TurnDone | None]] = set()
        self._renew_at: dict[Generation, float] = {}
        self._poll_at: dict[Generation, float] = {}
        self._ticker: asyncio.Task[None] | None = None

    # --- reservations ----------------------------------------------------------------

    @asynccontextmanager
    async def reserve(self, key: SessionKey) -> AsyncIterator[Slot]:
        """Hold the session in this process, waiting up to lock_wait_ms (SessionBusy)."""
        deadline = time.monotonic() + self.lock_wait_ms / 1000
        while key in self._slots:
            freed = self._freed.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(freed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise SessionBusy() from None
        slot = self._slots[key] = Slot(key)
        try:
            async with self._admitted():
                yield slot
        finally:
            if slot.generation is None or slot.generation.task is None:
                self._release(slot)

    @asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """A place among the turn starts in flight, waited for in line."""
        if self._starts is None:
            yield
            return
        self.starts_waiting += 1
        try:
            await self._starts.acquire()
        finally:
            self.starts_waiting -= 1
        try:
            yield
        finally:
            self._starts.release()

    def _release(self, slot: Slot) -> None:
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
            freed = self._freed.pop(slot.key, None)
            if freed is not None:
                freed.set()

    def local(self, key: SessionKey) -> Generation | None:
        """The generation this process runs on that session, if any."""
        slot = self._slots.get(key)
        return slot.generation if slot is not None else None

    @property
    def running(self) -> list[Generation]:
        return [s.generation for s in self._slots.values() if s.generation is not None]

    # --- generations -----------------------------------------------------------------

    def run(self, slot: Slot, gen: Generation) -> None:
        """Start the generation's task; the slot is held until it ends."""
        slot.generation = gen
        gen.finishing = self._finishes
        task = asyncio.create_task(self._own(slot, gen), name=f"generation {gen.session_id}")
        gen.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if not gen.degraded:
            ttl_s = self.coordinator.lock_ttl_ms / 1000
            self._renew_at[gen] = time.monotonic() + ttl_s / 3
            self._poll_at[gen] = time.monotonic() + STOP_POLL_S
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick_loop(), name="generation ticker")

    async def _own(self, slot: Slot, gen: Generation) -> TurnDone | None:
        try:
            return await gen.run()
        finally:
            self._renew_at.pop(gen, None)
            self._poll_at.pop(gen, None)
            self._release(slot)

    # --- the tick --------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Ends when no generation is left (run() starts it again)."""
        while self._tasks:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            try:
                await self._tick(now)
            except StoreUnavailable as exc:
                self.health.mark_down(exc)
            except Exception:
                log.exception("generation tick failed")

    async def _tick(self, now: float) -> None:
        items: list[TickItem] = []
        gens: list[Generation] = []
        # One event for all the appends of this tick (a generation's finish waits for its
        # append: deltas stay in order), not one per generation per tick.
        appended = asyncio.Event()
        ttl_s = self.coordinator.lock_ttl_ms / 1000
        for gen in self.running:
            if gen.degraded or gen.settling or gen.task is None:
                continue
            append = gen.relay and gen.appending is None and gen.unflushed
            item_poll = now >= self._poll_at.get(gen, now + 1) and not gen.stop_requested
            renew = now >= self._renew_at.get(gen, now + 1)
            if not (append or item_poll or renew):
                continue  # nothing to do: no item built (1 000 streams, every 50 ms)
            if self.health.is_down(gen.user_id):
                continue  # a stop reaches it through its own process meanwhile
            item = TickItem(gen.user_id, gen.session_id, gen.lock_token, gen.generation_id)
            if append:
                item.append = gen.take_unflushed()
                gen.appending = appended
            item.poll = item_poll
            if item_poll:
                self._poll_at[gen] = now + STOP_POLL_S
            if renew:
                item.renew = True
                self._renew_at[gen] = now + ttl_s / 3
            items.append(item)
            gens.append(gen)
        if not items:
            return
        try:
            results = await self.coordinator.tick(items)
        except BaseException:
            for gen, item in zip(gens, items, strict=True):
                if item.append is not None:  # not in the stream: the next tick retries it
                    gen.flushed = min(gen.flushed, item.append[0])
            raise
        finally:
            appended.set()
            for gen in gens:
                if gen.appending is appended:
                    gen.appending = None
        for gen, res in zip(gens, results, strict=True):
            if res.stop:
                gen.request_stop()
            if res.lost_lock:
                log.warning("generation on %s lost its session lock", gen.session_id)

    # --- shutdown --------------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Wait for running generations up to `grace_s`; stop the rest (their partial
        replies are stored as interrupted) and wait for them to be stored."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        if self._tasks:
            log.warning("stopping %d generations still running at shutdown", len(self._tasks))
            for gen in self.running:
                gen.request_stop()
            await asyncio.wait(set(self._tasks), timeout=STOP_PERSIST_S)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
