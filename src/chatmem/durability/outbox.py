"""The outbox: turns' messages kept on local disk while Redis cannot be reached, or
while no replica has confirmed them (SPEC §7).

    <data_dir>/outbox/<pid>-<start ms>-<token>-<n>.jsonl   this process's file (one at a time)
    <data_dir>/outbox/rejected.log                  records the store refused for good

`add` returns once its record is written and fsynced (outbox_file.py has the format), so
a turn answered from the outbox survives a crash of this process. A process holds an
exclusive flock on each file it has open, for as long as it lives: a file whose lock is
free belongs to a dead process, and `adopt_orphans` takes it over, so two processes never
replay the same file. A file whose records are all acknowledged is deleted. What a record
means (store it where its turn began, create a missing session) is the replayer's
business (replay.py), not this module's. `pending` counts the records not yet in Redis,
`unconfirmed` those in Redis (`applied`) that wait for a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from chatmem.durability.outbox_file import (
    REJECTED_FILE,
    SUFFIX,
    OutboxFile,
    OutboxRecord,
    SessionKey,
    adopt,
    create,
)
from chatmem.models import Message, Usage
from chatmem.permissions import append_private, private_dir

__all__ = ["OUTBOX_DIR", "REJECTED_FILE", "Outbox", "OutboxRecord"]

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"


class Outbox:
    """This process's outbox files, and those it adopted from dead processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._files: list[OutboxFile] = []  # adopted ones first: they are older
        self._own: OutboxFile | None = None
        self._own_seq = 0
        # pid and start time name the writer for an operator; the token keeps two outboxes
        # of one process (two apps in one test, say) from ever choosing the same name.
        self._name_prefix = f"{os.getpid()}-{int(time.time() * 1000)}-{secrets.token_hex(3)}"
        self._opening = asyncio.Lock()
        self._narrowed = False
        self._sessions: Counter[SessionKey] = Counter()

    # --- what is pending -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records not yet stored in Redis."""
        return sum(not r.applied for f in self._files for r in f.pending.values())

    @property
    def unconfirmed(self) -> int:
        """Records stored in Redis that no replica has confirmed yet."""
        return sum(r.applied for f in self._files for r in f.pending.values())

    def holds(self, user_id: str, session_id: str) -> bool:
        """Whether records of the session are kept (stored in Redis or not yet)."""
        return self._sessions[(user_id, session_id)] > 0

    def has_pending(self, user_id: str, session_id: str) -> bool:
        """Whether records of the session are not yet stored in Redis."""
        return any(not r.applied for r in self.pending_for(user_id, session_id))

    def pending_records(self) -> list[OutboxRecord]:
        """Every record not yet acknowledged, oldest first."""
        return [r for f in self._files for r in f.pending.values()]

    def pending_for(self, user_id: str, session_id: str) -> list[OutboxRecord]:
        """The session's records not yet acknowledged, oldest first."""
        if self._sessions[(user_id, session_id)] <= 0:
            return []
        key = (user_id, session_id)
        return [r for r in self.pending_records() if r.session_key == key]

    def _register(self, record: OutboxRecord) -> None:
        assert record.file is not None
        record.file.pending[record.n] = record
        self._sessions[record.session_key] += 1

    # --- writing ---------------------------------------------------------------------

    async def add(
        self,
        user_id: str,
        session_id: str,
        character_id: str,
        messages: Sequence[Message],
        usage: Usage | None = None,
        *,
        ordinal: int = 0,
        ttl_s: int | None = None,
        window_size: int | None = None,
        lock_token: str = "",
        applied: bool = False,
    ) -> OutboxRecord:
        """Write a record durably (raises OSError if the disk refuses it). `applied`:
        its messages are in Redis already, waiting for a replica to confirm them."""
        file = self._own or await self._open_own()
        record = OutboxRecord(
            file.next_n,
            user_id,
            session_id,
            character_id,
            list(messages),
            usage,
            file,
            ordinal=ordinal,
            ttl_s=ttl_s,
            window_size=window_size,
            lock_token=lock_token,
            applied=applied,
        )
        file.next_n += 1
        # Counted before the first await: a file with a write in flight is never retired.
        file.writing += 1

        def done(on_disk: bool) -> None:
            file.writing -= 1
            if on_disk:
                self._register(record)

        await file.write(record.to_line(), done)
        return record

    async def _open_own(self) -> OutboxFile:
        async with self._opening:
            if self._own is None:
                self._own = await asyncio.to_thread(self._create_own)
                self._files.append(self._own)
            return self._own

    def _create_own(self) -> OutboxFile:
        private_dir(self.directory, files=())
        self._own_seq += 1
        name = f"{self._name_prefix}-{self._own_seq}{SUFFIX}"
        file = create(self.directory / name)
        log.warning("redis unavailable: writing turns to the outbox %s", file.path)
        return file

    async def ack(self, records: Iterable[OutboxRecord]) -> None:
        """Mark records replayed; a file left with nothing to replay is deleted."""
        by_file: dict[OutboxFile, list[OutboxRecord]] = {}
        for rec in records:
            assert rec.file is not None
            if rec.file.pending.pop(rec.n, None) is not None:
                self._sessions[rec.session_key] -= 1
                if self._sessions[rec.session_key] <= 0:
                    del self._sessions[rec.session_key]
                by_file.setdefault(rec.file, []).append(rec)
        for file, recs in by_file.items():
            if file.closed:
                continue
            # Not fsynced: they are in Redis. Lost in a crash, they would be replayed again
            # at the next start, and the store skips the message ids it already holds.
            try:
                await file.write(orjson.dumps({"ack": [r.n for r in recs]}) + b"\n", sync=False)
            except OSError:
                log.exception("could not write an acknowledgement to %s", file.path)
            await self._retire_if_done(file)

    async def _retire_if_done(self, file: OutboxFile) -> None:
        if file.pending or file.writing or file.closed:
            return
        file.closed = True
        if file is self._own:
            self._own = None
        self._files.remove(file)
        await file.flushed()
        await asyncio.to_thread(file.close_sync, remove=True)
        log.info("outbox %s replayed and removed", file.path.name)

    async def reject(self, record: OutboxRecord, reason: str) -> None:
        """Set aside a record the store refuses for good (kept on disk for an operator)."""
        line = orjson.dumps({"reason": reason, "record": orjson.loads(record.to_line())})

        def append() -> None:
            private_dir(self.directory, files=())
            append_private(self.directory / REJECTED_FILE, line + b"\n")

        await asyncio.to_thread(append)
        log.error("outbox record of session %s rejected: %s", record.session_id, reason)
        await self.ack([record])

    # --- files of dead processes -----------------------------------------------------

    async def adopt_orphans(self) -> int:
        """Take over the files of dead processes; returns how many records they hold."""
        known = {f.path for f in self._files}
        adopted = await asyncio.to_thread(self._scan, known)
        own = [f for f in self._files if not f.adopted]
        self._files = [*(f for f in self._files if f.adopted), *adopted, *own]
        for file in adopted:
            for rec in file.pending.values():
                self._sessions[rec.session_key] += 1
        n = sum(len(f.pending) for f in adopted)
        if n:
            log.warning("outbox: %d records left by dead processes, to replay", n)
        return n

    def _scan(self, known: set[Path]) -> list[OutboxFile]:
        if not self.directory.is_dir():
            return []
        if not self._narrowed:  # an older chatmem's outbox: its dir and files made private
            private_dir(self.directory)
            self._narrowed = True
        paths = []
        for path in self.directory.glob("*" + SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                paths.append((path.stat().st_mtime, path))
        adopted = []
        for _, path in sorted(paths):
            if path not in known and (file := adopt(path)) is not None:
                adopted.append(file)
        return adopted

    # --- shutdown --------------------------------------------------------------------

    async def close(self) -> None:
        """Finish pending writes and close every file; those with records to replay stay
        on disk for the next start on this data dir."""
        for file in self._files:
            await file.flushed()
        files, self._files, self._own = self._files, [], None
        self._sessions.clear()
        for file in files:
            keep = bool(file.pending or file.writing)
            file.closed = True
            await asyncio.to_thread(file.close_sync, remove=not keep)
            if keep:
                log.warning("outbox: %d records kept in %s", len(file.pending), file.path)
