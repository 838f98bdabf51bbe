"""One HTTP/1.1 connection to the upstream, as an asyncio `Protocol`: bytes in, a
response's head and body out.

Why not httpx here: a provider reads a streamed reply one small SSE event at a time,
and each read through httpx → httpcore → h11 → anyio costs ~135 µs of CPU (a cancel
scope per socket operation, h11's event objects, the pool's bookkeeping) where the bytes
cost ~40 µs to get from the loop (docs/performance.md, *Upstream client*). A protocol
is handed each block as the event loop reads it: a read is a buffer append and, when a
reader waits, one future set.

What it speaks: a request sent in one write (head and body); a response with a
`Content-Length` body, a chunked one (trailers skipped) or one delimited by the
connection's close; `1xx` heads skipped; gzip or deflate bodies decoded (asked for with
`Accept-Encoding: gzip, deflate`, as httpx does; not zstd or br). Keep-alive unless the
server says `Connection: close`, speaks HTTP/1.0, or the body is close-delimited. A head
over MAX_HEAD_BYTES, a malformed status line, header or chunk is an
`UpstreamProtocolError`, a body cut short `UpstreamDisconnected`; every wait for bytes
is bounded by the read timeout, and the whole head by it too (a server that trickles a
byte at a time, or a `100 Continue` every second, would otherwise hold a turn for ever).
A body is at most MAX_BODY_BYTES once decoded, decompressed step by step within that
bound (body_decoding.py): a 300 KB gzip bomb of 300 MB is refused at 16 MiB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

from chatmem.providers.body_decoding import BodyDecoder
from chatmem.providers.upstream import (
    ReadTimeout,
    UpstreamDisconnected,
    UpstreamProtocolError,
    WriteTimeout,
)

MAX_HEAD_BYTES = 64 * 1024
# A whole reply of 4 096 tokens is ~1 MB of SSE; an error body is read only to be logged.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_CHUNK_LINE_BYTES = 4 * 1024
# The loop stops reading a connection whose unread bytes pass this (and resumes below
# a quarter of it): a slow consumer cannot make the process buffer a whole body.
MAX_BUFFERED_BYTES = 1024 * 1024
_NO_BODY_STATUSES = (204, 304)
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _NONE = 0, 1, 2, 3


class Http1Connection(asyncio.Protocol):
    """A connection's state, fed by the event loop; the reader side waits on `_wait`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._lost: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.received_any = False  # a byte of the current response
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    # -- the event loop's side ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self.received_any = True
        if len(self._buffer) > MAX_BUFFERED_BYTES and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._eof = True
        self._lost = exc or ConnectionResetError("connection closed")
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the client's side -------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Closed by either side, or the server has said it is done (EOF)."""
        return self._eof or self.transport is None or self.transport.is_closing()

    @property
    def reusable(self) -> bool:
        """Open, and nothing arrived since the last response (a server that says
        something to an idle connection, a 408 say, is about to close it)."""
        return not (self._buffer or self.is_closed)

    def close(self) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def send_nowait(self, data: bytes) -> bool:
        """Hand the request to the transport; False if it failed at once (then
        nothing was sent: the first `send` of the socket raised)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        self.received_any = False
        transport.write(data)
        return not transport.is_closing()

    async def drain(self, timeout_s: float) -> None:
        """Until the transport has taken what did not fit its buffer."""
        if self._drained is not None and not self._drained.done():
            try:
                async with asyncio.timeout(timeout_s):
                    await self._drained
            except TimeoutError:
                raise WriteTimeout(f"sending the request took over {timeout_s:g} s") from None

    async def _wait(self, timeout_s: float) -> None:
        """Until more bytes (or the end) arrive, at most `timeout_s`. One timer per
        connection, moved only when it fires early: not a timer made and cancelled per
        read (a streamed reply waits once per token)."""
        if self._eof:
            raise self._cut_short()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._deadline = deadline = loop.time() + timeout_s
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait sets a timer again
        if (loop := asyncio.get_running_loop()).time() >= self._deadline:
            waiter.set_exception(ReadTimeout("the server sent nothing in time"))
        else:
            self._timer = loop.call_at(self._deadline, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._reading_paused and len(self._buffer) < MAX_BUFFERED_BYTES // 4:
            self._resume_reading()
        return data

    def _take_all(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused:
            self._resume_reading()
        return data

    def _cut_short(self) -> UpstreamDisconnected:
        if not self.received_any:
            return UpstreamDisconnected("the server disconnected without sending a response")
        return UpstreamDisconnected(f"the server closed the connection mid-response ({self._lost})")

    async def read_head(self, read_s: float) -> tuple[int, dict[str, str], bool]:
        """The next final response's status, headers (lower-case names; repeated
        ones joined with ", ") and whether it is HTTP/1.1, all within `read_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + read_s
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head, skip = self._take(end), 4
            else:
                end = self._buffer.find(b"\n\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD_BYTES:
                        raise UpstreamProtocolError("the response head is too large")
                    if (left := deadline - loop.time()) <= 0:
                        raise ReadTimeout(f"the response head took over {read_s:g} s")
                    await self._wait(left)
                    continue
                head, skip = self._take(end), 2
            self._take(skip)
            if len(head) > MAX_HEAD_BYTES:
                raise UpstreamProtocolError("the response head is too large")
            status, headers, http11 = parse_head(head)
            if 100 <= status < 200:
                continue  # 100 Continue, 103 Early Hints: the final response follows
            return status, headers, http11


def parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers and whether the version is 1.1, from a head without its blank
    line (pure)."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3:
        raise UpstreamProtocolError(f"malformed status line: {lines[0][:100]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise UpstreamProtocolError(f"malformed status line: {lines[0][:100]!r}") from None
    if not 100 <= status <= 599:
        raise UpstreamProtocolError(f"malformed status line: {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    name = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and name:  # obsolete line folding
            headers[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.lower()
        if not colon or not name or name != name.strip():
            raise UpstreamProtocolError(f"malformed header line: {line[:100]!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return status, headers, parts[0] == "HTTP/1.1"


class Http1Response:
    """A response whose head is in; its body is read from the connection on demand."""

    __slots__ = (
        "_conn",
        "_crlf_due",
        "_decoded",
        "_decoder",
        "_framing",
        "_left",
        "_read_s",
        "_trailers",
        "done",
        "headers",
        "reusable",
        "status",
    )

    def __init__(
        self,
        conn: Http1Connection,
        status: int,
        headers: dict[str, str],
        http11: bool,
        read_s: float,
    ) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self._read_s = read_s
        self.reusable = http11 and "close" not in headers.get("connection", "").lower()
        self._left = 0
        self._decoded = 0
        self._crlf_due = False
        self._trailers = False
        if status in _NO_BODY_STATUSES:
            self._framing = _NONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._framing = _CHUNKED
        elif (length := headers.get("content-length")) is not None:
            self._framing = _LENGTH
            if not length.isdigit():
                raise UpstreamProtocolError(f"malformed Content-Length: {length[:40]!r}")
            self._left = int(length)
        else:
            self._framing = _UNTIL_CLOSE
            self.reusable = False
        self.done = self._framing == _NONE or (self._framing == _LENGTH and not self._left)
        self._decoder = BodyDecoder.for_encoding(headers.get("content-encoding", ""))

    async def aread(self) -> bytes:
        return b"".join([block async for block in self.aiter_bytes()])

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while not self.done:
            block = await self._read_raw()
            if self._decoder is not None:
                # One byte past the bound at most: all of `block` is consumed unless the
                # body is too large anyway (then nothing more is read).
                room = MAX_BODY_BYTES - self._decoded + 1
                block = self._decoder.decode(block, room, last=self.done)
            self._decoded += len(block)
            if self._decoded > MAX_BODY_BYTES:
                raise UpstreamProtocolError(f"the response body is over {MAX_BODY_BYTES} bytes")
            if block:
                yield block

    async def _read_raw(self) -> bytes:
        """The next bytes of the body as sent (b"" once it is over)."""
        if self.done:
            return b""
        conn = self._conn
        if self._framing == _CHUNKED:
            return await self._read_chunked()
        while not conn._buffer:
            if conn._eof:
                if self._framing == _UNTIL_CLOSE:
                    self.done = True
                    return b""
                raise conn._cut_short()
            await conn._wait(self._read_s)
        if self._framing == _UNTIL_CLOSE:
            return conn._take_all()
        data = conn._take_all() if len(conn._buffer) <= self._left else conn._take(self._left)
        self._left -= len(data)
        self.done = not self._left
        return data

    async def _read_chunked(self) -> bytes:
        """The data of every chunk (whole or begun) that has arrived, joined: one block
        per socket read, not one per chunk. A state machine over the chunk's data,
        the line break after it, the next size line, and the trailers."""
        conn = self._conn
        pieces: list[bytes] = []
        while not self.done:
            buffer = conn._buffer
            if self._left:
                if not buffer:
                    if pieces:
                        break
                    await conn._wait(self._read_s)
                    continue
                n = min(self._left, len(buffer))
                pieces.append(conn._take_all() if n == len(buffer) else conn._take(n))
                self._left -= n
                self._crlf_due = not self._left
                continue
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE_BYTES:
                    raise UpstreamProtocolError("a chunk-size or trailer line is too long")
                if pieces:
                    break
                await conn._wait(self._read_s)
                continue
            line = conn._take(end + 1).rstrip(b"\r\n")
            if self._crlf_due:  # the line break that ends a chunk's data
                if line:
                    raise UpstreamProtocolError("a chunk longer than its size")
                self._crlf_due = False
            elif self._trailers:
                self.done = not line  # trailers end at a blank line
            else:
                try:
                    self._left = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise UpstreamProtocolError(f"malformed chunk size: {line[:40]!r}") from None
                if self._left < 0:
                    raise UpstreamProtocolError(f"malformed chunk size: {line[:40]!r}")
                self._trailers = not self._left
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
