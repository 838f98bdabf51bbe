"""chatmem's upstream HTTP client: a keep-alive pool of `Http1Connection`s to one origin.

The pool's limits are the ones the httpx client had: at most `max_connections` open
(a request past them waits up to the pool timeout: a stream holds its connection for
its whole length, so this caps the streams at once), at most `max_keepalive` idle, each
idle one closed after `keepalive_expiry_s`. Every operation is O(1) but the sweep of
expired idle connections, at most once a SWEEP_S.

A kept-alive connection that the server has closed is never reused: the event loop
tells the protocol when the server closes (no poll of the socket, as httpcore needed).
If the request's one write fails at once on a reused connection (nothing was sent),
it goes out once more on a new connection. Any later failure is raised, never retried
here: a POST that may have reached the model is the provider's to retry (it does,
before the first token).

TLS: `ssl.create_default_context()` (the system's CAs, SSL_CERT_FILE / SSL_CERT_DIR)
plus certifi's bundle when installed (httpx's default), ALPN `http/1.1`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import urlsplit

from chatmem.providers.http1 import Http1Connection, Http1Response
from chatmem.providers.upstream import (
    ConnectTimeout,
    PoolTimeout,
    Timeouts,
    UpstreamConnectError,
    UpstreamDisconnected,
)

SWEEP_S = 1.0
ACCEPT_ENCODING = "gzip, deflate"


class Http1Client:
    """POSTs to one base URL over a keep-alive pool (see the module)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        max_connections: int,
        max_keepalive: int = 64,
        keepalive_expiry_s: float = 5.0,
    ) -> None:
        parts = urlsplit(base_url)
        # Refused on each request (a provider error, logged), as httpx did: not at startup.
        self._invalid = None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self._invalid = f"not an http(s) URL: {base_url!r}"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = _ssl_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/") + "/"
        self._query = "?" + parts.query if parts.query else ""
        host = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port and parts.port != (443 if self._ssl else 80):
            host += f":{parts.port}"
        fields = {"Host": host, "Accept-Encoding": ACCEPT_ENCODING, "User-Agent": "chatmem"}
        fields.update(headers)
        # A value with a line break would smuggle a header.
        if bad := next((n for n, v in fields.items() if "\r" in v or "\n" in v), None):
            self._invalid = f"header {bad} has a line break"
        self._head_fields = "".join(f"{n}: {v}\r\n" for n, v in fields.items())
        self.timeouts = timeouts
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._expiry_s = keepalive_expiry_s
        self._idle: deque[Http1Connection] = deque()
        self._open = 0  # connections counted against max_connections
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._swept_at = 0.0
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    def post(self, path: str, body: bytes, timeouts: Timeouts | None = None) -> _Exchange:
        return _Exchange(self, path, body, timeouts or self.timeouts)

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1

    def _request(self, path: str, body: bytes) -> bytes:
        if self._invalid is not None:
            raise UpstreamConnectError(self._invalid)
        return (
            f"POST {self._prefix}{path}{self._query} HTTP/1.1\r\n{self._head_fields}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body

    async def _acquire(self, t: Timeouts) -> tuple[Http1Connection, bool]:
        """A connection (and whether it was kept alive from an earlier request)."""
        deadline = None
        while True:
            if self._closed:
                raise UpstreamConnectError("the client is closed")
            now = time.monotonic()
            if now >= self._swept_at + SWEEP_S:
                self._sweep(now)
            while self._idle:
                conn = self._idle.pop()
                if not conn.reusable or now - conn.idle_since > self._expiry_s:
                    self._discard(conn)
                    continue
                return conn, True
            if self._open < self._max_connections:
                break
            if deadline is None:
                deadline = now + t.pool_s
            await self._wait_for_room(deadline)
        self._open += 1
        try:
            return await self._connect(t.connect_s), False
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _wait_for_room(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, but leaving: the room is the next waiter's
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout("no upstream connection was free in time") from None
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: Http1Connection, reusable: bool) -> None:
        room = len(self._idle) < self._max_keepalive
        if reusable and room and conn.reusable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._discard(conn)
        self._wake_one()

    def _discard(self, conn: Http1Connection) -> None:
        conn.close()
        self._open -= 1

    def _sweep(self, now: float) -> None:
        """Close idle connections past their keep-alive or closed by the server."""
        self._swept_at = now
        alive: deque[Http1Connection] = deque()
        for conn in self._idle:
            if not conn.reusable or now - conn.idle_since > self._expiry_s:
                self._discard(conn)
            else:
                alive.append(conn)
        self._idle = alive

    async def _connect(self, connect_s: float) -> Http1Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(
                    Http1Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting took over {connect_s:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
            raise UpstreamConnectError(str(exc) or type(exc).__name__) from exc
        return conn


class _Exchange:
    """One request: `async with client.post(...) as response:`; leaving the block
    returns the connection to the pool if its response was read to the end."""

    __slots__ = ("_body", "_client", "_path", "_response", "_t")

    def __init__(self, client: Http1Client, path: str, body: bytes, t: Timeouts) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._t = t
        self._response: Http1Response | None = None

    async def __aenter__(self) -> Http1Response:
        client, t = self._client, self._t
        request = client._request(self._path, self._body)
        for attempt in (0, 1):
            conn, reused = await client._acquire(t)
            try:
                sent = conn.send_nowait(request)
                if not sent and reused and attempt == 0:
                    client._discard(conn)  # the write failed at once: nothing went out
                    continue
                if not sent:
                    raise UpstreamDisconnected("the connection closed before the request went out")
                await conn.drain(t.write_s)
                status, headers, http11 = await conn.read_head(t.read_s)
                self._response = Http1Response(conn, status, headers, http11, t.read_s)
            except BaseException:
                client._release(conn, False)
                raise
            return self._response
        raise AssertionError("unreachable")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        response = self._response
        if response is not None:
            self._response = None
            ok = exc_type is None and response.done and response.reusable
            self._client._release(response._conn, ok)


def _ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(certifi.where())
    except ImportError:
        pass
    context.set_alpn_protocols(["http/1.1"])
    return context
