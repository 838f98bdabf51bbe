"""One outbox file: its line format, its lock, and how it is written and read back.

A line is a record, or an acknowledgement of records already replayed:

    {"n": 1, "user": "alice", "session": "s1", "character": "assistant",
     "messages": [<Message.to_dict()>, ...], "usage": {...} | null,
     "ordinal": 1733000000000000, "ttl_s": 1800 | null, "window": 5 | null,
     "lock": "<the turn's lock token>" | ""}
    {"ack": [1, 2]}

`ordinal` is the turn's place in its session's order (store/turns.py `turn_ordinal`;
0 in files of an older chatmem: stored as the newest); `ttl_s` and `window` what a
session the replay creates starts with (the turn's route's; null: the defaults); `lock`
the token of the turn's session lock, released again with each replay (a failover can
bring back a lock its turn had released, on a replica that never saw the release).

A file is held, with an exclusive flock, by the process that writes it (`create`) or that
took it over from a dead one (`adopt`), for as long as it is open. Appends are serialized
and batched: concurrent writers share one write and one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from chatmem.models import Message, Role, Usage
from chatmem.permissions import append_private

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
# Records the store refused for good, and unreadable lines: kept for an operator.
REJECTED_FILE = "rejected.log"

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
    file: OutboxFile | None = field(default=None, repr=False, compare=False)
    ordinal: int = 0
    ttl_s: int | None = None
    window_size: int | None = None
    lock_token: str = ""
    # In Redis already (on the master), waiting for a replica to confirm it; not on
    # disk: after a restart the record is stored again (its ids are skipped).
    applied: bool = False

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
            "ordinal": self.ordinal,
            "ttl_s": self.ttl_s,
            "window": self.window_size,
            "lock": self.lock_token,
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
            ordinal=int(doc.get("ordinal") or 0),
            ttl_s=_optional_int(doc.get("ttl_s")),
            window_size=_optional_int(doc.get("window")),
            lock_token=str(doc.get("lock") or ""),
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def fsync_dir(directory: Path) -> None:
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


class OutboxFile:
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


def create(path: Path) -> OutboxFile:
    """A new file for this process to write, locked before anyone can see it."""
    # Created under a name scanners ignore and locked before it gets its real name:
    # a scanner must never see it unlocked and take it for a dead process's file.
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return OutboxFile(path, fd, 0)


def adopt(path: Path) -> OutboxFile | None:
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
        file = OutboxFile(path, fd, 0, adopted=True)
        _load(file)
    except BaseException:
        os.close(fd)
        raise
    if not file.pending:
        file.close_sync(remove=True)
        return None
    return file


def _load(file: OutboxFile) -> None:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(file.fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    data = b"".join(chunks)
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
        reason = f"unreadable line in {file.path.name}"
        append_private(
            file.path.with_name(REJECTED_FILE),
            b"".join(
                orjson.dumps({"reason": reason, "line": line.decode(errors="replace")}) + b"\n"
                for line in unreadable
            ),
        )
    file.pending = {n: r for n, r in records.items() if n not in acked}
    file.next_n = max(records, default=0) + 1
