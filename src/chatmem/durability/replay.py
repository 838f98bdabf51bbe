"""Getting back to Redis after an outage: the replayer of the outbox (SPEC §7).

While Redis cannot be reached, turns degrade (chat/degraded.py) and write their messages
to the outbox; a turn whose writes too few replicas confirmed keeps them there too,
marked `applied`, until one does. `OutboxReplayer` runs in the background of each API
process: every REPLAY_INTERVAL_S while something is owed to Redis it pings it and, once
it answers, releases the turn locks this process could not release, lets turns use
Redis again, then stores the outbox's records (`TurnStore.place`), each where its turn
began among what other processes stored meanwhile (its ordinal). No session lock is
needed for that, so no record ever waits for one; a turn of this process on a session
with records still pending stores them itself before its own (`replay_session`).
Records are idempotent by message id (a record stored twice is stored once), so an
`applied` one is simply stored again until its write is confirmed (at most every
CONFIRM_INTERVAL_S, and as soon as a node is back), which also puts it back if a
failover lost it.

"Redis is down" is kept per node (store/placement.py): under Redis Cluster a dead master
degrades only the users of its slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from chatmem.characters import CharacterRegistry
from chatmem.durability.outbox import Outbox, OutboxRecord
from chatmem.errors import ChatmemError, NotReplicated, SessionNotFound, StoreUnavailable
from chatmem.store.locks import Coordinator
from chatmem.store.placement import ALL, Placement
from chatmem.store.turns import TurnStore

log = logging.getLogger(__name__)

REPLAY_INTERVAL_S = 0.5
# A replica outage leaves every turn unconfirmed: their records are stored again (and
# WAITed for) at most this often, and at once when a node is back (a failover: their
# locks may have come back with the replica, see _apply).
CONFIRM_INTERVAL_S = 1.0
# A sibling worker that died leaves its outbox behind; the survivors look for it this often.
ORPHAN_SCAN_INTERVAL_S = 30.0


class OutboxReplayer:
    def __init__(
        self, outbox: Outbox, turn_store: TurnStore, characters: CharacterRegistry
    ) -> None:
        self.outbox = outbox
        self.turn_store = turn_store
        self.store = turn_store.store
        self.coordinator: Coordinator = turn_store.coordinator
        self.placement = Placement(self.store.redis)
        self.characters = characters
        # Nodes that failed a call, until they answer a ping again (ALL: the one Redis).
        # While a user's node is in it, that user's turns degrade at once instead of
        # each waiting for its own timeout.
        self._down: dict[str, str] = {}
        self.replayed = 0  # records stored in Redis (or found already there)
        self._releases: list[tuple[str, str, str]] = []
        self._confirm_at = 0.0
        self._lock = asyncio.Lock()  # one replay at a time: the loop's, or the last one
        self._task: asyncio.Task[None] | None = None

    # --- what turns ask ----------------------------------------------------------------

    def is_down(self, user_id: str) -> bool:
        """Whether the node of the user's keys is believed down."""
        down = self._down
        return bool(down) and (ALL in down or self.placement.node_of(user_id) in down)

    def mark_down(self, exc: BaseException, user_id: str | None = None) -> None:
        """Redis failed a call (of `user_id`'s keys, if given). Under Cluster a failure
        no user can be named for (a pipeline of many) marks no node: the turns of the
        node's users find it themselves."""
        if isinstance(exc, NotReplicated):
            # Redis answers (it has the write; its replicas did not confirm it in time):
            # reads are fine, so turns keep their memory.
            return
        if user_id is None and self.placement.sharded:
            return
        node = ALL if user_id is None else self.placement.node_of(user_id)
        if node not in self._down:
            log.warning("redis unavailable (node %s), its turns degrade until it is back: %s",
                        node, exc)  # fmt: skip
            self._down[node] = str(exc)

    def defer_release(self, user_id: str, session_id: str, token: str) -> None:
        """Release this turn lock once Redis is back: with AOF it outlives the outage, and
        the session would be busy until the lock's TTL."""
        self._releases.append((user_id, session_id, token))

    async def readiness(self) -> dict[str, bool | int]:
        """Whether Redis answers (every node), records still to store in Redis, and
        records stored but not confirmed by a replica yet (not a reason to be unready:
        another process would not do better)."""
        state: dict[str, bool | int] = {
            "redis": not self._down,
            "outbox": self.outbox.pending,
            "unconfirmed": self.outbox.unconfirmed,
        }
        if not self._down:
            try:
                state["redis"] = await self.store.ping()
            except Exception as exc:
                self.mark_down(exc)
                state["redis"] = False
        return state

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
                if self._down or self._releases or self.outbox.pending or self._confirm_due():
                    await self.flush()
            except Exception:
                # The loop must outlive any one failure, or nothing would be replayed.
                log.exception("outbox replay failed; retrying")

    def _confirm_due(self) -> bool:
        return bool(self.outbox.unconfirmed) and time.monotonic() >= self._confirm_at

    async def close(self) -> None:
        """Stop the loop, make one last replay attempt and close the outbox; what could
        not be replayed stays on disk for the next start on this data dir."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.outbox.pending or self.outbox.unconfirmed or self._releases:
            try:
                await self.flush(confirm=True)
            except Exception:
                log.exception("last outbox replay failed")
        await self.outbox.close()

    # --- one replay round ----------------------------------------------------------------

    async def flush(self, *, confirm: bool = False) -> bool:
        """One replay attempt; True when Redis answered and nothing is left to store."""
        async with self._lock:
            if not await self._back():
                return False
            try:
                await self._release_deferred()
                await self._replay(confirm=confirm or self._confirm_due())
            except StoreUnavailable as exc:
                self.mark_down(exc)
                return False
            return not self.outbox.pending and not self._down

    async def _back(self) -> bool:
        """Ping the nodes believed down; those that answer are up again. True when none
        is left down."""
        for node in list(self._down):
            try:
                await self.placement.answers(node)
            except StoreUnavailable:
                continue
            log.warning("redis is back (node %s); %d outbox records to store", node,
                        self.outbox.pending)  # fmt: skip
            await self._drop_idle_connections()
            # Turns of its users may use Redis again now: one on a session with records
            # pending stores them first (replay_session).
            del self._down[node]
            self._confirm_at = 0.0
        if ALL in self._down:
            return False
        if not self._down:
            try:
                await self.store.ping()
            except StoreUnavailable as exc:
                self.mark_down(exc)
                return False
        return True

    async def _release_deferred(self) -> None:
        kept = []
        for user_id, session_id, token in self._releases:
            if self.is_down(user_id):
                kept.append((user_id, session_id, token))
                continue
            try:
                await self.coordinator.release_turn(user_id, session_id, token)
            except StoreUnavailable as exc:
                self.mark_down(exc, user_id)
                kept.append((user_id, session_id, token))
        self._releases = kept

    async def _drop_idle_connections(self) -> None:
        """Connections opened before the outage point at a server that has gone: each
        would fail once on its next use, and degrade a turn for nothing."""
        pool = getattr(self.store.redis, "connection_pool", None)
        if pool is not None:  # a cluster client manages its nodes' connections itself
            await pool.disconnect(inuse_connections=False)

    async def replay_session(
        self, user_id: str, session_id: str, *, applied_too: bool = False
    ) -> None:
        """Store the session's records not yet in Redis now (`applied_too`: those that
        are, too); before a turn of this process on it."""
        records = self.outbox.pending_for(user_id, session_id)
        if not applied_too:
            records = [r for r in records if not r.applied]
        if records:
            await self._replay_session(records)

    async def _replay(self, *, confirm: bool) -> None:
        sessions = dict.fromkeys(
            r.session_key for r in self.outbox.pending_records() if confirm or not r.applied
        )
        short = False
        for user_id, session_id in sessions:
            if self.is_down(user_id):
                continue
            records = self.outbox.pending_for(user_id, session_id)
            if short and not self.placement.sharded and all(r.applied for r in records):
                continue  # one master: a replica that did not confirm one lags for all
            try:
                short |= not await self._replay_session(records)
            except StoreUnavailable as exc:
                self.mark_down(exc, user_id)
                if ALL in self._down:
                    raise
        if confirm:
            self._confirm_at = time.monotonic() + (CONFIRM_INTERVAL_S if short else 0)

    async def _replay_session(self, records: list[OutboxRecord]) -> bool:
        """Store the records in order; False if a replica did not confirm some."""
        done: list[OutboxRecord] = []
        confirmed = True
        try:
            for rec in records:
                try:
                    ok = await self._apply(rec)
                except StoreUnavailable:
                    raise
                except ChatmemError as exc:
                    # Refused for good (not "not reachable"): retrying would block the
                    # session's later records forever.
                    await self.outbox.reject(rec, f"{exc.code}: {exc.message}")
                    continue
                if not rec.applied:
                    self.replayed += 1
                if ok:
                    done.append(rec)
                else:
                    rec.applied = True
                    confirmed = False
        finally:
            await self.outbox.ack(done)
        return confirmed

    async def _apply(self, rec: OutboxRecord) -> bool:
        """Store one record where its turn began; whether a replica confirmed it."""
        place = self.turn_store.place
        args = (rec.user_id, rec.session_id, rec.messages, rec.usage)
        stored, confirmed = await place(*args, ordinal=rec.ordinal)
        if rec.lock_token:
            # Its turn released the lock, but a failover may have brought it back from a
            # replica that never saw the release: no one would release it but its TTL.
            await self.coordinator.release_turn(rec.user_id, rec.session_id, rec.lock_token)
        if stored is not None:
            return confirmed
        # Created without a greeting (the user never saw one in this conversation), with
        # what the turn's route gives a new conversation.
        title = rec.character_id
        with contextlib.suppress(ChatmemError):
            title = (await self.characters.get(rec.character_id)).name
        await self.store.create_session(
            rec.user_id,
            rec.character_id,
            session_id=rec.session_id,
            title=title,
            ttl_s=rec.ttl_s,
            window_size=rec.window_size,
            ensure=True,
            min_ttl_s=1,
        )
        stored, confirmed = await place(*args, ordinal=rec.ordinal)
        if stored is None:
            raise SessionNotFound(f"session {rec.session_id!r} is gone again")
        return confirmed
