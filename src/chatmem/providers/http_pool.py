"""httpx's upstream transport with a connection pool whose bookkeeping is linear.

httpcore (1.0) re-examines its whole pool every time a request starts or ends: for
each idle connection it counts every connection again (a list built inside the loop:
quadratic in the pool's size) and polls the idle connection's socket (a syscall, through
anyio's typed attributes) to see whether the server closed it; then, for each queued
request, it lists the available and idle connections again. With the 32 connections of
32 turns in flight that is ~1 000 `is_idle` calls and ~30 polls per start and per end
of every upstream request (~0.5 ms of CPU per turn), and with 1 000 streams a million
calls each time: the event loop stalls for a good part of a second whenever a stream
starts or ends.

`LeanConnectionPool` does the same work in one pass: closed connections dropped, idle
ones beyond `max_keepalive_connections` closed, and the server-closed check (the poll)
made on the idle connection about to be reused, and on every idle one at most once a
second (so that an unused one past its keep-alive is still closed).

`OneWriteStream` sends a request's head and body in one write instead of two.
HTTP/1.1 only (chatmem's client never asks for HTTP/2); any other pool (a proxy's) is
left as httpx built it. The `timeout` parameters below are httpcore's interface.
"""

from __future__ import annotations

import time
from typing import Any

import httpcore
import httpx

_Connection = Any  # httpcore.AsyncConnectionInterface
SWEEP_S = 1.0
# A request's writes are held until its first read, up to this much (then sent).
MAX_HELD_BYTES = 256 * 1024
_POOL_INTERNALS = (
    "_connections",
    "_requests",
    "_max_connections",
    "_max_keepalive_connections",
    "_network_backend",
    "_http2",
)


class LeanConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, same state and behaviour, linear bookkeeping (see the module)."""

    def _assign_requests_to_connections(self) -> list[_Connection]:
        closing: list[_Connection] = []
        kept: list[_Connection] = []
        idle: list[_Connection] = []
        now = time.monotonic()
        # Idle connections past their keep-alive or closed by the server are swept out
        # at most once a SWEEP_S (one poll each), else found when about to be reused.
        sweep = now >= getattr(self, "_swept_at", 0.0) + SWEEP_S
        if sweep:
            self._swept_at = now
        for connection in self._connections:
            if connection.is_closed():
                continue
            if connection.is_idle():
                if len(idle) >= self._max_keepalive_connections or (
                    sweep and connection.has_expired()
                ):
                    closing.append(connection)
                    continue
                idle.append(connection)
            elif connection.has_expired():  # not idle: no poll, a state check
                closing.append(connection)
                continue
            kept.append(connection)
        self._connections = kept

        for pool_request in [r for r in self._requests if r.is_queued()]:
            origin = pool_request.request.url.origin
            chosen = self._reusable(origin, idle, closing)
            if chosen is None:
                if len(self._connections) >= self._max_connections:
                    if not idle:
                        continue  # stays queued until a connection is released
                    # Make room: close an idle connection to another origin.
                    victim = idle.pop(0)
                    self._connections.remove(victim)
                    closing.append(victim)
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            pool_request.assign_to_connection(chosen)
        return closing

    def _reusable(
        self, origin: httpcore.Origin, idle: list[_Connection], closing: list[_Connection]
    ) -> _Connection | None:
        """The first idle connection to `origin` that the server has not closed."""
        i = 0
        while i < len(idle):
            connection = idle[i]
            if not (connection.can_handle_request(origin) and connection.is_available()):
                i += 1
                continue
            del idle[i]
            if connection.has_expired():  # keep-alive over, or the server closed it
                self._connections.remove(connection)
                closing.append(connection)
                continue
            return connection
        return None


class OneWriteStream(httpcore.AsyncNetworkStream):
    """A connection whose writes wait for the next read: httpcore sends a request's head
    and its body in two writes (two syscalls, two wake-ups of the server); an HTTP/1.1
    client always reads after it has sent a request, so they go out as one."""

    __slots__ = ("_inner", "_pending", "_timeout")

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._pending: list[bytes] = []
        self._timeout: float | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if buffer:
            self._pending.append(buffer)
            self._timeout = timeout
            if sum(map(len, self._pending)) > MAX_HELD_BYTES:
                await self._flush()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._pending:
            await self._flush()
        return await self._inner.read(max_bytes, timeout)

    async def _flush(self) -> None:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        await self._inner.write(data, self._timeout)

    async def aclose(self) -> None:
        self._pending = []
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return OneWriteStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class OneWriteBackend(httpcore.AsyncNetworkBackend):
    """A network backend whose TCP connections are `OneWriteStream`s."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return OneWriteStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return OneWriteStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def upstream_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """The transport httpx.AsyncClient would build for these limits, with the lean pool
    and one write per request."""
    transport = httpx.AsyncHTTPTransport(limits=limits)
    pool = transport._pool
    # httpcore's internals as of 1.0 (tests/test_provider_openai.py checks that they are
    # still what this relies on); anything else keeps httpx's own pool.
    known = all(hasattr(pool, a) for a in _POOL_INTERNALS)
    if type(pool) is httpcore.AsyncConnectionPool and known and not pool._http2:
        # Same class layout, one method overridden: the pool's state carries over.
        pool.__class__ = LeanConnectionPool
        pool._network_backend = OneWriteBackend(pool._network_backend)
    return transport
