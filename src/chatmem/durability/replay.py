"""Getting back to Redis after an outage: the replayer of the outbox (SPEC §7).

While Redis cannot be reached, turns degrade (service.py) and write their messages to the
outbox. `OutboxReplayer` runs in the background of each API process: every
REPLAY_INTERVAL_S while something is owed to Redis it pings it and, once it answers,
releases the turn locks this process could not release, lets turns use Redis again, then
appends the outbox's records session by session, in order. Each session's records are
appended under the session's turn lock, as a turn would be, so they do not interleave
with a turn of another process; a session whose lock is taken is tried again at the next
round. A turn of this process on a session with records still pending replays them
itself, under the lock it holds, before its own message (`replay_session`): a busy
session is not left degraded while the loop catches up. Appends are idempotent by
message id (the store skips ids it already holds), so a record replayed twice is stored
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from chatmem.characters import CharacterRegistry
from chatmem.durability.outbox import Outbox, OutboxRecord
from chatmem.errors import (
    ChatmemError,
    NotReplicated,
    SessionBusy,
    SessionNotFound,
    StoreUnavailable,
)
from chatmem.store.conversations import RedisMemoryStore
from chatmem.store.locks import Coordinator

log = logging.getLogger(__name__)

REPLAY_INTERVAL_S = 0.5
# A sibling worker that died leaves its outbox behind; the survivors look for it this often.
ORPHAN_SCAN_INTERVAL_S = 30.0


class OutboxReplayer:
    def __init__(
        self,
        outbox: Outbox,
        store: RedisMemoryStore,
        coordinator: Coordinator,
        characters: CharacterRegistry,
    ) -> None:
        self.outbox = outbox
        self.store = store
        self.coordinator = coordinator
        self.characters = characters
        # Set when Redis failed a call, cleared when it answers a ping again. While set,
        # turns degrade at once instead of each waiting for its own timeout.
        self.store_down = False
        self.replayed = 0  # records appended to Redis (or found already there)
        self._releases: list[tuple[str, str, str]] = []
        self._lock = asyncio.Lock()  # one replay at a time: the loop's, or the last one
        self._task: asyncio.Task[None] | None = None

    # --- what turns ask ----------------------------------------------------------------

    def mark_down(self, exc: BaseException) -> None:
        if isinstance(exc, NotReplicated):
            # Redis answers (it has the write; its replicas did not confirm it in time):
            # reads are fine, so turns keep their memory. The write waits in the outbox.
            return
        if not self.store_down:
            log.warning("redis unavailable, turns degrade until it is back: %s", exc)
        self.store_down = True

    def defer_release(self, user_id: str, session_id: str, token: str) -> None:
        """Release this turn lock once Redis is back: with AOF it outlives the outage, and
        the session would be busy until the lock's TTL."""
        self._releases.append((user_id, session_id, token))

    async def readiness(self) -> tuple[bool, int]:
        """(Redis answers, records still to replay)."""
        pending = self.outbox.pending
        if self.store_down:
            return False, pending
        try:
            return await self.store.ping(), pending
        except Exception as exc:
            self.mark_down(exc)
            return False, pending

    # --- the background task -----------------------------------------------------------

    async def start(self) -> None:
        await self.outbox.adopt_orphans()
        self._task = asyncio.create_task(self._run(), name="outbox replayer")

    async def _run(self) -> None:
        next_scan = time.monotonic() + ORPHAN_SCAN_INTERVAL_S
        while True:
            await asyncio.sleep(REPLAY_INTERVAL_S)
            try:
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + ORPHAN_SCAN_INTERVAL_S
                    await self.outbox.adopt_orphans()
                if self.store_down or self._releases or self.outbox.pending:
                    await self.flush()
            except Exception:
                # The loop must outlive any one failure, or nothing would be replayed.
                log.exception("outbox replay failed; retrying")

    async def close(self) -> None:
        """Stop the loop, make one last replay attempt and close the outbox; what could
        not be replayed stays on disk for the next start on this data dir."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.outbox.pending or self._releases:
            try:
                await self.flush()
            except Exception:
                log.exception("last outbox replay failed")
        await self.outbox.close()

    # --- one replay round ----------------------------------------------------------------

    async def flush(self) -> bool:
        """One replay attempt; True when Redis answered and nothing is left to replay."""
        async with self._lock:
            try:
                await self.store.ping()
                while self._releases:
                    await self.coordinator.release_turn(*self._releases[0])
                    self._releases.pop(0)
                if self.store_down:
                    log.warning("redis is back; %d outbox records to replay", self.outbox.pending)
                    await self._drop_idle_connections()
                # Turns may use Redis again now: one on a session with records pending
                # replays them first (replay_session).
                self.store_down = False
                await self._replay()
            except StoreUnavailable as exc:
                self.mark_down(exc)
                return False
            return not self.outbox.pending

    async def _drop_idle_connections(self) -> None:
        """Connections opened before the outage point at a server that has gone: each
        would fail once on its next use, and degrade a turn for nothing."""
        pool = getattr(self.store.redis, "connection_pool", None)
        if pool is not None:  # a cluster client manages its nodes' connections itself
            await pool.disconnect(inuse_connections=False)

    async def replay_session(self, user_id: str, session_id: str) -> None:
        """Append the session's pending records now; the caller holds its turn lock."""
        records = self.outbox.pending_for(user_id, session_id)
        if records:
            await self._replay_session(records)

    async def _replay(self) -> None:
        sessions = dict.fromkeys(r.session_key for r in self.outbox.pending_records())
        for user_id, session_id in sessions:
            token = self.coordinator.new_token()
            try:
                await self.coordinator.acquire_turn(user_id, session_id, token=token, wait_ms=0)
            except SessionBusy:
                continue  # a turn of another process is writing there: next round
            except StoreUnavailable:
                self.defer_release(user_id, session_id, token)
                raise
            try:
                # Read again under the lock: a turn may have replayed them meanwhile.
                await self.replay_session(user_id, session_id)
            finally:
                try:
                    await self.coordinator.release_turn(user_id, session_id, token)
                except StoreUnavailable:
                    self.defer_release(user_id, session_id, token)

    async def _replay_session(self, records: list[OutboxRecord]) -> None:
        done: list[OutboxRecord] = []
        try:
            for rec in records:
                try:
                    await self._apply(rec)
                except StoreUnavailable:
                    raise
                except ChatmemError as exc:
                    # Refused for good (not "not reachable"): retrying would block the
                    # session's later records forever.
                    await self.outbox.reject(rec, f"{exc.code}: {exc.message}")
                    continue
                done.append(rec)
                self.replayed += 1
        finally:
            await self.outbox.ack(done)

    async def _apply(self, rec: OutboxRecord) -> None:
        try:
            # Acknowledged while Redis was down: not refused by the storage cap now.
            await self.store.append(
                rec.user_id, rec.session_id, rec.messages, usage=rec.usage, enforce_quota=False
            )
            return
        except SessionNotFound:
            pass
        # Created without a greeting: the user never saw one in this conversation.
        title = rec.character_id
        with contextlib.suppress(ChatmemError):
            title = (await self.characters.get(rec.character_id)).name
        await self.store.create_session(
            rec.user_id, rec.character_id, session_id=rec.session_id, title=title, ensure=True
        )
        await self.store.append(
            rec.user_id, rec.session_id, rec.messages, usage=rec.usage, enforce_quota=False
        )
