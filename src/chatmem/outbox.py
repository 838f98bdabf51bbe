"""The outbox: turns' messages kept on local disk while Redis cannot be reached (SPEC §7).

    <data_dir>/outbox/<pid>-<start ms>-<n>.jsonl    this process's file (one at a time)
    <data_dir>/outbox/rejected.log                  records the store refused for good

Each line of a file is a record, or an acknowledgement of records already replayed:

    {"n": 1, "user": "alice", "session": "s1", "character": "assistant",
     "messages": [<Message.to_dict()>, ...], "usage": {...} | null}
    {"ack": [1, 2]}

`add` returns once its record is written and fsynced (concurrent writers share one write
and one fsync), so a turn answered from the outbox survives a crash of this process. A
process holds an exclusive flock on each file it has open, for as long as it lives: a
file whose lock is free belongs to a dead process, and `adopt_orphans` takes it over, so
two processes never replay the same file. A file whose records are all acknowledged is
deleted. What a record means (append it to the store, create a missing session) is the
replayer's business (replay.py), not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from chatmem.models import Message, Role, Usage

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
REJECTED_FILE = "rejected.log"
_SUFFIX = ".jsonl"

SessionKey = tuple[str, str]
OnDone = Callable[[bool], None]


def _message_from_dict(d: dict[str, Any]) -> Message:
    return Message(
        Role(d["role"]),
        str(d["content"]),
        int(d["token_count"]),
        msg_id=str(d["msg_id"]),
        timestamp=float(d["timestamp"]),
        metadata=dict(d.get("metadata") or {}),
    )


def _usage_to_dict(u: Usage) -> dict[str, Any]:
    # Not Usage.to_dict(): that rounds the cost for display.
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cost_usd": u.cost_usd,
    }


@dataclass(slots=True)
class OutboxRecord:
    """Messages of one session to append in one store call, with the usage they add."""

    n: int
    user_id: str
    session_id: str
    character_id: str
    messages: list[Message]
    usage: Usage | None = None
    file: _OutboxFile | None = field(default=None, repr=False, compare=False)

    @property
    def session_key(self) -> SessionKey:
        return self.user_id, self.session_id

    def to_line(self) -> bytes:
        doc = {
            "n": self.n,
            "user": self.user_id,
            "session": self.session_id,
            "character": self.character_id,
            "messages": [m.to_dict() for m in self.messages],
            "usage": _usage_to_dict(self.usage) if self.usage is not None else None,
        }
        return orjson.dumps(doc) + b"\n"

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> OutboxRecord:
        u = doc.get("usage")
        usage = (
            Usage(int(u["prompt_tokens"]), int(u["completion_tokens"]), float(u["cost_usd"]))
            if u is not None
            else None
        )
        return cls(
            n=int(doc["n"]),
            user_id=str(doc["user"]),
            session_id=str(doc["session"]),
            character_id=str(doc["character"]),
            messages=[_message_from_dict(m) for m in doc["messages"]],
            usage=usage,
        )


def _fsync_dir(directory: Path) -> None:
    """A new or renamed file's name is durable only once its directory is fsynced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _retrieve(fut: asyncio.Future[None]) -> None:
    # A writer cancelled while waiting leaves its future behind; a failure nobody awaits
    # any more must not be reported as "exception never retrieved".
    if not fut.cancelled():
        fut.exception()


class _OutboxFile:
    """One open outbox file, its flock held: appends are serialized, batched and fsynced."""

    def __init__(self, path: Path, fd: int, size: int, *, adopted: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.adopted = adopted
        self.pending: dict[int, OutboxRecord] = {}
        self.next_n = 1
        self.writing = 0  # records handed to `write` and not yet on disk
        self.closed = False
        self._queue: list[tuple[bytes, bool, OnDone | None, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, data: bytes, on_done: OnDone | None = None, *, sync: bool = True) -> None:
        """Append `data` (and fsync, if `sync`). `on_done(on_disk)` runs when the write
        is over, even if the caller was cancelled meanwhile (a write is never cancelled
        half-way)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)
        self._queue.append((data, sync, on_done, fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name=f"outbox {self.path.name}")
        await asyncio.shield(fut)

    async def flushed(self) -> None:
        while self._flusher is not None:
            await asyncio.wait([self._flusher])

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                error: Exception | None = None
                data = b"".join(d for d, _, _, _ in batch)
                sync = any(s for _, s, _, _ in batch)
                try:
                    await asyncio.to_thread(self._write_sync, data, sync)
                except Exception as exc:
                    error = exc
                for _, _, on_done, fut in batch:
                    if on_done is not None:
                        on_done(error is None)
                    if fut.done():
                        continue
                    if error is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(error)
        finally:
            self._flusher = None

    def _write_sync(self, data: bytes, sync: bool) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            if sync:
                os.fsync(self.fd)
        except OSError:
            # Cut a torn line off, so that the next record starts on a line of its own.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)

    def close_sync(self, *, remove: bool) -> None:
        """Close (releasing the flock); unlink first if asked, while the lock is held."""
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)


class Outbox:
    """This process's outbox files, and those it adopted from dead processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._files: list[_OutboxFile] = []  # adopted ones first: they are older
        self._own: _OutboxFile | None = None
        self._own_seq = 0
        self._started_ms = int(time.time() * 1000)
        self._opening = asyncio.Lock()
        self._sessions: Counter[SessionKey] = Counter()

    # --- what is pending -------------------------------------------------------------

    @property
    def pending(self) -> int:
        return sum(len(f.pending) for f in self._files)

    def has_pending(self, user_id: str, session_id: str) -> bool:
        return self._sessions[(user_id, session_id)] > 0

    def pending_records(self) -> list[OutboxRecord]:
        """Every record not yet acknowledged, oldest first."""
        return [r for f in self._files for r in f.pending.values()]

    def pending_for(self, user_id: str, session_id: str) -> list[OutboxRecord]:
        """The session's records not yet acknowledged, oldest first."""
        if not self.has_pending(user_id, session_id):
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
    ) -> OutboxRecord:
        """Write a record durably (raises OSError if the disk refuses it)."""
        file = self._own or await self._open_own()
        record = OutboxRecord(
            file.next_n, user_id, session_id, character_id, list(messages), usage, file
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

    async def _open_own(self) -> _OutboxFile:
        async with self._opening:
            if self._own is None:
                self._own = await asyncio.to_thread(self._create_own)
                self._files.append(self._own)
            return self._own

    def _create_own(self) -> _OutboxFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._own_seq += 1
        path = self.directory / f"{os.getpid()}-{self._started_ms}-{self._own_seq}{_SUFFIX}"
        # Created under a name scanners ignore and locked before it gets its real name:
        # a scanner must never see it unlocked and take it for a dead process's file.
        tmp = path.with_name(f".{path.name}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, path)
            _fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        log.warning("redis unavailable: writing turns to the outbox %s", path)
        return _OutboxFile(path, fd, 0)

    async def ack(self, records: Iterable[OutboxRecord]) -> None:
        """Mark records replayed; a file left with nothing to replay is deleted."""
        by_file: dict[_OutboxFile, list[OutboxRecord]] = {}
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

    async def _retire_if_done(self, file: _OutboxFile) -> None:
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
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / REJECTED_FILE, "ab") as f:
                f.write(line + b"\n")
                f.flush()
                os.fsync(f.fileno())

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

    def _scan(self, known: set[Path]) -> list[_OutboxFile]:
        if not self.directory.is_dir():
            return []
        paths = []
        for path in self.directory.glob("*" + _SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                paths.append((path.stat().st_mtime, path))
        adopted = []
        for _, path in sorted(paths):
            if path not in known and (file := _adopt(path)) is not None:
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


def _adopt(path: Path) -> _OutboxFile | None:
    """Open and lock a dead process's file; None if it is alive, gone, or all replayed."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its process is alive
            return None
        # Its owner may have replayed and unlinked it between our open and our lock.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        file = _OutboxFile(path, fd, 0, adopted=True)
        _load(file)
    except BaseException:
        os.close(fd)
        raise
    if not file.pending:
        file.close_sync(remove=True)
        return None
    return file


def _load(file: _OutboxFile) -> None:
    data = b""
    while chunk := os.pread(file.fd, 1 << 20, len(data)):
        data += chunk
    end = data.rfind(b"\n") + 1
    if end < len(data):
        # A torn last line (the process died while writing it: never acknowledged to
        # anyone). Cut it off so that acknowledgements appended now start a line.
        log.warning("outbox %s: dropping a torn last line of %d bytes", file.path, len(data) - end)
        os.ftruncate(file.fd, end)
    file.size = end
    records: dict[int, OutboxRecord] = {}
    acked: set[int] = set()
    unreadable: list[bytes] = []
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            if "ack" in doc:
                acked.update(int(n) for n in doc["ack"])
            else:
                rec = OutboxRecord.from_doc(doc)
                rec.file = file
                records[rec.n] = rec
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("outbox %s line %d is unreadable: %s", file.path, lineno, exc)
            unreadable.append(line)
    if unreadable:
        # Kept for an operator: the file itself goes once its readable records are in.
        with open(file.path.with_name(REJECTED_FILE), "ab") as f:
            for line in unreadable:
                reason = f"unreadable line in {file.path.name}"
                f.write(orjson.dumps({"reason": reason, "line": line.decode(errors="replace")}))
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    file.pending = {n: r for n, r in records.items() if n not in acked}
    file.next_n = max(records, default=0) + 1
